"""Elementwise primitives: numpy's ufuncs, `sigmoid`, `where` and `round`.

Each applies to every element on its own, its operands broadcasting as numpy's do, so they
share one batching rule (align the examples' ranks, then one operation on the data:
runtime/batching.py) and one ragged rule (pad the operands alike: runtime/ragged.py), given
by `elementwise=True`. Binary ones are `broadcasting`: autodiff sums each cotangent back to
its operand's shape, so their VJP rules return the broadcast shape. Operations without a
gradient (comparisons, rounding, bit operations) are primitives too, marked
`differentiable=False`: autodiff passes their raw results through, batching still rewrites
them.

VJP rules are written to be numerically safe: a zero cotangent never turns into NaN
(division by a zero derivative denominator is masked: `safe_div`), and `where` sends exact
zeros to the unselected side.
"""
from __future__ import annotations

import math

import numpy as np

from ..ad.tracer import is_traced
from ..runtime.backend import namespace
from .declare import primitive

LN2 = math.log(2.0)
LN10 = math.log(10.0)

UNARY_UFUNCS: dict = {}
"""name -> numpy ufunc, for the differentiable primitives of one operand (likewise below)."""
BINARY_UFUNCS: dict = {}
NONDIFF_UNARY_UFUNCS: dict = {}
NONDIFF_BINARY_UFUNCS: dict = {}


def unary(name, ufunc, vjp):
    """A differentiable ufunc of one operand."""
    UNARY_UFUNCS[name] = ufunc
    return primitive(name, ufunc, elementwise=True, broadcasting=False, vjp=(vjp,), numpy=ufunc,
                     origin=__name__)


def binary(name, ufunc, vjp_x, vjp_y):
    """A differentiable ufunc of two broadcasting operands."""
    BINARY_UFUNCS[name] = ufunc
    return primitive(name, ufunc, elementwise=True, vjp=(vjp_x, vjp_y), numpy=ufunc, origin=__name__)


def nondiff(name, ufunc, operands):
    """A ufunc without gradient (comparisons, rounding, bit operations, tests)."""
    (NONDIFF_UNARY_UFUNCS if operands == 1 else NONDIFF_BINARY_UFUNCS)[name] = ufunc
    return primitive(name, ufunc, elementwise=True, broadcasting=operands > 1, differentiable=False,
                     numpy=ufunc, origin=__name__)


def safe_div(num, den):
    """num / den, but exactly 0 where num == 0 (so 0 * infinite slope is 0, not NaN).

    On traced operands (the backward pass of `grad` inside `grad`) the mask is applied only
    where den == 0, so that the result stays differentiable in `num` where num == 0."""
    xp = namespace(num, den)
    if is_traced(num) or is_traced(den):
        finite = den != 0
        return xp.where(finite, num / xp.where(finite, den, 1), xp.where(num != 0, num / den, 0))
    nonzero = num != 0
    return xp.where(nonzero, num / xp.where(nonzero, den, 1), 0)


def safe_mul(g, d):
    """g * d, but exactly 0 where g == 0 (so a zero cotangent times an infinite slope is 0).

    On traced operands the mask is applied only where d is not finite (see `safe_div`)."""
    if type(g) is np.ndarray and type(d) is np.ndarray:       # (the common case, checked first)
        return np.where(g != 0, g * d, 0)
    xp = namespace(g, d)
    if is_traced(g) or is_traced(d):
        finite = xp.isfinite(d)
        return xp.where(finite, g * xp.where(finite, d, 0), xp.where(g != 0, g * d, 0))
    return xp.where(g != 0, g * d, 0)


def _binary_max(g, x, y, wins):
    """Cotangent of maximum/minimum for the operand that `wins`; ties split in half.

    For a finite numpy cotangent it multiplies by the masks (numpy's `where` takes a slow
    branching path on unpredictable masks, such as a ReLU's): the same values, since g * 1,
    g * 0 and g * 0.5 are exact; a non-finite cotangent keeps `where` (0, not inf * 0 = NaN)."""
    xp = namespace(g)
    if xp is np and type(g) is np.ndarray and g.dtype.kind == "f" and np.isfinite(g).all():
        out = g * wins
        ties = x == y
        if ties.any():
            out = out + (0.5 * g) * ties
        return out
    return xp.where(wins, g, xp.where(x == y, 0.5 * g, 0))


