"""The course's blocks against Hugging Face's BERT, LLaMA and Mistral (python -m challenges.real_models).

Each model is built once per test session from a transformers config with random weights (nothing is
downloaded), its weights copied into the course's assembly; the tests assert the numbers: equal within
1e-5 in float32 over the real positions of a padded batch. Then the pieces against transformers' own
(RoPE's rotation, the sliding-window mask), the mask conventions measured by running each, and the
command: its json, Ctrl-C, one-line errors.
"""
import json
import sys

import pytest
import torch

from breakit import Edit, edited_lessons
from challenges import components, real_models
from common import claims


@pytest.fixture(scope="session")
def tf():
    return real_models.import_transformers()          # imported once: it costs seconds


@pytest.fixture(scope="session")
def comparisons(tf):
    torch.manual_seed(0)
    return {c.name: c for c in (build(tf) for build in real_models.COMPARISONS)}


NAMES = ["BertLayer", "LlamaDecoderLayer", "MistralDecoderLayer", "LlamaModel"]


@pytest.mark.parametrize("name", NAMES)
def test_the_course_assembly_equals_the_hugging_face_module_in_float32(comparisons, name):
    c = comparisons[name]
    real, _ = real_models.largest_differences(c, torch.float32)
    assert real < 1e-5, (name, real)
    x, keep = real_models.batch(real_models.D_MODEL, real_models.VOCAB_SIZE if c.tokens else None)
    with torch.no_grad():
        out = c.run_theirs(c.theirs, x if c.tokens else x.float(), keep.long())
    assert out.shape == (*keep.shape, real_models.D_MODEL) and out[keep].std() > 0.1      # not a trivial output


@pytest.mark.parametrize("name", NAMES)
def test_float64_bert_to_rounding_and_the_llama_family_to_hugging_faces_float32_steps(comparisons, name):
    real, _ = real_models.largest_differences(comparisons[name], torch.float64)
    assert real < (1e-12 if name == "BertLayer" else 1e-5), (name, real)


def test_one_wrong_weight_or_the_lesson_04_defaults_break_the_equality(comparisons, tf):
    c = comparisons["LlamaDecoderLayer"]
    broken = real_models.Comparison(**{**vars(c), "ours": real_models.copy.deepcopy(c.ours)})
    with torch.no_grad():
        broken.ours.feed_forward.W_up.weight[0, 0] += 0.5
    assert real_models.largest_differences(broken, torch.float32)[0] > 1e-3
    as_is = real_models.compare_llama_layer(tf, reorder=False)              # W_q, W_k copied without reordering
    assert real_models.largest_differences(as_is, torch.float32)[0] > 1e-2
    bert = comparisons["BertLayer"]
    relu = real_models.copy.deepcopy(bert.ours)
    relu.feed_forward.activation = torch.nn.ReLU()                          # lesson 04's own activation
    assert real_models.largest_differences(real_models.Comparison(**{**vars(bert), "ours": relu}),
                                           torch.float32)[0] > 1e-3


def test_the_mapping_names_every_weight_once_and_a_gap_or_a_shape_mismatch_is_an_error(comparisons):
    c = comparisons["LlamaModel"]
    hf_names = {f"{r.hf}.{n}" for r in c.mapping for n, _ in c.theirs.get_submodule(r.hf).named_parameters()}
    assert hf_names == {n for n, _ in c.theirs.named_parameters()}
    with pytest.raises(ValueError, match="leaves out"):
        real_models.copy_weights(c.ours, c.theirs, c.mapping[:-1])
    swapped = [real_models.Rename("stack.layers.0.feed_forward.W_up", "layers.0.self_attn.q_proj")]
    with pytest.raises(ValueError, match="cannot hold"):
        real_models.copy_weights(c.ours, c.theirs, swapped)


