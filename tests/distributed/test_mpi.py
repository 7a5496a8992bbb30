"""Data-parallel training under real MPI: ``mpiexec -n 2`` (the mpich wheel and mpi4py,
``pip install -e ".[distributed]"``; skipped where they are missing).

The 2-process run's parameters after k steps equal one process stepping on the same
global minibatches (dense: an MLP with Adam; row-sparse: the Tree-LSTM with Adagrad), the
two ranks hold identical parameters, and a rank that raises stops every rank with its
error (the test's timeout turns a hang into a failure).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REQUIRED = os.environ.get("SPMDBATCH_REQUIRE_MPI") == "1"   # CI: a missing MPI is a failure


def _missing(what):
    message = f"{what} (pip install -e \".[distributed]\" installs mpi4py and the mpich wheel)"
    if REQUIRED:
        pytest.fail(f"SPMDBATCH_REQUIRE_MPI=1 but {message}", pytrace=False)
    pytest.skip(message, allow_module_level=True)


try:
    import mpi4py  # noqa: F401
except ImportError:
    _missing("mpi4py is not installed")

from spmdbatch import distributed as dist  # noqa: E402
from spmdbatch import nn  # noqa: E402

import mpi_worker  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("mpi_worker.py")
TIMEOUT = 120


def _mpiexec():
    here = Path(sys.executable).parent / "mpiexec"     # the mpich wheel's, in this environment
    found = str(here) if here.exists() else shutil.which("mpiexec")
    if not found:
        _missing("mpiexec not found")
    return found


def mpirun(n, args, timeout=TIMEOUT):
    """(exit status, output) of ``mpiexec -n N python ARGS``; kills the whole job on timeout."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    proc = subprocess.Popen([_mpiexec(), "-n", str(n), sys.executable, *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"mpiexec -n {n} did not finish in {timeout} s (a hang):\n{out}")
    return proc.returncode, out


def _params(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files if k != "size"}, int(f["size"])


@pytest.mark.parametrize("mode", ["dense", "mean", "sparse"])
def test_two_processes_equal_one(mode, tmp_path):
    rc, out = mpirun(2, [str(WORKER), mode, str(tmp_path)])
    assert rc == 0, out
    ranks = [_params(tmp_path / f"rank{r}.npz") for r in range(2)]
    assert [s for _, s in ranks] == [2, 2]
    reference = {name: np.asarray(leaf) for name, leaf in
                 nn.named_leaves(mpi_worker.run(mode, dist.SelfComm()))}
    got = ranks[0][0]
    assert set(got) == set(reference)
    for name in reference:
        np.testing.assert_allclose(got[name], reference[name], rtol=2e-5, atol=2e-6, err_msg=name)
        assert np.array_equal(got[name], ranks[1][0][name]), name     # identical replicas
    # the reference moved: the comparison is not between untouched initial parameters
    assert any(not np.allclose(reference[n], v) for n, v in
               ((n, np.asarray(l)) for n, l in nn.named_leaves(_initial(mode))))


def _initial(mode):
    if mode == "sparse":
        from examples.treelstm import data as sst
        from examples.treelstm import model as M
        vocab, _ = sst.synthetic_treebank(40, seed=3, num_classes=5)
        return M.TreeLSTM(len(vocab), 5, 12, 8, 0.5, rng=1)
    return nn.Chain(nn.Linear(5, 16, "tanh", rng=7), nn.Linear(16, 3, rng=8))


def test_a_rank_that_raises_stops_every_rank(tmp_path):
    rc, out = mpirun(2, [str(WORKER), "raise", str(tmp_path)], timeout=60)
    assert rc != 0, out
    assert "ValueError: boom on rank 1 at step 1" in out
    assert "aborting every rank" in out
    assert not list(tmp_path.glob("rank*.npz"))        # no rank finished


def test_treelstm_cli_under_mpiexec(tmp_path):
    """Two ranks of the example train on global minibatches of 2 x 4 trees: one log, one set of
    files (rank 0), the same parameters as one process with --batch-size 8."""
    common = ["-m", "examples.treelstm.train", "--synthetic", "48", "--epochs", "1", "--hidden", "8",
              "--embedding", "12", "--max-eval", "20", "--no-progress"]
    rc, out = mpirun(2, common + ["--batch-size", "4", "--out", str(tmp_path / "two")])
    assert rc == 0, out
    assert out.count("epoch  1") == 1, out          # rank 0 alone prints
    assert "2 processes" in out and "global batch 8" in out
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    one = subprocess.run([sys.executable, *common, "--batch-size", "8", "--out", str(tmp_path / "one")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert one.returncode == 0, one.stdout + one.stderr
    with np.load(tmp_path / "two" / "best.npz") as a, np.load(tmp_path / "one" / "best.npz") as b:
        assert set(a.files) == set(b.files)
        for k in a.files:
            if a[k].dtype.kind == "f":
                np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5, err_msg=k)
            else:
                assert np.array_equal(a[k], b[k]), k


def test_distributed_benchmark_quick(tmp_path):
    """benchmarks/distributed.py --quick runs 1 and 2 processes and the scaling model and
    writes its JSON (no timing assertions)."""
    import json
    out = tmp_path / "d.json"
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(_mpiexec()).parent), os.environ.get("PATH", "")]))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "distributed.py"), "--quick", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| processes" in proc.stdout and "| ranks" in proc.stdout
    data = json.loads(out.read_text())
    assert [r["processes"] for r in data["results"]] == [1, 2]
    assert all(r["trees_per_s"] > 0 for r in data["results"])
    assert [r["ranks"] for r in data["model"]["rows"]] == [8, 16, 32, 64]
    for row in data["model"]["rows"]:
        for net in data["model"]["networks"]:
            assert 0 < row[net]["efficiency"] <= 1.5 and row[net]["megabytes_sent_per_rank"] > 0
