"""Feed-forward components, activations, initialisers and per-example random numbers:
each under @spmd against the per-example loop, and its gradients with check_gradients."""
from __future__ import annotations

import functools
import sys

import numpy as np
import pytest

import spmdbatch as sb
from spmdbatch import nn

sys.path.insert(0, __file__.rsplit("/", 2)[0] + "/spmd")
from oracle import check_batched, check_batched_grad  # noqa: E402

F64 = np.float64
rng = np.random.default_rng(0)
X = rng.standard_normal((6, 4)) * 2
IDS = np.array([0, 3, 9, 3, 1, 7])


def apply(m, x):
    return m(x)


def swish(x):  # a user-defined activation in plain numpy
    return x * sb.sigmoid(x)


def branchy(x):  # a user-defined activation with a data-dependent branch
    if x.sum() > 0:
        return x * 2.0
    return np.tanh(x)


ACTS = [None, "relu", "leakyrelu", nn.leaky(0.3), functools.partial(nn.leakyrelu, a=0.2), "sigmoid",
        "tanh", "softplus", "gelu", "softmax", "log_softmax", swish, branchy, lambda x: x ** 2]


@pytest.mark.parametrize("act", ACTS, ids=lambda a: getattr(a, "__name__", str(a)))
def test_linear_with_activation(act):
    lin = nn.Linear(4, 3, activation=act, rng=1, dtype=F64)
    check_batched(apply, lin, X, in_axes=(None, 0))
    check_batched_grad(apply, lin, X)
    if act not in ("relu", "leakyrelu") and not isinstance(act, functools.partial):
        sb.check_gradients(lambda m: apply(m, X[0]), lin)   # relu kinks: checked below away from 0


def test_linear_shapes_bias_and_direct_batches():
    lin = nn.Linear(4, 3, rng=0, bias=False)
    assert lin.b is None and lin.W.dtype == np.float32 and (lin.in_features, lin.out_features) == (4, 3)
    assert nn.Dense is nn.Linear
    dense = nn.Dense(4, 3, "relu", rng=0, dtype=F64)
    np.testing.assert_allclose(dense(X), np.stack([dense(x) for x in X]))
    np.testing.assert_array_equal(nn.Linear(4, 3, rng=5).W, nn.Linear(4, 3, rng=5).W)
    with pytest.raises(ValueError, match="unknown activation"):
        nn.Linear(2, 2, activation="swishy")


def test_activation_values_and_stability():
    x = np.array([-1000.0, -3.0, -0.5, 0.5, 3.0, 1000.0])
    np.testing.assert_allclose(nn.relu(x), np.maximum(x, 0))
    np.testing.assert_allclose(nn.leakyrelu(x), np.where(x > 0, x, 0.01 * x))
    np.testing.assert_allclose(nn.leakyrelu(x, a=0.2), np.where(x > 0, x, 0.2 * x))
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        np.testing.assert_allclose(nn.sigmoid(x), [0, 1 / (1 + np.exp(3)), 1 / (1 + np.exp(0.5)),
                                                   1 / (1 + np.exp(-0.5)), 1 / (1 + np.exp(-3)), 1])
        np.testing.assert_allclose(nn.softplus(x), [0, np.log1p(np.exp(-3)), np.log1p(np.exp(-0.5)),
                                                    np.log1p(np.exp(0.5)), np.log1p(np.exp(3)), 1000])
        np.testing.assert_allclose(nn.softmax(x).sum(), 1.0)
        np.testing.assert_allclose(nn.log_softmax(x)[-1], 0.0)
    np.testing.assert_allclose(nn.gelu(np.array([0.0, 1.0, -1.0])), [0.0, 0.841192, -0.158808], atol=1e-6)
    g = sb.grad(lambda v: (nn.relu(v) + nn.leakyrelu(v, 0.1)).sum())(np.array([-2.0, 3.0]))
    np.testing.assert_allclose(g, [0.1, 2.0])
    for act in (nn.relu, nn.leakyrelu, nn.leaky(0.3)):
        sb.check_gradients(lambda v: act(v).sum(), np.array([-2.0, -0.3, 0.4, 5.0]))


