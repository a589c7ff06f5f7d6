"""The attention explorer: every head of a trained model, in one HTML page that works offline.

explore() runs a trained lesson 05 model in eval mode on a handful of test examples, chosen to
include right and wrong answers, and keeps every attention map of every layer and head: the
encoder's self-attention, the decoder's masked self-attention and the cross-attention, with the
mask each one used. page() turns that into one self-contained HTML file: the weights rounded to
4 decimals as JSON, the script and the style inline, and a Content-Security-Policy that lets the
page load nothing at all. It opens from a disk with no network, and the same run writes the same
bytes. With scripts blocked it still shows the first example's cross-attention as tables.

    found = explore(model, test.src, test.tgt_out, greedy_tokens)    # greedy_tokens (B, L)
    write_page(out_dir / "attention_explorer.html", found, "Lesson 05: ...", "reverse, 16 digits ...")

The decoder reads the model's own greedy answer (BOS first), as it did when it decoded: up to and
including the first wrong position that is the same as reading the expected answer. The page's
script and style are explorer.js and explorer.css beside this file, read when a page is written.
"""
import base64
import hashlib
import html
import json
import math
from pathlib import Path

import torch

import common
from common import claims
from common.console import fmt
from lesson05_plumbing import lesson

PAGE_NAME = "attention_explorer.html"
FORMAT = "attention-explorer-v1"
EXAMPLES = 6                 # test examples on a page: the first wrong ones (at most half), then right ones
DECIMALS = 4                 # the weights as the page stores and shows them
MAX_WEIGHTS = 250_000        # numbers on one page (about 1.5 MB): a bigger model gets fewer examples
ASSETS = Path(__file__).resolve().parent

# id, title, what it shows, query tokens, key tokens, query axis, key axis
KINDS = (
    ("encoder_self", "Encoder self-attention", "each input position attends to the input",
     "input", "input", "query: input position (token)", "key: input position (token)"),
    ("decoder_self", "Decoder self-attention (masked)", "each answer position attends to the answer so far",
     "answer", "reads", "query: answer position (the token it writes)",
     "key: decoder input position (the token it reads)"),
    ("cross", "Cross-attention", "each answer position attends to the input",
     "answer", "input", "query: answer position (the token it writes)", "key: input position (token)"),
)


# ---------------------------------------------------------------- the data: examples and their maps
def token_text(token: int, L) -> str:
    """A token as the lesson prints it: digits as digits, PAD '.', BOS and EOS by name."""
    names = {L.BOS: "BOS", L.EOS: "EOS", L.PAD: "."}       # PAD last: a start token equal to PAD shows '.'
    return names.get(token, str(token - L.FIRST_DIGIT))


def until_eos(row, L) -> list:
    """A decoded or expected row as a token list up to and including its EOS (trailing PAD dropped)."""
    items = row.tolist()
    if L.EOS in items:
        return items[:items.index(L.EOS) + 1]
    while items and items[-1] == L.PAD:
        items.pop()
    return items


def first_wrong(answer: list, expected: list):
    """The first answer position where the answer differs from the expected one (None: it is right)."""
    for k in range(max(len(answer), len(expected))):
        if k >= len(answer) or k >= len(expected) or answer[k] != expected[k]:
            return k
    return None


