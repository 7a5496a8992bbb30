"""Cotangents in deep trees: sums of many row-sparse cotangents (ad/sparse.py) and the
VJP of a concatenation of many pieces (primitives/shapes.py) give the dense results, for sums nested
deeper than Python's recursion limit."""
from __future__ import annotations

import sys

import numpy as np

import spmdbatch as sb
from spmdbatch.ad.sparse import SparseRows


def test_a_deep_chain_of_sparse_sums_equals_the_dense_sum():
    rng = np.random.default_rng(0)
    shape, n = (7, 3), 3 * sys.getrecursionlimit()
    total = SparseRows.rows(shape, np.array([0]), np.zeros((1, 3)), unique=True)
    dense = np.zeros(shape)
    for i in range(n):
        rows = rng.integers(0, 7, size=2)
        values = rng.standard_normal((2, 3))
        total = total + SparseRows.rows(shape, rows, values, unique=False)
        np.add.at(dense, rows, values)
    np.testing.assert_allclose(total.dense(), dense, rtol=1e-12, atol=1e-12)
    assert len(total.parts) == n + 1
    rows, summed = total.coalesce()
    np.testing.assert_allclose(summed, dense[rows], rtol=1e-12, atol=1e-12)


def test_a_sum_shared_by_two_sums_counts_in_both():
    a = SparseRows.rows((3, 1), np.array([1]), np.ones((1, 1)), unique=True)
    b = a + a
    c = b + (b + a)
    np.testing.assert_array_equal(c.dense()[:, 0], [0.0, 5.0, 0.0])
    np.testing.assert_array_equal((np.ones((3, 1)) + c)[:, 0], [1.0, 6.0, 1.0])


def test_gradient_of_a_concatenation_of_many_pieces():
    pieces = [np.full((k % 3 + 1, 2), float(k)) for k in range(2000)]
    weights = np.arange(sum(len(p) for p in pieces), dtype=float)[:, None]

    def f(ps):
        return (np.concatenate(ps) * weights).sum()
    grads = sb.grad(f)(pieces)
    start = 0
    for p, g in zip(pieces, grads):
        np.testing.assert_array_equal(g, np.broadcast_to(weights[start:start + len(p)], p.shape))
        start += len(p)