def test_embedding():
    emb = nn.Embedding(10, 5, rng=0, dtype=F64)
    check_batched(apply, emb, IDS, in_axes=(None, 0))
    check_batched_grad(apply, emb, IDS)
    g = sb.grad(lambda e: sb.spmd(apply, in_axes=(None, 0))(e, IDS).sum())(emb)
    np.testing.assert_array_equal(g.table[:, 0], np.bincount(IDS, minlength=10))
    sb.check_gradients(lambda e: (e(np.array([1, 4, 1])) ** 2).sum(), emb)
    seqs = [np.array([1, 2, 3]), np.array([4]), np.array([5, 6])]    # ragged id sequences

    def bag_of_words(e, ids):
        acc = np.zeros(5)
        for i in ids:
            acc = acc + e(i)
        return acc
    check_batched(bag_of_words, emb, seqs, in_axes=(None, 0))
    check_batched_grad(bag_of_words, emb, seqs)


def test_chain_of_components_functions_and_lambdas():
    chain = nn.Chain(nn.Linear(4, 6, "relu", rng=0, dtype=F64), np.tanh, lambda h: h * 2 - 0.1,
                     branchy, nn.Linear(6, 2, rng=1, dtype=F64))
    assert len(chain) == 5 and isinstance(chain[1], nn.Fn)
    check_batched(apply, chain, X, in_axes=(None, 0))
    check_batched_grad(apply, chain, X)
    sb.check_gradients(lambda c: apply(c, X[1]), chain)
    x = X[2]
    expected = chain[4](branchy(np.tanh(chain[0](x)) * 2 - 0.1))
    np.testing.assert_allclose(chain(x), expected)
    with pytest.raises(TypeError, match="not callable"):
        nn.Chain(nn.Linear(2, 2), 3)


def test_dropout_masks_are_per_example_and_reproducible():
    drop = nn.Dropout(0.5)
    xs = np.ones((8, 200))
    keys = np.arange(8) + 100
    f = sb.spmd(lambda x, k: drop(x, k))
    out = f(xs, keys)
    assert set(np.unique(out)) == {0.0, 2.0}                          # scaled by 1 / (1 - rate)
    assert all(not np.array_equal(out[0], out[i]) for i in range(1, 8))  # masks differ
    np.testing.assert_array_equal(out, f(xs, keys))                   # same keys, same masks
    assert not np.array_equal(out, f(xs, keys + 8))
    np.testing.assert_array_equal(out, np.stack([drop(x, k) for x, k in zip(xs, keys)]))
    assert abs((out == 0).mean() - 0.5) < 0.05
    check_batched(lambda x, k: drop(x, k), xs, keys)
    np.testing.assert_array_equal(drop.eval()(xs[0]), xs[0])
    np.testing.assert_array_equal(nn.Dropout(0.0)(xs[0]), xs[0])
    with pytest.raises(ValueError, match="needs a per-example key"):
        drop(xs[0])
    with pytest.raises(ValueError, match="rate"):
        nn.Dropout(1.0)


def test_dropout_in_chain_gradients_follow_the_mask():
    model = nn.Chain(nn.Linear(4, 16, "tanh", rng=0, dtype=F64), nn.Dropout(0.3), nn.Linear(16, 2, rng=1, dtype=F64))
    keys = np.arange(6)
    check_batched(lambda m, x, k: m(x, k), model, X, keys, in_axes=(None, 0, 0))
    check_batched_grad(lambda m, x, k: m(x, k), model, X, keys)
    sb.check_gradients(lambda m: m(X[0], 3).sum(), model)
    a, b = model(X[0], 1), model(X[0], 2)
    assert not np.allclose(a, b)                        # keys differ: masks differ
    np.testing.assert_allclose(model.eval()(X[0]), model[2](model[0](X[0])))


