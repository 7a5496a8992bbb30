"""The primitive operations and their forward implementations on raw arrays.

Implementations are written against numpy's API; CuPy arrays reach CuPy's kernels through
numpy's `__array_ufunc__` / `__array_function__` protocols, or through `namespace(x)` where
a function needs the array module itself.

Operations with no gradient (comparisons, floor, argmax, ...) are primitives too, marked
`differentiable=False`: autodiff applies them to raw values, batching still rewrites them.
"""
from __future__ import annotations

import numpy as np

from .backend import namespace
from .dispatch import primitive

# --- elementwise, one operand -------------------------------------------------------------
UNARY_UFUNCS = {
    "negative": np.negative, "exp": np.exp, "exp2": np.exp2, "log": np.log, "log2": np.log2,
    "log10": np.log10, "log1p": np.log1p, "expm1": np.expm1, "sqrt": np.sqrt, "cbrt": np.cbrt,
    "square": np.square, "reciprocal": np.reciprocal, "sin": np.sin, "cos": np.cos, "tan": np.tan,
    "arcsin": np.arcsin, "arccos": np.arccos, "arctan": np.arctan, "sinh": np.sinh,
    "cosh": np.cosh, "tanh": np.tanh, "arcsinh": np.arcsinh, "arccosh": np.arccosh,
    "arctanh": np.arctanh, "absolute": np.absolute,
}
# --- elementwise, two broadcasting operands ----------------------------------------------
BINARY_UFUNCS = {
    "add": np.add, "subtract": np.subtract, "multiply": np.multiply, "divide": np.divide,
    "power": np.power, "maximum": np.maximum, "minimum": np.minimum, "fmax": np.fmax,
    "fmin": np.fmin, "arctan2": np.arctan2, "hypot": np.hypot, "logaddexp": np.logaddexp,
    "remainder": np.remainder,
}

# --- elementwise, no gradient ---------------------------------------------------------------
NONDIFF_UNARY_UFUNCS = {
    "logical_not": np.logical_not, "isnan": np.isnan, "isinf": np.isinf, "isfinite": np.isfinite,
    "floor": np.floor, "ceil": np.ceil, "rint": np.rint, "trunc": np.trunc, "sign": np.sign,
    "invert": np.invert, "signbit": np.signbit,
}
NONDIFF_BINARY_UFUNCS = {
    "less": np.less, "less_equal": np.less_equal, "greater": np.greater,
    "greater_equal": np.greater_equal, "equal": np.equal, "not_equal": np.not_equal,
    "logical_and": np.logical_and, "logical_or": np.logical_or, "logical_xor": np.logical_xor,
    "floor_divide": np.floor_divide, "bitwise_and": np.bitwise_and, "bitwise_or": np.bitwise_or,
    "bitwise_xor": np.bitwise_xor, "left_shift": np.left_shift, "right_shift": np.right_shift,
    "gcd": np.gcd, "lcm": np.lcm,
}

_ufunc_prims = {}
for _name, _ufunc in UNARY_UFUNCS.items():
    _ufunc_prims[_name] = primitive(_name, _ufunc)
for _name, _ufunc in BINARY_UFUNCS.items():
    _ufunc_prims[_name] = primitive(_name, _ufunc, broadcasting=True)
for _name, _ufunc in NONDIFF_UNARY_UFUNCS.items():
    _ufunc_prims[_name] = primitive(_name, _ufunc, differentiable=False)
for _name, _ufunc in NONDIFF_BINARY_UFUNCS.items():
    _ufunc_prims[_name] = primitive(_name, _ufunc, differentiable=False, broadcasting=True)
globals().update(_ufunc_prims)

UFUNC_PRIMITIVES = {ufunc: _ufunc_prims[name] for name, ufunc in {
    **UNARY_UFUNCS, **BINARY_UFUNCS, **NONDIFF_UNARY_UFUNCS, **NONDIFF_BINARY_UFUNCS}.items()}
"""numpy ufunc -> primitive, for `__array_ufunc__`."""
ELEMENTWISE = frozenset(UFUNC_PRIMITIVES.values())
"""numpy ufunc -> primitive, for `__array_ufunc__`."""


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


sigmoid = primitive("sigmoid", _sigmoid)


# --- where --------------------------------------------------------------------------------
def _where(cond, a, b):
    return np.where(cond, a, b)


