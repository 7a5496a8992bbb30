"""Exact gradient semantics: ties, non-differentiable ops, numerically safe rules, refusals."""
from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import spmdbatch as sb
from spmdbatch.ad.tracer import Tracer
from spmdbatch.runtime import primitives as P
from spmdbatch.runtime.dispatch import PRIMITIVES


def assert_exact(actual, expected):
    actual = np.asarray(actual)
    assert actual.shape == np.shape(expected)
    np.testing.assert_array_equal(actual, expected)


# --- ties --------------------------------------------------------------------------------------
def test_max_tie_splits_equally():
    assert_exact(sb.grad(lambda x: np.max(x))(np.array([1.0, 3.0, 3.0])), [0.0, 0.5, 0.5])
    assert_exact(sb.grad(lambda x: x.max())(np.array([3.0, 3.0, 3.0, 1.0])), [1 / 3, 1 / 3, 1 / 3, 0])


def test_min_tie_splits_equally():
    assert_exact(sb.grad(lambda x: np.min(x))(np.array([2.0, -1.0, 5.0, -1.0])), [0, 0.5, 0, 0.5])


def test_max_tie_along_axis_with_keepdims():
    x = np.array([[1.0, 4.0, 4.0], [7.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    w = np.array([[1.0], [10.0], [100.0]])
    g = sb.grad(lambda x: (np.max(x, axis=1, keepdims=True) * w).sum())(x)
    assert_exact(g, [[0, 0.5, 0.5], [10, 0, 0], [100 / 3, 100 / 3, 100 / 3]])
    g = sb.grad(lambda x: (np.max(x, axis=0) * np.array([1.0, 2.0, 3.0])).sum())(x)
    assert_exact(g, [[0, 0, 0], [1, 0, 0], [0, 2, 3]])


def test_maximum_minimum_ties_split_in_half():
    x, y = np.array([1.0, 2.0, 3.0]), np.array([1.0, 5.0, 0.0])
    gx, gy = sb.grad(lambda x, y: np.maximum(x, y).sum(), argnums=(0, 1))(x, y)
    assert_exact(gx, [0.5, 0, 1])
    assert_exact(gy, [0.5, 1, 0])
    gx, gy = sb.grad(lambda x, y: np.minimum(x, y).sum(), argnums=(0, 1))(x, y)
    assert_exact(gx, [0.5, 1, 0])
    assert_exact(gy, [0.5, 0, 1])


def test_clip_gradient_is_one_inside_zero_outside():
    x = np.array([-2.0, -0.5, 0.0, 0.5, 2.0])
    assert_exact(sb.grad(lambda x: np.clip(x, -1.0, 1.0).sum())(x), [0, 1, 1, 1, 0])
    assert_exact(sb.grad(lambda x: x.clip(0.0, None).sum())(x), [0, 0, 0.5, 1, 1])  # tie at the bound
    assert_exact(sb.grad(lambda x: np.clip(x, a_min=None, a_max=0.5).sum())(x), [1, 1, 1, 0.5, 0])


def test_abs_at_zero_is_zero():
    assert_exact(sb.grad(lambda x: np.abs(x).sum())(np.array([-2.0, 0.0, 3.0])), [-1, 0, 1])


@settings(max_examples=20, deadline=None)
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=2, max_side=4),
                  elements=st.integers(-3, 3).map(float)))
def test_max_gradient_sums_to_one_with_arbitrary_ties(x):
    g = sb.grad(lambda x: np.max(x))(x)
    hits = x == x.max()
    np.testing.assert_allclose(g, hits / hits.sum(), rtol=0, atol=1e-15)
    assert g.sum() == pytest.approx(1.0)


# --- clip, cumsum and basic-indexing exact values ----------------------------------------------
def test_cumsum_gradient_counts_later_positions():
    assert_exact(sb.grad(lambda x: np.cumsum(x).sum())(np.ones(4)), [4, 3, 2, 1])
    x = np.ones((2, 3))
    assert_exact(sb.grad(lambda x: np.cumsum(x, axis=1)[:, -1].sum() + np.cumsum(x, axis=0)[0].sum())(x),
                 [[2, 2, 2], [1, 1, 1]])


