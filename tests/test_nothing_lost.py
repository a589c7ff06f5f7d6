"""Nothing a learner trained is lost, and no input crashes the course: Ctrl-C at named moments (real
processes), earlier checkpoints kept, full disks and folders in the way, damaged checkpoints,
environment variables, two runs writing one folder at once."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import zlib

import pytest
import torch

import common
from common import load_lesson
from lesson05_plumbing import checkpoints as C
from conftest import REPO_ROOT, expect_user_error, run_script

L = load_lesson(5)
LESSONS = sorted(int(p.name[:2]) for p in REPO_ROOT.glob("[0-9][0-9]_*.py"))


def png_is_whole(path) -> bool:
    """True when every chunk of the PNG at `path` is complete and its CRC matches."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return False
    at = 8
    while at < len(data):
        length = int.from_bytes(data[at:at + 4], "big")
        kind, body = data[at + 4:at + 8], data[at + 8:at + 8 + length]
        crc = data[at + 8 + length:at + 12 + length]
        if len(body) != length or len(crc) != 4 or zlib.crc32(kind + body) != int.from_bytes(crc, "big"):
            return False
        at += 12 + length
        if kind == b"IEND":
            return at == len(data)
    return False


def one_error_line(stderr: str, starts: str = "error: ") -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(starts) and "Traceback" not in stderr, stderr
    return lines[0]


# ---------------------------------------------------------------- Ctrl-C in a real process
STALL = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from common import load_lesson
    L = load_lesson(5)
    from lesson05_plumbing import reports
    owner = L if {where!r} == "lesson" else reports
    real = getattr(owner, {name!r})
    def stall(*args, **kwargs):
        print("STALLED HERE", flush=True)
        time.sleep(60)
        return real(*args, **kwargs)
    setattr(owner, {name!r}, stall)
    L.main(sys.argv[1:])
