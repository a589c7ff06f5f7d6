"""The attention explorer (lesson05_plumbing/explorer.py): the page's content, without a browser.

1. Lesson 05 writes attention_explorer.html beside its PNGs; --no-explorer skips it.
2. The numbers on the page are the saved model's attention weights (eval mode, 4 decimals), with
   the masks the lesson used, for examples that include right and wrong answers.
3. The page loads nothing (a Content-Security-Policy whose hashes match its inline script and
   style; no URL anywhere), escapes every piece of text, and the same run writes the same bytes.
4. The properties the page states are claims: a bug breaks the one it should.
5. The mystery models get a page each, computed with their bug applied, that does not name it.
(tests/test_explorer_browser.py loads the page in Chromium.)
"""
import base64
import hashlib
import json
import re

import pytest
import torch

from challenges import bugs, diagnose, variants
from common import claims, load_lesson
from lesson05_plumbing import checkpoints as C
from lesson05_plumbing import explorer

L5 = load_lesson(5)
# Lesson 05, trained briefly: 2 layers (the overview has more than one row), inputs of 3-6 digits
# (PAD keys to mask), stopped early so that some test answers are right and some wrong.
LESSON_FLAGS = ["--quick", "--layers", "2", "--heads", "2", "--min-len", "3", "--steps", "70", "--beam-size", "1"]
_run = {}