def test_indexing_exact_gradients():
    x = np.arange(12.0).reshape(3, 4)
    assert_exact(sb.grad(lambda x: x[1].sum())(x), [[0] * 4, [1] * 4, [0] * 4])
    assert_exact(sb.grad(lambda x: x[-1, ::-2].sum())(x), [[0] * 4, [0] * 4, [0, 1, 0, 1]])
    assert_exact(sb.grad(lambda x: (x[::-1, 1] * np.array([1.0, 2.0, 3.0])).sum())(x),
                 [[0, 3, 0, 0], [0, 2, 0, 0], [0, 1, 0, 0]])
    assert_exact(sb.grad(lambda x: x[None, ..., 2:3].sum())(x), [[0, 0, 1, 0]] * 3)
    assert_exact(sb.grad(lambda x: x[..., -1].sum())(x), [[0, 0, 0, 1]] * 3)


def test_gather_with_repeated_indices_accumulates():
    x = np.arange(5.0)
    assert_exact(sb.grad(lambda x: x[np.array([0, 0, 3, 0, -1])].sum())(x), [3, 0, 0, 1, 1])
    assert_exact(sb.grad(lambda x: x[[1, 1]].sum())(x), [0, 2, 0, 0, 0])
    assert_exact(sb.grad(lambda x: np.take(x, [4, 4, 4]).sum())(x), [0, 0, 0, 0, 3])
    m = np.ones((2, 3))
    assert_exact(sb.grad(lambda m: m[:, [2, 2, 0]].sum())(m), [[1, 0, 2], [1, 0, 2]])
    assert_exact(sb.grad(lambda m: m[[0, 1, 1], [2, 2, 2]].sum())(m), [[0, 0, 1], [0, 0, 2]])


def test_boolean_mask_gradient():
    x = np.array([[0.5, -1.0, 2.0], [3.0, -4.0, 0.0]])
    assert_exact(sb.grad(lambda x: (x[x > 0] * 2).sum())(x), [[2, 0, 2], [2, 0, 0]])
    assert_exact(sb.grad(lambda x: x[np.array([False, True])].sum())(x), [[0, 0, 0], [1, 1, 1]])


def test_index_update_exact_gradients():
    x = np.arange(4.0)
    v = np.array([10.0, 20.0])
    idx = np.array([1, 1])
    # add: repeats accumulate into x; every value element reaches the output
    gx, gv = sb.grad(lambda x, v: (sb.index_update(x, idx, v, mode="add") * np.arange(1.0, 5.0)).sum(),
                     argnums=(0, 1))(x, v)
    assert_exact(gx, [1, 2, 3, 4])
    assert_exact(gv, [2, 2])
    # set: the overwritten position gets no gradient, and only the last write of a repeated
    # position survives (numpy keeps the last value)
    out = sb.index_update(x, idx, v, mode="set")
    assert_exact(out, [0, 20, 2, 3])
    gx, gv = sb.grad(lambda x, v: (sb.index_update(x, idx, v, mode="set") * np.arange(1.0, 5.0)).sum(),
                     argnums=(0, 1))(x, v)
    assert_exact(gx, [1, 0, 3, 4])
    assert_exact(gv, [0, 2])
    # at(x)[i].set / .add on slices, with a broadcast value
    g = sb.grad(lambda v: sb.at(np.zeros((2, 3)))[:, 1:].add(v).sum())(np.array(1.0))
    assert_exact(g, 4.0)
    with pytest.raises(ValueError, match="mode"):
        sb.index_update(x, 0, 1.0, mode="mul")