def choose(right: list, n: int) -> list:
    """Indices of up to n examples, in test-set order: the first wrong answers (at most half of n
    while there are right ones), then the first right ones."""
    rights = [i for i, ok in enumerate(right) if ok]
    wrongs = [i for i, ok in enumerate(right) if not ok]
    n_wrong = min(len(wrongs), max(n // 2, n - len(rights)))
    return sorted(wrongs[:n_wrong] + rights[:n - n_wrong])


def allowed(mask, n_heads: int, T_q: int, T_k: int):
    """(T_q, T_k) boolean, True = may attend, for a batch of one, broadcast as MultiHeadAttention does."""
    if mask is None:
        return torch.ones(T_q, T_k, dtype=torch.bool)
    mask = mask.unsqueeze(1) if mask.dim() == 3 else mask          # (B, 1, T_k) -> (B, 1, 1, T_k)
    return torch.broadcast_to(mask.cpu(), (1, n_heads, T_q, T_k))[0, 0]


@torch.no_grad()
def example_maps(model, src_row, answer: list, L):
    """Every attention map of one example: {kind: (weights (n_layers, n_heads, T_q, T_k), mask (T_q, T_k))}.

    src_row keeps its PAD (the padding mask shows); the decoder reads BOS and the model's own answer.
    The masks are the lesson's own functions, so a changed mask is what the page shows as masked.
    """
    device = next(model.parameters()).device
    src = src_row[None].to(device)                                          # (1, T_src)
    tgt_in = torch.tensor([[L.BOS] + answer[:-1]], device=device)          # (1, T_tgt)
    weights = model.attention_weights(src, tgt_in)
    masks = {"encoder_self": L.padding_mask(src), "decoder_self": L.decoder_mask(tgt_in),
             "cross": L.padding_mask(src)}
    maps, T_src, T_tgt = {}, src.size(1), tgt_in.size(1)
    for kind, *_ in KINDS:
        w = torch.stack([layer[0] for layer in weights[kind]]).double().cpu()   # (n_layers, n_heads, T_q, T_k)
        shape = {"encoder_self": (T_src, T_src), "decoder_self": (T_tgt, T_tgt), "cross": (T_tgt, T_src)}[kind]
        if tuple(w.shape[-2:]) != shape:     # an edited model whose attention reads other tokens
            raise ValueError(f"its {kind} maps are {tuple(w.shape[-2:])}, where lesson 05's are {shape}")
        maps[kind] = (w, allowed(masks[kind], w.size(1), w.size(2), w.size(3)))
    return tgt_in[0].tolist(), maps


def rounded(w) -> list:
    """Weights rounded to DECIMALS as nested lists; NaN and infinities become None (JSON null)."""
    scale = 10 ** DECIMALS
    values = (torch.round(w * scale) / scale).tolist()
    if bool(torch.isfinite(w).all()):
        return values

    def clean(v):
        return [clean(x) for x in v] if isinstance(v, list) else (v if math.isfinite(v) else None)
    return clean(values)


def explore(model, src, expected, answers, n_examples: int = EXAMPLES, hints: bool = True) -> dict:
    """Pick examples from a test set and keep every attention map of each, with the page's claims.

    src (B, T_src) test inputs; expected (B, T_tgt) their tgt_out; answers (B, L) the model's greedy
    answers (answer, EOS, PAD). Returns plain data for page() plus "claims" (common.claims.Claim).
    hints=False leaves out where to look when a claim does not hold (the mystery models' pages).
    """
    L = lesson()
    expected_rows = [until_eos(row, L) for row in expected]
    answer_rows = [until_eos(row, L) for row in answers]
    right = [a == e for a, e in zip(answer_rows, expected_rows)]
    n_layers, n_heads = len(model.decoder.layers), model.config["n_heads"]
    T_src, T_tgt = src.size(1), max(len(a) for a in answer_rows)
    per_example = n_layers * n_heads * (T_src * T_src + T_tgt * T_tgt + T_tgt * T_src)
    n_examples = max(1, min(n_examples, MAX_WEIGHTS // per_example))
    was_training = model.training
    model.eval()                                            # attention as used to answer: no dropout
    try:
        picked = [(i, *example_maps(model, src[i], answer_rows[i], L)) for i in choose(right, n_examples)]
    finally:
        model.train(was_training)
    def text(tokens):
        return [token_text(t, L) for t in tokens]

    examples = []
    for i, reads, maps in picked:
        examples.append({
            "test_index": i, "input": text(src[i].tolist()), "expected": text(expected_rows[i]),
            "answer": text(answer_rows[i]), "reads": text(reads), "right": right[i],
            "first_wrong": first_wrong(answer_rows[i], expected_rows[i]),
            "masks": {kind: ["".join("1" if a else "0" for a in row) for row in mask.tolist()]
                      for kind, (_, mask) in maps.items()},
            "weights": {kind: rounded(w) for kind, (w, _) in maps.items()}})
    return {"format": FORMAT, "layers": n_layers, "heads": n_heads, "test_right": sum(right),
            "test_total": len(right), "examples": examples,
            "kinds": [dict(zip(("id", "title", "what", "queries", "keys", "query_axis", "key_axis"), k))
                      for k in KINDS],
            "claims": page_claims([maps for _, _, maps in picked], hints)}


def page_claims(all_maps, hints: bool = True) -> list:
    """The properties the page states, measured on the unrounded weights of every map it shows."""
    row_error, on_masked, n_masked, ahead = 0.0, 0.0, 0, 0.0
    for maps in all_maps:
        for kind, (w, mask) in maps.items():
            row_error = max(row_error, float((w.sum(-1) - 1).abs().max()))   # NaN stays NaN: never below
            blocked = ~mask
            n_masked += int(blocked.sum()) * w.size(0) * w.size(1)
            if bool(blocked.any()):
                on_masked = max(on_masked, float(w.abs()[..., blocked].max()))
            if kind == "decoder_self":
                later = torch.ones_like(mask).triu(1)                         # key after the query
                if bool(later.any()):
                    ahead = max(ahead, float(w.abs()[..., later].max()))
    where = (("a softmax over the wrong axis, dropout left on in eval mode, or a row with nothing to attend "
              "to changes the row sums"),
             "the attention computes its weights without applying the mask it is given",
             "the decoder's causal mask is missing or flipped") if hints else ("", "", "")
    return [
        claims.below("explorer-rows-sum-to-1", "Every row of every map on this page sums to 1 (a softmax over "
                     f"the keys): before the weights are rounded to {DECIMALS} decimals for this page, the largest "
                     f"difference from 1 is {fmt(row_error)}.", row_error, 1e-4,
                     hint=where[0]),
        claims.below("explorer-masked-get-nothing", f"The {n_masked} masked cells (hatched) get no weight: the "
                     f"largest weight on one is {fmt(on_masked)}.", on_masked, 1e-6, hint=where[1]),
        claims.below("explorer-decoder-causal", "In the decoder's self-attention no answer position looks "
                     f"ahead: the largest weight above the diagonal (on a later position) is {fmt(ahead)}.",
                     ahead, 1e-6, hint=where[2]),
    ]


# ---------------------------------------------------------------- the page
def asset(name: str) -> str:
    return (ASSETS / name).read_text(encoding="utf-8")


def csp_hash(text: str) -> str:
    """The Content-Security-Policy source that allows exactly this inline script or style."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


def script_json(data) -> str:
    """JSON that can sit inside a <script> element: '<', '>' and '&' escaped, so that no '</script>'
    or '<!--' in a string can end or change the element; the same data give the same text."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def e(text) -> str:
    return html.escape(str(text), quote=True)


def colour_class(w) -> str:
    """The CSS class of a weight's colour in the static tables: c0 (0) .. c10 (1), 'nan' for no number."""
    return "nan" if w is None else f"c{min(10, max(0, round(w * 10)))}"


def tokens_html(tokens, marked=None) -> str:
    return " ".join(f'<mark class="wrong">{e(t)}</mark>' if i == marked else e(t) for i, t in enumerate(tokens))


def examples_table(found) -> str:
    rows = []
    for n, ex in enumerate(found["examples"]):
        k = ex["first_wrong"]
        verdict = "right" if ex["right"] else f"wrong from answer position {k}"
        shown_input = list(ex["input"])
        while shown_input and shown_input[-1] == ".":
            shown_input.pop()
        rows.append(f'<tr data-example="{n}"><th scope="row">{n + 1}</th><td>{ex["test_index"]}</td>'
                    f'<td class="tokens">{tokens_html(shown_input)}</td>'
                    f'<td class="tokens">{tokens_html(ex["expected"])}</td>'
                    f'<td class="tokens">{tokens_html(ex["answer"], k)}</td>'
                    f'<td class="{"right" if ex["right"] else "wrong"}">{e(verdict)}</td></tr>')
    return ('<table id="examples"><caption>The test examples on this page (positions count from 0; '
            'a marked token is the first wrong one)</caption><thead><tr><th scope="col">example</th>'
            '<th scope="col">test input no.</th><th scope="col">input</th><th scope="col">expected answer</th>'
            '<th scope="col">the model\'s answer (greedy)</th><th scope="col">verdict</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def static_maps(found) -> str:
    """The first example's cross-attention in layer 1, one table per head: what shows without scripts."""
    ex = found["examples"][0]
    mask, queries, keys = ex["masks"]["cross"], ex["answer"], ex["input"]
    tables = []
    for head, w in enumerate(ex["weights"]["cross"][0]):
        head_row = "".join(f'<th scope="col">{e(t)}<small>{k}</small></th>' for k, t in enumerate(keys))
        body = []
        for q, row in enumerate(w):
            cells = []
            for k, v in enumerate(row):
                shown, exact = ("NaN", "NaN") if v is None else (f"{v:.2f}", f"{v:.{DECIMALS}f}")
                masked = mask[q][k] == "0"
                cells.append(f'<td class="{"masked" if masked else colour_class(v)}" title="query {q} '
                             f'({e(queries[q])}), key {k} ({e(keys[k])}): {exact}{" (masked)" if masked else ""}">'
                             f'{shown}</td>')
            body.append(f'<tr><th scope="row">{e(queries[q])}<small>{q}</small></th>{"".join(cells)}</tr>')
        tables.append(f'<table class="static-map"><caption>Cross-attention, layer 1, head {head + 1} (rows: '
                      'query: answer position, the token it writes; columns: key: input position)</caption>'
                      f'<thead><tr><th></th>{head_row}</tr></thead><tbody>{"".join(body)}</tbody></table>')
    return (f'<section id="static"><h2>Example 1, cross-attention, layer 1 (a table per head)</h2>'
            f'<p>Each cell is a weight rounded to 2 decimals (point at it for 4); a hatched cell is masked. '
            f'Dark is 0, yellow is 1.</p>{"".join(tables)}</section>')


def claims_html(found) -> str:
    items = "".join(f'<li class="{"holds" if c.holds else "broken"}">{e(c)}</li>' for c in found["claims"])
    return (f'<section id="claims"><h2>What holds on this page (checked when it was written)</h2>'
            f'<ul>{items}</ul></section>')


HOW_TO_READ = """<section id="how"><h2>How to read it</h2><ul>
<li>A map has one row per query (the position that looks) and one column per key (the position it
looks at); a row holds that query's weights, the output of a softmax over the keys.</li>
<li>The weights are the model's own, computed in eval mode (no dropout) and rounded to 4 decimals.
The decoder reads BOS and then the model's own greedy answer, as it did when it answered: up to and
including the first wrong position, that is exactly what it reads with the expected answer.</li>
<li>A hatched grey cell is masked: the mask forbids that key, so its weight must be 0 by
construction, not by learning (the checks above say whether it is). Lesson 05 masks the later
positions in the decoder's self-attention and the PAD keys ('.'); the hatching shows the masks this
run used.</li>
<li>Choose an example in the table, then a small map in the overview to see it large. Point at a
cell for its query, key and weight; point at a token for what it attends to and what attends to
it. The address of the page (after #) keeps the view: copy it to link to it, reload to return.</li>
</ul></section>"""

NOSCRIPT = """<noscript><p class="why">Scripts are off, so this page shows only example 1's
cross-attention in layer 1, as tables. The overview of every layer and head, choosing an example,
pointing at cells and tokens, and the address that keeps a view all need the page's own script,
which is inside this file: it loads nothing from anywhere. Allow scripts for this file to see the
rest.</p></noscript>"""


def page(found, title: str, subtitle: str = "") -> bytes:
    """The self-contained HTML page (UTF-8 bytes) for the data of explore()."""
    script, style = asset("explorer.js"), asset("explorer.css")
    csp = (f"default-src 'none'; script-src {csp_hash(script)}; style-src {csp_hash(style)}; "
           "base-uri 'none'; form-action 'none'")
    data = {k: v for k, v in found.items() if k != "claims"}
    wrong = sum(not ex["right"] for ex in found["examples"])
    summary = (f'Every attention weight of every layer ({found["layers"]}) and head ({found["heads"]}), for '
               f'{len(found["examples"])} test examples ({wrong} of them answered wrong). On the whole test set '
               f'the model answered {found["test_right"]} of {found["test_total"]} right (greedy decoding).')
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">',
        '<meta name="referrer" content="no-referrer">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title>", f"<style>{style}</style>", "</head>", "<body>",
        f'<header><h1>{e(title)}</h1><p class="subtitle">{e(subtitle)}</p><p>{e(summary)}</p></header>',
        NOSCRIPT, examples_table(found), '<main id="app" hidden></main>', static_maps(found),
        claims_html(found), HOW_TO_READ,
        f'<script type="application/json" id="explorer-data">{script_json(data)}</script>',
        f"<script>{script}</script>", "</body>", "</html>", ""]
    return "\n".join(parts).encode("utf-8")


def write_page(path, found, title: str, subtitle: str = "") -> Path:
    """Write the page atomically (common.files.write_bytes) and say where; returns the path."""
    path = common.write_bytes(path, page(found, title, subtitle))
    wrong = sum(not ex["right"] for ex in found["examples"])
    print(f"  saved page: {path} (every attention map of {len(found['examples'])} test examples, {wrong} "
          "answered wrong: open it in a browser)")
    return path


# ---------------------------------------------------------------- lesson 05's page
def lesson_page(args, config, model, test, greedy_tokens):
    """attention_explorer.html in --out-dir for lesson 05's trained model (nothing with --no-explorer).
    A property the page states that does not hold is printed too."""
    if getattr(args, "no_explorer", False):
        return None
    try:
        found = explore(model, test.src, test.tgt_out, greedy_tokens)
    except ValueError as exc:                 # the page would label the wrong tokens: say so, write none
        print(f"  {PAGE_NAME} not written: {exc}")
        return None
    path = write_page(Path(args.out_dir) / PAGE_NAME, found, *lesson_titles(config))
    for claim in found["claims"]:
        if not claim:
            claim.say()
    return path


def lesson_titles(config):
    """(title, subtitle) of lesson 05's page: what was trained."""
    layers = f"{config.n_layers} encoder and {config.n_layers} decoder block{'s' if config.n_layers > 1 else ''}"
    lengths = (f"{config.resolved_min_len()}-{config.seq_len}" if config.resolved_min_len() < config.seq_len
               else f"{config.seq_len}")
    return ("Lesson 05: the attention of the trained model",
            f"Task: {config.task}, inputs of {lengths} digits; d_model {config.d_model}, {config.n_heads} heads, "
            f"{layers}; seed {config.seed}.")