where = primitive("where", _where, broadcasting=True)


# --- reductions ---------------------------------------------------------------------------
def _sum(x, axis=None, keepdims=False):
    return np.sum(x, axis=axis, keepdims=keepdims)


def _max(x, axis=None, keepdims=False):
    return np.max(x, axis=axis, keepdims=keepdims)


def _min(x, axis=None, keepdims=False):
    return np.min(x, axis=axis, keepdims=keepdims)


def _logsumexp(x, axis=None, keepdims=False):
    xp = namespace(x)
    m = xp.max(x, axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0)
    with np.errstate(divide="ignore"):  # all -inf (fully masked): -inf, like numpy's log(0)
        out = xp.log(xp.sum(xp.exp(x - m), axis=axis, keepdims=True)) + m
    if keepdims:
        return out
    return out.reshape(()) if axis is None else xp.squeeze(out, axis=axis)


def _softmax(x, axis=-1):
    xp = namespace(x)
    e = xp.exp(x - xp.max(x, axis=axis, keepdims=True))
    return e / xp.sum(e, axis=axis, keepdims=True)


def _log_softmax(x, axis=-1):
    xp = namespace(x)
    shifted = x - xp.max(x, axis=axis, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))


def _cumsum(x, axis=None):
    return np.cumsum(x, axis=axis)


def _sort(x, axis=-1):
    return namespace(x).sort(x, axis=axis, kind="stable")


def _argsort(x, axis=-1):
    return namespace(x).argsort(x, axis=axis, kind="stable")


sort = primitive("sort", _sort)
argsort = primitive("argsort", _argsort, differentiable=False)
"""Sorting along one axis (None: the flattened array); ties keep their order (stable)."""

sum = primitive("sum", _sum)  # noqa: A001  (numpy's name)
max = primitive("max", _max)  # noqa: A001
min = primitive("min", _min)  # noqa: A001
logsumexp = primitive("logsumexp", _logsumexp)
softmax = primitive("softmax", _softmax)
log_softmax = primitive("log_softmax", _log_softmax)
cumsum = primitive("cumsum", _cumsum)


def _argmax(x, axis=None, keepdims=False):
    return np.argmax(x, axis=axis, keepdims=keepdims)


def _argmin(x, axis=None, keepdims=False):
    return np.argmin(x, axis=axis, keepdims=keepdims)


def _any(x, axis=None, keepdims=False):
    return np.any(x, axis=axis, keepdims=keepdims)


def _all(x, axis=None, keepdims=False):
    return np.all(x, axis=axis, keepdims=keepdims)


argmax = primitive("argmax", _argmax, differentiable=False)
argmin = primitive("argmin", _argmin, differentiable=False)
any = primitive("any", _any, differentiable=False)  # noqa: A001
all = primitive("all", _all, differentiable=False)  # noqa: A001
REDUCTIONS = frozenset([sum, max, min, logsumexp, argmax, argmin, any, all])
"""Primitives with (axis, keepdims) params reducing the operand's axes."""


# --- linear algebra -----------------------------------------------------------------------
def _matmul(a, b):
    return a @ b


def _einsum(*operands, spec):
    return np.einsum(spec, *operands)


def _matmul_t(x, w):
    return x @ w.T


matmul = primitive("matmul", _matmul)
matmul_t = primitive("matmul_t", _matmul_t)
"""``x @ w.T`` in one step: the batched form of the per-example ``W @ x``."""
einsum = primitive("einsum", _einsum)


# --- shapes -------------------------------------------------------------------------------
def _reshape(x, shape):
    return np.reshape(x, shape)


def _transpose(x, axes=None):
    return np.transpose(x, axes)


def _broadcast_to(x, shape):
    return np.broadcast_to(x, shape)


def _concatenate(*xs, axis=0):
    return np.concatenate(xs, axis=axis)


def _astype(x, dtype):
    return x.astype(dtype) if hasattr(x, "astype") else np.asarray(x, dtype=dtype)


def _roll(x, shift, axis=None):
    return namespace(x).roll(x, shift, axis)


def _pad(x, pad_width, constant=0):
    return namespace(x).pad(x, pad_width, mode="constant", constant_values=constant)