def test_residual_block():
    block = nn.ResidualBlock(4, depth=3, activation="tanh", rng=0, dtype=F64)
    assert len(block.layers) == 3 and all(isinstance(l, nn.Linear) for l in block.layers)
    check_batched(apply, block, X, in_axes=(None, 0))
    check_batched_grad(apply, block, X)
    sb.check_gradients(lambda b: apply(b, X[0]), block)
    x = X[0]
    h = np.tanh(block.layers[1](np.tanh(block.layers[0](x))))
    np.testing.assert_allclose(block(x), np.tanh(x + block.layers[2](h)))
    resnet = nn.Chain(nn.ResidualBlock(4, rng=1, dtype=F64), nn.ResidualBlock(4, rng=2, dtype=F64))
    check_batched_grad(apply, resnet, X)


# --- initialisers ---------------------------------------------------------------------------
def test_initialisers():
    g = np.random.default_rng(0)
    w = nn.init.glorot_uniform(g, (300, 200))
    bound = np.sqrt(6 / 500)
    assert w.dtype == np.float32 and np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
    np.testing.assert_allclose(w.var(), bound ** 2 / 3, rtol=0.05)
    assert nn.init.xavier_uniform is nn.init.glorot_uniform
    h = nn.init.he_normal(g, (400, 300), np.float64)
    np.testing.assert_allclose(h.std(), np.sqrt(2 / 300), rtol=0.03)
    hu = nn.init.he_uniform(g, (400, 300))
    assert np.abs(hu).max() <= np.sqrt(6 / 300)
    q = nn.init.orthogonal(g, (6, 6), np.float64)
    np.testing.assert_allclose(q @ q.T, np.eye(6), atol=1e-12)
    tall = nn.init.orthogonal(g, (8, 3), np.float64)
    np.testing.assert_allclose(tall.T @ tall, np.eye(3), atol=1e-12)
    blocks = nn.init.orthogonal_blocks(g, (12, 4), np.float64)
    for k in range(3):
        np.testing.assert_allclose(blocks[4 * k:4 * k + 4] @ blocks[4 * k:4 * k + 4].T, np.eye(4), atol=1e-12)
    u = nn.init.uniform(g, (1000,), a=0.05)
    assert -0.05 <= u.min() and u.max() < 0.05 and u.max() > 0.045
    np.testing.assert_array_equal(nn.init.glorot_uniform(np.random.default_rng(3), (3, 4)),
                                  nn.init.glorot_uniform(np.random.default_rng(3), (3, 4)))
    np.testing.assert_array_equal(nn.init.he_normal(7, (3, 4)), nn.init.he_normal(7, (3, 4)))
    lin = nn.Linear(3, 2, rng=0, init=functools.partial(nn.init.uniform, a=1e-3))
    assert np.abs(lin.W).max() <= 1e-3
    with pytest.raises(ValueError, match="unknown initialiser"):
        nn.Linear(3, 2, init="magic")
    with pytest.raises(TypeError, match="Generator"):
        nn.init.as_rng("seed")


# --- per-example random numbers -------------------------------------------------------------
def test_random_streams():
    R = nn.random
    u = R.uniform(7, (4000,))
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.02
    np.testing.assert_array_equal(u, R.uniform(np.int64(7), 4000))
    assert not np.array_equal(R.uniform(7, 5), R.uniform(8, 5))
    assert not np.array_equal(R.uniform(R.fold_in(7, 0), 5), R.uniform(R.fold_in(7, 1), 5))
    n = R.normal(3, (20000,))
    assert abs(n.mean()) < 0.03 and abs(n.std() - 1) < 0.03
    keys = R.split(11, 3)
    assert len({R.uniform(k, ()).item() for k in keys}) == 3
    check_batched(lambda k: (R.uniform(k, (3, 2)), R.normal(k, 4), R.bernoulli(k, 0.3, 5)), np.arange(5) - 2)
    with pytest.raises(TypeError, match="integer"):
        R.uniform(1.5, 3)
