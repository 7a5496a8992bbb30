"""Packed ragged values (runtime/packed.py): the compact layout that a ragged matmul, gather
and scatter produce gives the same values and gradients as the per-example loop, through
the operations that keep it and those that convert back to the padded layout."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import spmdbatch as sb
from spmdbatch.runtime import packed as PK

sys.path.insert(0, __file__.rsplit("/", 2)[0] + "/spmd")
from oracle import check_batched, check_batched_grad  # noqa: E402

D, H = 3, 4


def params(seed=0):
    rng = np.random.default_rng(seed)
    return {"W": rng.standard_normal((D, H)), "U": rng.standard_normal((H, H)) * 0.5,
            "v": rng.standard_normal(H)}


def features(seed, sizes):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, D)) for n in sizes]


def embed(p, x):
    return np.tanh(x @ p["W"])          # packed when padding is a large share of the batch


def op_elementwise(p, x):
    h = embed(p, x)
    g = np.maximum(h, 0) * h.mean(axis=0) - h.max(axis=0) + 1.5 * np.where(h > 0, h, 0.1 * h)
    return (g @ p["U"] + p["v"]).sum(axis=0)


def op_indexing(p, x):
    h = embed(p, x)
    return np.concatenate([h[0], h[-1], h[1:].sum(axis=0), h[::-1][0], h[:, :2].sum(axis=0),
                           h.sum(axis=1).sum(keepdims=True)])


def op_mask(p, x):
    h = embed(p, x)
    return h[h[:, 0] > 0].sum(axis=0) + h[:, None].sum(axis=(0, 1))


def op_concatenate(p, x):
    h = embed(p, x)
    both = np.concatenate([h, 2 * h], axis=1)
    rows = np.concatenate([h, h[:1]], axis=0)
    return np.concatenate([both.sum(axis=0), rows.sum(axis=0), np.stack([h, h], axis=-1).sum(axis=(0, 2))])


def op_softmax(p, x):
    h = embed(p, x)
    e = np.exp(h @ p["v"])
    a = e / e.sum()
    return a @ h + h.T @ a


def op_reshape(p, x):
    h = embed(p, x)
    return h.reshape(len(h), 2, 2).sum(axis=(0, 1)) + h.reshape(-1).sum() + len(h) * h.sum()


def op_loop_and_branch(p, x):
    h = embed(p, x)
    acc = np.zeros(H)
    for row in h:
        acc = acc + row * row
    if h.sum() > 0:
        h = h * 2.0
    else:
        h = h @ p["U"]
    return acc + h.sum(axis=0)


def op_scatter(p, x):
    h = embed(p, x)
    idx = np.arange(len(h)) % 2
    agg = sb.index_update(np.zeros(h.shape), idx, h, mode="add")
    return agg.sum(axis=0) + sb.index_update(np.zeros(h.shape), idx, h @ p["U"], mode="add").max(axis=0)


def in_place_add_at(p, x):
    h = embed(p, x)
    agg = np.zeros(h.shape)
    np.add.at(agg, np.arange(len(h)) % 2, h)
    return agg.sum(axis=0)


def op_gather_matmul(p, x):
    """More gathered rows than nodes: h[src] @ U runs as (h @ U)[src] (the same rows)."""
    h = embed(p, x)
    idx = np.arange(len(h))
    src = np.concatenate([idx, idx[::-1], idx])
    m = np.tanh(h[src] @ p["U"] + h[src])
    return sb.index_update(np.zeros(h.shape), src, m, mode="add").sum(axis=0)


OPS = [op_gather_matmul, op_elementwise, op_indexing, op_mask, op_concatenate, op_softmax, op_reshape,
       op_loop_and_branch, op_scatter]
SIZES = [1, 7, 2, 9, 3, 1, 12]


@pytest.mark.parametrize("f", OPS, ids=lambda f: f.__name__)
def test_values_and_gradients_equal_the_loop(f):
    xs = features(0, SIZES)
    check_batched(f, params(), xs, in_axes=(None, 0))
    check_batched_grad(f, params(), xs, in_axes=(0,))


def test_numpy_add_at_in_place_equals_the_loop():
    check_batched(in_place_add_at, params(), features(3, SIZES), in_axes=(None, 0))


def test_a_ragged_result_comes_back_per_example():
    xs = features(1, SIZES)
    got = sb.spmd(embed, in_axes=(None, 0))(params(), xs)
    for g, x in zip(got, xs):
        np.testing.assert_allclose(g, embed(params(), x), rtol=1e-12)


def test_the_packed_layout_is_used(monkeypatch):
    """A padded batch (sizes 1 to 12) takes the packed path: one matmul over the valid rows."""
    made = []
    init = PK.Packed.__init__
    monkeypatch.setattr(PK.Packed, "__init__", lambda self, *a: made.append(1) or init(self, *a))
    sb.spmd(op_elementwise, in_axes=(None, 0))(params(), features(2, SIZES))
    assert made


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(1, 8), min_size=1, max_size=6), st.integers(0, 2 ** 16),
       st.sampled_from(OPS))
def test_random_sizes(sizes, seed, f):
    xs = features(seed, sizes)
    check_batched(f, params(seed % 5), xs, in_axes=(None, 0))
    check_batched_grad(f, params(seed % 5), xs, in_axes=(0,))
