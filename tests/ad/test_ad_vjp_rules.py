"""Every VJP rule of the primitive registry against central finite differences.

The case table below names, for each case, the primitive whose rule it exercises; the
coverage tests at the bottom fail when a differentiable primitive of
`spmdbatch.runtime.dispatch.PRIMITIVES` has no case (so a new primitive needs a test here).
Shapes (broadcasting, size-1 axes, 0-d) and values come from hypothesis; each function gets
a domain where it is smooth (kinks only on an exact grid, where central differences agree
with the tie-splitting rules).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import spmdbatch as sb
from spmdbatch.ad.tracer import STATE
from spmdbatch.runtime import primitives as P
from spmdbatch.primitives import elementwise
from spmdbatch.runtime.dispatch import PRIMITIVES

RTOL = 1e-6
ATOL = 1e-6
SETTINGS = settings(max_examples=12, deadline=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# --- value domains ----------------------------------------------------------------------------
def real(lo, hi):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, allow_subnormal=False)


def signed(lo, hi):
    """|x| in [lo, hi], either sign."""
    return st.one_of(real(lo, hi), real(-hi, -lo))


def grid(lo, hi, step=0.25):
    """Exact multiples of `step`: values are equal (a tie) or at least `step` apart."""
    return st.integers(int(round(lo / step)), int(round(hi / step))).map(lambda k: k * step)


ANY = real(-3, 3)
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4)
SHAPES_1D_UP = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)


def array(shape, elements=ANY, unique=False):
    return hnp.arrays(np.float64, shape, elements=elements, unique=unique)


# --- the case table ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Case:
    prim: str                # the primitive whose VJP rule this case exercises
    name: str
    build: Callable          # build(data) -> (fn, args)
    check: tuple = ()        # extra check_gradients keyword arguments, as items

    def __repr__(self):
        return f"{self.prim}:{self.name}"


CASES: list[Case] = []


def case(prim, name, check=()):
    def register(build):
        CASES.append(Case(prim, name, build, tuple(dict(check).items())))
        return build
    return register


def unary(prim, name, fn, elements=ANY, shapes=SHAPES):
    def build(data):
        x = data.draw(array(data.draw(shapes, label="shape"), elements), label="x")
        return fn, (x,)
    CASES.append(Case(prim, name, build))


def binary(prim, name, fn, ea=ANY, eb=ANY):
    def build(data):
        shapes = data.draw(hnp.mutually_broadcastable_shapes(
            num_shapes=2, min_dims=0, max_dims=3, min_side=1, max_side=4), label="shapes")
        sa, sb_ = shapes.input_shapes
        return fn, (data.draw(array(sa, ea), label="a"), data.draw(array(sb_, eb), label="b"))
    CASES.append(Case(prim, name, build))


# elementwise, one operand: the domain where each function is smooth
UNARY_DOMAINS = {
    "negative": ANY, "exp": ANY, "exp2": ANY, "expm1": ANY,
    "log": real(0.1, 5), "log2": real(0.1, 5), "log10": real(0.1, 5), "log1p": real(-0.9, 5),
    "sqrt": real(0.1, 5), "cbrt": signed(0.2, 3), "square": ANY, "reciprocal": signed(0.3, 3),
    "sin": ANY, "cos": ANY, "tan": real(-1.2, 1.2),
    "arcsin": real(-0.9, 0.9), "arccos": real(-0.9, 0.9), "arctan": ANY,
    "sinh": ANY, "cosh": ANY, "tanh": ANY, "arcsinh": ANY, "arccosh": real(1.1, 5),
    "arctanh": real(-0.9, 0.9),
    "absolute": grid(-3, 3),  # includes 0: sign(0) = 0 agrees with central differences
    "sigmoid": real(-8, 8),
}
for _name, _elements in UNARY_DOMAINS.items():
    unary(_name, f"np.{_name}" if _name != "sigmoid" else "sb.sigmoid",
          sb.sigmoid if _name == "sigmoid" else getattr(np, _name), _elements)

# the same rules reached through Python operators and mixed constant operands
unary("negative", "-x", lambda x: -x)
unary("absolute", "abs(x)", lambda x: abs(x), grid(-3, 3))
unary("power", "x ** 2", lambda x: x ** 2)
unary("power", "x ** 3 (negative base)", lambda x: x ** 3)
unary("power", "x ** 0.5", lambda x: x ** 0.5, real(0.1, 5))
unary("power", "x ** -1.5", lambda x: x ** -1.5, real(0.2, 5))
unary("power", "2.0 ** x", lambda x: 2.0 ** x)
unary("add", "x + 1", lambda x: x + 1.0)
unary("subtract", "1 - x", lambda x: 1.0 - x)
unary("multiply", "3 * x", lambda x: 3.0 * x)
unary("divide", "1 / x", lambda x: 1.0 / x, signed(0.3, 3))
unary("divide", "x / 4", lambda x: x / 4.0)

# elementwise, two broadcasting operands
BINARY_DOMAINS = {
    "add": (ANY, ANY), "subtract": (ANY, ANY), "multiply": (ANY, ANY),
    "divide": (ANY, signed(0.5, 2)), "power": (real(0.5, 2), real(-2, 2)),
    # exact grids: ties happen, and split the gradient in half like central differences do
    "maximum": (grid(-2, 2), grid(-2, 2)), "minimum": (grid(-2, 2), grid(-2, 2)),
    "fmax": (grid(-2, 2), grid(-2, 2)), "fmin": (grid(-2, 2), grid(-2, 2)),
    "arctan2": (signed(0.5, 2), ANY),  # y != 0: away from the branch cut
    "hypot": (signed(0.5, 2), ANY), "logaddexp": (ANY, ANY),
    # |x| < 1 <= |y|: x / y stays away from the integers where remainder jumps
    "remainder": (signed(0.1, 0.9), signed(1, 2)),
}
for _name, (_ea, _eb) in BINARY_DOMAINS.items():
    binary(_name, f"np.{_name}", getattr(np, _name), _ea, _eb)
OPERATORS = {
    "add": lambda a, b: a + b, "subtract": lambda a, b: a - b, "multiply": lambda a, b: a * b,
    "divide": lambda a, b: a / b, "power": lambda a, b: a ** b, "remainder": lambda a, b: a % b,
}
for _name, _op in OPERATORS.items():
    binary(_name, f"operator {_name}", _op, *BINARY_DOMAINS[_name])


@case("where", "np.where(cond, a, b), all broadcasting")
def _where3(data):
    shapes = data.draw(hnp.mutually_broadcastable_shapes(
        num_shapes=3, min_dims=0, max_dims=3, min_side=1, max_side=4), label="shapes")
    sc, sa, sb_ = shapes.input_shapes
    cond = data.draw(hnp.arrays(np.bool_, sc), label="cond")
    return (lambda c, a, b: np.where(c, a, b)), (cond, data.draw(array(sa)), data.draw(array(sb_)))


@case("where", "np.where(x > 0, x * x, 0.0)")
def _where_scalar(data):
    x = data.draw(array(data.draw(SHAPES), signed(0.1, 3)))
    return (lambda x: np.where(x > 0, x * x, 0.0)), (x,)


@case("maximum", "np.clip / x.clip (grid values: ties at the bounds split in half)")
def _clip(data):
    x = data.draw(array(data.draw(SHAPES), grid(-3, 3)))
    lo, hi = sorted(data.draw(st.lists(grid(-2, 2), min_size=2, max_size=2, unique=True)))
    method = data.draw(st.booleans())
    return ((lambda x: x.clip(lo, hi)) if method else (lambda x: np.clip(x, lo, hi))), (x,)


# --- reductions -------------------------------------------------------------------------------
def draw_axis(data, ndim, tuples=True, none=True):
    options = []
    if none:
        options.append(st.none())
    if ndim:
        options.append(st.integers(-ndim, ndim - 1))
    if tuples:
        options.append(hnp.valid_tuple_axes(ndim))
    return data.draw(st.one_of(options), label="axis")


def reduction(prim, name, call, elements=ANY, unique=False, min_dims=0):
    def build(data):
        shape = data.draw(hnp.array_shapes(min_dims=min_dims, max_dims=3, min_side=1, max_side=4))
        axis = draw_axis(data, len(shape))
        keepdims = data.draw(st.booleans(), label="keepdims")
        x = data.draw(array(shape, elements, unique), label="x")
        return (lambda x: call(x, axis, keepdims)), (x,)
    CASES.append(Case(prim, name, build))


DISTINCT = grid(-8, 8, 0.125)  # with unique=True: no ties, no near-ties
reduction("sum", "np.sum", lambda x, a, k: np.sum(x, axis=a, keepdims=k))
reduction("sum", "x.sum", lambda x, a, k: x.sum(axis=a, keepdims=k))
reduction("sum", "np.mean", lambda x, a, k: np.mean(x, axis=a, keepdims=k))
reduction("sum", "x.mean", lambda x, a, k: x.mean(axis=a, keepdims=k))
reduction("max", "np.max", lambda x, a, k: np.max(x, axis=a, keepdims=k), DISTINCT, unique=True)
reduction("max", "x.max", lambda x, a, k: x.max(axis=a, keepdims=k), DISTINCT, unique=True)
reduction("max", "np.amax", lambda x, a, k: np.amax(x, axis=a, keepdims=k), DISTINCT, unique=True)
reduction("min", "np.min", lambda x, a, k: np.min(x, axis=a, keepdims=k), DISTINCT, unique=True)
reduction("min", "x.min", lambda x, a, k: x.min(axis=a, keepdims=k), DISTINCT, unique=True)
reduction("logsumexp", "sb.logsumexp", lambda x, a, k: sb.logsumexp(x, axis=a, keepdims=k))


@case("sqrt", "np.linalg.norm (vector and Frobenius)")
def _norm(data):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
    nd = len(shape)
    axis = data.draw(st.one_of(st.none(), st.integers(-nd, nd - 1),
                               hnp.valid_tuple_axes(nd, min_size=2, max_size=2) if nd >= 2 else st.none()))
    keepdims = data.draw(st.booleans())
    x = data.draw(array(shape, DISTINCT, unique=True))  # 0 only as a lone element: subgradient 0
    return (lambda x: np.linalg.norm(x, axis=axis, keepdims=keepdims)), (x,)


@case("sum", "np.var / np.std / x.var / x.std with ddof")
def _var_std(data):
    shape = data.draw(SHAPES)
    axis = draw_axis(data, len(shape))
    keepdims = data.draw(st.booleans())
    count = math.prod(shape[i] for i in range(len(shape))) if axis is None else \
        math.prod(shape[i] for i in ((axis,) if isinstance(axis, int) else axis))
    ddof = data.draw(st.sampled_from([0, 1] if count > 1 else [0]), label="ddof")
    which = data.draw(st.sampled_from(["np.var", "np.std", "x.var", "x.std"]), label="which")
    # distinct grid values keep the variance away from 0, where std is not differentiable
    x = data.draw(array(shape, DISTINCT, unique=True))
    fns = {"np.var": lambda x: np.var(x, axis=axis, ddof=ddof, keepdims=keepdims),
           "np.std": lambda x: np.std(x, axis=axis, ddof=ddof, keepdims=keepdims),
           "x.var": lambda x: x.var(axis=axis, ddof=ddof, keepdims=keepdims),
           "x.std": lambda x: x.std(axis=axis, ddof=ddof, keepdims=keepdims)}
    return fns[which], (x,)


def axis_op(prim, name, call, none=False):
    def build(data):
        shape = data.draw(SHAPES_1D_UP)
        axis = draw_axis(data, len(shape), tuples=False, none=none)
        return (lambda x: call(x, axis)), (data.draw(array(shape)),)
    CASES.append(Case(prim, name, build))


axis_op("softmax", "sb.softmax", lambda x, a: sb.softmax(x, axis=a))
axis_op("log_softmax", "sb.log_softmax", lambda x, a: sb.log_softmax(x, axis=a))
axis_op("cumsum", "np.cumsum", lambda x, a: np.cumsum(x, axis=a), none=True)
axis_op("cumsum", "x.cumsum", lambda x, a: x.cumsum(axis=a), none=True)


@case("sort", "np.sort (distinct values)")
def _sort(data):
    shape = data.draw(SHAPES_1D_UP)
    axis = draw_axis(data, len(shape), tuples=False, none=True)
    return (lambda x: np.sort(x, axis=axis)), (data.draw(array(shape, DISTINCT, unique=True)),)


@case("roll", "np.roll")
def _roll(data):
    shape = data.draw(SHAPES_1D_UP)
    axis = draw_axis(data, len(shape), tuples=False, none=True)
    shift = data.draw(st.integers(-5, 5), label="shift")
    return (lambda x: np.roll(x, shift, axis=axis)), (data.draw(array(shape)),)


@case("pad", "np.pad (constant)")
def _pad(data):
    shape = data.draw(SHAPES_1D_UP)
    widths = [tuple(data.draw(st.tuples(st.integers(0, 2), st.integers(0, 2)))) for _ in shape]
    value = data.draw(st.sampled_from([0, 1.5]), label="constant")
    return (lambda x: np.pad(x, widths, constant_values=value)), (data.draw(array(shape)),)


unary("softmax", "sb.softmax, default axis", sb.softmax, shapes=SHAPES_1D_UP)
unary("log_softmax", "sb.log_softmax, default axis", sb.log_softmax, shapes=SHAPES_1D_UP)
unary("logsumexp", "sb.logsumexp, default axis", sb.logsumexp)


# --- linear algebra ---------------------------------------------------------------------------
MATMUL_FORMS = {
    # form: (shape of a, shape of b) from sizes n (contracted), m, k and batch shapes ba, bb
    "vec.vec": lambda n, m, k, ba, bb: ((n,), (n,)),
    "mat.vec": lambda n, m, k, ba, bb: ((m, n), (n,)),
    "vec.mat": lambda n, m, k, ba, bb: ((n,), (n, k)),
    "mat.mat": lambda n, m, k, ba, bb: ((m, n), (n, k)),
    "batch.mat": lambda n, m, k, ba, bb: (ba + (m, n), (n, k)),
    "mat.batch": lambda n, m, k, ba, bb: ((m, n), bb + (n, k)),
    "batch.batch": lambda n, m, k, ba, bb: (ba + (m, n), bb + (n, k)),  # batch axes broadcast
    "batch.vec": lambda n, m, k, ba, bb: (ba + (m, n), (n,)),
    "vec.batch": lambda n, m, k, ba, bb: ((n,), bb + (n, k)),
}
MATMUL_OPS = {"@": lambda a, b: a @ b, "np.matmul": np.matmul, "np.dot": np.dot}
# np.dot with an N-D second operand is not a matmul (it contracts b's second-to-last axis).
DOT_AS_EINSUM = {"mat.batch", "vec.batch", "batch.batch"}


def matmul_case(op, form):
    def build(data):
        n, m, k = (data.draw(st.integers(1, 4), label=s) for s in "nmk")
        batch = data.draw(hnp.mutually_broadcastable_shapes(
            num_shapes=2, min_dims=1, max_dims=2, min_side=1, max_side=3), label="batch")
        sa, sb_ = MATMUL_FORMS[form](n, m, k, *batch.input_shapes)
        return MATMUL_OPS[op], (data.draw(array(sa)), data.draw(array(sb_)))
    prim = "einsum" if op == "np.dot" and form in DOT_AS_EINSUM else "matmul"
    CASES.append(Case(prim, f"{op} {form}", build))


for _op in MATMUL_OPS:
    for _form in MATMUL_FORMS:
        matmul_case(_op, _form)

EINSUM_SPECS = ["ij,jk->ik", "bij,bjk->bik", "i,i->", "ij,j->i", "ij->j", "ij->ji",
                "...ij,jk->...ik", "ij,jk", "i,j->ij", "ijk->", "ij,ij->ij", "ij,kj->ik", "ij"]


def einsum_case(spec):
    def build(data):
        sizes = {c: data.draw(st.integers(1, 4), label=c) for c in sorted(set(spec) - set(",->."))}
        ell = data.draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=3), label="...")
        shapes = []
        for sub in spec.split("->")[0].split(","):
            lead = ell if "..." in sub else ()
            shapes.append(lead + tuple(sizes[c] for c in sub.replace("...", "")))
        args = tuple(data.draw(array(s), label="operand") for s in shapes)
        return (lambda *ops: np.einsum(spec, *ops)), args
    CASES.append(Case("einsum", f"np.einsum {spec!r}", build))


for _spec in EINSUM_SPECS:
    einsum_case(_spec)


def sizes(data, count):
    return tuple(data.draw(st.integers(1, 3), label="size") for _ in range(count))


@case("einsum", "np.tensordot (axes=int, axes=pairs, axes=0)")
def _tensordot(data):
    i, j, k, l_ = sizes(data, 4)
    which = data.draw(st.sampled_from(["2", "pairs", "0"]))
    if which == "2":
        return (lambda a, b: np.tensordot(a, b, axes=2)), (data.draw(array((i, j, k))),
                                                          data.draw(array((j, k, l_))))
    if which == "pairs":
        return (lambda a, b: np.tensordot(a, b, axes=([0, 2], [1, 0]))), (
            data.draw(array((i, j, k))), data.draw(array((k, i, l_))))
    return (lambda a, b: np.tensordot(a, b, axes=0)), (data.draw(array((i, j))), data.draw(array((k,))))


@case("einsum", "np.inner")
def _inner(data):
    i, j, k, l_ = sizes(data, 4)
    return np.inner, (data.draw(array((i, j))), data.draw(array((k, l_, j))))


@case("multiply", "np.outer (flattens its operands)")
def _outer(data):
    i, j, k = sizes(data, 3)
    return np.outer, (data.draw(array((i, j))), data.draw(array((k,))))


@case("sum", "np.vdot")
def _vdot(data):
    i, j = sizes(data, 2)
    return np.vdot, (data.draw(array((i, j))), data.draw(array((i, j))))


# --- shapes -----------------------------------------------------------------------------------
@case("reshape", "reshape / ravel / flatten / squeeze / expand_dims / atleast_2d")
def _reshape(data):
    shape = data.draw(SHAPES)
    size = math.prod(shape)
    which = data.draw(st.sampled_from(
        ["(-1,)", "(size,1)", "(1,-1)", "reversed", "+1", "ravel", "flatten", "squeeze",
         "expand_dims", "x.reshape(*shape)", "atleast_2d"]), label="which")
    x = data.draw(array(shape))
    target = {"(-1,)": (-1,), "(size,1)": (size, 1), "(1,-1)": (1, -1),
              "reversed": shape[::-1] + (1,), "+1": shape + (1,)}.get(which)
    if target is not None:
        if np.empty(shape).reshape(target).shape == shape:
            target = (1,) + shape
        return (lambda x: np.reshape(x, target)), (x,)
    if which in ("ravel", "flatten"):
        if len(shape) == 1:
            return (lambda x: np.reshape(x, (1, -1))), (x,)
        return ((lambda x: np.ravel(x)) if which == "ravel" else (lambda x: x.flatten())), (x,)
    if which == "squeeze":
        x = data.draw(array(shape + (1,)))
        return (lambda x: np.squeeze(x)), (x,)
    if which == "expand_dims":
        axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
        return (lambda x: np.expand_dims(x, axis)), (x,)
    if which == "atleast_2d":
        return (lambda x: np.atleast_2d(np.sum(x)) * np.atleast_1d(np.sum(x * x))), (x,)
    return (lambda x: x.reshape(*(shape + (1,)))), (x,)


@case("transpose", "x.T / np.transpose(axes) / x.transpose / swapaxes / moveaxis")
def _transpose(data):
    shape = data.draw(hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=3))
    nd = len(shape)
    x = data.draw(array(shape))
    perm = list(data.draw(st.permutations(range(nd)), label="perm"))
    if perm == list(range(nd)):
        perm = perm[::-1]
    which = data.draw(st.sampled_from(["T", "np.transpose", "negative axes", "method", "swapaxes",
                                       "moveaxis"]))
    fns = {"T": lambda x: x.T,
           "np.transpose": lambda x: np.transpose(x, perm),
           "negative axes": lambda x: np.transpose(x, [p - nd for p in perm]),
           "method": lambda x: x.transpose(*perm),
           "swapaxes": lambda x: np.swapaxes(x, 0, -1),
           "moveaxis": lambda x: np.moveaxis(x, 0, -1)}
    return fns[which], (x,)


@case("broadcast_to", "np.broadcast_to (size-1 axes and new leading axes)")
def _broadcast_to(data):
    shape = data.draw(SHAPES)
    other = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=1, base_shape=shape, max_side=3))
    target = (2,) + other.result_shape
    return (lambda x: np.broadcast_to(x, target)), (data.draw(array(shape)),)


@case("astype", "float64 -> float32 -> float64", check={"eps": 2.0 ** -10})
def _astype_64_32(data):
    # grid values and a power-of-two eps: x +- eps is exact in float32, so the float32 round
    # trip does not disturb the finite differences
    x = data.draw(array(data.draw(SHAPES), grid(-4, 4, 0.125)))
    return (lambda x: (x.astype(np.float32) * 3).astype(np.float64) ** 2), (x,)


@case("astype", "float32 input -> float64", check={"eps": 2.0 ** -10, "dtype": None})
def _astype_32_64(data):
    x = data.draw(hnp.arrays(np.float32, data.draw(SHAPES), elements=grid(-4, 4, 0.125)))
    return (lambda x: x.astype(np.float64) ** 2), (x,)


@case("concatenate", "np.concatenate / np.stack / hstack / vstack")
def _concatenate(data):
    shape = data.draw(SHAPES_1D_UP)
    nd = len(shape)
    which = data.draw(st.sampled_from(["concatenate", "axis=None", "stack", "hstack", "vstack"]))
    count = data.draw(st.integers(1, 3), label="count")
    if which in ("concatenate", "hstack", "vstack"):
        axis = {"concatenate": data.draw(st.integers(-nd, nd - 1)), "hstack": 0 if nd == 1 else 1,
                "vstack": 0}[which]
        shapes = [tuple(data.draw(st.integers(1, 3)) if i == axis % nd else s
                        for i, s in enumerate(shape)) for _ in range(count)]
        if which == "vstack" and nd == 1:
            shapes = [shape] * count
        args = tuple(data.draw(array(s)) for s in shapes)
        if which == "concatenate":
            return (lambda *xs: np.concatenate(xs, axis=axis)), args
        return (lambda *xs: getattr(np, which)(list(xs))), args
    args = tuple(data.draw(array(shape)) for _ in range(count))
    if which == "axis=None":
        return (lambda *xs: np.concatenate(xs, axis=None)), args
    axis = data.draw(st.integers(-nd - 1, nd))
    return (lambda *xs: np.stack(xs, axis=axis)), args


@case("concatenate", "np.concatenate with constant (list) operands")
def _concatenate_constants(data):
    n = data.draw(st.integers(1, 4))
    x = data.draw(array((n,)))
    return (lambda x: np.concatenate([[1.5, 2.5], x, np.ones(2)]) ** 2), (x,)


# --- indexing ---------------------------------------------------------------------------------
@case("getitem", "basic indices: ints, slices (negative steps), None, Ellipsis")
def _basic_getitem(data):
    shape = data.draw(SHAPES_1D_UP)
    index = data.draw(hnp.basic_indices(shape, allow_newaxis=True, allow_ellipsis=True), label="index")
    return (lambda x: x[index]), (data.draw(array(shape)),)


@case("getitem", "integer arrays with repeated indices")
def _int_array_getitem(data):
    shape = data.draw(SHAPES_1D_UP)
    index = data.draw(hnp.integer_array_indices(
        shape, result_shape=hnp.array_shapes(min_dims=1, max_dims=2, max_side=5)), label="index")
    return (lambda x: x[index]), (data.draw(array(shape)),)


@case("getitem", "gather along one axis with repeats, mixed with slices")
def _gather_axis(data):
    shape = data.draw(hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=4))
    n = shape[1]
    idx = data.draw(hnp.arrays(np.intp, data.draw(st.integers(1, 6)), elements=st.integers(-n, n - 1)))
    as_list = data.draw(st.booleans())
    idx = idx.tolist() if as_list else idx
    return (lambda x: x[1:, idx] * 2.0), (data.draw(array(shape)),)


@case("getitem", "boolean masks (full shape, leading axis)")
def _mask_getitem(data):
    shape = data.draw(SHAPES_1D_UP)
    full = data.draw(st.booleans())
    mask = data.draw(hnp.arrays(np.bool_, shape if full else shape[:1]), label="mask")
    return (lambda x: x[mask]), (data.draw(array(shape)),)


@case("getitem", "np.take with and without axis")
def _take(data):
    shape = data.draw(SHAPES_1D_UP)
    axis = data.draw(st.one_of(st.none(), st.integers(0, len(shape) - 1)))
    n = math.prod(shape) if axis is None else shape[axis]
    idx = data.draw(hnp.arrays(np.intp, data.draw(st.integers(1, 5)), elements=st.integers(0, n - 1)))
    return (lambda x: np.take(x, idx, axis=axis)), (data.draw(array(shape)),)


@case("getitem", "np.split / np.array_split / np.flip / iteration")
def _split(data):
    shape = data.draw(SHAPES_1D_UP)
    nd = len(shape)
    axis = data.draw(st.integers(0, nd - 1))
    which = data.draw(st.sampled_from(["split", "array_split", "split at", "flip", "iter"]))
    x = data.draw(array(shape))
    n = shape[axis]
    if which == "flip":
        return (lambda x: np.flip(x, axis) * np.arange(1.0, x.size + 1).reshape(shape)), (x,)
    if which == "iter":
        return (lambda x: np.stack([row * (i + 1) for i, row in enumerate(x)])), (x,)
    if which == "split":
        sections = data.draw(st.sampled_from([d for d in range(1, n + 1) if n % d == 0]))
        pieces = lambda x: np.split(x, sections, axis=axis)  # noqa: E731
    elif which == "array_split":
        sections = data.draw(st.integers(1, n))
        pieces = lambda x: np.array_split(x, sections, axis=axis)  # noqa: E731
    else:
        cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=3)))
        pieces = lambda x: np.split(x, cuts, axis=axis)  # noqa: E731
    return (lambda x: np.concatenate([p * (i + 1) for i, p in enumerate(pieces(x))], axis=axis)), (x,)


@case("take_lanes", "P.take_lanes: a subset of leading-axis lanes, no repeats")
def _take_lanes(data):
    shape = data.draw(SHAPES_1D_UP)
    perm = data.draw(st.permutations(range(shape[0])), label="order")
    lanes = np.array(perm[:data.draw(st.integers(1, shape[0]))], dtype=np.intp)
    return (lambda x: P.take_lanes(x, lanes)), (data.draw(array(shape)),)


@case("gather_lanes", "P.gather_lanes: rows of several sources, no repeats within a source")
def _gather_lanes(data):
    tail = data.draw(st.sampled_from([(), (2,), (2, 3)]), label="tail")
    sizes = data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=3), label="sizes")
    picks = [np.array(data.draw(st.permutations(range(n)))[:data.draw(st.integers(1, n))], dtype=np.intp)
             for n in sizes]
    order = np.array(data.draw(st.permutations(range(sum(len(p) for p in picks)))), dtype=np.intp)
    parts, start = [], 0
    for rows in picks:
        parts.append((order[start:start + len(rows)], rows))
        start += len(rows)
    sources = tuple(data.draw(array((n,) + tail)) for n in sizes)
    return (lambda *xs: P.gather_lanes(*xs, parts=tuple(parts))), sources


@case("rows_of_sources", "P.rows_of_sources: each output row names its source and row; "
      "read from a buffer holding those rows, or from the sources")
def _rows_of_sources(data):
    tail = data.draw(st.sampled_from([(), (2,), (2, 3)]), label="tail")
    sizes = data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=3), label="sizes")
    pairs = [(s, r) for s, n in enumerate(sizes) for r in range(n)]
    chosen = data.draw(st.permutations(pairs), label="order")[:data.draw(st.integers(1, len(pairs)))]
    source_of = np.array([s for s, _ in chosen], dtype=np.intp)
    rows = np.array([r for _, r in chosen], dtype=np.intp)
    sources = tuple(data.draw(array((n,) + tail)) for n in sizes)
    if not data.draw(st.booleans(), label="from a buffer"):
        return (lambda *xs: P.rows_of_sources(*xs, source_of=source_of, rows=rows)), sources
    starts = np.cumsum([0] + sizes[:-1])
    ids = starts[source_of] + rows                   # the buffer: the sources stacked

    def from_buffer(*xs):
        buffer = np.concatenate([getattr(x, "value", x) for x in xs])
        return P.rows_of_sources(*xs, source_of=source_of, rows=rows, buffer=buffer, ids=ids)
    return from_buffer, sources


def _row_plan(data, nrows, npos):
    """A segments.RowPlan: `npos` positions naming rows (repeats allowed), some of them
    padding (no scatter, no gradient); occasionally more repeats than MAX_ROUNDS allows."""
    from spmdbatch.runtime import segments
    index = np.array(data.draw(st.lists(st.integers(0, nrows - 1), min_size=npos, max_size=npos),
                               label="rows"), dtype=np.intp)
    valid = np.array(data.draw(st.lists(st.booleans(), min_size=npos, max_size=npos), label="valid"), dtype=bool)
    if data.draw(st.booleans(), label="no padding"):
        valid = None
    return segments.RowPlan(index, valid, nrows)


@case("gather_rows", "segments.gather_rows: rows by index, repeats; padding gets no gradient")
def _gather_rows(data):
    from spmdbatch.runtime import segments
    tail = data.draw(st.sampled_from([(), (2,), (2, 3)]), label="tail")
    nrows, npos = data.draw(st.integers(1, 4)), data.draw(st.integers(0, 6))
    plan = _row_plan(data, nrows, npos)
    if plan.padding is not None:       # padding rows carry no cotangent into the gather
        keep = np.ones((npos,) + tail)
        keep[plan.padding] = 0
        return (lambda x: segments.gather_rows(x, plan=plan) * keep), (data.draw(array((nrows,) + tail)),)
    return (lambda x: segments.gather_rows(x, plan=plan)), (data.draw(array((nrows,) + tail)),)


@case("unpack_rows", "segments.unpack_rows: rows placed at distinct positions of zeros")
def _unpack_rows(data):
    from spmdbatch.runtime import segments
    tail = data.draw(st.sampled_from([(), (2,), (2, 3)]), label="tail")
    nrows = data.draw(st.integers(1, 5), label="nrows")
    index = np.array(sorted(data.draw(st.sets(st.integers(0, nrows - 1)), label="rows")), dtype=np.intp)
    plan = segments.RowPlan(index, None, nrows)
    return (lambda v: segments.unpack_rows(v, plan=plan)), (data.draw(array((len(index),) + tail)),)


@case("scatter_add_rows", "segments.scatter_add_rows: repeated targets accumulate, padding skipped")
def _scatter_add_rows(data):
    from spmdbatch.runtime import segments
    tail = data.draw(st.sampled_from([(), (2,), (2, 3)]), label="tail")
    nrows, npos = data.draw(st.integers(1, 4), label="nrows"), data.draw(st.integers(0, 6), label="npos")
    plan = _row_plan(data, nrows, npos)
    return ((lambda base, v: segments.scatter_add_rows(base, v, plan=plan)),
            (data.draw(array((nrows,) + tail)), data.draw(array((npos,) + tail))))


@case("matmul_t", "P.matmul_t: x @ w.T with leading axes on x")
def _matmul_t(data):
    lead = data.draw(st.sampled_from([(), (2,), (3, 2)]), label="lead")
    n, m = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    x = data.draw(array(lead + (n,)))
    w = data.draw(array((m, n)))
    return P.matmul_t, (x, w)


def draw_value_shape(data, target):
    """A shape that broadcasts to `target` without growing it (trailing axes, some set to 1)."""
    k = data.draw(st.integers(0, len(target)), label="value ndim")
    tail = target[len(target) - k:]
    return tuple(1 if data.draw(st.booleans()) else s for s in tail)


def updater(how, index, mode):
    if how == "index_update":
        return lambda x, v: sb.index_update(x, index, v, mode=mode) ** 2
    if how == "at":
        return lambda x, v: getattr(sb.at(x)[index], mode)(v) ** 2

    def setitem(x, v):
        y = x * 1.0
        if mode == "set":
            y[index] = v
        else:
            y[index] += v
        return y ** 2
    return setitem


@case("index_update", "basic indices: index_update / at / setitem, set and add")
def _basic_update(data):
    shape = data.draw(SHAPES_1D_UP)
    index = data.draw(hnp.basic_indices(shape, allow_ellipsis=True), label="index")
    target = np.empty(shape)[index].shape
    how = data.draw(st.sampled_from(["index_update", "at", "setitem"]))
    mode = data.draw(st.sampled_from(["set", "add"]))
    x = data.draw(array(shape))
    v = data.draw(array(draw_value_shape(data, target)))
    return updater(how, index, mode), (x, v)


@case("index_update", "integer arrays with repeats: add accumulates, set keeps the last write")
def _array_update(data):
    shape = data.draw(SHAPES_1D_UP)
    n = shape[0]
    idx = data.draw(hnp.arrays(np.intp, data.draw(st.integers(1, 6)), elements=st.integers(-n, n - 1)))
    how = data.draw(st.sampled_from(["index_update", "at", "setitem"]))
    mode = data.draw(st.sampled_from(["set", "add"]))
    x = data.draw(array(shape))
    v = data.draw(array(draw_value_shape(data, idx.shape + shape[1:])))
    if how == "setitem" and mode == "add":
        how = "index_update"  # y[idx] += v does not accumulate repeats in numpy either
    return updater(how, idx, mode), (x, v)


@case("index_update", "boolean mask updates")
def _mask_update(data):
    shape = data.draw(SHAPES_1D_UP)
    mask = data.draw(hnp.arrays(np.bool_, shape), label="mask")
    mode = data.draw(st.sampled_from(["set", "add"]))
    how = data.draw(st.sampled_from(["index_update", "at", "setitem"]))
    v = data.draw(array(data.draw(st.sampled_from([(), (int(mask.sum()),)]))))
    return updater(how, mask, mode), (data.draw(array(shape)), v)


# --- the checks -------------------------------------------------------------------------------
def recorded_primitives(fn, args):
    """(forward value under tracing, names of the primitives recorded on the tape)."""
    names = set()

    def traced(*a):
        out = fn(*a)
        names.update(entry[0].name for entry in STATE.tape.nodes if entry is not None)
        return out
    value, vjp_fn = sb.vjp(traced, *args)
    return value, names, vjp_fn


def check_case(c: Case, fn, args):
    value, names, vjp_fn = recorded_primitives(fn, args)
    assert c.prim in names, f"{c!r} did not record primitive {c.prim!r} (recorded {sorted(names)})"
    # the traced forward (spmdbatch's numpy API over primitives) computes what numpy computes
    expected = fn(*args)
    assert np.shape(value) == np.shape(expected)
    np.testing.assert_allclose(value, expected, rtol=1e-10, atol=1e-12)
    # reverse mode against central differences
    assert sb.check_gradients(fn, *args, rtol=RTOL, atol=ATOL, **dict(c.check)) is None
    # gradients have the shape and floating dtype of their argument
    grads = vjp_fn(np.ones(np.shape(value)))
    assert len(grads) == len(args)
    for a, g in zip(args, grads):
        assert np.shape(g) == np.shape(a)
        if np.issubdtype(np.asarray(a).dtype, np.floating):
            assert g.dtype == np.asarray(a).dtype
        assert np.all(np.isfinite(g))


@pytest.mark.parametrize("c", CASES, ids=repr)
@SETTINGS
@given(data=st.data())
def test_vjp_rule_matches_finite_differences(c, data):
    fn, args = c.build(data)
    check_case(c, fn, args)


# --- broadcasting of every binary op, with fixed shape pairs ---------------------------------
BROADCAST_PAIRS = [((3, 1), (4,)), ((), (2, 3)), ((2, 3), ()), ((2, 1, 3), (4, 1)), ((1,), (3,)),
                   ((3, 1), (1, 4))]


@pytest.mark.parametrize("shapes", BROADCAST_PAIRS, ids=str)
@pytest.mark.parametrize("name", sorted(BINARY_DOMAINS))
@settings(SETTINGS, max_examples=3)
@given(data=st.data())
def test_binary_broadcasting(name, shapes, data):
    ea, eb = BINARY_DOMAINS[name]
    a = data.draw(array(shapes[0], ea))
    b = data.draw(array(shapes[1], eb))
    fn = getattr(np, name)
    check_case(Case(name, f"np.{name}", None), fn, (a, b))
    # and with the broadcast operand a constant on either side
    check_case(Case(name, "constant b", None), lambda a: fn(a, b), (a,))
    check_case(Case(name, "constant a", None), lambda b: fn(a, b), (b,))


# --- coverage of the registry -----------------------------------------------------------------
def test_every_differentiable_primitive_has_a_case():
    # (the package's primitives: tests register others)
    with_rules = {name for name, p in PRIMITIVES.items()
                  if p.vjp is not None and p.origin.startswith("spmdbatch.")}
    covered = {c.prim for c in CASES}
    missing = with_rules - covered
    assert not missing, f"primitives with a VJP rule but no finite-difference case: {sorted(missing)}"
    assert covered <= set(PRIMITIVES)


def test_every_differentiable_primitive_has_a_rule():
    # a differentiable primitive without a rule would fail at trace time: none may exist
    lacking = [name for name, p in PRIMITIVES.items() if p.differentiable and p.vjp is None]
    assert lacking == []


def test_every_elementwise_ufunc_has_a_domain():
    assert set(elementwise.UNARY_UFUNCS) <= set(UNARY_DOMAINS)
    assert set(elementwise.BINARY_UFUNCS) <= set(BINARY_DOMAINS)


def test_case_table_entries_fail_on_a_wrong_rule(monkeypatch):
    """The harness itself can fail: a deliberately wrong rule is caught."""
    monkeypatch.setattr(P.exp, "vjp", (lambda g, ans, x: 2 * g * ans,))
    with pytest.raises(AssertionError, match="gradient mismatch"):
        sb.check_gradients(np.exp, np.array([0.5, 1.0]), rtol=RTOL, atol=ATOL)
