"""Recurrent cells under @spmd (ragged sequences, recursive trees) and their gradients."""
from __future__ import annotations

import sys
from typing import NamedTuple

import numpy as np
import pytest

import spmdbatch as sb
from spmdbatch import nn

sys.path.insert(0, __file__.rsplit("/", 2)[0] + "/spmd")
from oracle import check_batched, check_batched_grad  # noqa: E402

F64 = np.float64
rng = np.random.default_rng(1)
D, H = 3, 4
SEQS = [rng.standard_normal((n, D)) for n in (3, 1, 5, 2)]
X = rng.standard_normal((5, D))
HS = rng.standard_normal((5, H)) * 0.5


def sig(x):
    return 1 / (1 + np.exp(-x))


def test_lstm_cell_formula_and_batching():
    cell = nn.LSTMCell(D, H, rng=0, dtype=F64)
    assert cell.W.shape == (4 * H, D) and cell.U.shape == (4 * H, H)
    np.testing.assert_array_equal(cell.b[H:2 * H], 1.0)          # forget bias
    x, h, c = X[0], HS[0], HS[1]
    z = cell.W @ x + cell.U @ h + cell.b
    c2 = sig(z[H:2 * H]) * c + sig(z[:H]) * np.tanh(z[2 * H:3 * H])
    h2, c2_ = cell(x, (h, c))
    np.testing.assert_allclose(c2_, c2)
    np.testing.assert_allclose(h2, sig(z[3 * H:]) * np.tanh(c2))
    check_batched(lambda m, x, h: m(x, (h, h)), cell, X, HS, in_axes=(None, 0, 0))
    check_batched_grad(lambda m, x, h: m(x, (h, -h))[0], cell, X, HS)
    sb.check_gradients(lambda m: sum(v.sum() for v in m(x, (h, c))), cell)
    hb, cb = cell(X, (HS, HS))                                    # direct call on a batch
    np.testing.assert_allclose(hb, np.stack([cell(a, (b, b))[0] for a, b in zip(X, HS)]))


def test_lstm_over_ragged_sequences():
    cell = nn.LSTMCell(D, H, rng=2, dtype=F64)
    run = lambda m, xs: m.run(xs)[0]  # noqa: E731
    check_batched(run, cell, SEQS, in_axes=(None, 0))
    check_batched_grad(run, cell, SEQS)
    sb.check_gradients(lambda m: run(m, SEQS[2]).sum(), cell)


def test_gru_cell():
    cell = nn.GRUCell(D, H, rng=3, dtype=F64)
    cell = cell.replace(b=rng.standard_normal(3 * H), c=rng.standard_normal(H))
    x, h = X[1], HS[1]
    r = sig(cell.W[:H] @ x + cell.b[:H] + cell.U[:H] @ h)
    z = sig(cell.W[H:2 * H] @ x + cell.b[H:2 * H] + cell.U[H:2 * H] @ h)
    n = np.tanh(cell.W[2 * H:] @ x + cell.b[2 * H:] + r * (cell.U[2 * H:] @ h + cell.c))
    np.testing.assert_allclose(cell(x, h), (1 - z) * n + z * h)
    check_batched(lambda m, x, h: m(x, h), cell, X, HS, in_axes=(None, 0, 0))
    check_batched_grad(lambda m, x, h: m(x, h), cell, X, HS)
    check_batched(lambda m, xs: m.run(xs), cell, SEQS, in_axes=(None, 0))
    check_batched_grad(lambda m, xs: m.run(xs), cell, SEQS)
    sb.check_gradients(lambda m: m.run(SEQS[0]).sum(), cell)


# --- Tree-LSTMs ---------------------------------------------------------------------------------
class Tree(NamedTuple):
    word: np.ndarray     # word id of a leaf
    left: np.ndarray     # left child (-1 for a leaf)
    right: np.ndarray
    label: np.ndarray


def random_tree(r, n_leaves, vocab=12, classes=3):
    word, left, right = [], [], []

    def build(n):
        if n == 1:
            word.append(int(r.integers(vocab)))
            left.append(-1)
            right.append(-1)
        else:
            m = int(r.integers(1, n))
            lc = build(m)
            rc = build(n - m)
            word.append(0)
            left.append(lc)
            right.append(rc)
        return len(word) - 1
    build(n_leaves)
    return Tree(np.array(word), np.array(left), np.array(right), r.integers(classes, size=len(word)))


