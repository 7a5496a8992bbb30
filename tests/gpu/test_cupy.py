"""The same per-example code on CuPy: oracle and gradient tests on the GPU.

Skipped, with the reason, where CuPy or a CUDA GPU is absent (as in CI).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import spmdbatch as sb
from spmdbatch.runtime.backend import cupy_module

cp = cupy_module()
pytestmark = pytest.mark.skipif(cp is None, reason="CuPy with a working CUDA GPU is not available "
                                                   "(install spmdbatch[gpu-cuda12] or [gpu-cuda13] on a GPU machine)")

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def tozero(x):
    if x < 0:
        x += 1
    else:
        x -= 1
    return x


def halve_until_small(x):
    k = 0
    while abs(x) > 1:
        x = x / 2
        k += 1
    return x + k


@pytest.mark.parametrize("f", [tozero, halve_until_small])
def test_batched_results_match_numpy(f):
    xs = np.linspace(-9, 9, 37)
    expected = sb.spmd(f)(xs)
    got = sb.spmd(f)(cp.asarray(xs))
    assert type(got).__module__.startswith("cupy")
    np.testing.assert_allclose(cp.asnumpy(got), expected, rtol=1e-12)


def test_gradient_through_spmd_on_gpu():
    def f(w, x):
        h = np.tanh(w @ x)
        return np.log(h @ h + 1.0) if x[0] > 0 else h.sum()
    w = np.random.default_rng(0).standard_normal((4, 3))
    xs = np.random.default_rng(1).standard_normal((16, 3))
    g_cpu = sb.grad(lambda w_: sb.spmd(f, in_axes=(None, 0))(w_, xs).sum())(w)
    g_gpu = sb.grad(lambda w_: sb.spmd(f, in_axes=(None, 0))(w_, cp.asarray(xs)).sum())(cp.asarray(w))
    np.testing.assert_allclose(cp.asnumpy(g_gpu), g_cpu, rtol=1e-10)


def test_treelstm_loss_and_gradients_match_numpy():
    from examples.treelstm import data, model as M
    vocab, trees = data.synthetic_treebank(16, vocab_size=60, seed=0)
    model = M.TreeLSTM(len(vocab), 5, embedding=16, hidden=12)
    keys = np.arange(16)
    l_cpu, g_cpu = sb.value_and_grad(M.minibatch_loss)(model, trees, keys)
    l_gpu, g_gpu = sb.value_and_grad(M.minibatch_loss)(sb.to_device(model, "cupy"),
                                                       sb.to_device(trees, "cupy"), keys)
    np.testing.assert_allclose(float(l_gpu), l_cpu, rtol=1e-4)
    for (name, a), (_, b) in zip(g_cpu.parameters(), sb.to_device(g_gpu, "numpy").parameters()):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5, err_msg=name)