# --- one operand --------------------------------------------------------------------------------
negative = unary("negative", np.negative, lambda g, ans, x: -g)
exp = unary("exp", np.exp, lambda g, ans, x: safe_mul(g, ans))
exp2 = unary("exp2", np.exp2, lambda g, ans, x: safe_mul(g, ans * LN2))
log = unary("log", np.log, lambda g, ans, x: safe_div(g, x))
log2 = unary("log2", np.log2, lambda g, ans, x: safe_div(g, x * LN2))
log10 = unary("log10", np.log10, lambda g, ans, x: safe_div(g, x * LN10))
log1p = unary("log1p", np.log1p, lambda g, ans, x: safe_div(g, 1 + x))
expm1 = unary("expm1", np.expm1, lambda g, ans, x: safe_mul(g, ans + 1))
sqrt = unary("sqrt", np.sqrt, lambda g, ans, x: safe_div(g, 2 * ans))
cbrt = unary("cbrt", np.cbrt, lambda g, ans, x: safe_div(g, 3 * ans * ans))
square = unary("square", np.square, lambda g, ans, x: 2 * g * x)
reciprocal = unary("reciprocal", np.reciprocal, lambda g, ans, x: -safe_mul(g, ans * ans))
sin = unary("sin", np.sin, lambda g, ans, x: g * np.cos(x))
cos = unary("cos", np.cos, lambda g, ans, x: -g * np.sin(x))
tan = unary("tan", np.tan, lambda g, ans, x: g * (1 + ans * ans))
arcsin = unary("arcsin", np.arcsin, lambda g, ans, x: safe_div(g, np.sqrt(1 - x * x)))
arccos = unary("arccos", np.arccos, lambda g, ans, x: -safe_div(g, np.sqrt(1 - x * x)))
arctan = unary("arctan", np.arctan, lambda g, ans, x: g / (1 + x * x))
sinh = unary("sinh", np.sinh, lambda g, ans, x: safe_mul(g, np.cosh(x)))
cosh = unary("cosh", np.cosh, lambda g, ans, x: safe_mul(g, np.sinh(x)))
tanh = unary("tanh", np.tanh, lambda g, ans, x: g * (1 - ans * ans))
arcsinh = unary("arcsinh", np.arcsinh, lambda g, ans, x: g / np.sqrt(x * x + 1))
arccosh = unary("arccosh", np.arccosh, lambda g, ans, x: safe_div(g, np.sqrt(x * x - 1)))
arctanh = unary("arctanh", np.arctanh, lambda g, ans, x: safe_div(g, 1 - x * x))
absolute = unary("absolute", np.absolute, lambda g, ans, x: g * np.sign(x))

# --- two broadcasting operands --------------------------------------------------------------------
add = binary("add", np.add, lambda g, ans, x, y: g, lambda g, ans, x, y: g)
subtract = binary("subtract", np.subtract, lambda g, ans, x, y: g, lambda g, ans, x, y: -g)
multiply = binary("multiply", np.multiply, lambda g, ans, x, y: safe_mul(g, y),
                                           lambda g, ans, x, y: safe_mul(g, x))
divide = binary("divide", np.divide, lambda g, ans, x, y: safe_div(g, y),
                                     lambda g, ans, x, y: -safe_div(safe_mul(g, ans), y))
power = binary("power", np.power, lambda g, ans, x, y: np.where(g != 0, g * y * np.power(x, y - 1), 0),
                                  lambda g, ans, x, y: safe_mul(g, ans * np.log(np.where(x > 0, x, 1))))
maximum = binary("maximum", np.maximum, lambda g, ans, x, y: _binary_max(g, x, y, x > y),
                                        lambda g, ans, x, y: _binary_max(g, x, y, y > x))
minimum = binary("minimum", np.minimum, lambda g, ans, x, y: _binary_max(g, x, y, x < y),
                                        lambda g, ans, x, y: _binary_max(g, x, y, y < x))
