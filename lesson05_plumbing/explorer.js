// The attention explorer: draws the weights embedded in this page. It loads nothing.
// The view (example, kind, layer, head) lives in the address after '#', counted from 1:
// #example=2&kind=cross&layer=1&head=2 ; copy the address to link to a view, reload to return to it.
"use strict";
(() => {
  const data = JSON.parse(document.getElementById("explorer-data").textContent);
  const kinds = new Map(data.kinds.map((kind) => [kind.id, kind]));
  const SELF = new Set(["encoder_self", "decoder_self"]);   // queries and keys are the same positions
  const VIRIDIS = [[68, 1, 84], [72, 40, 120], [62, 73, 137], [49, 104, 142], [38, 130, 142],
                   [31, 158, 137], [53, 183, 121], [110, 206, 88], [181, 222, 43], [253, 231, 37]];
  const MASKED = "#c8c8c8", MASKED_LINE = "#7a7a7a", NAN = "#ffffff";
  const HINT = "Point at a cell for its query, key and weight; at a token (a row or column label) " +
               "for what it attends to and what attends to it.";
  let state = {example: 0, kind: "cross", layer: 0, head: 0};

  // ------------------------------------------------------------ small helpers
  function colour(w) {                       // viridis: 0 dark purple, 1 yellow; above 1 drawn as 1
    const x = Math.min(Math.max(w, 0), 1) * (VIRIDIS.length - 1);
    const i = Math.min(Math.floor(x), VIRIDIS.length - 2), f = x - i;
    const c = VIRIDIS[i].map((v, j) => Math.round(v + f * (VIRIDIS[i + 1][j] - v)));
    return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
  }

  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, value);
    }
    node.append(...children);
    return node;
  }

  const tokensOf = (ex, side) => (side === "input" ? ex.input : side === "answer" ? ex.answer : ex.reads);
  const exact = (w) => (w === null ? "NaN (not a number)" : w.toFixed(4));

  function positionName(ex, kind, axis, i) {
    const side = axis === "query" ? kind.queries : kind.keys;
    const token = tokensOf(ex, side)[i];
    if (side === "input") return `input position ${i} (${token})`;
    if (side === "answer") return `answer position ${i} (writes ${token})`;
    return `decoder input position ${i} (reads ${token})`;
  }

  // ------------------------------------------------------------ the view in the address
  function fromHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    const next = {...state};
    const whole = (key, n) => {
      const v = Number(params.get(key));
      return Number.isInteger(v) && v >= 1 && v <= n ? v - 1 : null;
    };
    const example = whole("example", data.examples.length);
    const layer = whole("layer", data.layers), head = whole("head", data.heads);
    if (example !== null) next.example = example;
    if (layer !== null) next.layer = layer;
    if (head !== null) next.head = head;
    if (kinds.has(params.get("kind"))) next.kind = params.get("kind");
    return next;
  }

  const hashOf = (s) => `#example=${s.example + 1}&kind=${s.kind}&layer=${s.layer + 1}&head=${s.head + 1}`;

  function go(change) {                      // a new view: the address changes, hashchange draws it
    const next = {...state, ...change};
    if (location.hash === hashOf(next)) {
      state = next;
      render();
    } else {
      location.hash = hashOf(next);
    }
  }

  // ------------------------------------------------------------ the overview: layers x heads per kind
  function drawMap(canvas, weights, mask, cell) {
    const rows = weights.length, cols = weights[0].length;
    canvas.width = cols * cell;
    canvas.height = rows * cell;
    const g = canvas.getContext("2d");
    for (let q = 0; q < rows; q++) {
      for (let k = 0; k < cols; k++) {
        const w = weights[q][k], masked = mask[q][k] === "0";
        g.fillStyle = masked ? MASKED : w === null ? NAN : colour(w);
        g.fillRect(k * cell, q * cell, cell, cell);
        if (masked && cell >= 4) {           // a hatch line: masked, not a weight of 0
          g.strokeStyle = MASKED_LINE;
          g.beginPath();
          g.moveTo(k * cell, (q + 1) * cell);
          g.lineTo((k + 1) * cell, q * cell);
          g.stroke();
        }
      }
    }
  }

  function overview(ex) {
    const grids = document.getElementById("grids");
    grids.replaceChildren();
    for (const kind of data.kinds) {
      const mask = ex.masks[kind.id];
      const cell = Math.max(2, Math.floor(84 / Math.max(mask.length, mask[0].length)));
      const table = el("table", {class: "grid", "data-kind": kind.id},
                       el("caption", {text: `${kind.title}: ${kind.what}`}));
      const head = el("tr", {}, el("th"));
      for (let h = 0; h < data.heads; h++) head.append(el("th", {scope: "col", text: `head ${h + 1}`}));
      const body = el("tbody");
      for (let l = 0; l < data.layers; l++) {
        const row = el("tr", {}, el("th", {scope: "row", text: `layer ${l + 1}`}));
        for (let h = 0; h < data.heads; h++) {
          const label = `${kind.title}, layer ${l + 1}, head ${h + 1}`;
          const canvas = el("canvas", {"data-kind": kind.id, "data-layer": l, "data-head": h});
          drawMap(canvas, ex.weights[kind.id][l][h], mask, cell);
          const chosen = kind.id === state.kind && l === state.layer && h === state.head;
          const button = el("button", {type: "button", class: chosen ? "thumb selected" : "thumb",
                                       "aria-label": label, title: `${label}: open it large`}, canvas);
          button.addEventListener("click", () => go({kind: kind.id, layer: l, head: h}));
          row.append(el("td", {}, button));
        }
        body.append(row);
      }
      table.append(el("thead", {}, head), body);
      grids.append(table);
    }
  }

  // ------------------------------------------------------------ the large view
  function detail(ex) {
    const kind = kinds.get(state.kind);
    const weights = ex.weights[kind.id][state.layer][state.head], mask = ex.masks[kind.id];
    const queries = tokensOf(ex, kind.queries), keys = tokensOf(ex, kind.keys);
    document.getElementById("detail-title").textContent =
      `${kind.title}, layer ${state.layer + 1}, head ${state.head + 1}: example ${state.example + 1} ` +
      `(test input no. ${ex.test_index}, answered ${ex.right ? "right" : "wrong"})`;
    document.getElementById("detail-what").textContent =
      `${kind.what[0].toUpperCase()}${kind.what.slice(1)}: a row per query, a column per key. ` +
      "Computed in eval mode; the weights are the model's own, rounded to 4 decimals.";
    document.getElementById("x-axis").textContent = kind.key_axis;
    document.getElementById("y-axis").textContent = kind.query_axis;
    const readout = document.getElementById("readout");
    readout.textContent = HINT;

    const table = document.getElementById("matrix");
    table.replaceChildren();
    table.dataset.kind = kind.id;
    table.dataset.layer = state.layer;
    table.dataset.head = state.head;
    table.dataset.example = state.example;
    const head = el("tr", {}, el("th", {class: "corner"}));
    keys.forEach((token, k) => head.append(
      el("th", {class: "col", scope: "col", "data-k": k}, token, el("small", {text: String(k)}))));
    const body = el("tbody");
    queries.forEach((token, q) => {
      const wrong = kind.queries === "answer" && q === ex.first_wrong;
      const label = el("th", {class: wrong ? "row wrong" : "row", scope: "row", "data-q": q},
                       token, el("small", {text: String(q)}));
      if (wrong) {
        label.title = `the first wrong answer position: the model wrote ${ex.answer[q]}, the expected ` +
                      `answer has ${q < ex.expected.length ? ex.expected[q] : "nothing"} here`;
      }
      const row = el("tr", {}, label);
      weights[q].forEach((w, k) => {
        const cell = el("td", {"data-q": q, "data-k": k, "data-w": w === null ? "NaN" : w.toFixed(4)});
        if (mask[q][k] === "0") {
          cell.className = "masked";
        } else if (w === null) {
          cell.className = "nan";
        } else {
          cell.style.backgroundColor = colour(w);
          cell.style.color = w < 0.55 ? "#fff" : "#000";
        }
        cell.textContent = w === null ? "NaN" : w.toFixed(2);
        row.append(cell);
      });
      body.append(row);
    });
    table.append(el("thead", {}, head), body);
    table.classList.toggle("hide-numbers", !document.getElementById("numbers").checked);

    const strongest = (pairs, axis) => {
      const shown = pairs.filter(([, w, masked]) => !masked && w !== null)
        .sort((a, b) => b[1] - a[1]).slice(0, 3)
        .map(([i, w]) => `${positionName(ex, kind, axis, i)} ${w.toFixed(4)}`);
      return shown.length ? shown.join(", ") : "nothing (every such cell is masked or NaN)";
    };
    const rowOf = (q) => weights[q].map((w, k) => [k, w, mask[q][k] === "0"]);
    const columnOf = (k) => weights.map((row, q) => [q, row[k], mask[q][k] === "0"]);

    function light(rows, cols) {             // rows and columns lit, every other cell dimmed
      table.classList.add("focus");
      for (const cell of table.querySelectorAll("td")) {
        cell.classList.toggle("on", rows.includes(+cell.dataset.q) || cols.includes(+cell.dataset.k));
      }
      for (const th of table.querySelectorAll("th.row")) th.classList.toggle("on", rows.includes(+th.dataset.q));
      for (const th of table.querySelectorAll("th.col")) th.classList.toggle("on", cols.includes(+th.dataset.k));
    }

    function unlight() {
      table.classList.remove("focus");
      for (const node of table.querySelectorAll(".on")) node.classList.remove("on");
    }

    function point(event) {
      const target = event.target.closest("td, th.row, th.col");
      if (!target || !table.contains(target)) return;
      unlight();
      if (target.tagName === "TD") {
        const q = +target.dataset.q, k = +target.dataset.k, w = weights[q][k];
        const masked = mask[q][k] === "0";
        readout.textContent = `query: ${positionName(ex, kind, "query", q)} | key: ` +
          `${positionName(ex, kind, "key", k)} | weight ${exact(w)}` +
          (masked ? " | masked: the mask forbids this key" : "");
        table.querySelector(`th.row[data-q="${q}"]`).classList.add("on");
        table.querySelector(`th.col[data-k="${k}"]`).classList.add("on");
        return;
      }
      const self = SELF.has(kind.id);
      if (target.classList.contains("row")) {
        const q = +target.dataset.q;
        light([q], self ? [q] : []);
        const by = self && q < keys.length ? `; attended most by ${strongest(columnOf(q), "query")}` : "";
        readout.textContent = `${positionName(ex, kind, "query", q)} attends most to ` +
          `${strongest(rowOf(q), "key")}${by}`;
      } else {
        const k = +target.dataset.k;
        light(self ? [k] : [], [k]);
        const to = self && k < queries.length ? `; it attends most to ${strongest(rowOf(k), "key")}` : "";
        readout.textContent = `${positionName(ex, kind, "key", k)} is attended most by ` +
          `${strongest(columnOf(k), "query")}${to}`;
      }
    }

    table.onmouseover = point;
    table.onclick = point;                    // touch screens: a tap points
    table.onmouseleave = () => {
      unlight();
      readout.textContent = HINT;
    };
  }

  // ------------------------------------------------------------ the page around them
  function legend() {
    const bar = el("canvas", {width: 220, height: 14, id: "colour-bar"});
    const g = bar.getContext("2d");
    for (let x = 0; x < bar.width; x++) {
      g.fillStyle = colour(x / (bar.width - 1));
      g.fillRect(x, 0, 1, bar.height);
    }
    return el("div", {class: "legend"},
      el("div", {}, el("strong", {text: "attention weight (colour)"}),
         el("div", {class: "scale"}, bar, el("span", {text: "0"}), el("span", {text: "0.5"}),
            el("span", {text: "1 (above 1: as 1)"}))),
      el("div", {}, el("span", {class: "swatch masked"}),
         "masked: the mask forbids this key, so its weight must be 0 (not a learned 0; checked below)"),
      el("div", {}, el("span", {class: "swatch nan"}), "NaN: not a number"),
      el("div", {}, el("span", {class: "swatch wrong"}), "the first wrong answer position"));
  }

  function build() {
    const app = document.getElementById("app");
    const longest = Math.max(...data.examples.map((ex) => Math.max(ex.input.length, ex.answer.length)));
    const numbers = el("input", {type: "checkbox", id: "numbers"});
    numbers.checked = longest <= 24;
    numbers.addEventListener("change", () => {
      document.getElementById("matrix").classList.toggle("hide-numbers", !numbers.checked);
    });
    app.append(
      el("section", {id: "overview"}, el("h2", {id: "overview-title"}), el("div", {class: "grids", id: "grids"})),
      el("section", {id: "detail"},
         el("h2", {id: "detail-title"}), el("p", {class: "what", id: "detail-what"}),
         el("p", {id: "readout", "aria-live": "polite"}),
         el("div", {class: "controls"},
            el("label", {}, numbers, " show each weight in its cell (2 decimals; point at a cell for 4)")),
         el("div", {class: "view"}, el("div", {class: "x-axis", id: "x-axis"}),
            el("div", {class: "y-axis", id: "y-axis"}), el("div", {class: "scroll"}, el("table", {id: "matrix"}))),
         legend()));
    for (const row of document.querySelectorAll("#examples tbody tr")) {
      row.classList.add("choosable");
      row.tabIndex = 0;
      row.title = "show this example";
      const choose = () => go({example: +row.dataset.example});
      row.addEventListener("click", choose);
      row.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          choose();
        }
      });
    }
    document.getElementById("static").hidden = true;    // the tables for pages without scripts
    app.hidden = false;
  }

  function render() {
    const ex = data.examples[state.example];
    document.getElementById("overview-title").textContent =
      `Overview: every layer and head, example ${state.example + 1} (choose a map to see it large)`;
    overview(ex);
    detail(ex);
    for (const row of document.querySelectorAll("#examples tbody tr")) {
      row.classList.toggle("selected", +row.dataset.example === state.example);
    }
  }

  window.addEventListener("hashchange", () => {
    state = fromHash();
    render();
  });
  build();
  state = fromHash();
  render();
})();
