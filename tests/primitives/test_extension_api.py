"""Primitives declared outside the package (here, in a test file) with `spmdbatch.primitive`,
used under `spmd`, `grad` and `grad` of `spmd` with no library edit; and the declaration's
errors."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import spmdbatch as sb
from spmdbatch.errors import UnsupportedOperation

# --- an elementwise primitive: derived batching and ragged rules, a numpy function ------------
softplus = sb.primitive("test_softplus", lambda x: np.logaddexp(0.0, x), elementwise=True,
                        vjp=(lambda g, ans, x: g * sb.sigmoid(x),))


# --- a primitive with static params and no rules but its VJP: the per-example loop ----------
@sb.primitive("test_topk_sum", vjp=(lambda g, ans, x, *, k: np.where(x >= np.sort(x)[-k], g, 0.0),))
def topk_sum(x, *, k):
    """The sum of the k largest entries."""
    return np.sort(x)[-k:].sum()


# --- a primitive with its own batching rule, and a numpy-like function routed to it ----------
def _scaled_cumsum(x, *, scale):
    return np.cumsum(x, axis=-1) * scale


def _scaled_cumsum_batch(args, *, scale):
    (x,) = args
    return type(x)(scaled_cumsum(x.data, scale=scale))     # the last axis is the example's too


CALLS = {"rule": 0}


def _counted(rule):
    def counting(args, **params):
        CALLS["rule"] += 1
        return rule(args, **params)
    return counting


scaled_cumsum = sb.primitive(
    "test_scaled_cumsum", _scaled_cumsum, batch=_counted(_scaled_cumsum_batch),
    ragged="the cumulative sum runs along the last axis, which padding would reach",
    vjp=(lambda g, ans, x, *, scale: np.flip(np.cumsum(np.flip(g, -1), axis=-1), -1) * scale,))


def _loop(f, *examples):
    return np.stack([np.asarray(f(*e)) for e in zip(*examples)])


XS = np.array([[0.5, -1.0, 2.0], [3.0, 0.1, -0.2], [-2.0, -3.0, 1.0], [0.0, 4.0, 4.0]])


def test_elementwise_primitive_under_spmd_grad_and_numpy():
    def f(x):
        if x.sum() > 1:                       # a varying branch around the primitive
            return softplus(x) * 2
        return softplus(-x)
    np.testing.assert_allclose(sb.spmd(f)(XS), _loop(f, XS))
    g = sb.grad(lambda x: softplus(x).sum())(XS[0])
    np.testing.assert_allclose(g, 1 / (1 + np.exp(-XS[0])))
    # gradients through spmd: the sum of the per-example gradients
    w = np.array([0.3, -0.7, 1.1])
    batched = sb.grad(lambda w: sb.spmd(lambda w, x: f(w * x).sum(), in_axes=(None, 0))(w, XS).sum())(w)
    per_example = sum(sb.grad(lambda w: f(w * x).sum())(w) for x in XS)
    np.testing.assert_allclose(batched, per_example)


def test_elementwise_primitive_on_ragged_examples():
    xs = [np.array([1.0, -2.0]), np.array([0.5]), np.array([3.0, 0.0, -1.0])]
    got = sb.spmd(lambda x: softplus(x).sum())(xs)
    np.testing.assert_allclose(got, [np.logaddexp(0, x).sum() for x in xs])


def test_per_example_loop_rule_with_params_values_and_gradients():
    def f(x):
        k = 1
        if x[0] > 0:
            k = 2
        return topk_sum(x, k=2) + topk_sum(x * k, k=1)
    np.testing.assert_allclose(sb.spmd(f)(XS), _loop(f, XS))
    w = np.array([1.0, 2.0, 0.5])
    batched = sb.grad(lambda w: sb.spmd(lambda w, x: f(w * x), in_axes=(None, 0))(w, XS).sum())(w)
    per_example = sum(sb.grad(lambda w: f(w * x))(w) for x in XS)
    np.testing.assert_allclose(batched, per_example)
    # ragged examples: each example's own length
    xs = [np.array([1.0, -2.0, 5.0]), np.array([0.5, 7.0])]
    np.testing.assert_allclose(sb.spmd(lambda x: topk_sum(x, k=2))(xs), [6.0, 7.5])


def test_declared_batching_rule_is_used_and_ragged_refusal_names_the_line():
    before = CALLS["rule"]
    got = sb.spmd(lambda x: scaled_cumsum(x, scale=2.0))(XS)
    assert CALLS["rule"] == before + 1
    np.testing.assert_allclose(got, np.cumsum(XS, axis=-1) * 2.0)
    g = sb.grad(lambda w: sb.spmd(lambda w, x: scaled_cumsum(w * x, scale=3.0).sum(),
                                  in_axes=(None, 0))(w, XS).sum())(np.ones(3))
    np.testing.assert_allclose(g, sum(sb.grad(lambda w: scaled_cumsum(w * x, scale=3.0).sum())(np.ones(3))
                                      for x in XS))
    with pytest.raises(UnsupportedOperation, match="padding would reach") as info:
        sb.spmd(lambda x: scaled_cumsum(x, scale=1.0))([np.ones(2), np.ones(3)])
    assert info.value.filename == __file__


def test_numpy_function_routes_to_the_primitive():
    from spmdbatch.runtime.numpy_api import FUNCTIONS
    assert np.trace not in FUNCTIONS                  # (numpy.trace has no rule of the package)
    sb.primitive("test_trace", lambda x: np.trace(x), numpy=np.trace,
                 vjp=(lambda g, ans, x: g * np.eye(*np.shape(x)),))
    try:
        m = np.arange(9.0).reshape(3, 3)
        np.testing.assert_allclose(sb.grad(lambda m: np.trace(m) * 2)(m), 2 * np.eye(3))
        ms = np.stack([m, -m, m * m])
        np.testing.assert_allclose(sb.spmd(lambda m: np.trace(m) if m[0, 1] > 0 else -np.trace(m))(ms),
                                   [np.trace(m), np.trace(m), np.trace(m * m)])
    finally:
        del FUNCTIONS[np.trace]


def test_numpy_ufunc_of_an_outside_library_routes_to_its_primitive():
    ufunc = np.frompyfunc(lambda a: a, 1, 1)       # a ufunc numpy has no rule for
    prim = sb.primitive("test_identity_ufunc", lambda x: np.asarray(x, dtype=float) * 1.0,
                        elementwise=True, vjp=(lambda g, ans, x: g,), numpy=ufunc)
    try:
        np.testing.assert_allclose(sb.spmd(lambda x: ufunc(x) * 2)(XS), XS * 2)
        np.testing.assert_allclose(sb.grad(lambda x: ufunc(x).sum())(XS[0]), np.ones(3))
    finally:
        from spmdbatch.runtime.numpy_api import FUNCTIONS
        del FUNCTIONS[ufunc]
    assert prim.name == "test_identity_ufunc"


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_derived_rules_equal_the_loop_on_random_shapes(data):
    lanes = data.draw(st.integers(1, 4))
    n = data.draw(st.integers(1, 5))
    xs = data.draw(hnp.arrays(np.float64, (lanes, n), elements=st.floats(-3, 3)))
    k = data.draw(st.integers(1, n))
    np.testing.assert_allclose(sb.spmd(lambda x: topk_sum(x, k=k))(xs),
                               [np.sort(x)[-k:].sum() for x in xs])
    np.testing.assert_allclose(sb.spmd(softplus)(xs), np.logaddexp(0, xs))


# --- errors of the declaration ----------------------------------------------------------------
def test_declaration_errors_are_clear():
    with pytest.raises(TypeError, match="give its VJP"):
        sb.primitive("test_no_vjp", np.sin)
    with pytest.raises(TypeError, match="takes no VJP"):
        sb.primitive("test_nondiff_with_vjp", np.sign, differentiable=False, vjp=(lambda g, ans, x: g,))
    with pytest.raises(TypeError, match="tuple of per-operand rules"):
        sb.primitive("test_bad_vjp", np.sin, vjp=(1,))
    with pytest.raises(TypeError, match="string"):
        sb.primitive("test_bad_ragged", np.sin, vjp=(lambda g, ans, x: g,), ragged=3)
    with pytest.raises(TypeError, match="packed must be a rule"):
        sb.primitive("test_bad_packed", np.sin, vjp=(lambda g, ans, x: g,), packed="rows")
    with pytest.raises(ValueError, match="already registered"):
        sb.primitive("test_softplus", np.sin, vjp=(lambda g, ans, x: g,))
    with pytest.raises(ValueError, match="already implemented"):
        sb.primitive("test_second_tanh", np.tanh, vjp=(lambda g, ans, x: g,), numpy=np.tanh)


def test_results_that_cannot_be_stacked_are_refused_with_the_line():
    odd = sb.primitive("test_rank_varies", lambda x: x if x[0] > 0 else x[:, None],
                       differentiable=False)
    with pytest.raises(UnsupportedOperation, match="different ranks") as info:
        sb.spmd(lambda x: odd(x))(np.array([[1.0, 2.0], [-1.0, 2.0]]))
    assert info.value.filename == __file__


# --- a primitive with a packed rule (the compact ragged layout, runtime/packed.py) -----------
def _row_squares_packed(args):
    """Row-wise: one call on the packed rows of all examples (None: the ragged rule runs)."""
    from spmdbatch.runtime.packed import Packed
    (x,) = args
    if type(x) is not Packed:
        return None
    CALLS["packed"] = CALLS.get("packed", 0) + 1
    return Packed(row_squares(x.rows), x.layout)


row_squares = sb.primitive("test_row_squares", lambda x: (x * x).sum(axis=-1), packed=_row_squares_packed,
                           vjp=(lambda g, ans, x: 2 * x * g[..., None],))


def test_declared_packed_rule_is_used_and_equals_the_loop():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 4))
    xs = [rng.standard_normal((n, 3)) for n in (1, 9, 2, 1)]       # mostly padding: packed

    def f(w, x):
        return (row_squares(x @ w) * np.arange(1.0, 5.0).sum()).sum()

    CALLS["packed"] = 0
    got = sb.spmd(f, in_axes=(None, 0))(w, xs)
    assert CALLS["packed"] >= 1
    np.testing.assert_allclose(got, [f(w, x) for x in xs], rtol=1e-12)
    g = sb.grad(lambda w: sb.spmd(f, in_axes=(None, 0))(w, xs).sum())(w)
    want = sum(sb.grad(f)(w, x) for x in xs)
    np.testing.assert_allclose(g, want, rtol=1e-10)