def test_setitem_inside_a_differentiated_function():
    def f(x, v):
        y = x * 2.0
        y[1:3] = v * v
        y[0] += 1.0
        return (y * np.array([1.0, 2.0, 3.0, 4.0])).sum()
    x, v = np.arange(4.0), np.array([1.0, -2.0])
    assert f(x, v) == pytest.approx(1 * 1 + 2 * 1 + 3 * 4 + 4 * 6)
    gx, gv = sb.grad(f, argnums=(0, 1))(x, v)
    assert_exact(gx, [2, 0, 0, 8])
    assert_exact(gv, [2 * 1 * 2, 2 * -2 * 3])
    sb.check_gradients(f, x, v)


def test_setitem_on_the_argument_itself():
    def f(x):
        x[0] = x[1] * x[2]
        return x.sum()
    assert_exact(sb.grad(f)(np.array([5.0, 2.0, 3.0])), [0, 4, 3])


# --- non-differentiable operations pass through ------------------------------------------------
X = np.array([[-1.5, 0.25, 2.0], [3.5, -0.75, 0.0]])
INTS = np.array([[1, 2, 3], [4, 5, 6]])

# primitive name -> f(x) computing a raw coefficient from x (traced or not) with that primitive
NONDIFF = {
    "less": lambda x: x < 0.5, "less_equal": lambda x: x <= 0.25, "greater": lambda x: x > 0,
    "greater_equal": lambda x: x >= 0, "equal": lambda x: x == 2.0, "not_equal": lambda x: x != 0,
    "logical_and": lambda x: np.logical_and(x > -1, x < 1),
    "logical_or": lambda x: np.logical_or(x > 1, x < -1),
    "logical_xor": lambda x: np.logical_xor(x > 0, x > 1),
    "logical_not": lambda x: np.logical_not(x > 0),
    "isnan": lambda x: np.isnan(x), "isinf": lambda x: np.isinf(x),
    "isfinite": lambda x: np.isfinite(x), "signbit": lambda x: np.signbit(x),
    "floor": lambda x: np.floor(x), "ceil": lambda x: np.ceil(x), "rint": lambda x: np.rint(x),
    "trunc": lambda x: np.trunc(x), "sign": lambda x: np.sign(x),
    "round": lambda x: np.round(x, 1), "floor_divide": lambda x: x // 0.5,
    "argmax": lambda x: np.argmax(x, axis=1)[:, None] * np.ones((1, 3)),
    "argmin": lambda x: x.argmin() * np.ones((2, 3)),
    "argsort": lambda x: np.argsort(x, axis=1) * np.ones((2, 3)),
    "any": lambda x: np.any(x > 3, axis=0) * np.ones((2, 1)),
    "all": lambda x: (x > -2).all(axis=1, keepdims=True) * np.ones((1, 3)),
    "full_like": lambda x: np.full_like(x, 2.5) + np.ones_like(x) + np.zeros_like(x),
    # integer-only primitives meet integer data inside a differentiated function
    "invert": lambda x: ~(x > 0), "bitwise_and": lambda x: (x > 0) & (x < 1),
    "bitwise_or": lambda x: (x > 2) | (x < -1), "bitwise_xor": lambda x: (x > 0) ^ (x > 1),
    "left_shift": lambda x: np.left_shift(INTS, 1), "right_shift": lambda x: np.right_shift(INTS, 1),
    "gcd": lambda x: np.gcd(INTS, 4), "lcm": lambda x: np.lcm(INTS, 3),
}


def test_every_non_differentiable_primitive_is_covered():
    nondiff = {name for name, p in PRIMITIVES.items()
               if not p.differentiable and p.origin.startswith("spmdbatch.")}   # (tests declare others)
    assert nondiff - set(NONDIFF) == set()
    for name in nondiff:
        assert PRIMITIVES[name].vjp is None


