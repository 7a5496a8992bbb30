"""Ragged gather, scatter-add, segment readouts and edge softmax (runtime/segments.py):
batched values and gradients equal the per-example loop."""
from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import spmdbatch as sb
from spmdbatch.runtime import segments as S

sys.path.insert(0, __file__.rsplit("/", 2)[0] + "/spmd")
from oracle import check_batched, check_batched_grad  # noqa: E402

D, H = 3, 4


def graph(rng, n, m):
    """Node features (n, D), edge features (m, 2) and edge ends src, dst (m,) of one graph."""
    src = rng.integers(0, n, size=m) if n else np.zeros(0, dtype=np.int64)
    dst = rng.integers(0, n, size=m) if n else np.zeros(0, dtype=np.int64)
    return rng.standard_normal((n, D)), rng.standard_normal((m, 2)), src, dst


def batch(seed, sizes):
    rng = np.random.default_rng(seed)
    gs = [graph(rng, n, m) for n, m in sizes]
    return [list(col) for col in zip(*gs)]


def params(seed=0):
    rng = np.random.default_rng(seed)
    return {"W": rng.standard_normal((D, H)), "E": rng.standard_normal((2, H)),
            "U": rng.standard_normal((H, H)) * 0.5, "a": rng.standard_normal(H)}


def add_at_layer(p, x, ef, src, dst):
    """The scatter written with numpy.add.at (in place), per example."""
    h = np.tanh(x @ p["W"])
    msg = np.tanh(h[src] @ p["U"] + ef @ p["E"])
    agg = np.zeros(h.shape)
    np.add.at(agg, dst, msg)
    deg = np.zeros(len(h))
    np.add.at(deg, dst, 1.0)
    return (agg / (deg[:, None] + 1.0)).sum(axis=0)


def add_at_layer_functional(p, x, ef, src, dst):
    h = np.tanh(x @ p["W"])
    msg = np.tanh(h[src] @ p["U"] + ef @ p["E"])
    agg = sb.index_update(np.zeros(h.shape), dst, msg, mode="add")
    deg = sb.index_update(np.zeros(len(h)), dst, 1.0, mode="add")
    return (agg / (deg[:, None] + 1.0)).sum(axis=0)


def attention(p, x, ef, src, dst):
    """Attention over each node's incoming edges (softmax per destination node)."""
    h = np.tanh(x @ p["W"])
    scores = (h[src] * h[dst]) @ p["a"] + ef[:, 0]
    alpha = sb.segment_softmax(scores, dst, len(h))
    agg = sb.index_update(np.zeros(h.shape), dst, alpha[:, None] * h[src], mode="add")
    return np.concatenate([(h + agg).sum(axis=0), alpha.sum(axis=0, keepdims=True)])


def readouts(p, x, ef, src, dst):
    h = np.tanh(x @ p["W"])
    return np.concatenate([h.sum(axis=0), h.max(axis=0), h.mean(axis=0), h[src].sum(axis=0)])


# single-node graphs, graphs without edges, repeated destinations, self loops
SIZES = [(3, 5), (1, 0), (5, 9), (1, 2), (4, 0), (6, 14)]


@pytest.mark.parametrize("f", [readouts, attention, add_at_layer_functional], ids=lambda f: f.__name__)
def test_values_and_gradients_equal_the_loop(f):
    xs, efs, srcs, dsts = batch(0, SIZES)
    check_batched(f, params(), xs, efs, srcs, dsts, in_axes=(None, 0, 0, 0, 0))
    check_batched_grad(f, params(), xs, efs, srcs, dsts, in_axes=(0, 0, 0, 0))


def test_numpy_add_at_equals_the_loop_and_the_functional_gradient():
    xs, efs, srcs, dsts = batch(1, SIZES)
    check_batched(add_at_layer, params(), xs, efs, srcs, dsts, in_axes=(None, 0, 0, 0, 0))
    spmd = sb.spmd(add_at_layer, in_axes=(None, 0, 0, 0, 0))
    got = sb.grad(lambda p: spmd(p, xs, efs, srcs, dsts).sum())(params())
    for k, g in got.items():
        want = sum(sb.grad(lambda p: add_at_layer_functional(p, *ex).sum())(params())[k]
                   for ex in zip(xs, efs, srcs, dsts))
        np.testing.assert_allclose(g, want, rtol=1e-9, atol=1e-12)


def two_rounds(p, x, ef, src, dst):
    h = np.tanh(x @ p["W"])
    for _ in range(2):
        msg = np.tanh(h[src] @ p["U"] + ef @ p["E"])
        h = h + 0.5 * np.tanh(sb.index_update(np.zeros(h.shape), dst, msg, mode="add"))
    return np.concatenate([h.sum(axis=0), h.mean(axis=0)])


def test_rounds_reuse_the_index_and_equal_the_loop():
    xs, efs, srcs, dsts = batch(2, SIZES)
    check_batched(two_rounds, params(), xs, efs, srcs, dsts, in_axes=(None, 0, 0, 0, 0))
    check_batched_grad(two_rounds, params(), xs, efs, srcs, dsts, in_axes=(0, 0, 0, 0))


def test_graphs_of_one_size_take_the_same_path():
    """Examples of equal node and edge counts are plain batched values (not ragged)."""
    xs, efs, srcs, dsts = batch(3, [(4, 6)] * 5)
    for f in (two_rounds, attention, add_at_layer_functional):
        check_batched(f, params(), xs, efs, srcs, dsts, in_axes=(None, 0, 0, 0, 0))
        check_batched_grad(f, params(), xs, efs, srcs, dsts, in_axes=(0, 0, 0, 0))


