"""`spmd(f, in_axes=..., out_axes=...)` as `jax.vmap` spells them (issue 16, item 3): any axis
(negative too), per-leaf pytrees of axes with None for uniform leaves, out_axes likewise.
Every result is compared with the per-example loop (examples taken with `numpy.take` along
the batch axis, results stacked with `numpy.stack(..., axis=out_axis)`), gradients with the
per-example gradients; mismatched structures are AxesErrors naming the caller's line."""
from __future__ import annotations

import inspect

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import spmdbatch as sb
from spmdbatch.errors import AxesError, SpmdError

THIS_FILE = __file__


def _example(arg, spec, i):
    """Example i of `arg` under the in_axes prefix `spec` (the oracle's own walk)."""
    if spec is None:
        return arg
    if isinstance(spec, dict):
        return {k: _example(arg[k], spec[k], i) for k in arg}
    if isinstance(spec, (tuple, list)):
        return type(arg)(_example(a, s, i) for a, s in zip(arg, spec))
    return np.take(arg, i, axis=spec)


def _stack(outs, spec):
    """Per-example results stacked per the out_axes prefix `spec`."""
    first = outs[0]
    if spec is None:
        return first
    if isinstance(first, dict):
        sub = spec if isinstance(spec, dict) else {k: spec for k in first}
        return {k: _stack([o[k] for o in outs], sub[k]) for k in first}
    if isinstance(first, (tuple, list)):
        sub = spec if isinstance(spec, (tuple, list)) else [spec] * len(first)
        return type(first)(_stack([o[j] for o in outs], sub[j]) for j in range(len(first)))
    return np.stack([np.asarray(o) for o in outs], axis=spec)


def loop(f, args, in_axes, out_axes, batch):
    outs = [f(*[_example(a, s, i) for a, s in zip(args, in_axes)]) for i in range(batch)]
    return _stack(outs, out_axes)


def assert_tree_close(got, expected, where="result"):
    if isinstance(expected, dict):
        assert isinstance(got, dict) and set(got) == set(expected), where
        for k in expected:
            assert_tree_close(got[k], expected[k], f"{where}[{k!r}]")
        return
    if isinstance(expected, (tuple, list)):
        assert type(got) is type(expected) and len(got) == len(expected), where
        for j, (g, e) in enumerate(zip(got, expected)):
            assert_tree_close(g, e, f"{where}[{j}]")
        return
    g, e = np.asarray(got), np.asarray(expected)
    assert g.shape == e.shape, f"{where}: shape {g.shape} != {e.shape}"
    assert g.dtype == e.dtype, f"{where}: dtype {g.dtype} != {e.dtype}"
    np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-12, err_msg=where)


def check(f, args, in_axes, out_axes=0, batch=None):
    batch = batch if batch is not None else _batch(args, in_axes)
    expected = loop(f, args, in_axes, out_axes, batch)
    got = sb.spmd(f, in_axes=in_axes, out_axes=out_axes)(*args)
    assert_tree_close(got, expected)
    return got


def _batch(args, in_axes):
    for a, s in zip(args, in_axes):
        if s is None:
            continue
        if isinstance(s, dict):
            n = _batch([a[k] for k in s], [s[k] for k in s])
        elif isinstance(s, (tuple, list)):
            n = _batch(list(a), list(s))
        else:
            n = np.shape(a)[s]
        if n is not None:
            return n
    return None


# --- per-example functions with data-dependent control flow ----------------------------------
def branchy(x, w):
    """x: a per-example vector; w: a uniform vector or a per-example one."""
    if x.sum() > 0:
        y = x * w
    else:
        y = x - w
    k = 0
    while k < 3 and y.max() > 0.5:
        y = y * 0.5
        k += 1
    return y, k


def pair(d):
    """A dict argument: d["a"] per example (vector), d["b"] uniform or per example."""
    s = d["a"].sum()
    if s > d["b"].sum():
        return {"sum": s, "v": d["a"] + d["b"]}
    return {"sum": -s, "v": d["a"] * d["b"]}


def test_every_axis_of_a_matrix_argument():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4, 5, 3))       # per example (3,) vectors at every axis choice below
    for axis, per in ((0, (5, 3)), (1, (4, 3)), (2, (4, 5)), (-1, (4, 5)), (-2, (4, 3)), (-3, (5, 3))):
        w = rng.normal(size=per[-1])
        check(lambda x, w: branchy(x.reshape(-1)[:per[-1]], w)[0], (X, w), (axis, None))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), ndim=st.integers(1, 3), data=st.data())