def lesson_run(tmp_path_factory):
    """(out_dir, page data, config) of one lesson 05 run, shared by this file and the browser tests."""
    if not _run:
        out = tmp_path_factory.mktemp("explorer")
        L5.main([*LESSON_FLAGS, "--out-dir", str(out)])
        config = L5.TrainConfig(**C.read_checkpoint(out / C.CHECKPOINT_NAME)["config"])
        _run.update(out=out, data=page_data((out / explorer.PAGE_NAME).read_text(encoding="utf-8")),
                    config=config)
    return _run["out"], _run["data"], _run["config"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return lesson_run(tmp_path_factory)


def page_data(text: str) -> dict:
    """The JSON embedded in a page."""
    return json.loads(re.search(r'<script type="application/json" id="explorer-data">(.*?)</script>', text,
                                re.S).group(1))


@torch.no_grad()
def expected_maps(model, config, test_index):
    """What the page must show for one test example, computed here: the model's greedy answer, then
    its attention weights (eval mode) with the decoder reading BOS and that answer."""
    _, test = L5.heldout_sets(config)
    model.eval()
    src = test.src[test_index:test_index + 1]
    answer = L5.greedy_decode(model, src, L5.output_len(config.task, config.seq_len, config.n_digits) + 1)[0]
    answer = answer.tolist()
    answer = answer[:answer.index(L5.EOS) + 1] if L5.EOS in answer else [t for t in answer if t != L5.PAD]
    tgt_in = torch.tensor([[L5.BOS] + answer[:-1]])
    weights = model.attention_weights(src, tgt_in)
    return answer, {kind: torch.stack([w[0] for w in weights[kind]]) for kind in ("encoder_self", "decoder_self",
                                                                                  "cross")}


# %% 1. The lesson writes it
def test_lesson_05_writes_the_page_beside_its_pngs(run):
    out, data, config = run
    page = out / explorer.PAGE_NAME
    assert page.stat().st_size < 2_000_000
    assert (out / "transformer_attention_patterns.png").exists() and (out / C.CHECKPOINT_NAME).exists()
    assert data["format"] == explorer.FORMAT and data["layers"] == 2 and data["heads"] == 2
    assert len(data["examples"]) == explorer.EXAMPLES
    assert not list(out.glob(".*.tmp"))                                     # written atomically


def test_no_explorer_writes_no_page(tmp_path):
    L5.main(["--quick", "--steps", "2", "--eval-every", "1", "--beam-size", "1", "--no-explorer",
             "--out-dir", str(tmp_path)])
    assert (tmp_path / C.CHECKPOINT_NAME).exists() and not (tmp_path / explorer.PAGE_NAME).exists()


# %% 2. The page's numbers are the model's
def test_every_weight_on_the_page_is_the_saved_models(run):
    out, data, config = run
    model = L5.load_checkpoint(out / C.CHECKPOINT_NAME)
    for ex in data["examples"]:
        answer, maps = expected_maps(model, config, ex["test_index"])
        assert ex["answer"] == [explorer.token_text(t, L5) for t in answer]
        assert ex["reads"][0] == "BOS" and ex["reads"][1:] == ex["answer"][:-1]
        for kind, w in maps.items():
            shown = torch.tensor(ex["weights"][kind], dtype=torch.float64)   # (n_layers, n_heads, T_q, T_k)
            assert shown.shape == w.shape, kind
            torch.testing.assert_close(shown, w.double(), atol=0.5e-4 + 1e-7, rtol=0)


def test_masks_are_the_lessons_causal_and_padding_masks(run):
    _, data, _ = run
    padded = 0
    for ex in data["examples"]:
        T = len(ex["answer"])
        assert ex["masks"]["decoder_self"] == ["1" * (q + 1) + "0" * (T - q - 1) for q in range(T)]
        keys = "".join("0" if t == "." else "1" for t in ex["input"])         # PAD keys: masked
        assert ex["masks"]["encoder_self"] == [keys] * len(ex["input"])
        assert ex["masks"]["cross"] == [keys] * T
        padded += "0" in keys
    assert padded                                                           # some example has PAD


def test_examples_include_right_and_wrong_answers_and_mark_the_first_wrong_position(run):
    _, data, _ = run
    right = [ex for ex in data["examples"] if ex["right"]]
    wrong = [ex for ex in data["examples"] if not ex["right"]]
    assert right and wrong and 0 < data["test_right"] < data["test_total"]
    for ex in right:
        assert ex["answer"] == ex["expected"] and ex["first_wrong"] is None
    for ex in wrong:
        k = ex["first_wrong"]
        assert ex["answer"][:k] == ex["expected"][:k] and ex["answer"][k:k + 1] != ex["expected"][k:k + 1]
    indices = [ex["test_index"] for ex in data["examples"]]
    assert indices == sorted(indices)


def test_choose_keeps_at_most_half_wrong_while_there_are_right_answers():
    assert explorer.choose([True, False, False, False, False, True, True, True], 4) == [0, 1, 2, 5]
    assert explorer.choose([False] * 5 + [True], 4) == [0, 1, 2, 5]          # one right: three wrong
    assert explorer.choose([True] * 3, 6) == [0, 1, 2]
    assert explorer.first_wrong([5, 6, 2], [5, 6, 2]) is None
    assert explorer.first_wrong([5, 2], [5, 6, 2]) == 1                      # EOS too early
    assert explorer.first_wrong([5, 6, 7, 2], [5, 6, 2]) == 2                # a digit where EOS belongs


# %% 3. Offline, escaped, deterministic
def test_the_page_may_load_nothing_and_names_no_url(run):
    out, _, _ = run
    text = (out / explorer.PAGE_NAME).read_text(encoding="utf-8")
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">', text).group(1)
    policy = dict(part.strip().split(" ", 1) for part in csp.split(";"))
    assert policy["default-src"] == "'none'" and policy["base-uri"] == "'none'"
    scripts = re.findall(r"<script>(.*?)</script>", text, re.S)
    styles = re.findall(r"<style>(.*?)</style>", text, re.S)
    assert len(scripts) == 1 and len(styles) == 1
    for source, inline in (("script-src", scripts[0]), ("style-src", styles[0])):
        digest = base64.b64encode(hashlib.sha256(inline.encode("utf-8")).digest()).decode()
        assert policy[source] == f"'sha256-{digest}'"                       # exactly this script, this style
    assert not re.search(r"\s(src|href|action|formaction|srcset|poster)\s*=", text)
    assert not re.search(r"https?:|url\(|@import|<iframe|<link|<img|fetch\(|XMLHttpRequest|import\(", text)
    assert not re.search(r'\sstyle="', text)                                # inline style attributes: blocked


def test_json_and_text_cannot_escape_their_places():
    hostile = '</script><script>alert("x")</script><!-- & </SCRIPT'
    text = explorer.script_json({"token": hostile})
    assert "<" not in text and ">" not in text and "&" not in text and json.loads(text) == {"token": hostile}
    found = {"layers": 1, "heads": 1, "test_right": 0, "test_total": 1, "claims": [], "format": explorer.FORMAT,
             "kinds": [], "examples": [{
                 "test_index": 0, "input": [hostile, "."], "expected": [hostile], "answer": [hostile],
                 "reads": ["BOS"], "right": False, "first_wrong": 0,
                 "masks": {"cross": ["10"]}, "weights": {"cross": [[[[0.5, 0.5]]]]}}]}
    page = explorer.page(found, title=hostile, subtitle=hostile).decode("utf-8")
    assert "<script>alert" not in page and "<!-- &" not in page
    assert page.count("</script>") == 2                                     # the data's and the script's
    assert page_data(page)["examples"][0]["input"][0] == hostile


def test_the_same_model_gives_the_same_bytes(run):
    out, _, config = run
    model = L5.load_checkpoint(out / C.CHECKPOINT_NAME)
    _, test = L5.heldout_sets(config)
    answers = L5.decode(model, test.src, L5.output_len(config.task, config.seq_len, config.n_digits) + 1)
    titles = explorer.lesson_titles(config)
    pages = [explorer.page(explorer.explore(model, test.src, test.tgt_out, answers), *titles) for _ in range(2)]
    assert pages[0] == pages[1] == (out / explorer.PAGE_NAME).read_bytes()  # the lesson's page, from its checkpoint


def test_the_default_runs_page_stays_under_2_mb_and_bigger_models_get_fewer_examples():
    def page_of(**changes):
        config = L5.TrainConfig(**changes)
        torch.manual_seed(0)
        model = L5.Seq2SeqTransformer(**config.model_config())              # untrained: no weight rounds to 0
        _, test = L5.heldout_sets(config)
        answers = test.tgt_out.clone()
        answers[:3, 0] = L5.EOS                                              # three wrong answers
        found = explorer.explore(model, test.src, test.tgt_out, answers)
        return found, explorer.page(found, "t")

    found, page = page_of()                                                 # lesson 05's defaults
    assert len(found["examples"]) == explorer.EXAMPLES and len(page) < 2_000_000
    found, page = page_of(seq_len=32, n_layers=4, n_heads=8, d_model=64, test_size=20, val_size=20)
    assert len(found["examples"]) == 2 and len(page) < 2_000_000


# %% 4. The page's claims
def broken_on_page(variant, **kwargs):
    """The page claims an untrained model with `variant` applied breaks (and the page's text)."""
    config = L5.TrainConfig(seq_len=5, min_len=3, val_size=20, test_size=20)
    with variants.applied(variant):
        _, test = L5.heldout_sets(config)
        model = variants.build(variant, config)
        answers = L5.greedy_decode(model, test.src, 6)
        found = explorer.explore(model, test.src, test.tgt_out, answers, **kwargs)
    return claims.broken(found["claims"]), explorer.page(found, "t").decode("utf-8")


def test_claims_hold_for_the_lesson_and_each_bug_breaks_its_own(run):
    out, _, _ = run
    text = (out / explorer.PAGE_NAME).read_text(encoding="utf-8")
    assert "DOES NOT HOLD" not in text and "sums to 1" in text and "no answer position looks ahead" in text
    assert broken_on_page(bugs.REFERENCE)[0] == []
    flipped = broken_on_page(bugs.CATALOGUE["flipped_mask"].variant)[0]      # (its last row has no key: sum 0)
    assert "explorer-decoder-causal" in flipped and "explorer-masked-get-nothing" not in flipped
    assert broken_on_page(bugs.CATALOGUE["softmax_wrong_axis"].variant)[0][0] == "explorer-rows-sum-to-1"
    original = load_lesson(2).scaled_dot_product_attention

    def ignores_the_mask(query, key, value, mask=None, *args, **kwargs):
        return original(query, key, value, None, *args, **kwargs)

    blind = variants.Variant("blind", patches=((2, "scaled_dot_product_attention", ignores_the_mask),))
    broken, page = broken_on_page(blind)
    assert "explorer-masked-get-nothing" in broken and "DOES NOT HOLD: The" in page
    assert "without applying the mask" in page                             # where to look
    assert "without applying the mask" not in broken_on_page(blind, hints=False)[1]


# %% 5. The mystery models
def test_each_mystery_model_gets_a_page_with_its_bug_applied_that_does_not_name_it(tmp_path, monkeypatch):
    monkeypatch.setattr(diagnose, "plot_model", lambda label, *args, **kwargs: f"mystery_{label}.png")  # (tested there)
    base = L5.TrainConfig(**{**diagnose.GAME, **diagnose.QUICK, "steps": 10, "eval_every": 10,
                             "val_size": 40, "test_size": 40})
    labels = {diagnose.REFERENCE: bugs.REFERENCE, "A": bugs.CATALOGUE["flipped_mask"].variant}
    state = {"models": {}, "interrupted": False}
    saved = []
    assert diagnose.section_2_train(labels, base, "cpu", state, lambda: saved.append(json.dumps(state)), tmp_path)
    for label in labels:
        page = (tmp_path / f"mystery_{label}.html").read_text(encoding="utf-8")
        assert state["models"][label]["page"] == f"mystery_{label}.html"
        assert "flipped" not in page and "causal mask is" not in page       # no bug names, no hints
        masks = [ex["masks"]["decoder_self"] for ex in page_data(page)["examples"]]
        looks_ahead = any(row[q + 1:].count("1") for m in masks for q, row in enumerate(m))
        assert looks_ahead == (label == "A")                                 # the mask the model used
    assert '"explorer"' not in saved[-1]                                    # not in mystery_models.json
