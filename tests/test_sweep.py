"""The architecture sweep (python -m challenges.sweep): its outputs, its bookkeeping, its errors.

One --quick sweep is run in-process and shared by the tests that read its outputs; lesson 05's
train() is wrapped to count the trainings, so sharing the default model is checked by counting.
"""
import importlib
import json
import sys

import pytest

from challenges import sweep

QUICK_AXES = {"heads": [1, 2], "layers": [1, 2], "d_model": [16, 32]}


class CountingTrain:
    """Stands in for lesson 05's train(): records each config, and can press Ctrl-C on call n."""

    def __init__(self, real, interrupt_on=None):
        self.real, self.interrupt_on, self.configs = real, interrupt_on, []

    def __call__(self, config, *args, **kwargs):
        self.configs.append(config)
        if len(self.configs) == self.interrupt_on:
            def press_ctrl_c(step, metrics):
                raise KeyboardInterrupt
            kwargs["callback"] = press_ctrl_c
        return self.real(config, *args, **kwargs)


@pytest.fixture(scope="module")
def quick_sweep(tmp_path_factory):
    """Run `--quick` once: (output folder, parsed json, the configs train() was called with)."""
    out = tmp_path_factory.mktemp("sweep")
    counter = CountingTrain(sweep.train)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sweep, "train", counter)
        sweep.main(["--quick", "--out-dir", str(out)])
    return out, json.loads((out / sweep.JSON_NAME).read_text()), counter.configs


def test_quick_sweep_writes_png_and_one_entry_per_axis_value(quick_sweep):
    out, metrics, _ = quick_sweep
    png = out / sweep.PNG_NAME
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert metrics["axes"] == list(QUICK_AXES) and metrics["values"] == QUICK_AXES
    got = sorted((e["axis"], e["value"]) for e in metrics["entries"])
    assert got == sorted((axis, v) for axis, values in QUICK_AXES.items() for v in values)
    assert metrics["interrupted"] is False
    for entry in metrics["entries"]:
        field = sweep.AXES[entry["axis"]][0]
        assert entry["config"][field] == entry["value"]
        # one knob at a time: every other knob keeps the base value
        for axis, (other, _, _) in sweep.AXES.items():
            if axis != entry["axis"]:
                assert entry["config"][other] == metrics["base_config"][other]
        assert len(entry["steps_to_target"]) == len(metrics["seeds"]) == 1
        assert 0.0 <= entry["test_exact_match"] <= 1.0


def test_parameter_count_equals_the_models_numel(quick_sweep):
    _, metrics, _ = quick_sweep
    for entry in metrics["entries"]:
        model = sweep.Seq2SeqTransformer(**entry["config"])
        assert entry["parameters"] == sum(p.numel() for p in model.parameters()), entry
    by = {(e["axis"], e["value"]): e["parameters"] for e in metrics["entries"]}
    assert by[("heads", 1)] == by[("heads", 2)]        # heads split d_model: no new weights
    assert by[("layers", 2)] > by[("layers", 1)] and by[("d_model", 32)] > by[("d_model", 16)]


def test_default_model_is_trained_once_and_shared(quick_sweep):
    _, metrics, configs = quick_sweep
    keys = [sweep.model_key(c) for c in configs]
    assert len(keys) == len(set(keys)) == 4              # 6 entries, 4 different models, 1 seed
    assert len(metrics["runs"]) == 4
    defaults = [e for e in metrics["entries"] if e["default"]]
    assert [(e["axis"], e["value"]) for e in defaults] == [("heads", 2), ("layers", 1), ("d_model", 32)]
    assert len({tuple(e["run_ids"]) for e in defaults}) == 1       # the same run in every axis
    run_ids = {r["id"] for r in metrics["runs"]}
    assert all(set(e["run_ids"]) <= run_ids for e in metrics["entries"])
    # the shared run's numbers are the same in every axis
    assert len({json.dumps(e["steps_to_target"]) + str(e["test_exact_match"]) for e in defaults}) == 1