def test_any_in_axis_and_out_axis_match_the_loop(seed, ndim, data):
    rng = np.random.default_rng(seed)
    batch = data.draw(st.integers(1, 5))
    d = data.draw(st.integers(1, 4))
    axis = data.draw(st.integers(-(ndim + 1), ndim))           # the batch axis of X
    per_shape = [d] + [data.draw(st.integers(1, 3)) for _ in range(ndim - 1)]
    shape = list(per_shape)
    shape.insert(axis % (ndim + 1), batch)
    X = rng.normal(size=shape)
    w_batched = data.draw(st.booleans())
    w = rng.normal(size=(batch, d) if w_batched else (d,))
    w_axis = data.draw(st.sampled_from([0, -2])) if w_batched else None
    out_y = data.draw(st.integers(-2, 1))         # y is a (d,) vector per example
    out_k = data.draw(st.sampled_from([0, -1]))

    def f(x, w):
        y, k = branchy(x.reshape(x.shape[0], -1)[:, 0], w)
        return y * 1.0 + x.reshape(x.shape[0], -1).sum(axis=1), k

    check(f, (X, w), (axis, w_axis), (out_y, out_k))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), a_axis=st.sampled_from([0, 1, -1, -2]),
       b_spec=st.sampled_from([None, 0, 1, -1]), out=st.sampled_from(
           [0, 1, -1, {"sum": 0, "v": 1}, {"sum": 0, "v": -2}, {"sum": -1, "v": 0}]))
def test_dict_pytrees_of_axes(seed, a_axis, b_spec, out):
    rng = np.random.default_rng(seed)
    batch, d = 3, 4
    a = np.moveaxis(rng.normal(size=(batch, d)), 0, a_axis)
    b = rng.normal(size=(d,)) if b_spec is None else np.moveaxis(rng.normal(size=(batch, d)), 0, b_spec)
    if isinstance(out, int) and not -1 <= out <= 0:
        out = {"sum": 0, "v": out}        # the scalar result has one axis once stacked
    check(pair, ({"a": a, "b": b},), ({"a": a_axis, "b": b_spec},), out)


def test_tuple_and_list_pytrees_of_axes_with_none_leaves():
    rng = np.random.default_rng(1)
    xs = (rng.normal(size=(3, 4)), rng.normal(size=(4,)), [rng.normal(size=(4, 3)), 2.0])

    def f(t):
        x, w, (z, c) = t
        if x[0] > 0:
            return x * w + z * c, (z.sum(), w)
        return x - w, (z.max(), w)

    check(f, (xs,), ((0, None, [-1, None]),), (1, (0, None)))
    check(f, (xs,), ((0, None, (1, None)),), ((0, (-1, None))))


def test_out_axes_none_returns_a_uniform_result_once():
    W = np.arange(6.0).reshape(2, 3)

    def f(x, W):
        return x * 2.0, W.T

    got = sb.spmd(f, in_axes=(0, None), out_axes=(0, None))(np.ones(4), W)
    np.testing.assert_array_equal(got[1], W.T)
    assert got[1].shape == (3, 2)


def test_keyword_arguments_stay_batched_along_axis_zero():
    X = np.arange(12.0).reshape(3, 4)
    got = sb.spmd(lambda x, y: x + y, in_axes=(1,))(X, y=np.arange(4.0))
    np.testing.assert_array_equal(got, X.T + np.arange(4.0)[:, None])


def test_gradients_through_in_axes_equal_the_per_example_gradients():
    rng = np.random.default_rng(2)
    W = rng.normal(size=(3, 4))
    X = rng.normal(size=(4, 5))          # examples are the columns (in_axes 1)

    def f(W, x):
        h = np.tanh(W @ x)
        if h.sum() > 0:
            return (h * h).sum()
        return h.sum() * 3.0

    def loss(W, X):
        return (sb.spmd(f, in_axes=(None, 1))(W, X) * np.arange(1.0, 6.0)).sum()

    gW, gX = sb.grad(loss, argnums=(0, 1))(W, X) if _has_argnums() else _grads(loss, W, X)
    eW = sum((i + 1.0) * sb.grad(lambda W: f(W, X[:, i]))(W) for i in range(5))
    eX = np.stack([(i + 1.0) * sb.grad(lambda x: f(W, x))(X[:, i]) for i in range(5)], axis=1)
    np.testing.assert_allclose(gW, eW, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gX, eX, rtol=1e-10, atol=1e-12)


