"""The shared helpers: flags every lesson accepts, device choice, lesson loading, plotting."""
import os
import sys

import pytest
import torch

import common
from common import load_lesson
from conftest import REPO_ROOT, expect_user_error, run_script

LESSONS = sorted(int(p.name[:2]) for p in REPO_ROOT.glob("[0-9][0-9]_*.py"))


@pytest.mark.parametrize("n", LESSONS)
def test_unknown_device_is_one_line_exit_2(capsys, n):
    err = expect_user_error(capsys, n, "--device", "tpu", contains="tpu")
    assert "cpu" in err and "cuda" in err  # names what would work


@pytest.mark.parametrize("n", LESSONS)
def test_non_integer_seed_is_one_line_exit_2(capsys, n):
    expect_user_error(capsys, n, "--seed", "abc", contains="abc")


@pytest.mark.parametrize("n", LESSONS)
def test_unwritable_out_dir_is_one_line_exit_2(capsys, tmp_path, n):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    expect_user_error(capsys, n, "--out-dir", str(blocker / "sub"), contains="--out-dir")


def test_zero_threads_rejected(capsys):
    expect_user_error(capsys, LESSONS[0], "--threads", "0", contains="--threads")


def test_seed_out_of_torchs_range_is_one_line_exit_2(capsys):
    expect_user_error(capsys, LESSONS[0], "--seed", str(2**70), contains="--seed")


def test_bad_omp_num_threads_is_one_line_exit_2(capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "four")
    expect_user_error(capsys, LESSONS[0], contains="OMP_NUM_THREADS")


def test_bad_flag_from_a_real_process_has_no_traceback():
    result = run_script(f"{REPO_ROOT.glob('01_*.py').__next__().name}", "--device", "tpu")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_importing_a_lesson_prints_and_writes_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Fresh imports of every lesson; afterwards monkeypatch puts the earlier modules back (all of
    # them, loaded first so none is missing), so other tests keep one consistent set of lessons.
    for n in LESSONS:
        load_lesson(n)
    for n in LESSONS:
        monkeypatch.delitem(sys.modules, f"lesson_{n:02d}")
    capsys.readouterr()
    for n in LESSONS:
        load_lesson(n)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    assert list(tmp_path.iterdir()) == []


def test_load_lesson_returns_one_module_per_lesson():
    assert load_lesson(1) is load_lesson(1)
    # lesson 02 uses lesson 01's function itself, not a copy
    assert load_lesson(2).scaled_dot_product_attention is load_lesson(1).scaled_dot_product_attention


def test_load_lesson_unknown_number():
    with pytest.raises(FileNotFoundError):
        load_lesson(99)


def test_choose_device_cpu_and_auto():
    device, reason = common.choose_device("cpu")
    assert device.type == "cpu" and "cpu" in reason
    device, _ = common.choose_device("auto")
    assert device.type in ("cpu", "cuda", "mps")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a working CUDA")
def test_cuda_requested_without_cuda_falls_back_to_cpu_with_warning(capsys):
    device, reason = common.choose_device("cuda")
    assert device.type == "cpu"
    assert "fallback" in reason
    err = capsys.readouterr().err
    assert err.startswith("warning:") and len(err.strip().splitlines()) == 1


def test_cuda_probe_failure_falls_back(monkeypatch, capsys):
    # Pretend CUDA is visible but broken: the probe must catch it and choose the CPU.
    from common import device as device_module

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(device_module, "_probe", lambda dev: "RuntimeError: no kernel image")
    device, reason = common.choose_device("cuda")
    assert device.type == "cpu" and "no kernel image" in reason
    assert "no kernel image" in capsys.readouterr().err
    if not device_module._mps_available():
        device, reason = common.choose_device("auto")
        assert device.type == "cpu" and "no kernel image" in reason      # the header says why


def test_threads_policy(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert common.set_threads(None) == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert common.set_threads(None) == 2
        assert common.set_threads(3) == 3 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_seed_everything_repeats():
    common.seed_everything(5)
    a = torch.randn(3)
    common.seed_everything(5)
    assert torch.equal(a, torch.randn(3))


def test_save_figure_writes_png_without_display(tmp_path, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    fig, ax = common.new_figure()
    ax.plot([0, 1], [0, 1])
    path = common.save_figure(fig, tmp_path, "line.png")
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fmt_rounds_for_reading():
    assert common.fmt(0.123456) == "0.1235"
    assert common.fmt(12345.6) == "1.235e+04" and common.fmt(12345) == "12,345"
    assert common.fmt(3) == "3"
    assert common.fmt(torch.tensor(2.5)) == "2.5"


def test_absurd_thread_count_rejected(capsys):
    expect_user_error(capsys, LESSONS[0], "--threads", "100000", contains="cores")
