"""The three Tree-LSTM implementations agree, and a short training run learns."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import spmdbatch as sb  # noqa: E402
from examples.treelstm import data, handbatched, model as M, train  # noqa: E402


def small(seed=0, n=12, classes=5):
    vocab, trees = data.synthetic_treebank(n, vocab_size=40, seed=seed, num_classes=classes)
    m = M.TreeLSTM(len(vocab), classes, embedding=7, hidden=5, rng=seed, dtype=np.float64)
    return m, trees


@pytest.mark.parametrize("classes", [5, 2])
def test_three_implementations_give_the_same_loss_and_gradients(classes):
    m, trees = small(classes=classes)
    keys = np.arange(len(trees)) + 100
    results = [sb.value_and_grad(f)(m, trees, keys)
               for f in (M.minibatch_loss, M.per_example_loss, handbatched.minibatch_loss)]
    (l0, g0), rest = results[0], results[1:]
    for loss, grads in rest:
        np.testing.assert_allclose(loss, l0, rtol=1e-12)
        for (name, a), (_, b) in zip(g0.parameters(), grads.parameters()):
            np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12, err_msg=name)


def test_metrics_agree_between_spmd_and_handbatched():
    m, trees = small(seed=1, n=20)
    assert M.minibatch_metrics(m, trees) == pytest.approx(handbatched.minibatch_metrics(m, trees))
    loss, correct, count, root = M.minibatch_metrics(m, trees)
    assert count == sum(int((t.label >= 0).sum()) for t in trees) and 0 <= root <= len(trees)


def test_gradient_check_of_the_model():
    m, trees = small(seed=2, n=3)
    keys = np.arange(3)
    sb.check_gradients(lambda mm: M.minibatch_loss(mm, trees, keys), m.eval(), rtol=1e-5, atol=1e-7)


def test_dropout_masks_are_per_node_and_reproducible():
    m, trees = small(seed=3, n=4)
    l1 = M.minibatch_loss(m, trees, np.arange(4))
    l2 = M.minibatch_loss(m, trees, np.arange(4))
    l3 = M.minibatch_loss(m, trees, np.arange(4) + 1)
    assert l1 == l2 and l1 != l3
    assert M.minibatch_loss(m.eval(), trees, np.arange(4)) == M.minibatch_loss(m.eval(), trees, np.arange(4) + 1)


def test_short_training_run_learns_and_writes_outputs(tmp_path):
    log = train.main(["--synthetic", "400", "--epochs", "3", "--hidden", "24", "--embedding", "24",
                      "--out", str(tmp_path), "--no-progress", "--lr", "0.1"])
    accs = [e["dev"]["root_acc"] for e in log["epochs"]]
    assert max(accs) > 0.45                      # 5 classes: chance is about 0.2
    assert log["epochs"][-1]["train_loss"] < log["epochs"][0]["train_loss"]
    assert (tmp_path / "best.npz").exists() and (tmp_path / "log.json").exists()
    assert 0.0 <= log["test"]["root_acc"] <= 1.0


def test_handbatched_and_per_example_training_run(tmp_path):
    for impl in ("handbatched", "per-example"):
        log = train.main(["--synthetic", "60", "--epochs", "1", "--hidden", "8", "--embedding", "8",
                          "--out", str(tmp_path / impl), "--no-progress", "--impl", impl])
        assert np.isfinite(log["epochs"][0]["train_loss"])


def test_cupy_backend_without_a_gpu_is_a_clear_error(tmp_path):
    if sb.runtime.backend.cupy_module() is not None:
        pytest.skip("CuPy with a GPU is present")
    with pytest.raises(RuntimeError, match="CuPy"):
        train.main(["--synthetic", "20", "--epochs", "1", "--backend", "cupy", "--out", str(tmp_path),
                    "--no-progress"])