""")


@pytest.mark.parametrize("where, name", [("lesson", "decode"), ("reports", "report_attention"),
                                         ("lesson", "load_checkpoint")])
def test_sigint_after_training_ends_with_one_line_and_keeps_the_model(tmp_path, where, name):
    """SIGINT in section 5 (decoding the test set), 6 (attention) and 7 (reloading): exit 130, one
    line, and the checkpoint and metrics.json written after training describe the same run."""
    script = tmp_path / "stall.py"
    script.write_text(STALL.format(root=str(REPO_ROOT), where=where, name=name))
    out = tmp_path / "out"
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    process = subprocess.Popen([sys.executable, str(script), "--quick", "--out-dir", str(out)], cwd=REPO_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in process.stdout:
            if "STALLED HERE" in line:
                process.send_signal(signal.SIGINT)
                break
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130
    line = one_error_line(stderr, starts="interrupted (Ctrl-C)")
    assert C.CHECKPOINT_NAME in line
    checkpoint = C.read_checkpoint(out / C.CHECKPOINT_NAME)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["complete"] is False and metrics["best_step"] == checkpoint["step"]
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []     # no temporary file left


@pytest.mark.parametrize("n", LESSONS)
def test_ctrl_c_in_any_lesson_is_one_line_and_exit_130(capsys, monkeypatch, tmp_path, n):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(common, "save_figure", interrupt)      # the first figure of the lesson
    with pytest.raises(SystemExit) as exc:
        load_lesson(n).main(["--quick", "--out-dir", str(tmp_path)])
    assert exc.value.code == 130
    one_error_line(capsys.readouterr().err, starts="interrupted (Ctrl-C)")
    if n == 5:                                                  # its first figure comes after training
        assert C.read_checkpoint(tmp_path / C.CHECKPOINT_NAME)["step"] >= 0


def test_an_interrupted_sweep_is_marked_and_keeps_the_finished_runs(monkeypatch, tmp_path):
    from challenges import sweep

    real, calls = sweep.train_one, {"n": 0}

    def second_is_interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep, "train_one", second_is_interrupted)
    with pytest.raises(SystemExit, match="130"):
        sweep.main(["--quick", "--out-dir", str(tmp_path)])
    saved = json.loads((tmp_path / "architecture_sweep.partial.json").read_text())
    assert saved["interrupted"] is True and saved["complete"] is False and len(saved["runs"]) == 1


# ---------------------------------------------------------------- earlier models are kept
def test_a_new_run_keeps_the_earlier_checkpoint_and_its_metrics(run_main, capsys):
    out = run_main(5, "--quick")
    first = C.read_checkpoint(out / C.CHECKPOINT_NAME)
    first_metrics = (out / "metrics.json").read_text()
    capsys.readouterr()
    run_main(5, "--quick", "--steps", "5", "--beam-size", "1")
    assert "kept as mini_transformer.previous-1.pt" in " ".join(capsys.readouterr().out.split())
    kept = C.read_checkpoint(out / "mini_transformer.previous-1.pt")
    assert kept["step"] == first["step"] and kept["val"] == first["val"]
    assert (out / "metrics.previous-1.json").read_text() == first_metrics
    new = C.read_checkpoint(out / C.CHECKPOINT_NAME)
    assert new["step"] <= 5 and json.loads((out / "metrics.json").read_text())["best_step"] == new["step"]
    run_main(5, "--quick", "--steps", "5", "--beam-size", "1")           # a third run: nothing overwritten
    assert (out / "mini_transformer.previous-2.pt").exists()
    assert C.read_checkpoint(out / "mini_transformer.previous-1.pt")["step"] == first["step"]


def test_resuming_in_place_continues_the_same_checkpoint(run_main):
    out = run_main(5, "--quick", "--steps", "20", "--target", "1.0")
    path = str(out / C.CHECKPOINT_NAME)
    run_main(5, "--quick", "--resume", path, "--steps", "40", "--target", "1.0", "--beam-size", "1")
    assert not (out / "mini_transformer.previous-1.pt").exists()
    assert json.loads((out / "metrics.json").read_text())["resumed_at"] is not None


# ---------------------------------------------------------------- outputs that cannot be written
def test_a_folder_in_the_way_of_an_output_is_one_line_before_training(capsys, monkeypatch, tmp_path):
    (tmp_path / "training_progress.png").mkdir()
    monkeypatch.setattr(L, "train", lambda *a, **k: pytest.fail("trained although an output cannot be written"))
    expect_user_error(capsys, 5, "--quick", "--out-dir", str(tmp_path), contains="in the way")


def test_a_full_disk_after_training_is_one_line_and_the_model_is_kept(capsys, monkeypatch, tmp_path):
    real = os.replace

    def disk_full_for_pngs(src, dst, *args, **kwargs):
        if str(dst).endswith(".png"):
            raise OSError(28, "No space left on device")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(common.files.os, "replace", disk_full_for_pngs)
    err = expect_user_error(capsys, 5, "--quick", "--out-dir", str(tmp_path), contains="No space left")
    assert "training_progress.png" in err
    assert C.read_checkpoint(tmp_path / C.CHECKPOINT_NAME)["step"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", C.CHECKPOINT_NAME]


def test_two_runs_writing_one_folder_at_once_leave_whole_files(tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    lesson = next(REPO_ROOT.glob("01_*.py")).name
    runs = [subprocess.Popen([sys.executable, lesson, "--quick", "--out-dir", str(tmp_path), "--seed", str(s)],
                             cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for s in (0, 1)]
    for process in runs:
        assert process.wait(timeout=120) == 0, process.stderr.read()
    pngs = list(tmp_path.glob("*.png"))
    assert pngs and all(png_is_whole(p) for p in pngs)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_png_check_notices_a_damaged_file(tmp_path):
    fig, ax = common.new_figure()
    ax.plot([0, 1])
    path = common.save_figure(fig, tmp_path, "line.png")
    assert png_is_whole(path)
    data = bytearray(path.read_bytes())
    data[60] ^= 0xFF
    path.write_bytes(bytes(data))
    assert not png_is_whole(path)


# ---------------------------------------------------------------- damaged checkpoints
def damaged(good_path, tmp_path, change, name="damaged.pt"):
    payload = torch.load(good_path, weights_only=True)
    change(payload)
    torch.save(payload, tmp_path / name)
    return tmp_path / name


def set_in(key, value, inner=None):
    def change(payload):
        (payload[inner] if inner else payload)[key] = value
    return change


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    config = L.TrainConfig(seq_len=5, d_model=16, n_heads=2, d_ff=32, steps=20, warmup=5, val_size=50,
                           test_size=50, target=1.0)
    result = L.train(config, quiet=True)
    return C.save_checkpoint(tmp_path_factory.mktemp("good") / C.CHECKPOINT_NAME, result, config)


def unequal_history(payload):
    payload["history"]["loss"] = payload["history"]["loss"][:-1]


def nan_weights(payload):
    payload["state_dict"]["out.bias"][0] = float("nan")


@pytest.mark.parametrize("change, contains", [
    (set_in("d_model", "32", inner="config"), "d_model = '32'"),
    (lambda p: p["config"].pop("task"), "no task"),
    (set_in("val", 0.5), "0.5"),
    (unequal_history, "damaged training history"),
    (set_in("train_seconds", "abc"), "train_seconds"),
    (nan_weights, "NaN"),
    (set_in("state_dict", [1, 2]), "state_dict"),
    (set_in("format", "something-else"), "not a checkpoint of this lesson"),
    (set_in("unknown_knob", 3, inner="config"), "unknown settings"),
])
def test_damaged_checkpoints_are_one_line_naming_the_problem(capsys, good_checkpoint, tmp_path, change, contains):
    path = damaged(good_checkpoint, tmp_path, change)
    err = expect_user_error(capsys, 5, "--resume", str(path), "--out-dir", str(tmp_path / "out"), contains=contains)
    assert "--lr" not in err                               # never blamed on a flag the user did not type


def test_nan_weights_are_refused_by_load_checkpoint_too(good_checkpoint, tmp_path):
    with pytest.raises(C.CheckpointError, match="NaN"):
        C.load_checkpoint(damaged(good_checkpoint, tmp_path, nan_weights))


def test_a_folder_and_a_fifo_are_not_called_missing(capsys, tmp_path):
    expect_user_error(capsys, 5, "--resume", str(tmp_path), contains="is a folder")
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    expect_user_error(capsys, 5, "--resume", str(fifo), contains="not a regular file")


def test_the_reason_a_file_is_not_a_checkpoint_is_never_cut_mid_word(good_checkpoint, tmp_path):
    text = common.checkpoints.shorten("word " * 100, 40)
    assert text.endswith(" ...") and all(w == "word" for w in text[:-4].split())


# ---------------------------------------------------------------- inputs that used to crash or mislead
@pytest.mark.parametrize("flags, contains, not_contains", [
    (["--weight-decay", "1e18"], "--weight-decay", "lower --lr"),
    (["--digits", str(10**12)], "--digits", "--d-model"),
    (["--max-len", "1000000"], "--max-len", "million"),
    (["--seq-len", str(10**18)], "--seq-len", "at least 1000000000000000001"),
    (["--batch-size", str(10**7)], "--batch-size", None),
    (["--beam-size", "1000"], "--beam-size", None),
    (["--length-penalty", "nan"], "--length-penalty", None),
    (["--out-dir", "~no_such_user_here/x"], "--out-dir", None),
])
def test_inputs_that_used_to_crash_or_mislead_are_one_clear_line(capsys, monkeypatch, flags, contains, not_contains):
    monkeypatch.setattr(L, "train", lambda *a, **k: pytest.fail("trained before checking the flags"))
    err = expect_user_error(capsys, 5, "--quick", *flags, contains=contains)
    assert not_contains is None or not_contains not in err


def test_a_very_long_sequence_length_prints_its_count_of_inputs(capsys):
    config = L.TrainConfig(seq_len=310, max_len=311, val_size=5, test_size=5)
    val, test = L.heldout_sets(config)
    L.section_1_data(config, val, test)                    # used to raise OverflowError
    assert "about 10^310" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["100000", "999"])
def test_thread_counts_from_the_environment_obey_the_same_limits(value):
    lesson = next(REPO_ROOT.glob("01_*.py")).name
    result = subprocess.run([sys.executable, lesson, "--quick"], cwd=REPO_ROOT, capture_output=True, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS=value, MPLBACKEND="Agg"), timeout=120)
    assert result.returncode == 2
    assert "OMP_NUM_THREADS" in one_error_line(result.stderr)


def test_a_broken_mplbackend_falls_back_with_one_warning(tmp_path):
    lesson = next(REPO_ROOT.glob("01_*.py")).name
    result = subprocess.run([sys.executable, lesson, "--quick", "--out-dir", str(tmp_path)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, MPLBACKEND="nonsense", OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("warning: MPLBACKEND='nonsense'")
    assert list(tmp_path.glob("*.png")) and all(png_is_whole(p) for p in tmp_path.glob("*.png"))


@pytest.mark.parametrize("script, flags", [("bench/run_benchmarks.py", ["--runs", "x"]),
                                           ("bench/bench_training.py", ["--threads", "100000"]),
                                           ("bench/bench_threads.py", ["--steps", "0"])])
def test_bench_scripts_answer_bad_flags_with_one_line(script, flags):
    result = run_script(script, *flags)
    assert result.returncode == 2
    one_error_line(result.stderr)


# ---------------------------------------------------------------- lesson 05: a full disk, SIGTERM in training
def test_a_full_disk_while_the_checkpoint_is_saved_is_one_line(tmp_path, monkeypatch):
    """torch.save onto a full disk raises RuntimeError ('[enforce fail at inline_container.cc]'); the
    checkpoint is written from memory instead, so the full disk fails in a plain write: one line."""
    import errno
    import io

    from breakit import run_lesson

    real_save, real_open = torch.save, open

    def save(obj, target, *args, **kwargs):        # what torch does when its own file writer hits ENOSPC
        if not isinstance(target, io.BytesIO):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
        return real_save(obj, target, *args, **kwargs)

    class FullDisk(io.RawIOBase):
        def writable(self):
            return True

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    def full_open(path, mode="r", *args, **kwargs):
        if "w" in mode and ".pt." in str(path):
            return FullDisk()
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(common.files, "open", full_open, raising=False)
    run = run_lesson(5, ["--quick", "--beam-size", "1"], tmp_path)
    assert run.exit_code == 2 and not run.traceback, run.traceback
    line = one_error_line(run.err)
    assert "No space left on device" in line and C.CHECKPOINT_NAME in line
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []     # no temporary file left


def test_sigterm_during_training_ends_with_one_line_and_a_metrics_json_for_the_saved_model(tmp_path):
    script = tmp_path / "stall.py"
    script.write_text(STALL.format(root=str(REPO_ROOT), where="lesson", name="learning_rate"))
    out = tmp_path / "out"
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    process = subprocess.Popen([sys.executable, str(script), "--quick", "--out-dir", str(out)], cwd=REPO_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in process.stdout:
            if "STALLED HERE" in line:                     # the first training step: step 0 is validated
                process.send_signal(signal.SIGTERM)
                break
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 143, stderr
    line = one_error_line(stderr, starts="interrupted (SIGTERM)")
    assert C.CHECKPOINT_NAME in line and "metrics.json" in line
    checkpoint = C.read_checkpoint(out / C.CHECKPOINT_NAME)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stopped_because"] == "interrupted (SIGTERM)" and metrics["best_step"] == checkpoint["step"]
    assert metrics["complete"] is False