def test_gradients_through_out_axes_and_negative_in_axes():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(2, 3, 4))       # batch on the last axis
    C = rng.normal(size=(2, 4, 3))       # weights of the result with its batch axis at 1

    def f(x):
        if x[0, 0] > 0:
            return x * x
        return np.sin(x)

    def loss(X):
        return (sb.spmd(f, in_axes=-1, out_axes=1)(X) * C).sum()

    got = sb.grad(loss)(X)
    expected = np.stack([sb.grad(lambda x: (f(x) * C[:, i, :]).sum())(X[..., i]) for i in range(4)],
                        axis=-1)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    numeric = np.zeros_like(X)
    eps = 1e-6
    for idx in np.ndindex(X.shape):
        up, down = X.copy(), X.copy()
        up[idx] += eps
        down[idx] -= eps
        numeric[idx] = (loss(up) - loss(down)) / (2 * eps)
    np.testing.assert_allclose(got, numeric, rtol=1e-5, atol=1e-7)


def _has_argnums():
    return "argnums" in inspect.signature(sb.grad).parameters


def _grads(loss, W, X):
    both = sb.grad(lambda p: loss(p[0], p[1]))((W, X))
    return both[0], both[1]


# --- refusals --------------------------------------------------------------------------------
def _line(text):
    lines, start = inspect.getsourcelines(inspect.currentframe().f_back.f_code)
    for i, line in enumerate(lines):
        if text in line:
            return start + i
    raise AssertionError(text)


def _refused(fn, *args, match=None):
    with pytest.raises(AxesError, match=match) as err:
        fn(*args)
    assert err.value.filename == THIS_FILE, err.value
    return err.value


def test_mismatched_structures_are_axes_errors_naming_the_call():
    X = np.ones((3, 4))
    f = lambda x, y: x + y                                   # noqa: E731
    err = _refused(lambda: sb.spmd(f, in_axes=(0, None, 0))(X, X), match="3 entries for 2")
    assert isinstance(err, ValueError) and isinstance(err, SpmdError)
    _refused(lambda: sb.spmd(lambda d: d["a"], in_axes=({"a": 0, "b": None},))({"a": X}),
             match="keys")
    _refused(lambda: sb.spmd(lambda t: t[0], in_axes=((0, None),))((X, X, X)), match="2 entries")
    _refused(lambda: sb.spmd(lambda t: t, in_axes=((0, 0),))(X), match="2 entries")
    _refused(lambda: sb.spmd(f, in_axes=(2, 0))(X, X), match="in_axes 2 .* 2 axes")
    _refused(lambda: sb.spmd(f, in_axes=(-3, 0))(X, X), match="in_axes -3")
    _refused(lambda: sb.spmd(f, in_axes=("0", 0))(X, X), match="ints or None")
    _refused(lambda: sb.spmd(f, in_axes=0, out_axes=(0, 1))(X, X), match="out_axes")
    _refused(lambda: sb.spmd(lambda x: x, out_axes=2)(X), match="out_axes 2")
    _refused(lambda: sb.spmd(lambda x: {"a": x}, out_axes={"b": 0})(X), match="keys")
    _refused(lambda: sb.spmd(f, in_axes=(None, None))(X, X), match="no argument is batched")


def test_out_axes_none_for_a_per_example_result_is_refused():
    _refused(lambda: sb.spmd(lambda x: x * 2, out_axes=None)(np.ones((3, 2))), match="differs")


def test_ragged_values_take_axis_zero_only():
    examples = [np.arange(2.0), np.arange(3.0), np.arange(1.0)]
    got = sb.spmd(lambda x: x.sum())(examples)
    np.testing.assert_array_equal(got, [1.0, 3.0, 0.0])
    _refused(lambda: sb.spmd(lambda x: x.sum(), in_axes=1)(examples), match="list of per-example")

    def grow(n):
        return np.arange(n) * 1.0

    _refused(lambda: sb.spmd(grow, out_axes=1)(np.array([1, 3])), match="differ in length")
    _refused(lambda: sb.spmd(grow, out_axes=-1)(np.array([1, 3])), match="differ in length")
    np.testing.assert_array_equal(sb.spmd(grow, out_axes=0)(np.array([1, 3]))[1], [0.0, 1.0, 2.0])


def test_a_scalar_leaf_marked_batched_is_refused_with_the_line():
    with pytest.raises(sb.BatchSizeError) as err:
        sb.spmd(lambda x, y: x + y, in_axes=(0, 1))(np.ones(3), 2.0)
    assert err.value.filename == THIS_FILE