@pytest.mark.parametrize("name", sorted(NONDIFF))
def test_non_differentiable_op_passes_through(name):
    use = NONDIFF[name]
    seen = []

    def f(x):
        c = use(x)
        seen.append(c)
        return (x * c).sum() + (x * x).sum()
    g = sb.grad(f)(X)
    coefficient = np.asarray(use(X), dtype=np.float64)
    assert not isinstance(seen[0], Tracer)  # a raw array: no gradient flows through it
    assert_exact(g, coefficient + 2 * X)
    # the value is what numpy computes
    np.testing.assert_array_equal(np.asarray(seen[0]), use(X))


def test_integer_results_of_differentiable_primitives_are_raw():
    def f(x):
        i = (x > 0).astype(np.int64)
        assert not isinstance(i, Tracer)
        j = np.floor(x).astype(np.int32) * 2
        assert not isinstance(j, Tracer) and j.dtype == np.int32
        return (x * i).sum() + (x * j).sum()
    assert_exact(sb.grad(f)(X), (X > 0) + 2 * np.floor(X))


def test_argmax_indexing_gives_one_hot_gradient():
    x = np.array([0.5, 3.0, -1.0, 2.0])
    assert_exact(sb.grad(lambda x: x[np.argmax(x)] * 3)(x), [0, 3, 0, 0])


def test_python_control_flow_on_traced_values():
    def f(x):
        total = 0.0
        for v in x:
            if v > 0:
                total = total + v * v
            else:
                total = total - v
        return total
    assert_exact(sb.grad(f)(np.array([2.0, -1.0, 3.0])), [4, -1, 6])


# --- numerically safe rules --------------------------------------------------------------------
WITH_ZERO_AND_NEGATIVES = np.array([0.0, -1.0, 2.0, -0.0, 4.0])


def grad_quiet(f, *args, **kw):
    with np.errstate(all="ignore"):  # the unselected branches of where compute inf / nan
        return sb.grad(f, **kw)(*args)


def test_where_log_gives_zero_gradient_at_zero_and_negatives():
    g = grad_quiet(lambda x: np.where(x > 0, np.log(x), 0.0).sum(), WITH_ZERO_AND_NEGATIVES)
    assert_exact(g, [0, 0, 0.5, 0, 0.25])


def test_where_sqrt_gives_zero_gradient_at_zero():
    g = grad_quiet(lambda x: np.where(x > 0, np.sqrt(x), 0.0).sum(), WITH_ZERO_AND_NEGATIVES)
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, [0, 0, 0.5 / np.sqrt(2), 0, 0.25])
    g = grad_quiet(lambda x: np.where(x > 0, x ** 0.5, 0.0).sum(), WITH_ZERO_AND_NEGATIVES)
    np.testing.assert_allclose(g, [0, 0, 0.5 / np.sqrt(2), 0, 0.25])


def test_where_sends_exact_zero_to_the_unselected_side():
    x = WITH_ZERO_AND_NEGATIVES
    # the unselected branch has an infinite / nan derivative; the result must not be polluted
    g = grad_quiet(lambda x: np.where(x > 0, np.log(x), x).sum(), x)
    assert_exact(g, [1, 1, 0.5, 1, 0.25])
    ga, gb = grad_quiet(lambda a, b: np.where(a > 0, a, b).sum(), x, -x, argnums=(0, 1))
    assert_exact(ga, [0, 0, 1, 0, 1])
    assert_exact(gb, [1, 1, 0, 1, 0])