def test_no_example_has_edges():
    xs, efs, srcs, dsts = batch(4, [(2, 0), (1, 0), (3, 0)])
    for f in (two_rounds, add_at_layer_functional, attention):
        check_batched(f, params(), xs, efs, srcs, dsts, in_axes=(None, 0, 0, 0, 0))
        check_batched_grad(f, params(), xs, efs, srcs, dsts, in_axes=(0, 0, 0, 0))


def test_negative_indices_count_from_each_examples_end():
    def f(p, x, ef, src, dst):
        h = np.tanh(x @ p["W"])
        return sb.index_update(np.zeros(h.shape), -1 - dst, h[-1 - src], mode="add").sum(axis=0)
    xs, efs, srcs, dsts = batch(5, SIZES)
    check_batched(f, params(), xs, efs, srcs, dsts, in_axes=(None, 0, 0, 0, 0))
    check_batched_grad(f, params(), xs, efs, srcs, dsts, in_axes=(0, 0, 0, 0))


def test_a_node_with_many_incoming_edges_falls_back_to_add_at():
    n = S.MAX_ROUNDS + 6
    xs = [np.ones((n, D)), np.ones((2, D))]
    srcs = [np.arange(n), np.array([0, 1])]
    dsts = [np.zeros(n, dtype=np.int64), np.array([1, 1])]
    efs = [np.ones((n, 2)), np.ones((2, 2))]
    check_batched(two_rounds, params(), xs, efs, srcs, dsts, in_axes=(None, 0, 0, 0, 0))
    check_batched_grad(two_rounds, params(), xs, efs, srcs, dsts, in_axes=(0, 0, 0, 0))


def test_out_of_range_index_names_the_examples():
    def f(x, idx):
        return x[idx].sum()
    xs = [np.ones(3), np.ones(2), np.ones(4)]
    idxs = [np.array([0, 2]), np.array([1, 2, 0]), np.array([3])]
    with pytest.raises(sb.LaneError, match=r"examples \[1\]") as info:
        sb.spmd(f)(xs, idxs)
    assert info.value.lanes == [1]


def test_add_at_into_a_uniform_array_says_what_to_write():
    def f(x, idx):
        out = np.zeros((4, 2))
        np.add.at(out, idx, x)
        return out.sum()
    with pytest.raises(sb.VaryingValueError, match="index_update"):
        sb.spmd(f)([np.ones((2, 2)), np.ones((1, 2))], [np.array([0, 1]), np.array([3])])


def test_one_scatter_for_all_lanes(monkeypatch):
    """The batched scatter is one primitive call whatever the batch size."""
    calls = []
    impl = S.scatter_add_rows.impl
    monkeypatch.setattr(S.scatter_add_rows, "impl", lambda *a, **k: calls.append(1) or impl(*a, **k))
    for sizes in (SIZES, SIZES * 8):
        calls.clear()
        xs, efs, srcs, dsts = batch(6, sizes)
        sb.spmd(add_at_layer_functional, in_axes=(None, 0, 0, 0, 0))(params(), xs, efs, srcs, dsts)
        assert len(calls) == 2      # agg and deg


def test_segment_softmax_per_example():
    scores = np.array([1.0, 2.0, 3.0, -1.0])
    ids = np.array([0, 0, 2, 2])
    got = sb.segment_softmax(scores, ids, 3)
    e = np.exp(scores)
    np.testing.assert_allclose(got, [e[0] / (e[0] + e[1]), e[1] / (e[0] + e[1]),
                                     e[2] / (e[2] + e[3]), e[3] / (e[2] + e[3])])
    assert sb.segment_softmax(np.zeros(0), np.zeros(0, dtype=int), 2).shape == (0,)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 6), st.integers(0, 12)), min_size=1, max_size=6),
       st.integers(0, 2 ** 16))
def test_random_graphs(sizes, seed):
    xs, efs, srcs, dsts = batch(seed, sizes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for f in (two_rounds, attention):
            check_batched(f, params(seed % 7), xs, efs, srcs, dsts, in_axes=(None, 0, 0, 0, 0))
            check_batched_grad(f, params(seed % 7), xs, efs, srcs, dsts, in_axes=(0, 0, 0, 0))


def test_nodes_of_one_size_edges_ragged_and_the_reverse():
    for sizes in ([(4, 0), (4, 5), (4, 2)], [(2, 3), (5, 3), (1, 3)]):
        xs, efs, srcs, dsts = batch(7, sizes)
        for f in (two_rounds, attention, add_at_layer_functional):
            check_batched(f, params(), xs, efs, srcs, dsts, in_axes=(None, 0, 0, 0, 0))
            check_batched_grad(f, params(), xs, efs, srcs, dsts, in_axes=(0, 0, 0, 0))


def test_ragged_mean_keeps_float32():
    xs = [np.ones((3, 2), np.float32), np.ones((1, 2), np.float32)]
    got = sb.spmd(lambda x: np.concatenate([x.mean(axis=0), x.var(axis=0)]))(xs)
    assert got.dtype == np.float32


def test_gather_by_a_ragged_index_of_rank_two():
    """h[edges] with edges (E, 2) per example: both ends' rows, ragged along E."""
    def f(p, x, edges):
        h = np.tanh(x @ p["W"])
        pair = h[edges]                              # (E, 2, H)
        return (pair[:, 0] * pair[:, 1]).sum(axis=0) + pair.sum(axis=(0, 1))
    xs, efs, srcs, dsts = batch(8, SIZES)
    edges = [np.stack([s, d], axis=1).reshape(-1, 2) for s, d in zip(srcs, dsts)]
    check_batched(f, params(), xs, edges, in_axes=(None, 0, 0))
    check_batched_grad(f, params(), xs, edges, in_axes=(0, 0))
