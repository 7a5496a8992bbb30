"""The training command: resume after an interrupt, validation before training, honest outputs.

Runs are tiny (synthetic trees, hidden size 8) so each takes about a second.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the example is a package under the repository root
    sys.path.insert(0, str(ROOT))

from examples.treelstm import checkpoint as ckpt, train  # noqa: E402

TINY = ["--synthetic", "60", "--hidden", "8", "--embedding", "8", "--max-eval", "40",
        "--no-progress", "--lr", "0.1"]


def strict_json(text):
    """json.loads that refuses NaN and Infinity (which are not JSON)."""
    def refuse(name):
        raise ValueError(f"non-JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def npz_arrays(path):
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def assert_same_arrays(a, b, skip=()):
    assert sorted(a) == sorted(b)
    for k in a:
        if k not in skip:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def without_timing(entries):
    return [{k: v for k, v in e.items() if k not in ("seconds", "trees_per_s")} for e in entries]


# --- resume ------------------------------------------------------------------------------------

class Interrupt:
    """Raises KeyboardInterrupt at the n-th call of the function it wraps."""

    def __init__(self, fn, n):
        self.fn, self.n, self.calls = fn, n, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.fn(*args, **kwargs)


def interrupt_update(monkeypatch, n):
    """The n-th optimiser step is interrupted (3 steps per epoch: 60 trees, batch 25)."""
    make = train.make_optimizer

    def make_interrupted(args):
        opt = make(args)
        opt.update = Interrupt(opt.update, n)
        return opt
    monkeypatch.setattr(train, "make_optimizer", make_interrupted)


def interrupt_state_save(monkeypatch, n):
    """The n-th save of train_state.npz is interrupted (after best.npz was written)."""
    monkeypatch.setattr(ckpt, "save_state", Interrupt(ckpt.save_state, n))


@pytest.mark.parametrize("where", ["mid-epoch", "before-state-save"])
def test_resume_after_an_interrupt_equals_an_uninterrupted_run(tmp_path, monkeypatch, capsys, where):
    full = tmp_path / "full"
    log_full = train.main(TINY + ["--epochs", "3", "--out", str(full)])

    part = tmp_path / "part"
    with monkeypatch.context() as patch:
        if where == "mid-epoch":
            interrupt_update(patch, 5)             # epoch 2, second batch
        else:
            interrupt_state_save(patch, 2)         # end of epoch 2
        with pytest.raises(SystemExit) as stop:
            train.main(TINY + ["--epochs", "3", "--out", str(part)])
    assert stop.value.code == 130
    assert f"--resume {part}" in capsys.readouterr().err
    assert ckpt.saved_epoch(part) == 1
    lines = (part / ckpt.LOG_LINES_FILE).read_text().splitlines()
    assert [strict_json(x)["epoch"] for x in lines] == [1]

    log_resumed = train.main(["--resume", str(part), "--no-progress"])
    assert_same_arrays(npz_arrays(full / ckpt.STATE_FILE), npz_arrays(part / ckpt.STATE_FILE),
                       skip={"__meta__"})
    assert_same_arrays(npz_arrays(full / ckpt.BEST_FILE), npz_arrays(part / ckpt.BEST_FILE))
    assert without_timing(log_resumed["epochs"]) == without_timing(log_full["epochs"])
    assert log_resumed["test"] == log_full["test"]
    lines = (part / ckpt.LOG_LINES_FILE).read_text().splitlines()
    assert [strict_json(x)["epoch"] for x in lines] == [1, 2, 3]


def test_resume_can_train_more_epochs_and_refuses_other_options(tmp_path, capsys):
    out = tmp_path / "run"
    train.main(TINY + ["--epochs", "1", "--out", str(out)])
    log = train.main(["--resume", str(out), "--epochs", "2", "--no-progress"])
    assert [e["epoch"] for e in log["epochs"]] == [1, 2]
    assert log["config"]["epochs"] == 2
    with pytest.raises(SystemExit) as stop:
        train.main(["--resume", str(out), "--epochs", "3", "--hidden", "9"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--hidden 9 differs" in err
    assert ckpt.saved_epoch(out) == 2


# --- validation before training ----------------------------------------------------------------

def _empty_treebank(tmp_path):
    d = tmp_path / "empty_sst"
    d.mkdir()
    for split in ("train", "dev", "test"):
        (d / f"{split}.txt").write_text("\n", encoding="utf-8")
    return d


def _a_file(tmp_path):
    f = tmp_path / "a_file.txt"
    f.write_text("not a folder")
    return f


BAD = {
    "negative batch size": (lambda t: ["--batch-size", "-3"], "--batch-size must be at least 1"),
    "zero epochs": (lambda t: ["--epochs", "0"], "--epochs must be at least 1"),
    "nan lr": (lambda t: ["--lr", "nan"], "--lr must be a finite positive number"),
    "inf embed lr": (lambda t: ["--embed-lr", "inf"], "--embed-lr must be a finite"),
    "negative weight decay": (lambda t: ["--weight-decay", "-1"], "--weight-decay must be"),
    "dropout one": (lambda t: ["--dropout", "1"], "--dropout must be in [0, 1)"),
    "not a number": (lambda t: ["--epochs", "two"], "invalid int value"),
    "empty splits": (lambda t: ["--data", str(_empty_treebank(t))], "train split"),
    "data is a file": (lambda t: ["--data", str(_a_file(t))], "is a file"),
    "missing data": (lambda t: ["--data", str(t / "nowhere")], "does not exist"),
    "output under a file": (lambda t: ["--out", str(_a_file(t) / "run")], "cannot write there"),
    "nothing to resume": (lambda t: ["--resume", str(t)], "no train_state.npz"),
    "negative threads": (lambda t: ["--threads", "-1"], "--threads must be 0 or more"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_and_a_nonzero_exit_before_training(tmp_path, capsys, case):
    make_argv, message = BAD[case]
    argv = TINY + ["--epochs", "1", "--out", str(tmp_path / "out")] + make_argv(tmp_path)
    with pytest.raises(SystemExit) as stop:
        train.main(argv)
    assert stop.value.code == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "\n" not in err and err.startswith("error: ") and message in err, err
    assert "training" not in captured.out
    assert not (tmp_path / "out" / ckpt.BEST_FILE).exists()


def test_a_read_only_output_folder_is_refused_before_training(tmp_path, monkeypatch, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    os.chmod(out, 0o500)
    try:
        probe = out / "probe"
        try:                                        # root writes anyway: make the folder's
            probe.write_text("x")                  # file system refuse instead
            probe.unlink()

            def read_only(*args, **kwargs):
                raise OSError(errno.EROFS, "Read-only file system")
            monkeypatch.setattr(train.tempfile, "mkstemp", read_only)
        except PermissionError:
            pass
        with pytest.raises(SystemExit) as stop:
            train.main(TINY + ["--epochs", "1", "--out", str(out)])
    finally:
        os.chmod(out, 0o700)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot write there" in err, err
    assert list(out.iterdir()) == []


def test_the_command_line_exits_nonzero_with_one_line():
    proc = subprocess.run([sys.executable, "-m", "examples.treelstm.train", "--batch-size", "-3"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --batch-size must be at least 1, got -3"


# --- non-finite loss, strict JSON, missing matplotlib --------------------------------------------

def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_state(tmp_path, monkeypatch, capsys):
    real = train.IMPLEMENTATIONS["spmd"]
    calls = []

    def goes_nan(model, trees, keys):
        calls.append(1)
        loss = real(model, trees, keys)
        return loss * np.nan if len(calls) >= 5 else loss    # epoch 2, second batch

    monkeypatch.setitem(train.IMPLEMENTATIONS, "spmd", goes_nan)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        train.main(TINY + ["--epochs", "3", "--out", str(out)])
    assert stop.value.code == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "epoch 2, batch 2" in err and "not finite" in err, err
    assert ckpt.saved_epoch(out) == 1
    state = npz_arrays(out / ckpt.STATE_FILE)
    assert all(np.isfinite(v).all() for k, v in state.items() if v.dtype.kind == "f")
    for line in (out / ckpt.LOG_LINES_FILE).read_text().splitlines():
        strict_json(line)
    monkeypatch.setitem(train.IMPLEMENTATIONS, "spmd", real)
    log = train.main(["--resume", str(out), "--no-progress"])
    assert [e["epoch"] for e in log["epochs"]] == [1, 2, 3]


def test_every_json_output_is_strict_json(tmp_path):
    out = tmp_path / "run"
    train.main(TINY + ["--epochs", "2", "--out", str(out)])
    strict_json((out / ckpt.LOG_FILE).read_text())
    for line in (out / ckpt.LOG_LINES_FILE).read_text().splitlines():
        strict_json(line)
    assert strict_json(ckpt.dumps({"x": float("nan"), "y": [float("inf"), 1.5]})) == \
        {"x": None, "y": [None, 1.5]}


def test_without_matplotlib_the_plot_is_not_claimed(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)      # import matplotlib -> ImportError
    out = tmp_path / "run"
    train.main(TINY + ["--epochs", "1", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "matplotlib not installed" in printed
    assert "curves.png" not in printed
    assert not (out / ckpt.PLOT_FILE).exists()


def test_a_new_run_in_a_used_folder_replaces_its_state(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    train.main(TINY + ["--epochs", "2", "--out", str(out)])
    with monkeypatch.context() as patch:
        interrupt_update(patch, 2)                 # the new run: interrupted in its first epoch
        with pytest.raises(SystemExit):
            train.main(TINY + ["--epochs", "2", "--seed", "1", "--out", str(out)])
    captured = capsys.readouterr()
    assert "held a run (epoch 2)" in captured.out
    assert "no epoch was finished" in captured.err
    assert not ckpt.has_state(out)                 # nothing left to resume by mistake
    assert (out / ckpt.LOG_LINES_FILE).read_text() == ""


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_sets_the_blas_thread_pool(tmp_path, threads):
    from threadpoolctl import threadpool_info, threadpool_limits
    with threadpool_limits(limits=3 - threads, user_api="blas"):     # the other value first;
        train.main(TINY + ["--epochs", "1", "--threads", str(threads),  # restored on exit
                           "--out", str(tmp_path / "out")])
        blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    assert blas and all(n == threads for n in blas), blas
