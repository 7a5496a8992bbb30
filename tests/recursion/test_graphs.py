"""Per-example graph models over ragged graphs (different node and edge counts)."""
from __future__ import annotations

import sys

import numpy as np

import spmdbatch as sb

sys.path.insert(0, __file__.rsplit("/", 2)[0] + "/spmd")
from oracle import check_batched  # noqa: E402

D, H = 3, 4


def random_graph(rng, n):
    m = int(rng.integers(0, 2 * n))
    edges = rng.integers(0, n, size=(m, 2)) if m else np.zeros((0, 2), dtype=int)
    return rng.standard_normal((n, D)), edges


def gcn_layer(p, x, edges):
    """Mean-aggregating message passing written for ONE graph."""
    n = len(x)
    agg = np.zeros((n, D))
    deg = np.ones(n)
    for e in range(len(edges)):
        s, t = edges[e]
        agg[t] += x[s]
        deg[t] += 1.0
    h = np.tanh(((agg + x) / deg[:, None]) @ p["W"] + p["b"])
    return h.sum(axis=0), h.max(axis=0)


def message_rounds(p, x, edges, rounds):
    h = x @ p["V"]
    for r in range(rounds):
        msg = np.zeros(h.shape)
        for s, t in edges:
            msg[t] += np.tanh(h[s])
        h = h + 0.5 * msg
    return h.mean(axis=0)


def params(seed=0):
    rng = np.random.default_rng(seed)
    return {"W": rng.standard_normal((D, H)), "b": rng.standard_normal(H), "V": rng.standard_normal((D, H))}


def graphs(seed, sizes):
    rng = np.random.default_rng(seed)
    return [random_graph(rng, n) for n in sizes]


def test_gcn_layer_over_graphs_of_different_sizes():
    gs = graphs(0, [3, 7, 1, 5, 4])
    xs = [g[0] for g in gs]
    es = [g[1] if len(g[1]) else np.zeros((1, 2), dtype=int)[:0] for g in gs]
    check_batched(gcn_layer, params(), xs, es, in_axes=(None, 0, 0))


def test_message_passing_rounds_and_gradient():
    gs = graphs(1, [4, 2, 6])
    xs = [g[0] for g in gs]
    es = [g[1] for g in gs]
    rounds = np.array([2, 0, 1])
    check_batched(message_rounds, params(), xs, es, rounds, in_axes=(None, 0, 0, 0))
    got = sb.grad(lambda p: sb.spmd(gcn_layer, in_axes=(None, 0, 0))(p, xs, es)[0].sum())(params())
    for k in ("W", "b"):
        expected = sum(sb.grad(lambda p: gcn_layer_functional(p, x, e).sum())(params())[k]
                       for x, e in zip(xs, es))
        np.testing.assert_allclose(got[k], expected, rtol=1e-9)


def gcn_layer_functional(p, x, edges):
    """gcn_layer with functional updates, so plain autodiff can run it one graph at a time."""
    n = len(x)
    agg = np.zeros((n, D))
    deg = np.ones(n)
    for s, t in edges:
        agg = sb.index_update(agg, t, x[s], mode="add")
        deg = sb.index_update(deg, t, 1.0, mode="add")
    return np.tanh(((agg + x) / deg[:, None]) @ p["W"] + p["b"]).sum(axis=0)
