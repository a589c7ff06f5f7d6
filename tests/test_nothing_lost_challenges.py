"""Nothing a challenge measured is lost: an interrupted rerun (SIGTERM, Ctrl-C, twice) keeps the last
complete ablations.json, architecture_sweep.json, length_generalization.json and diagnose game,
writes what it finished beside them as NAME.partial.json, and says where each is in one line. A
damaged diagnose state file is one line; flags that used to be accepted silently are refused.

Signals are real: sent to a real process at a moment read from its output, or sent by the test
process to itself (handled by common.process as in any run); every run uses --quick sizes.
"""
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from challenges import ablations, diagnose, length_generalization, sweep
from common import load_lesson, process
from lesson05_plumbing import checkpoints as C
from conftest import REPO_ROOT, expect_user_error

L5 = load_lesson(5)
ENV = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
handled = pytest.mark.skipif(signal.getsignal(signal.SIGTERM) is not process._on_signal,
                             reason="this process handles SIGTERM in its own way")


def exit_status(main, *flags):
    try:
        main(list(flags))
    except SystemExit as exc:
        return exc.code
    return 0


def one_line(text, starts):
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(starts) and "Traceback" not in text, text
    return lines[0]


def snapshot(folder, *names):
    return {name: (folder / name).read_bytes() for name in names}