@pytest.mark.parametrize("name, cond, branch", [
    ("1/x", lambda x: x != 0, lambda x: 1.0 / x),
    ("reciprocal", lambda x: x != 0, np.reciprocal),
    ("x log x", lambda x: x > 0, lambda x: x * np.log(x)),
    ("log1p", lambda x: x > -1, np.log1p),
    ("log2 + log10", lambda x: x > 0, lambda x: np.log2(x) + np.log10(x)),
    ("arcsin", lambda x: np.abs(x) < 1, np.arcsin),
    ("arccos", lambda x: np.abs(x) < 1, np.arccos),
    ("arccosh", lambda x: x > 1, np.arccosh),
    ("arctanh", lambda x: np.abs(x) < 1, np.arctanh),
    ("cbrt", lambda x: x != 0, np.cbrt),
    ("sqrt", lambda x: x > 0, np.sqrt),
    ("exp overflow", lambda x: x < 1, lambda x: np.exp(x * 400)),
    ("exp2 / expm1 overflow", lambda x: x < 1, lambda x: np.exp2(x * 600) + np.expm1(x * 400)),
    ("sinh / cosh overflow", lambda x: x < 1, lambda x: np.cosh(x * 400) + np.sinh(x * 400)),
    ("x ** -1", lambda x: x != 0, lambda x: x ** -1.0),
    ("x ** 0.5", lambda x: x > 0, lambda x: x ** 0.5),
    ("2 ** (1/x)", lambda x: x > 0, lambda x: 2.0 ** (1.0 / x)),
    ("remainder by 0", lambda x: x != 0, lambda x: np.remainder(3.0, x)),
    ("arctan2(0, 0)", lambda x: x != 0, lambda x: np.arctan2(x, x)),
    ("hypot(0, 0)", lambda x: x != 0, lambda x: np.hypot(x, x)),
    ("logaddexp", lambda x: x != 0, lambda x: np.logaddexp(np.log(np.abs(x)), 0.0)),
])
def test_masked_singularities_give_finite_gradients(name, cond, branch):
    """Forward finite (the singular branch is masked by where) => gradient finite, 0 where masked."""
    x = np.array([0.0, -1.0, 2.0, 1.0, -0.0, 0.5])
    f = lambda x: np.where(cond(x), branch(x), 0.0)  # noqa: E731
    with np.errstate(all="ignore"):
        assert np.all(np.isfinite(f(x)))
    g = grad_quiet(lambda x: f(x).sum(), x)
    assert np.all(np.isfinite(g)), g
    mask = cond(x)
    assert (~mask).any()
    assert np.all(g[~mask] == 0)
    # where selected, the gradient is the branch's own
    kept = x[mask]
    np.testing.assert_allclose(g[mask], sb.grad(lambda y: branch(y).sum())(kept), rtol=1e-12)


def test_logsumexp_of_a_fully_masked_row():
    x = np.array([[0.5, -np.inf, 1.0], [-np.inf, -np.inf, -np.inf]])
    assert sb.logsumexp(x, axis=1)[1] == -np.inf  # like log(0): no warning, no nan
    valid = np.isfinite(x).any(axis=1)

    def f(x):
        lse = sb.logsumexp(x, axis=1)
        return np.where(valid, lse, 0.0).sum()
    g = sb.grad(f)(x)
    e = np.exp(np.array([0.5, 1.0]))
    np.testing.assert_allclose(g, [[e[0] / e.sum(), 0, e[1] / e.sum()], [0, 0, 0]])


def test_norm_and_std_at_zero_have_zero_gradient():
    assert_exact(sb.grad(lambda x: np.linalg.norm(x))(np.zeros(3)), [0, 0, 0])
    assert_exact(sb.grad(lambda x: np.std(x))(np.full(4, 2.5)), [0, 0, 0, 0])
    g = sb.grad(lambda x: np.linalg.norm(x, axis=1).sum())(np.array([[0.0, 0.0], [3.0, 4.0]]))
    np.testing.assert_allclose(g, [[0, 0], [0.6, 0.8]])


def test_nan_still_propagates_where_the_value_is_nan():
    g = sb.grad(lambda x: np.linalg.norm(x))(np.array([np.nan, 1.0]))
    assert np.isnan(g).all()


POINTS = np.array([-1000.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, np.pi / 2, 1000.0])


def _elementwise_with_rules():
    prims = [p for p in PRIMITIVES.values()
             if p.vjp is not None and p.elementwise]
    assert len(prims) >= 40
    return sorted(prims, key=lambda p: p.name)


