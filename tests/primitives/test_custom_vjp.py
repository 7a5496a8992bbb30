"""`spmdbatch.custom_vjp`: under grad, under spmd (fwd/bwd batched by spmd, with control flow),
under grad of spmd, with pytree arguments and shared (uniform) arguments; its errors."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import spmdbatch as sb
from spmdbatch.errors import SpmdError


# --- a function whose VJP differs from its derivative (gradient clipping) --------------------
@sb.custom_vjp
def clip_gradient(x, bound):
    return x


def _clip_fwd(x, bound):
    return x, bound


def _clip_bwd(bound, g):
    return np.clip(g, -bound, bound), None


clip_gradient.defvjp(_clip_fwd, _clip_bwd)


# --- a function with data-dependent control flow in fwd and bwd -------------------------------
@sb.custom_vjp
def soft_abs(x):
    """|x| smoothed near 0 (x^2 / 2 inside [-1, 1]); its VJP is written by hand."""
    if x > 1:
        return x - 0.5
    if x < -1:
        return -x - 0.5
    return 0.5 * x * x


def _soft_abs_fwd(x):
    return soft_abs.fn(x), x


def _soft_abs_bwd(x, g):
    if x > 1:
        slope = 1.0
    elif x < -1:
        slope = -1.0
    else:
        slope = x
    return (g * slope,)


soft_abs.defvjp(_soft_abs_fwd, _soft_abs_bwd)


# --- pytree arguments, one of them shared by the examples --------------------------------------
@sb.custom_vjp
def affine(params, x):
    return np.tanh(params["w"] @ x + params["b"])


def _affine_fwd(params, x):
    y = np.tanh(params["w"] @ x + params["b"])
    return y, (params, x, y)


def _affine_bwd(res, g):
    params, x, y = res
    dz = g * (1 - y * y)
    return {"w": np.outer(dz, x), "b": dz}, params["w"].T @ dz


affine.defvjp(_affine_fwd, _affine_bwd)


def _numeric_affine_grads(params, x, g):
    """The VJP of affine by the ordinary autodiff (the custom one equals it by construction)."""
    return sb.vjp(lambda p, x: np.tanh(p["w"] @ x + p["b"]), params, x)[1](g)


RNG = np.random.default_rng(0)
PARAMS = {"w": RNG.standard_normal((3, 2)), "b": RNG.standard_normal(3)}
XS = RNG.standard_normal((5, 2))


def test_under_grad_the_custom_vjp_replaces_the_derivative():
    x = np.array([3.0, -0.5, 10.0])
    g = sb.grad(lambda x: (clip_gradient(x, 1.0) * np.array([5.0, 0.2, -7.0])).sum())(x)
    np.testing.assert_allclose(g, [1.0, 0.2, -1.0])
    assert sb.grad(lambda x: soft_abs(x))(0.3) == pytest.approx(0.3)
    assert sb.grad(lambda x: soft_abs(x))(-4.0) == pytest.approx(-1.0)


def test_plain_values_call_the_function_itself():
    assert soft_abs(3.0) == 2.5
    np.testing.assert_allclose(clip_gradient(np.ones(2), 1.0), np.ones(2))


def test_under_spmd_fwd_runs_over_the_examples_with_control_flow():
    xs = np.array([-3.0, -0.5, 0.0, 0.7, 2.0])
    np.testing.assert_allclose(sb.spmd(soft_abs)(xs), [soft_abs(x) for x in xs])

    def f(x):                                  # called under a varying branch of the caller
        if x > 0:
            return soft_abs(x * 3) + 1
        return soft_abs(x)
    np.testing.assert_allclose(sb.spmd(f)(xs), [f(x) for x in xs])


def test_grad_of_spmd_sums_the_per_example_custom_vjps():
    xs = np.array([-3.0, -0.5, 0.25, 0.7, 2.0])

    def f(w, x):
        y = soft_abs(w * x)
        while y > 1.5:                          # a data-dependent loop after the call
            y = y / 2
        return y

    def batched_loss(w):
        return sb.spmd(f, in_axes=(None, 0))(w, xs).sum()

    w = 1.3
    expected = sum(sb.grad(lambda w: f(w, x))(w) for x in xs)
    assert sb.grad(batched_loss)(w) == pytest.approx(expected)
    # per-example inputs get their own gradients
    got = sb.grad(lambda xs: sb.spmd(lambda x: clip_gradient(x * x, 0.5))(xs).sum())(xs)
    np.testing.assert_allclose(got, np.clip(1.0, -0.5, 0.5) * 2 * xs)


def test_pytree_and_shared_arguments_under_grad_of_spmd():
    def loss(params):
        return sb.spmd(lambda p, x: affine(p, x).sum(), in_axes=(None, 0))(params, XS).sum()

    got = sb.grad(loss)(PARAMS)
    expected_w = sum(_numeric_affine_grads(PARAMS, x, np.ones(3))[0]["w"] for x in XS)
    expected_b = sum(_numeric_affine_grads(PARAMS, x, np.ones(3))[0]["b"] for x in XS)
    np.testing.assert_allclose(got["w"], expected_w)
    np.testing.assert_allclose(got["b"], expected_b)
    per_example = sb.spmd(lambda p, x: affine(p, x).sum(), in_axes=(None, 0))
    got_x = sb.grad(lambda xs: per_example(PARAMS, xs).sum())(XS)
    np.testing.assert_allclose(got_x, [_numeric_affine_grads(PARAMS, x, np.ones(3))[1] for x in XS])


@settings(max_examples=20, deadline=None)
@given(xs=hnp.arrays(np.float64, st.integers(1, 6), elements=st.floats(-4, 4)), w=st.floats(-2, 2))
def test_random_batches_equal_the_loop(xs, w):
    f = lambda w, x: soft_abs(w * x) * x  # noqa: E731
    np.testing.assert_allclose(sb.spmd(f, in_axes=(None, 0))(w, xs), [f(w, x) for x in xs])
    got = sb.grad(lambda w: sb.spmd(f, in_axes=(None, 0))(w, xs).sum())(w)
    assert got == pytest.approx(sum(sb.grad(lambda w: f(w, x))(w) for x in xs), abs=1e-12)


def test_spmd_of_grad_of_a_custom_vjp_function():
    xs = np.array([-3.0, -0.5, 0.25, 2.0])
    got = sb.spmd(sb.grad(soft_abs))(xs)
    np.testing.assert_allclose(got, [sb.grad(soft_abs)(x) for x in xs])


# --- errors -------------------------------------------------------------------------------------
def test_errors_name_the_function_and_the_line():
    @sb.custom_vjp
    def no_rule(x):
        return x
    with pytest.raises(SpmdError, match="before its VJP was defined") as info:
        sb.grad(lambda x: no_rule(x))(1.0)
    assert info.value.filename == __file__

    @sb.custom_vjp
    def bad(x, y):
        return x * y
    bad.defvjp(lambda x, y: (x * y, (x, y)), lambda res, g: (g * res[1],))
    with pytest.raises(SpmdError, match="1 cotangents for 2 positional arguments"):
        sb.grad(lambda x: bad(x, 2.0))(1.0)

    @sb.custom_vjp
    def not_a_pair(x):
        return x
    not_a_pair.defvjp(lambda x: x, lambda res, g: (g,))
    with pytest.raises(SpmdError, match="not a pair"):
        sb.grad(lambda x: not_a_pair(x))(1.0)
    with pytest.raises(SpmdError, match="keyword arguments"):
        sb.grad(lambda x: soft_abs(x=x))(1.0)

    @sb.custom_vjp
    def wrong_shape(x):
        return x.sum()
    wrong_shape.defvjp(lambda x: (x.sum(), None), lambda res, g: (np.ones(5),))
    with pytest.raises(SpmdError, match="has shape"):
        sb.grad(lambda x: wrong_shape(x))(np.ones(3))