def run_until(args, out, marker, *signals):
    """Start `python -m challenges.X args`, send `signals` once a stdout line contains `marker` (the
    second when the process reports it stopped); returns (status, stderr)."""
    process_ = subprocess.Popen([sys.executable, "-m", *args, "--out-dir", str(out)], cwd=REPO_ROOT, env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        waiting = list(signals)
        for line in process_.stdout:
            if waiting and (marker in line if len(waiting) == len(signals) else "interrupted" in line):
                process_.send_signal(waiting.pop(0))
        _, stderr = process_.communicate(timeout=120)
    finally:
        process_.kill()
    assert not waiting, f"never saw {marker!r}"
    return process_.returncode, stderr


# ---------------------------------------------------------------- ablations
@pytest.fixture(scope="module")
def ablations_done(tmp_path_factory):
    out = tmp_path_factory.mktemp("ablations")
    ablations.main(["--quick", "--only", "default", "--out-dir", str(out)])
    return out


def test_sigterm_during_an_ablations_rerun_keeps_the_complete_json(ablations_done, tmp_path):
    """The issue's case: a complete ablations.json, a rerun with --seed 3 stopped by SIGTERM."""
    out = shutil.copytree(ablations_done, tmp_path / "out")
    before = snapshot(out, ablations.JSON_NAME, ablations.PNG_NAME)
    status, stderr = run_until(["challenges.ablations", "--quick", "--seed", "3"], out, "  default ", signal.SIGTERM)
    assert status == 143
    line = one_line(stderr, "interrupted (SIGTERM)")
    assert f"{ablations.PARTIAL_NAME} (what this run finished)" in line
    assert f"the earlier complete {ablations.JSON_NAME} is unchanged" in line
    assert snapshot(out, ablations.JSON_NAME, ablations.PNG_NAME) == before
    partial = json.loads((out / ablations.PARTIAL_NAME).read_text())
    assert partial["interrupted"] is True and partial["complete"] is False
    assert partial["rows"][0]["name"] == "default" and partial["rows"][0]["seeds"] == [3]


def test_an_empty_only_is_refused_like_an_empty_name_in_a_list(capsys):
    for only in ("", "default,,default"):
        assert exit_status(ablations.main, "--quick", "--only", only, "--list") == 2
        assert "empty row" in one_line(capsys.readouterr().err, "error: ")


# ---------------------------------------------------------------- the sweep
@handled
def test_sigterm_during_a_sweep_rerun_keeps_the_complete_json_and_figure(tmp_path, monkeypatch, capsys):
    sweep.main(["--quick", "--axes", "heads", "--out-dir", str(tmp_path)])
    before = snapshot(tmp_path, sweep.JSON_NAME, sweep.PNG_NAME)
    real, calls = sweep.train_one, []

    def sigterm_in_the_second(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep, "train_one", sigterm_in_the_second)
    capsys.readouterr()
    assert exit_status(sweep.main, "--quick", "--axes", "heads", "--seed", "5", "--out-dir", str(tmp_path)) == 143
    line = one_line(capsys.readouterr().err, "interrupted (SIGTERM)")
    assert "architecture_sweep.partial.json" in line and f"complete {sweep.JSON_NAME} is unchanged" in line
    assert snapshot(tmp_path, sweep.JSON_NAME, sweep.PNG_NAME) == before
    partial = json.loads((tmp_path / "architecture_sweep.partial.json").read_text())
    assert partial["interrupted"] is True and [r["seed"] for r in partial["runs"]] == [5]
    assert (tmp_path / "architecture_sweep.partial.png").exists()


def test_a_repeated_axis_is_refused(capsys):
    assert exit_status(sweep.main, "--quick", "--axes", "heads,heads") == 2
    assert "heads is named twice" in one_line(capsys.readouterr().err, "error: ")


def test_an_empty_out_dir_is_refused_by_lessons_and_challenges(capsys):
    expect_user_error(capsys, 1, "--quick", "--out-dir", "", contains="--out-dir ''")
    assert exit_status(sweep.main, "--quick", "--out-dir", " ") == 2
    one_line(capsys.readouterr().err, "error: --out-dir ' '")


# ---------------------------------------------------------------- length generalization
@pytest.fixture(scope="module")
def lengths_done(tmp_path_factory):
    out = tmp_path_factory.mktemp("lengths")
    config = L5.TrainConfig(seq_len=5, d_model=16, n_heads=1, d_ff=32, steps=10, warmup=2, val_size=50,
                            test_size=50, patience=0)
    checkpoint = C.save_checkpoint(out / C.CHECKPOINT_NAME, L5.train(config, quiet=True), config)
    length_generalization.main(["--checkpoint", str(checkpoint), "--lengths", "4,5", "--out-dir", str(out)])
    return out, checkpoint


@handled
def test_ctrl_c_during_a_length_rerun_keeps_the_complete_json(lengths_done, tmp_path, monkeypatch, capsys):
    done, checkpoint = lengths_done
    out = shutil.copytree(done, tmp_path / "out")
    before = snapshot(out, "length_generalization.json", "length_generalization.png")
    real, calls = length_generalization.measure, []

    def ctrl_c_in_the_second(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(length_generalization, "measure", ctrl_c_in_the_second)
    assert exit_status(length_generalization.main, "--checkpoint", str(checkpoint), "--lengths", "3,6",
                       "--out-dir", str(out)) == 130
    line = one_line(capsys.readouterr().err, "interrupted (Ctrl-C)")
    assert "length_generalization.partial.json" in line and "length_generalization.json is unchanged" in line
    assert snapshot(out, "length_generalization.json", "length_generalization.png") == before
    partial = json.loads((out / "length_generalization.partial.json").read_text())
    assert partial["interrupted"] is True and list(partial["results"]) == ["3"]


# ---------------------------------------------------------------- the diagnose game
GAME = ["--quick", "--count", "1", "--seed", "11"]


@pytest.fixture(scope="module")
def game_done(tmp_path_factory):
    """A finished game (its figures stand-ins: only their bytes are compared)."""
    out = tmp_path_factory.mktemp("game")

    def stand_in(label, record, base, out_dir, show, name=None):
        name = name or f"mystery_{label}.png"
        (out_dir / name).write_bytes(f"figure of {label}".encode())
        return name

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(diagnose, "plot_model", stand_in)
        diagnose.main([*GAME, "--out-dir", str(out)])
    return out


def test_a_double_ctrl_c_in_a_new_game_keeps_the_finished_game_gradable(game_done, tmp_path, capsys):
    """The issue's case: a finished game, then a new one in the same folder stopped while it trains
    (here by Ctrl-C twice: the second while the first is being handled)."""
    out = shutil.copytree(game_done, tmp_path / "out")
    files = (diagnose.STATE_NAME, "mystery_reference.png", "mystery_A.png")
    before = snapshot(out, *files)
    status, stderr = run_until(["challenges.diagnose", "--quick", "--count", "2", "--seed", "12"], out,
                               "  reference: ", signal.SIGINT, signal.SIGINT)
    assert status == 130                                              # never an exit by the signal
    line = one_line(stderr, "interrupted (Ctrl-C)")
    assert f"{diagnose.PARTIAL_STATE_NAME} (what this run finished)" in line
    assert f"the earlier complete {diagnose.STATE_NAME} is unchanged" in line
    assert snapshot(out, *files) == before
    partial = json.loads((out / diagnose.PARTIAL_STATE_NAME).read_text())
    assert partial["seed"] == 12 and partial["interrupted"] and list(partial["models"]) == ["reference"]
    answer = f"A={diagnose.draw(11, 1)['A']}"
    assert exit_status(diagnose.main, "--seed", "11", "--out-dir", str(out), "--answer", answer) == 0
    assert exit_status(diagnose.main, "--seed", "11", "--out-dir", str(out), "--reveal") == 0
    assert "1 of 1 right" in capsys.readouterr().out


def damage(text):
    def write(path, state):
        path.write_text(text(state))
    return write


def make_fifo(path, state):
    os.mkfifo(path)


def make_folder(path, state):
    path.mkdir()


@pytest.mark.parametrize("write", [
    damage(lambda s: "[1, 2]"), damage(lambda s: "null"), damage(lambda s: json.dumps({**s, "models": None})),
    damage(lambda s: json.dumps({**s, "models": {k: v for k, v in s["models"].items() if k != "reference"}})),
    make_fifo, make_folder,
], ids=["a list", "null", "models null", "no reference", "a fifo", "a folder"])
def test_a_damaged_state_file_is_one_line_for_answer_and_reveal(game_done, tmp_path, capsys, write):
    state = json.loads((game_done / diagnose.STATE_NAME).read_text())
    write(tmp_path / diagnose.STATE_NAME, state)
    signal.signal(signal.SIGALRM, lambda *a: pytest.fail("reading the state file blocked"))
    signal.alarm(30)
    try:
        for flags in (["--answer", f"A={diagnose.draw(11, 1)['A']}"], ["--reveal"]):
            capsys.readouterr()
            assert exit_status(diagnose.main, "--seed", "11", "--out-dir", str(tmp_path), *flags) == 2
            assert diagnose.STATE_NAME in one_line(capsys.readouterr().err, "error: ")
    finally:
        signal.alarm(0)
