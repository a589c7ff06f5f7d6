"""The shared helpers: flags every lesson accepts, device choice, lesson loading, plotting, checkpoints,
how a run ends (SIGTERM, a second Ctrl-C), results that replace the last complete one."""
import dataclasses
import json
import os
import signal
import sys
import time
import warnings

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


# ---------------------------------------------------------------- checkpoints carry a checksum
@dataclasses.dataclass
class TinyConfig:
    width: int = 4


class TinyCheckpointError(common.UserError):
    pass


FORMATS = ("tiny-v2", "tiny-v1")


def tiny_checkpoint(path):
    weights = {"w": torch.arange(64, dtype=torch.float32) + 1000.0, "b": torch.zeros(3)}
    common.checkpoints.save(path, FORMATS[0], TinyConfig(), weights, step=7)
    return path, weights


def load_tiny(path):
    return common.checkpoints.load(path, FORMATS, ("state_dict", "config"), TinyCheckpointError)


def test_a_checkpoint_loads_with_its_checksum_and_two_flipped_bytes_are_refused_by_name(tmp_path):
    path, weights = tiny_checkpoint(tmp_path / "model.pt")
    assert torch.equal(load_tiny(path)["state_dict"]["w"], weights["w"])
    data = bytearray(path.read_bytes())
    at = data.find(weights["w"].numpy().tobytes()) + 100              # inside the tensor's bytes
    data[at] ^= 0x10
    data[at + 1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(TinyCheckpointError, match=r"'.*model\.pt' is damaged: w does not match"):
        load_tiny(path)


def test_a_changed_format_field_is_refused(tmp_path):
    path, _ = tiny_checkpoint(tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)
    payload["format"] = FORMATS[1]                                    # another format the loader accepts
    torch.save(payload, path)
    with pytest.raises(TinyCheckpointError, match="format field .'tiny-v1'. does not match"):
        load_tiny(path)


def test_a_checkpoint_written_before_checksums_still_loads(tmp_path):
    path, weights = tiny_checkpoint(tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)
    del payload["checksum"]
    torch.save(payload, path)
    assert torch.equal(load_tiny(path)["state_dict"]["b"], weights["b"])


class Crafted:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def test_a_crafted_pickle_is_refused_with_our_line_and_no_warning_of_torchs(tmp_path):
    import pickle
    import zipfile

    path = tmp_path / "crafted.pt"
    torch.save({"a": 1}, tmp_path / "real.pt")
    with zipfile.ZipFile(tmp_path / "real.pt") as real, zipfile.ZipFile(path, "w") as crafted:
        for name in real.namelist():                                 # a torch file whose pickle runs code
            crafted.writestr(name, pickle.dumps(Crafted(), protocol=4) if name.endswith("data.pkl")
                             else real.read(name))
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with pytest.raises(TinyCheckpointError, match="not a file torch.save wrote"):
            load_tiny(path)
    assert [str(w.message) for w in shown] == []


# ---------------------------------------------------------------- SIGTERM, a second signal, held()
handled = pytest.mark.skipif(signal.getsignal(signal.SIGTERM) is not common.process._on_signal,
                             reason="this process handles SIGTERM in its own way")


@handled
@pytest.mark.parametrize("n", LESSONS)
def test_sigterm_in_any_lesson_is_one_line_and_exit_143(capsys, monkeypatch, tmp_path, n):
    def sigterm(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)                          # a real signal, handled as in any run

    monkeypatch.setattr(common, "section", sigterm)                   # at the lesson's first section
    with pytest.raises(SystemExit) as exc:
        load_lesson(n).main(["--quick", "--out-dir", str(tmp_path)])
    assert exc.value.code == 143
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted (SIGTERM); "), lines


@handled
def test_a_second_ctrl_c_while_a_run_ends_is_ignored(capsys, monkeypatch):
    def ctrl_c_again():
        os.kill(os.getpid(), signal.SIGINT)                           # arrives while the first is handled
        return "nothing was written"

    monkeypatch.setattr(common.files, "kept_text", ctrl_c_again)

    @common.entry_point
    def main(argv=None):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 130
    assert capsys.readouterr().err.strip() == "interrupted (Ctrl-C); nothing was written"
    with pytest.raises(KeyboardInterrupt):                           # and signals work again afterwards
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)


@handled
def test_a_signal_inside_held_waits_for_the_end_of_the_block():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with common.process.held():
            os.kill(os.getpid(), signal.SIGTERM)
            done.append("the rest of the block")
    assert done == ["the rest of the block"] and common.process.interruption() == "SIGTERM"


# ---------------------------------------------------------------- a result replaces the last complete one
def test_a_result_is_partial_until_complete_then_replaces_the_earlier_one(tmp_path):
    (tmp_path / "r.json").write_text('{"earlier": true}')
    common.files.start_run()
    result = common.files.Result(tmp_path, "r.json")
    result.save({"runs": 1})
    figure = result.name("r.png")
    (tmp_path / figure).write_bytes(b"png")
    assert json.loads((tmp_path / "r.json").read_text()) == {"earlier": True}
    assert figure == "r.partial.png" and json.loads((tmp_path / "r.partial.json").read_text()) == {"runs": 1}
    assert "r.partial.json (what this run finished)" in common.files.kept_text()
    assert "the earlier complete r.json is unchanged" in common.files.kept_text()
    result.complete({"runs": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.png"]
    assert json.loads((tmp_path / "r.json").read_text()) == {"runs": 2} and result.final_name(figure) == "r.png"