class TreeClassifier(nn.Module):
    """A user model: embeddings, a binary Tree-LSTM and a softmax classifier at every node."""

    emb: nn.Embedding
    cell: nn.BinaryTreeLSTMCell
    out: nn.Linear

    def encode(self, tree, k):
        if tree.left[k] < 0:
            h, c = self.cell(self.emb(tree.word[k]))
            return h, c, nn.softmax_cross_entropy(self.out(h), tree.label[k])
        hl, cl, ll = self.encode(tree, tree.left[k])
        hr, cr, lr = self.encode(tree, tree.right[k])
        h, c = self.cell((hl, cl), (hr, cr))
        return h, c, ll + lr + nn.softmax_cross_entropy(self.out(h), tree.label[k])

    def loss(self, tree):
        return self.encode(tree, len(tree.word) - 1)[2]


def tree_model(seed=0):
    return TreeClassifier(emb=nn.Embedding(12, D, rng=seed, dtype=F64),
                          cell=nn.BinaryTreeLSTMCell(D, H, rng=seed + 1, dtype=F64),
                          out=nn.Linear(H, 3, rng=seed + 2, dtype=F64))


TREES = [random_tree(np.random.default_rng(s), n) for s, n in enumerate([1, 4, 2, 6, 3])]


def test_binary_tree_lstm_cell_forms():
    cell = nn.BinaryTreeLSTMCell(D, H, rng=0, dtype=F64)
    assert cell.U.shape == (5 * H, 2 * H) and cell.hidden_size == H
    np.testing.assert_array_equal(cell.b[H:3 * H], 1.0)      # both forget biases
    x = X[0]
    h, c = cell.leaf(x)
    i, o, u = np.split(cell.W @ x + cell.b_leaf, 3)
    np.testing.assert_allclose(c, sig(i) * np.tanh(u))
    np.testing.assert_allclose(h, sig(o) * np.tanh(c))
    left, right = (HS[0], HS[1]), (HS[2], HS[3])
    z = cell.U @ np.concatenate([HS[0], HS[2]]) + cell.b
    i, fl, fr, o, u = np.split(z, 5)
    c = sig(i) * np.tanh(u) + sig(fl) * HS[1] + sig(fr) * HS[3]
    hn, cn = cell(left, right)
    np.testing.assert_allclose(cn, c)
    np.testing.assert_allclose(hn, sig(o) * np.tanh(c))
    check_batched(lambda m, x: m(x), cell, X, in_axes=(None, 0))
    check_batched(lambda m, a, b: m((a, b), (b, a)), cell, HS, HS[::-1].copy(), in_axes=(None, 0, 0))
    check_batched_grad(lambda m, a, b: m((a, b), (b, -a))[0] + m.leaf(a[:D])[1], cell, HS, HS[::-1].copy())
    sb.check_gradients(lambda m: sum(v.sum() for v in m(left, right)) + m(x)[0].sum(), cell)
    with pytest.raises(TypeError, match="leaf"):
        cell(x, x, x)


def test_recursive_tree_lstm_model():
    model = tree_model()
    check_batched(lambda m, t: m.loss(t), model, TREES, in_axes=(None, 0))
    check_batched_grad(lambda m, t: m.loss(t), model, TREES)
    sb.check_gradients(lambda m: m.loss(TREES[3]), model)


def test_child_sum_tree_lstm_cell():
    cell = nn.ChildSumTreeLSTMCell(D, H, rng=4, dtype=F64)
    x = X[0]
    ch, cc = HS[:3], HS[1:4]
    h, c = cell(x, ch, cc)
    wi, wo, wu, wf = np.split(cell.W @ x + cell.b, 4)
    ui, uo, uu = np.split(cell.U @ ch.sum(0), 3)
    f = sig(wf + ch @ cell.U_f.T)
    c_ref = sig(wi + ui) * np.tanh(wu + uu) + (f * cc).sum(0)
    np.testing.assert_allclose(c, c_ref)
    np.testing.assert_allclose(h, sig(wo + uo) * np.tanh(c_ref))
    leaf_h, leaf_c = cell(x)
    h0, c0 = cell(x, np.zeros((0, H)), np.zeros((0, H)))
    np.testing.assert_allclose(leaf_h, h0)
    np.testing.assert_allclose(leaf_c, c0)
    # examples with different numbers of children (ragged), one of them a leaf
    kids = [rng.standard_normal((k, H)) for k in (2, 0, 3, 1)]
    xs = rng.standard_normal((4, D))
    f = lambda m, x, k: m(x, k, np.tanh(k))[0]  # noqa: E731
    check_batched(f, cell, xs, kids, in_axes=(None, 0, 0))
    check_batched_grad(f, cell, xs, kids)
    sb.check_gradients(lambda m: f(m, xs[2], kids[2]).sum(), cell)
    check_batched(lambda m, x, a: m(x, np.stack([a, -a]), np.stack([a, a]))[1], cell, xs, HS[:4],
                  in_axes=(None, 0, 0))
