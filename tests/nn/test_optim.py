"""Optimisers against their update formulas; groups, decay, clipping; several losses in one
step; a short training run of a Chain MLP."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest

import spmdbatch as sb
from spmdbatch import nn

P0 = {"w": np.array([1.0, -2.0, 0.5]), "embed": np.array([[0.3, -0.1], [2.0, 1.0]]), "n": np.array(3)}
GRADS = [{"w": np.array([0.5, 0.1, -1.0]) * (k + 1), "embed": np.array([[1.0, -2.0], [0.0, 0.5]]) / (k + 1),
          "n": np.zeros(())} for k in range(3)]


def run(opt, steps=3):
    params, state = P0, opt.init(P0)
    for g in GRADS[:steps]:
        params, state = opt.update(params, g, state)
    assert state.step == steps
    assert params["n"] is P0["n"]                      # integer leaves are left alone
    return params, state


def reference(step_fn, slots0, steps=3, groups=None):
    """Apply a hand-written per-leaf update formula."""
    out = {}
    for name in ("w", "embed"):
        p = P0[name].copy()
        s = {k: np.zeros_like(p) + v for k, v in slots0.items()}
        for t, g in enumerate(GRADS[:steps], start=1):
            p, s = step_fn(p, g[name].copy(), s, t, (groups or {}).get(name, {}))
        out[name] = p
    return out


def check(opt, step_fn, slots0=None, **kw):
    got, _ = run(opt)
    ref = reference(step_fn, slots0 or {}, **kw)
    for name in ref:
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-12, atol=1e-14)


def test_sgd_plain_momentum_nesterov_weight_decay():
    check(nn.SGD(0.1), lambda p, g, s, t, o: (p - 0.1 * g, s))

    def momentum(p, g, s, t, o, nesterov=False, wd=0.0):
        g = g + wd * p
        v = 0.9 * s["v"] + g
        return p - 0.1 * (g + 0.9 * v if nesterov else v), {"v": v}
    check(nn.SGD(0.1, momentum=0.9), momentum, {"v": 0.0})
    check(nn.SGD(0.1, momentum=0.9, nesterov=True), lambda *a: momentum(*a, nesterov=True), {"v": 0.0})
    check(nn.SGD(0.1, momentum=0.9, weight_decay=0.01), lambda *a: momentum(*a, wd=0.01), {"v": 0.0})
    with pytest.raises(ValueError, match="Nesterov"):
        nn.SGD(0.1, nesterov=True)


def test_adagrad_and_rmsprop():
    def adagrad(p, g, s, t, o):
        acc = s["a"] + g * g
        return p - 0.05 * g / (np.sqrt(acc) + 1e-10), {"a": acc}
    check(nn.Adagrad(lr=0.05), adagrad, {"a": 0.0})

    def adagrad_init(p, g, s, t, o):
        acc = s["a"] + g * g
        return p - 0.05 * g / (np.sqrt(acc) + 1e-10), {"a": acc}
    check(nn.Adagrad(lr=0.05, initial_accumulator=0.1), adagrad_init, {"a": 0.1})

    def rmsprop(p, g, s, t, o, centered=False, mu=0.0):
        ms = 0.9 * s["s"] + 0.1 * g * g
        m = 0.9 * s["m"] + 0.1 * g if centered else s["m"]
        d = g / (np.sqrt(ms - m * m) + 1e-8)
        b = mu * s["b"] + d if mu else s["b"]
        return p - 0.01 * (b if mu else d), {"s": ms, "m": m, "b": b}
    zeros = {"s": 0.0, "m": 0.0, "b": 0.0}
    check(nn.RMSProp(lr=0.01), rmsprop, zeros)
    check(nn.RMSProp(lr=0.01, centered=True, momentum=0.5),
          lambda *a: rmsprop(*a, centered=True, mu=0.5), zeros)


def test_adam_and_adamw():
    def adam(p, g, s, t, o, wd=0.0, decoupled=False):
        lr = o.get("lr", 0.01)
        if wd and not decoupled:
            g = g + wd * p
        m = 0.9 * s["m"] + 0.1 * g
        v = 0.999 * s["v"] + 0.001 * g * g
        step = (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
        if decoupled:
            step = step + wd * p
        return p - lr * step, {"m": m, "v": v}
    zeros = {"m": 0.0, "v": 0.0}
    check(nn.Adam(lr=0.01), adam, zeros)
    check(nn.Adam(lr=0.01, weight_decay=0.1), lambda *a: adam(*a, wd=0.1), zeros)
    check(nn.AdamW(lr=0.01, weight_decay=0.1), lambda *a: adam(*a, wd=0.1, decoupled=True), zeros)
    # a different learning rate for the embedding table
    check(nn.Adam(lr=0.01, groups={"embed": dict(lr=0.5)}), adam, zeros, groups={"embed": {"lr": 0.5}})
    assert nn.AdamW().hyper["weight_decay"] == 0.01


def test_parameter_groups_on_modules():
    class Model(nn.Module):
        embed: nn.Embedding
        out: nn.Linear
    model = Model(embed=nn.Embedding(5, 2, rng=0), out=nn.Linear(2, 2, rng=1))
    grads = sb.tree_map(np.ones_like, model)
    opt = nn.SGD(0.1, groups={"embed": dict(lr=1.0), "out.b": dict(lr=0.0)})
    assert [hp["lr"] for hp in opt.leaf_hyper(model)] == [1.0, 0.1, 0.0]
    new, _ = opt.update(model, grads, opt.init(model))
    assert type(new) is Model and new.out.W.dtype == np.float32
    np.testing.assert_allclose(new.embed.table, model.embed.table - 1.0, rtol=1e-6)
    np.testing.assert_allclose(new.out.W, model.out.W - 0.1, rtol=1e-6)
    np.testing.assert_array_equal(new.out.b, model.out.b)
    glob = nn.SGD(0.1, groups={"*.b": dict(weight_decay=0.5)})
    assert [hp["weight_decay"] for hp in glob.leaf_hyper(model)] == [0.0, 0.0, 0.5]
    with pytest.raises(ValueError, match="match no parameter"):
        nn.SGD(0.1, groups={"embedding": dict(lr=1.0)}).init(model)
    with pytest.raises(ValueError, match="unknown hyper-parameter"):
        nn.SGD(0.1, groups={"embed": dict(beta1=0.5)})
    with pytest.raises(TypeError, match="unknown hyper-parameter"):
        nn.Adam(lr=0.1, momentum=0.9)


def test_clipping_schedules_and_errors():
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0]])}
    assert nn.global_norm(grads) == 5.0
    clipped, norm = nn.clip_by_global_norm(grads, 1.0)
    assert norm == 5.0 and math.isclose(nn.global_norm(clipped), 1.0)
    same, _ = nn.clip_by_global_norm(grads, 10.0)
    assert same is grads
    params = {"a": np.zeros(2), "b": np.zeros((1, 1))}
    opt = nn.SGD(1.0, clip_norm=1.0)
    new, _ = opt.update(params, grads, opt.init(params))
    np.testing.assert_allclose(new["a"], [-0.6, 0.0])
    np.testing.assert_allclose(new["b"], [[-0.8]])
    sched = nn.SGD(lambda step: 1.0 / (step + 1))
    p, s = {"x": np.array(1.0)}, None
    s = sched.init(p)
    for _ in range(3):
        p, s = sched.update(p, {"x": np.array(1.0)}, s)
    np.testing.assert_allclose(p["x"], 1 - 1 - 1 / 2 - 1 / 3)
    with pytest.raises(ValueError, match="structure"):
        opt.update(params, {"a": np.zeros(2)}, opt.init(params))
    with pytest.raises(TypeError, match="state"):
        opt.update(params, grads, None)
    with pytest.raises(ValueError, match="clip_norm"):
        nn.Adam(clip_norm=0.0)


# --- row-sparse gradients and donated arrays ------------------------------------------------------
def embedding_loss(params, words):
    """A loss that reads rows `words` of the table (twice for a repeated word)."""
    return (np.tanh(params["table"][words] @ params["w"]) ** 2).sum()


SPARSE_PARAMS = {"table": np.random.default_rng(0).standard_normal((7, 3)),
                 "w": np.array([0.5, -1.0, 2.0])}
SPARSE_BATCHES = [np.array([1, 4, 1]), np.array([0, 4]), np.array([6, 6, 2])]


def train_sparse(opt, sparse, donate):
    params = {k: v.copy() for k, v in SPARSE_PARAMS.items()}
    state = opt.init(params)
    loss_and_grad = sb.value_and_grad(embedding_loss, sparse=sparse)
    for words in SPARSE_BATCHES:
        _, grads = loss_and_grad(params, words)
        params, state = opt.update(params, grads, state, donate=donate)
    return params, state


@pytest.mark.parametrize("make", [lambda: nn.Adagrad(lr=0.1),
                                  lambda: nn.Adagrad(lr=0.1, weight_decay=0.01),
                                  lambda: nn.Adam(lr=0.01)])
def test_row_sparse_gradients_and_donation_give_the_dense_update(make):
    """A row-sparse gradient (updating only the rows it touches, in copies or in donated
    arrays) gives the same parameters and state as its dense form."""
    dense, dense_state = train_sparse(make(), sparse=False, donate=False)
    for sparse, donate in [(True, False), (True, True), (False, True)]:
        got, got_state = train_sparse(make(), sparse=sparse, donate=donate)
        for name in dense:
            np.testing.assert_allclose(got[name], dense[name], rtol=1e-12, atol=1e-15)
        for slot in dense_state.slots:
            for name in dense:
                np.testing.assert_allclose(got_state.slots[slot][name], dense_state.slots[slot][name],
                                           rtol=1e-12, atol=1e-15)
    untouched = np.setdiff1d(np.arange(7), np.concatenate(SPARSE_BATCHES))
    assert len(untouched)
    if make().hyper["weight_decay"] == 0 and isinstance(make(), nn.Adagrad):
        np.testing.assert_array_equal(dense["table"][untouched], SPARSE_PARAMS["table"][untouched])


def test_update_leaves_its_inputs_alone_unless_donated():
    opt = nn.Adagrad(lr=0.1)
    params = {k: v.copy() for k, v in SPARSE_PARAMS.items()}
    state = opt.init(params)
    _, grads = sb.value_and_grad(embedding_loss, sparse=True)(params, SPARSE_BATCHES[0])
    table, sum_sq = params["table"], state.slots["sum_sq"]["table"]
    new, new_state = opt.update(params, grads, state)
    np.testing.assert_array_equal(params["table"], SPARSE_PARAMS["table"])   # not donated: intact
    assert not np.any(state.slots["sum_sq"]["table"])
    assert new["table"] is not table
    donated, donated_state = opt.update(params, grads, state, donate=True)
    assert donated["table"] is table and donated_state.slots["sum_sq"]["table"] is sum_sq
    np.testing.assert_array_equal(donated["table"], new["table"])
    np.testing.assert_array_equal(donated_state.slots["sum_sq"]["table"], new_state.slots["sum_sq"]["table"])


def test_donation_never_writes_into_read_only_arrays_or_views():
    opt = nn.Adagrad(lr=0.1)
    base = np.concatenate([SPARSE_PARAMS["table"], np.ones((2, 3))])
    frozen = SPARSE_PARAMS["table"].copy()
    frozen.setflags(write=False)
    for table in (frozen, base[:7]):
        params = {"table": table, "w": SPARSE_PARAMS["w"].copy()}
        before = table.copy()
        _, grads = sb.value_and_grad(embedding_loss, sparse=True)(params, SPARSE_BATCHES[0])
        new, _ = opt.update(params, grads, opt.init(params), donate=True)
        np.testing.assert_array_equal(table, before)
        assert new["table"] is not table and np.any(new["table"] != before)
    np.testing.assert_array_equal(base[7:], 1.0)


def test_donation_of_an_array_two_parameters_share_updates_each_from_the_old_values():
    opt = nn.Adagrad(lr=0.1)
    words = SPARSE_BATCHES[0]

    def tied(params, words):
        return embedding_loss({"table": params["a"], "w": params["w"]}, words) + \
            (params["b"][words] ** 3).sum()
    table = SPARSE_PARAMS["table"].copy()
    params = {"a": table, "b": table, "w": SPARSE_PARAMS["w"].copy()}
    _, grads = sb.value_and_grad(tied, sparse=True)(params, words)
    expected, _ = opt.update(params, grads, opt.init(params))
    got, _ = opt.update(params, grads, opt.init(params), donate=True)
    for name in ("a", "b"):
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-12)
    assert not np.array_equal(got["a"], got["b"])


# --- several losses, one step (adversarial training) ---------------------------------------------
def classify(model, x, y):
    return nn.softmax_cross_entropy(model(x), y)


def test_two_losses_backpropagated_into_shared_weights_then_one_step():
    r = np.random.default_rng(0)
    xs, ys = r.standard_normal((8, 3)), r.integers(0, 2, 8)
    model = nn.Chain(nn.Linear(3, 8, "tanh", rng=0, dtype=np.float64), nn.Linear(8, 2, rng=1, dtype=np.float64))
    batch = sb.spmd(classify, in_axes=(None, 0, 0))
    opt = nn.SGD(0.1, momentum=0.5)
    state = opt.init(model)
    # loss 1 on the clean batch, with gradients for the weights and the inputs
    clean = lambda m, x: batch(m, x, ys).mean()  # noqa: E731
    g_model, g_x = sb.grad(clean, argnums=(0, 1))(model, xs)
    x_adv = xs + 0.1 * np.sign(g_x)                      # fast-gradient-sign adversarial inputs
    g_adv = sb.grad(lambda m: batch(m, x_adv, ys).mean())(model)
    total = nn.add_grads(g_model, g_adv)
    new, state = opt.update(model, total, state)
    joint = sb.grad(lambda m: batch(m, xs, ys).mean() + batch(m, x_adv, ys).mean())(model)
    for (_, a), (_, b) in zip(total.parameters(), joint.parameters()):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    for (_, p), (_, q), (_, g) in zip(new.parameters(), model.parameters(), joint.parameters()):
        np.testing.assert_allclose(p, q - 0.1 * g, rtol=1e-12)


# --- training run ------------------------------------------------------------------------------
def spirals(r, n):
    """Three interleaved spiral arms in the plane (class = arm), with noise."""
    ys = r.integers(0, 3, n)
    radius = r.uniform(0.1, 1.0, n)
    angle = ys * 2 * np.pi / 3 + radius * 5.0 + r.normal(0, 0.1, n)
    return np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1).astype(np.float32), ys


def test_chain_mlp_training_reaches_accuracy():
    """A Chain MLP with dropout learns three spirals: >= 95 % accuracy on held-out points."""
    r = np.random.default_rng(0)
    xs, ys = spirals(r, 600)
    xt, yt = spirals(r, 600)
    model = nn.Chain(nn.Linear(2, 64, "relu", rng=1), nn.Dropout(0.05),
                     nn.Linear(64, 64, "tanh", rng=2), nn.Linear(64, 3, rng=3))

    def loss(m, x, y, key):
        return nn.softmax_cross_entropy(m(x, key), y)
    batch_loss = sb.value_and_grad(
        lambda m, x, y, k: sb.spmd(loss, in_axes=(None, 0, 0, 0))(m, x, y, k).mean())
    opt = nn.Adam(lr=0.01, clip_norm=5.0, groups={"layers.3": dict(lr=0.005)})
    state = opt.init(model)
    start = time.perf_counter()
    losses = []
    n = len(xs)
    for epoch in range(EPOCHS):
        order = r.permutation(n)
        for b in range(0, n, 100):
            idx = order[b:b + 100]
            value, grads = batch_loss(model, xs[idx], ys[idx], idx + epoch * n)
            model, state = opt.update(model, grads, state)
            losses.append(float(value))
    predict = sb.spmd(lambda m, x: np.argmax(m(x)), in_axes=(None, 0))
    train_acc = float((predict(model.eval(), xs) == ys).mean())
    test_acc = float((predict(model.eval(), xt) == yt).mean())
    print(f"MLP on 3 spirals: train accuracy {train_acc:.3f}, test accuracy {test_acc:.3f} after "
          f"{EPOCHS} epochs; loss {np.mean(losses[:6]):.3f} -> {np.mean(losses[-6:]):.3f}; "
          f"{time.perf_counter() - start:.1f}s")
    assert np.mean(losses[-6:]) < 0.3 * np.mean(losses[:6])
    assert test_acc >= 0.95


EPOCHS = 80