roll = primitive("roll", _roll)
pad = primitive("pad", _pad)
"""Constant padding: `pad_width` is ((before, after),) per axis."""
reshape = primitive("reshape", _reshape)
transpose = primitive("transpose", _transpose)
broadcast_to = primitive("broadcast_to", _broadcast_to)
concatenate = primitive("concatenate", _concatenate)
astype = primitive("astype", _astype)


# --- indexing -----------------------------------------------------------------------------
class _ArraySlot:
    """Placeholder in an index template for an array operand (gather indices)."""

    __slots__ = ()

    def __repr__(self):
        return "<array>"


ARRAY_SLOT = _ArraySlot()
_STATIC_INDEX_TYPES = (int, np.integer, slice, type(None), type(Ellipsis), bool, np.bool_)


def split_index(index):
    """Split an index into a static template and its array operands.

    Integers, slices, None and Ellipsis stay in the template; arrays, lists and wrapped
    values (which may be traced or batched) become operands, so dispatch sees them.
    """
    if not isinstance(index, tuple):
        index = (index,)
    arrays = []
    template = []
    for item in index:
        if isinstance(item, _STATIC_INDEX_TYPES):
            template.append(item)
        else:
            template.append(ARRAY_SLOT)
            arrays.append(np.asarray(item) if isinstance(item, list) else item)
    return tuple(template), tuple(arrays)


def fill_index(template, arrays):
    """The inverse of `split_index`."""
    if not arrays:
        return template
    it = iter(arrays)
    return tuple(next(it) if item is ARRAY_SLOT else item for item in template)


def is_advanced_index(template) -> bool:
    """True when the index gathers with integer or boolean arrays."""
    return ARRAY_SLOT in template


def _getitem(x, *arrays, index):
    return x[fill_index(index, arrays)]


def _index_update(x, value, *arrays, index, mode):
    out = x.copy()
    full = fill_index(index, arrays)
    if mode == "set":
        out[full] = value
    elif is_advanced_index(index):
        namespace(out).add.at(out, full, value)
    else:
        out[full] += value
    return out


getitem = primitive("getitem", _getitem)
index_update = primitive("index_update", _index_update)


# --- creation and rounding (no gradient) --------------------------------------------------
def _full_like(a, fill_value, dtype=None, shape=None):
    return np.full_like(a, fill_value, dtype=dtype, shape=shape)


def _round(a, decimals=0):
    return np.round(a, decimals)


full_like = primitive("full_like", _full_like, differentiable=False)
round = primitive("round", _round, differentiable=False)  # noqa: A001


# --- lanes (used by the masking runtime) ------------------------------------------------
def _take_lanes(x, lanes):
    return x[lanes]


take_lanes = primitive("take_lanes", _take_lanes)
"""``x[lanes]`` along the batch axis, for lane indices without repeats (compaction, merges)."""


def _gather_lanes(*sources, parts):
    """Rows of several lane-major sources: ``out[pos] = sources[i][rows]`` for each
    ``parts[i] = (pos, rows)`` (positions cover the output exactly once)."""
    first = sources[0]
    dtype = first.dtype
    for src in sources[1:]:          # (this module's `any` is the primitive)
        if src.dtype != dtype:
            dtype = namespace(first).result_type(*[s.dtype for s in sources])
            break
    size = 0
    for pos, _ in parts:
        size += len(pos)
    out = namespace(first).empty((size,) + tuple(first.shape[1:]), dtype=dtype)
    for src, (pos, rows) in zip(sources, parts):
        out[pos] = src.take(rows, axis=0)
    return out


gather_lanes = primitive("gather_lanes", _gather_lanes)
"""Lanes gathered from several lane-major arrays at once (returns of recursive calls)."""


def _rows_of_sources(*sources, source_of, rows, buffer=None, ids=None):
    """``out[i] = sources[source_of[i]][rows[i]]``. When `buffer` is given, its rows `ids`
    already hold exactly those values (every lane's returned rows, stored as they returned:
    masking/return_rows.py) and the result is one take from it."""
    if buffer is not None:
        return buffer.take(ids, axis=0)
    parts = []
    for i in range(len(sources)):
        pos = (source_of == i).nonzero()[0]
        parts.append((pos, rows[pos]))
    return _gather_lanes(*sources, parts=tuple(parts))


rows_of_sources = primitive("rows_of_sources", _rows_of_sources)
"""Rows of several lane-major arrays, each output row naming its source and row."""