def test_ctrl_c_keeps_what_finished(tmp_path, monkeypatch, capsys):
    counter = CountingTrain(sweep.train, interrupt_on=2)
    monkeypatch.setattr(sweep, "train", counter)
    with pytest.raises(SystemExit) as exc:
        sweep.main(["--quick", "--axes", "heads", "--out-dir", str(tmp_path)])
    assert exc.value.code == 130
    metrics = json.loads((tmp_path / "architecture_sweep.partial.json").read_text())   # never over the json
    assert metrics["interrupted"] is True and len(counter.configs) == 2 and not (tmp_path / sweep.JSON_NAME).exists()
    assert len(metrics["runs"]) == 1                                  # the unfinished run is left out
    assert [(e["axis"], e["value"]) for e in metrics["entries"]] == [("heads", 2)]
    assert (tmp_path / "architecture_sweep.partial.png").exists()
    assert "interrupted (Ctrl-C): 1 of 2" in capsys.readouterr().out


def expect_user_error(capsys, *flags, contains=()):
    """Run the sweep with bad flags: exit status 2, one line on stderr naming the problem."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        sweep.main(list(flags))
    assert exc.value.code == 2, f"expected exit status 2, got {exc.value.code!r}"
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    for text in contains:
        assert text.lower() in err.lower(), f"{text!r} not in {err!r}"
    return err


@pytest.mark.parametrize("flags, contains", [
    (["--axes", "width"], ["'width'", "heads", "d_model"]),
    (["--axes", "heads,"], ["unknown axis"]),
    (["--heads", "1,two"], ["--heads", "two"]),
    (["--layers", "1,0"], ["--layers", "positive", "0"]),
    (["--d-model", "-32"], ["--d-model", "positive"]),
    (["--heads", "1,3"], ["--heads 3", f"d_model {sweep.TrainConfig().d_model}", "1, 2, 4, 8"]),
    (["--d-model", "32,65"], ["--d-model 65", "2 heads"]),               # base heads 2 must divide
    (["--task", "add"], ["add", "reverse"]),
    (["--axes", "layers", "--heads", "1,2"], ["--heads", "--axes"]),
    (["--seeds", "0"], ["--seeds"]),
    (["--steps", "0"], ["--steps"]),
])
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, flags, contains):
    expect_user_error(capsys, *flags, "--out-dir", str(tmp_path), contains=contains)
    assert list(tmp_path.iterdir()) == []                           # nothing trained, nothing written


def test_divisibility_is_checked_per_combination():
    base = sweep.TrainConfig(d_model=32, n_heads=2)
    configs, entries = sweep.plan_sweep(base, ["heads"], {"heads": [1, 8, 32]})    # all divide 32
    assert [sweep.model_key(c)[1] for c in configs.values()] == [1, 8, 32]
    with pytest.raises(sweep.common.UserError, match="heads 3.*d_model 32"):
        sweep.plan_sweep(base, ["heads"], {"heads": [8, 3]})
    # d_model 30 with the base's 2 heads is fine; with 4 heads it is not
    sweep.plan_sweep(base, ["d_model"], {"d_model": [30]})
    with pytest.raises(sweep.common.UserError, match="d-model 30.*4 heads"):
        sweep.plan_sweep(sweep.TrainConfig(d_model=32, n_heads=4), ["d_model"], {"d_model": [32, 30]})


def summary(axis, value, parameters, steps, seconds, ms_per_step, test=1.0, default=False):
    return {"axis": axis, "value": value, "default": default, "parameters": parameters,
            "mean_steps_to_target": steps, "mean_seconds_to_target": seconds, "ms_per_step": ms_per_step,
            "steps_to_target": [steps], "seconds_to_target": [seconds], "reached": int(steps is not None),
            "ms_per_step_by_seed": [ms_per_step],
            "seeds_run": 1, "test_exact_match": test, "run_ids": [f"{axis}{value}"]}


def test_observations_follow_the_numbers():
    base = sweep.TrainConfig(steps=300)
    # the larger model needs fewer steps but more seconds: both answers must be reported
    rows = [summary("d_model", 32, 30_000, 130, 5.0, 38.0), summary("d_model", 64, 85_000, 100, 6.0, 60.0),
            summary("d_model", 128, 270_000, None, None, 97.0, test=0.5)]
    text = " ".join(sweep.observations(rows, base, [0], 3, 3))
    assert "fewest steps to 99%: d_model 64 (100)" in text
    assert "fewest training seconds: d_model 32 (5 s, 38 ms per step, against 6 s and 60 ms" in text
    assert "not reached by every seed within 300 steps: d_model 128" in text
    assert "50.00% (d_model 128)" in text and "One seed per value" in text
    # same ranking by steps and by seconds; and the largest model needing more steps is said so
    rows = [summary("layers", 1, 85_000, 100, 4.0, 40.0), summary("layers", 4, 336_000, 200, 29.0, 147.0)]
    text = " ".join(sweep.observations(rows, base, [0], 2, 2))
    assert "fewest steps to 99%: layers 1 (100); fewest training seconds: layers 1 (4 s)" in text
    assert "the largest needed more steps than the smallest (200 against 100)" in text
    rows[1]["mean_steps_to_target"] = 80
    assert "the largest needed fewer steps" in " ".join(sweep.observations(rows, base, [0], 2, 2))


def test_importing_prints_and_writes_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "challenges.sweep")       # restored after the test
    importlib.import_module("challenges.sweep")
    out = capsys.readouterr()
    assert out.out == "" and out.err == "" and list(tmp_path.iterdir()) == []


def test_observations_name_ties_and_the_seed_spread():
    base = sweep.TrainConfig()
    rows = [summary("heads", 1, 30_000, 125, 1.9, 15.0), summary("heads", 2, 30_000, 125, 2.0, 15.0),
            summary("layers", 1, 30_000, 125, 1.9, 15.0), summary("layers", 2, 60_000, 140, 7.3, 52.0)]
    for row, steps in zip(rows, ([140, 110], [130, 120], [130, 120], [120, 160])):
        row.update(steps_to_target=steps, seeds_run=2, reached=2)
    rows[1]["ms_per_step_by_seed"] = [12.0, 18.0]                                 # same work, 50% apart
    text = " ".join(sweep.observations(rows, base, [0, 1], 6, 4))
    assert "fewest steps to 99%: heads 1 and 2 (125)" in text
    assert "differed by up to 50% between its seeds (heads 2)" in text
    assert "(140 against 125, within the seed-to-seed spread)" in text           # 15 <= 40
    assert "differed by up to 40 steps (layers 2)" in text and "One seed" not in text
    rows[3]["mean_steps_to_target"] = 190                                         # 65 > 40
    text = " ".join(sweep.observations(rows, base, [0, 1], 6, 4))
    assert "(190 against 125)" in text


def test_a_diverging_run_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    real = sweep.train

    def diverge_with_one_head(config, *args, **kwargs):
        if config.n_heads == 1:
            raise sweep.TrainingDiverged("the training loss became nan")
        return real(config, *args, **kwargs)

    monkeypatch.setattr(sweep, "train", diverge_with_one_head)
    sweep.main(["--quick", "--axes", "heads", "--out-dir", str(tmp_path)])
    metrics = json.loads((tmp_path / sweep.JSON_NAME).read_text())
    by_value = {e["value"]: e for e in metrics["entries"]}
    assert by_value[1]["steps_to_target"] == [None] and by_value[1]["test_exact_match"] is None
    assert [r["stopped_because"] for r in metrics["runs"] if r["config"]["n_heads"] == 1] == \
        ["diverged (loss not finite)"]
    assert by_value[2]["test_exact_match"] is not None and (tmp_path / sweep.PNG_NAME).exists()


def test_plan_counts_the_trainings_the_shared_default_saves(capsys):
    base = sweep.TrainConfig(d_model=32, n_heads=2, n_layers=1)
    values = {"heads": [1, 2], "layers": [1, 2], "d_model": [32, 64]}
    configs, entries = sweep.plan_sweep(base, list(values), values)
    assert len(entries) == 6 and len(configs) == 4
    sweep.section_1_plan(base, list(values), values, configs, entries, seeds=[0, 1, 2])
    out = " ".join(capsys.readouterr().out.split())
    # the default is in 3 axes: 2 extra appearances x 3 seeds = 6 trainings saved, 4 x 3 = 12 run
    assert "appears in 3 axes" in out and "6 trainings saved" in out and "12 trainings in all" in out
    values = {"heads": [1, 4], "layers": [2]}                       # the default is in no axis
    configs, entries = sweep.plan_sweep(base, list(values), values)
    sweep.section_1_plan(base, list(values), values, configs, entries, seeds=[0])
    out = capsys.readouterr().out
    assert "saved" not in out and "3 trainings in all" in out


def test_observations_say_when_test_exact_match_is_the_same_everywhere():
    rows = [summary("heads", 1, 30_000, 120, 2.0, 15.0, test=0.995),
            summary("heads", 2, 30_000, 130, 2.1, 15.0, test=0.995)]
    text = " ".join(sweep.observations(rows, sweep.TrainConfig(), [0], 2, 2))
    assert "was 99.50% for every value" in text and "ranged" not in text