@pytest.mark.parametrize("prim", _elementwise_with_rules(), ids=lambda p: p.name)
def test_zero_cotangent_never_becomes_nan(prim):
    """Every elementwise rule maps a zero cotangent to exact zeros, at singular points too."""
    nargs = len(prim.vjp)
    if prim.name == "where":
        grids = np.meshgrid(POINTS > 0, POINTS, POINTS[::-1], indexing="ij")
    else:
        grids = np.meshgrid(*[POINTS] * nargs, indexing="ij")
    with np.errstate(all="ignore"):
        ans = prim.impl(*grids)
        g = np.zeros_like(ans)
        for rule in prim.vjp:
            if rule is None:
                continue
            c = rule(g, ans, *grids)
            assert np.all(np.asarray(c) == 0), f"{prim.name}: zero cotangent gave {c[np.asarray(c) != 0]}"


# --- refusals ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, f", [
    ("numpy.partition", lambda x: np.partition(x, 1)),
    ("numpy.prod", lambda x: np.prod(x)),
    ("numpy.cumprod", lambda x: np.cumprod(x)),
    ("numpy.median", lambda x: np.median(x)),
    ("numpy.fft.fft", lambda x: np.fft.fft(x)),
    ("numpy.linalg.inv", lambda x: np.linalg.inv(x.reshape(2, 2))),
    ("numpy.linalg.norm with ord=1", lambda x: np.linalg.norm(x, ord=1)),
    ("numpy.exp", lambda x: np.exp(x, out=np.empty(4))),
    ("numpy.add", lambda x: np.add(x, 1.0, out=np.empty(4))),
    ("numpy.sum", lambda x: np.sum(x, out=np.empty(()))),
    ("numpy.fmod", lambda x: np.fmod(x, 2.0)),
    ("numpy.add.accumulate", lambda x: np.add.accumulate(x)),
    ("numpy.multiply.reduce", lambda x: np.multiply.reduce(x)),
    ("numpy.where(condition)", lambda x: np.where(x)),
    ("numpy.einsum", lambda x: np.einsum("i,i,i->", x, x, x)),
])
def test_unsupported_function_raises_naming_it(name, f):
    with pytest.raises(NotImplementedError, match=re.escape(name)):
        sb.grad(lambda x: f(x).sum())(np.arange(1.0, 5.0))


def test_unsupported_works_again_after_stop_gradient():
    g = sb.grad(lambda x: (x * np.sort(sb.stop_gradient(x))).sum())(np.array([3.0, 1.0, 2.0]))
    assert_exact(g, [1, 2, 3])


def test_converting_a_tracer_to_an_array_is_refused():
    with pytest.raises(TypeError, match="drop its gradient"):
        sb.grad(lambda x: np.asarray(x).sum())(np.ones(2))


def test_a_differentiable_primitive_without_a_rule_is_refused(monkeypatch):
    monkeypatch.setattr(P.tanh, "vjp", None)
    with pytest.raises(NotImplementedError, match="'tanh' has no VJP rule"):
        sb.grad(lambda x: np.tanh(x).sum())(np.ones(2))


def test_cotangent_sums_updated_in_place_never_leak_into_shared_cotangents():
    """`add` hands one cotangent object to both operands; the backward sweep updates only
    sums it allocated itself in place, so an object shared by two nodes stays intact."""
    x0 = np.array([0.5, -1.0, 2.0, 3.0])

    def f(x):
        p = x * 2.0
        q = x * 3.0
        # p's other consumers come first, so the reverse sweep reaches them after s
        rows = p[np.array([0, 2, 2])] * np.array([1.0, 10.0, 100.0])   # row-sparse terms
        r = p * 5.0
        s = p + q                 # p and q receive one cotangent object
        return (s * s).sum() + r.sum() + rows.sum()

    # s = 5x: (s*s).sum() -> 50x; r = 10x -> 10; rows: 2 * (1, 0, 110, 0)
    expected = 50 * x0 + 10 + 2 * np.array([1.0, 0.0, 110.0, 0.0])
    np.testing.assert_allclose(sb.grad(f)(x0), expected, rtol=1e-12)
    sb.check_gradients(f, x0)