fmax = binary("fmax", np.fmax, *maximum.vjp)
fmin = binary("fmin", np.fmin, *minimum.vjp)
arctan2 = binary("arctan2", np.arctan2, lambda g, ans, y, x: safe_div(g * x, x * x + y * y),
                                        lambda g, ans, y, x: -safe_div(g * y, x * x + y * y))
hypot = binary("hypot", np.hypot, lambda g, ans, x, y: safe_div(g * x, ans),
                                  lambda g, ans, x, y: safe_div(g * y, ans))
logaddexp = binary("logaddexp", np.logaddexp, lambda g, ans, x, y: g * np.exp(x - ans),
                                              lambda g, ans, x, y: g * np.exp(y - ans))
remainder = binary("remainder", np.remainder, lambda g, ans, x, y: g,
                                              lambda g, ans, x, y: -safe_mul(g, np.floor(x / y)))

# --- no gradient --------------------------------------------------------------------------------
logical_not = nondiff("logical_not", np.logical_not, 1)
isnan = nondiff("isnan", np.isnan, 1)
isinf = nondiff("isinf", np.isinf, 1)
isfinite = nondiff("isfinite", np.isfinite, 1)
floor = nondiff("floor", np.floor, 1)
ceil = nondiff("ceil", np.ceil, 1)
rint = nondiff("rint", np.rint, 1)
trunc = nondiff("trunc", np.trunc, 1)
sign = nondiff("sign", np.sign, 1)
invert = nondiff("invert", np.invert, 1)
signbit = nondiff("signbit", np.signbit, 1)
less = nondiff("less", np.less, 2)
less_equal = nondiff("less_equal", np.less_equal, 2)
greater = nondiff("greater", np.greater, 2)
greater_equal = nondiff("greater_equal", np.greater_equal, 2)
equal = nondiff("equal", np.equal, 2)
not_equal = nondiff("not_equal", np.not_equal, 2)
logical_and = nondiff("logical_and", np.logical_and, 2)
logical_or = nondiff("logical_or", np.logical_or, 2)
logical_xor = nondiff("logical_xor", np.logical_xor, 2)
floor_divide = nondiff("floor_divide", np.floor_divide, 2)
bitwise_and = nondiff("bitwise_and", np.bitwise_and, 2)
bitwise_or = nondiff("bitwise_or", np.bitwise_or, 2)
bitwise_xor = nondiff("bitwise_xor", np.bitwise_xor, 2)
left_shift = nondiff("left_shift", np.left_shift, 2)
right_shift = nondiff("right_shift", np.right_shift, 2)
gcd = nondiff("gcd", np.gcd, 2)
lcm = nondiff("lcm", np.lcm, 2)


# --- sigmoid, where, round ----------------------------------------------------------------------
def _sigmoid(x):
    xp = namespace(x)
    if not getattr(x, "ndim", 0) or x.dtype.kind != "f":
        return 0.5 * (xp.tanh(0.5 * x) + 1.0)      # (scalars, other dtypes: never overflows)
    t = xp.negative(x)
    # 1 / (1 + exp(-x)) in one buffer (numpy's exp is faster than its tanh); exp(-x)
    # overflows to inf below about -88 (float32), where 1 / inf gives the exact limit 0.
    if xp is np:
        with np.errstate(over="ignore"):
            np.exp(t, out=t)
    else:
        xp.exp(t, out=t)
    t += 1.0
    return xp.reciprocal(t, out=t)


sigmoid = primitive("sigmoid", _sigmoid, elementwise=True, broadcasting=False,
                    vjp=(lambda g, ans, x: g * ans * (1 - ans),))
"""1 / (1 + exp(-x)), without overflow."""


def _where(cond, a, b):
    return np.where(cond, a, b)


where = primitive("where", _where, elementwise=True,
                  vjp=(None,
                       lambda g, ans, c, x, y: np.where(c, g, 0),
                       lambda g, ans, c, x, y: np.where(c, 0, g)))
"""numpy.where(cond, a, b) with all three operands given."""


def _round(a, decimals=0):
    return np.round(a, decimals)


round = primitive("round", _round, elementwise=True, broadcasting=False, differentiable=False)  # noqa: A001