def test_rope_halves_is_llamas_rotation(tf):
    from transformers.models.llama import modeling_llama as llama
    config = tf.LlamaConfig(hidden_size=32, num_attention_heads=4)
    q, k = torch.randn(2, 4, 7, 8), torch.randn(2, 4, 7, 8)                  # (B, n_heads, T, d_head)
    positions = torch.arange(7)
    cos, sin = llama.LlamaRotaryEmbedding(config)(q, positions[None])
    theirs_q, theirs_k = llama.apply_rotary_pos_emb(q, k, cos, sin)
    torch.testing.assert_close(components.apply_rope_halves(q, positions), theirs_q, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(components.apply_rope_halves(k, positions), theirs_k, atol=1e-6, rtol=1e-5)


def test_the_sliding_window_and_causal_masks_are_transformers_own(tf):
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
    x, keep = torch.randn(2, 8, 16), torch.arange(8)[None] < torch.tensor([[8], [3]])
    positions = torch.arange(8)[None]
    for window in (1, 3, 8):
        config = tf.MistralConfig(hidden_size=16, num_attention_heads=2, sliding_window=window,
                                  attn_implementation="eager")
        theirs = create_sliding_window_causal_mask(config, x, keep.long(), None, positions)   # (B, 1, T, T)
        assert torch.equal(theirs[:, 0] == 0, components.decoder_only_mask(8, keep, window)), window
    config = tf.LlamaConfig(hidden_size=16, num_attention_heads=2, attn_implementation="eager")
    theirs = create_causal_mask(config, x, keep.long(), None, positions)
    assert torch.equal(theirs[:, 0] == 0, components.decoder_only_mask(8, keep))


def test_the_mask_conventions_measured_by_running_each(tf):
    v = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    runs, (eager, sdpa) = real_models.conventions(tf)
    found = [(name, *real_models.measure_convention(run, v)) for name, run in runs]
    uniform = "uniform weights (the mean of all values)"
    assert found == [("course: lesson 01's mask (bool)", "may attend", "output 0"),
                     ("F.scaled_dot_product_attention attn_mask (bool)", "may attend", "output 0"),
                     ("nn.MultiheadAttention attn_mask (bool)", "blocked", "NaN"),
                     ("nn.MultiheadAttention attn_mask, need_weights=False", "blocked", "output 0"),
                     ("nn.MultiheadAttention key_padding_mask (bool)", "blocked", "NaN"),
                     ("nn.MultiheadAttention key_padding_mask, need_weights=False", "blocked", "output 0"),
                     ("HF attention_mask (0/1), eager attention", "may attend", uniform),
                     ("HF attention_mask (0/1), sdpa attention", "may attend", "output 0")]
    _, inner = eager(v, torch.tensor([True, False, False]))
    lowest = torch.finfo(torch.float32).min
    assert inner.dtype == torch.float32 and inner[0, 0, 0].tolist() == [0.0, lowest, lowest]   # added to the scores
    _, inner = sdpa(v, torch.tensor([True, False, False]))
    assert inner.dtype == torch.bool and inner[0, 0, 0].tolist() == [True, False, False]


def test_measure_convention_tells_the_outcomes_apart():
    v = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    assert real_models.measure_convention(lambda v, m: v[m].mean(0) if m.any() else v.mean(0), v) == \
        ("may attend", "uniform weights (the mean of all values)")
    assert real_models.measure_convention(lambda v, m: v[~m].mean(0), v) == ("blocked", "NaN")   # mean of nothing


# ---------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def command_run(tmp_path_factory, comparisons):
    out = tmp_path_factory.mktemp("real_models")
    claims.reset()
    real_models.main(["--out-dir", str(out)])
    return out, json.loads((out / real_models.JSON_NAME).read_text()), claims.broken()


def test_the_command_writes_every_model_with_its_numbers(command_run, tf):
    out, data, broken = command_run
    assert broken == [] and data["complete"] is True and data["interrupted"] is False
    assert data["transformers"] == tf.__version__ and not (out / real_models.PARTIAL_NAME).exists()
    assert [m["name"] for m in data["models"]] == NAMES
    for m in data["models"]:
        assert m["reference"].startswith("transformers.models.") and m["reference"].endswith(m["name"])
        assert m["max_abs_diff_float32"] < 1e-5 and m["max_abs_diff_float64"] < 1e-5, m
        assert m["compared_positions"] == sum(real_models.LENGTHS) and m["mapping"]
    assert data["kv_cache_bytes_per_token"]["here_float32_one_layer"] == {"4": 256, "2": 128, "1": 64}
    assert data["mask_conventions"]["HF attention_mask (0/1), eager attention"]["marked_entry_means"] == "may attend"


def test_ctrl_c_keeps_the_finished_models_beside_an_earlier_complete_json(tmp_path, monkeypatch, capsys,
                                                                          command_run):
    earlier = command_run[0] / real_models.JSON_NAME
    (tmp_path / real_models.JSON_NAME).write_bytes(earlier.read_bytes())

    def ctrl_c(tf):
        raise KeyboardInterrupt

    builds = real_models.COMPARISONS
    monkeypatch.setattr(real_models, "COMPARISONS", (*builds[:2], ctrl_c, *builds[3:]))
    with pytest.raises(SystemExit) as exc:
        real_models.main(["--out-dir", str(tmp_path)])
    assert exc.value.code == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "interrupted" in err and real_models.PARTIAL_NAME in err
    assert (tmp_path / real_models.JSON_NAME).read_bytes() == earlier.read_bytes()     # the complete one is kept
    partial = json.loads((tmp_path / real_models.PARTIAL_NAME).read_text())
    assert partial["complete"] is False and partial["interrupted"] is True
    assert [m["name"] for m in partial["models"]] == NAMES[:2]


@pytest.mark.parametrize("edit, broken", [
    (Edit(4, "x = x + self.dropout2(self.feed_forward(self.norm2(x)))", "x = x + self.dropout2(self.feed_forward(x))"),
     ["LlamaDecoderLayer-float32", "MistralDecoderLayer-float32", "LlamaModel-float32", "llama-float64"]),
    (Edit(1, "/ math.sqrt(d_k)  # (...", "/ d_k  # (..."),
     ["BertLayer-float32", "LlamaDecoderLayer-float32", "MistralDecoderLayer-float32", "LlamaModel-float32",
      "bert-float64", "llama-float64"]),
])
def test_an_edit_to_a_lesson_breaks_the_models_built_from_it(tmp_path, capsys, edit, broken):
    claims.reset()
    with edited_lessons(edit):
        real_models.main(["--out-dir", str(tmp_path)])
    assert claims.broken() == broken
    assert "DOES NOT HOLD" in capsys.readouterr().out


def one_error_line(capsys, *flags, contains=()):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        real_models.main(list(flags))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    for text in contains:
        assert text in err, (text, err)


@pytest.mark.parametrize("flags, contains", [(["--seed", "x"], ["--seed", "'x'"]), (["--windows", "3"], ["--windows"]),
                                             (["--threads", "0"], ["0 CPU threads"])])
def test_bad_flags_give_one_line(capsys, tmp_path, flags, contains):
    one_error_line(capsys, *flags, "--out-dir", str(tmp_path), contains=contains)
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_folder_a_bad_knob_and_a_missing_transformers_give_one_line(capsys, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    one_error_line(capsys, "--out-dir", str(blocker / "out"), contains=["--out-dir", "writable"])
    monkeypatch.setattr(real_models, "N_KV_HEADS", 3)
    one_error_line(capsys, "--out-dir", str(tmp_path), contains=["N_KV_HEADS = 3", "divide"])
    monkeypatch.setattr(real_models, "N_KV_HEADS", 2)
    monkeypatch.setitem(sys.modules, "transformers", None)                 # as if it were not installed
    one_error_line(capsys, "--out-dir", str(tmp_path), contains=["pip install transformers==5.25.0"])
    assert not (tmp_path / real_models.JSON_NAME).exists()
