"""The VJP table: one reverse-mode rule per primitive and operand.

A rule is ``rule(g, ans, *operands, **params) -> cotangent of that operand`` on raw arrays,
where `g` is the cotangent of the result `ans`. Rules of broadcasting primitives may return
a cotangent of the broadcast shape: the tape sums it back to the operand's shape. A `None`
rule means "no gradient for this operand" (indices, conditions). Variadic primitives
(concatenate, einsum) have one rule taking the operand position first.

Rules are written to be numerically safe: a zero cotangent never turns into NaN (division
by a zero derivative denominator is masked: `safe_div`), and `where` sends exact zeros to
the unselected side.
"""
from __future__ import annotations

import math

import numpy as np

from ..runtime import primitives as P
from ..runtime.backend import namespace
from .sparse import SparseRows
from .tape import unbroadcast

LN2 = math.log(2.0)
LN10 = math.log(10.0)


def defvjp(prim, *rules):
    """Set the per-operand VJP rules of `prim` (None for a non-differentiable operand)."""
    prim.vjp = tuple(rules)


def defvjp_variadic(prim, rule):
    """Set one rule ``rule(position, g, ans, *operands, **params)`` for all operands."""
    prim.vjp = rule


def safe_div(num, den):
    """num / den, but exactly 0 where num == 0 (so 0 * infinite slope is 0, not NaN)."""
    xp = namespace(num, den)
    nonzero = num != 0
    return xp.where(nonzero, num / xp.where(nonzero, den, 1), 0)


def safe_mul(g, d):
    """g * d, but exactly 0 where g == 0 (so a zero cotangent times an infinite slope is 0)."""
    return namespace(g, d).where(g != 0, g * d, 0)


def _expand_reduced(g, x, axis, keepdims):
    """Broadcast the cotangent of a reduction back over the reduced axes of `x`."""
    if not keepdims and axis is not None:
        g = namespace(g).expand_dims(g, axis)
    return namespace(g).broadcast_to(g, np.shape(x))


def _tie_split(g, ans, x, axis, keepdims):
    """Cotangent of max/min: shared equally between the positions that attain it (the count
    of ties in the cotangent's dtype, so a float32 cotangent stays float32)."""
    hits = x == _expand_reduced(ans, x, axis, keepdims)
    ties = hits.sum(axis=axis, keepdims=True, dtype=g.dtype)
    return namespace(g).where(hits, _expand_reduced(g, x, axis, keepdims), 0) / ties


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


# --- elementwise ----------------------------------------------------------------------------
defvjp(P.negative, lambda g, ans, x: -g)
defvjp(P.exp, lambda g, ans, x: safe_mul(g, ans))
defvjp(P.exp2, lambda g, ans, x: safe_mul(g, ans * LN2))
defvjp(P.log, lambda g, ans, x: safe_div(g, x))
defvjp(P.log2, lambda g, ans, x: safe_div(g, x * LN2))
defvjp(P.log10, lambda g, ans, x: safe_div(g, x * LN10))
defvjp(P.log1p, lambda g, ans, x: safe_div(g, 1 + x))
defvjp(P.expm1, lambda g, ans, x: safe_mul(g, ans + 1))
defvjp(P.sqrt, lambda g, ans, x: safe_div(g, 2 * ans))
defvjp(P.cbrt, lambda g, ans, x: safe_div(g, 3 * ans * ans))
defvjp(P.square, lambda g, ans, x: 2 * g * x)
defvjp(P.reciprocal, lambda g, ans, x: -safe_mul(g, ans * ans))
defvjp(P.sin, lambda g, ans, x: g * np.cos(x))
defvjp(P.cos, lambda g, ans, x: -g * np.sin(x))
defvjp(P.tan, lambda g, ans, x: g * (1 + ans * ans))
defvjp(P.arcsin, lambda g, ans, x: safe_div(g, np.sqrt(1 - x * x)))
defvjp(P.arccos, lambda g, ans, x: -safe_div(g, np.sqrt(1 - x * x)))
defvjp(P.arctan, lambda g, ans, x: g / (1 + x * x))
defvjp(P.sinh, lambda g, ans, x: safe_mul(g, np.cosh(x)))
defvjp(P.cosh, lambda g, ans, x: safe_mul(g, np.sinh(x)))
defvjp(P.tanh, lambda g, ans, x: g * (1 - ans * ans))
defvjp(P.arcsinh, lambda g, ans, x: g / np.sqrt(x * x + 1))
defvjp(P.arccosh, lambda g, ans, x: safe_div(g, np.sqrt(x * x - 1)))
defvjp(P.arctanh, lambda g, ans, x: safe_div(g, 1 - x * x))
defvjp(P.absolute, lambda g, ans, x: g * np.sign(x))
defvjp(P.sigmoid, lambda g, ans, x: g * ans * (1 - ans))

defvjp(P.add, lambda g, ans, x, y: g, lambda g, ans, x, y: g)
defvjp(P.subtract, lambda g, ans, x, y: g, lambda g, ans, x, y: -g)
defvjp(P.multiply, lambda g, ans, x, y: safe_mul(g, y), lambda g, ans, x, y: safe_mul(g, x))
defvjp(P.divide, lambda g, ans, x, y: safe_div(g, y), lambda g, ans, x, y: -safe_div(safe_mul(g, ans), y))
defvjp(P.power,
       lambda g, ans, x, y: np.where(g != 0, g * y * np.power(x, y - 1), 0),
       lambda g, ans, x, y: safe_mul(g, ans * np.log(np.where(x > 0, x, 1))))
defvjp(P.maximum, lambda g, ans, x, y: _binary_max(g, x, y, x > y),
       lambda g, ans, x, y: _binary_max(g, x, y, y > x))
defvjp(P.minimum, lambda g, ans, x, y: _binary_max(g, x, y, x < y),
       lambda g, ans, x, y: _binary_max(g, x, y, y < x))
defvjp(P.fmax, *P.maximum.vjp)
defvjp(P.fmin, *P.minimum.vjp)
defvjp(P.arctan2, lambda g, ans, y, x: safe_div(g * x, x * x + y * y),
       lambda g, ans, y, x: -safe_div(g * y, x * x + y * y))
defvjp(P.hypot, lambda g, ans, x, y: safe_div(g * x, ans), lambda g, ans, x, y: safe_div(g * y, ans))
defvjp(P.logaddexp, lambda g, ans, x, y: g * np.exp(x - ans), lambda g, ans, x, y: g * np.exp(y - ans))
defvjp(P.remainder, lambda g, ans, x, y: g, lambda g, ans, x, y: -safe_mul(g, np.floor(x / y)))
defvjp(P.where, None,
       lambda g, ans, c, x, y: np.where(c, g, 0),
       lambda g, ans, c, x, y: np.where(c, 0, g))

# --- reductions ---------------------------------------------------------------------------
defvjp(P.sum, lambda g, ans, x, axis=None, keepdims=False: _expand_reduced(g, x, axis, keepdims))
defvjp(P.max, lambda g, ans, x, axis=None, keepdims=False: _tie_split(g, ans, x, axis, keepdims))
defvjp(P.min, lambda g, ans, x, axis=None, keepdims=False: _tie_split(g, ans, x, axis, keepdims))
defvjp(P.logsumexp, lambda g, ans, x, axis=None, keepdims=False:
       safe_mul(_expand_reduced(g, x, axis, keepdims), np.exp(x - _expand_reduced(ans, x, axis, keepdims))))
defvjp(P.softmax, lambda g, ans, x, axis=-1: ans * (g - (g * ans).sum(axis=axis, keepdims=True)))
defvjp(P.log_softmax, lambda g, ans, x, axis=-1: g - np.exp(ans) * g.sum(axis=axis, keepdims=True))
defvjp(P.cumsum, lambda g, ans, x, axis=None:
       np.flip(np.cumsum(np.flip(g, axis), axis=axis), axis))


# --- linear algebra -----------------------------------------------------------------------
def _as_arrays(g, *operands):
    """Operands as arrays (a constant operand may be a list or a Python scalar)."""
    xp = namespace(g)
    return tuple(xp.asarray(x) for x in operands)


def _matmul_vjp_a(g, ans, a, b):
    a, b = _as_arrays(g, a, b)
    if a.ndim == 1 and b.ndim == 1:
        return g * b
    if b.ndim == 1:                     # (..., m, n) @ (n,) -> (..., m)
        return g[..., None] * b
    if b.ndim == 2 and a.ndim > 2:      # fold g's leading axes into one GEMM
        return (g.reshape(-1, g.shape[-1]) @ b.T).reshape(a.shape[:-1] + (b.shape[0],))
    gb = g[..., None, :] if a.ndim == 1 else g
    out = gb @ np.swapaxes(b, -1, -2)
    if a.ndim == 1:
        out = out[..., 0, :]
    return unbroadcast(out, a)


def _as_rows(m):
    """`m` as a matrix of its last axis (also when it has no elements: reshape(-1, n) fails)."""
    return m.reshape(math.prod(m.shape[:-1]), m.shape[-1])


GEMM_ROWS = 512
"""`_rows_t_matmul` adds up products of blocks of this many rows (see there)."""


def _rows_t_matmul(a, g):
    """``a.T @ g`` for tall (rows, m) and (rows, n) matrices (a weight gradient). With many
    rows and small m, n, OpenBLAS's GEMM over the long inner dimension runs several times
    slower than the same work in blocks of `GEMM_ROWS` rows, which this adds up."""
    rows = a.shape[0]
    if rows <= 2 * GEMM_ROWS or type(a) is not np.ndarray or type(g) is not np.ndarray:
        return a.T @ g
    out = a[:GEMM_ROWS].T @ g[:GEMM_ROWS]
    for i in range(GEMM_ROWS, rows, GEMM_ROWS):
        out += a[i:i + GEMM_ROWS].T @ g[i:i + GEMM_ROWS]
    return out


def _matmul_vjp_b(g, ans, a, b):
    a, b = _as_arrays(g, a, b)
    if a.ndim == 1 and b.ndim == 1:
        return g * a
    if a.ndim == 1:                     # (n,) @ (..., n, k) -> (..., k)
        return unbroadcast(a[:, None] * g[..., None, :], b)
    if b.ndim == 1:                     # (..., m, n) @ (n,) -> (..., m)
        return _as_rows(g[..., None] * a).sum(axis=0)
    if b.ndim == 2:                     # fold a's leading axes into one GEMM
        return _rows_t_matmul(_as_rows(a), _as_rows(g))
    return unbroadcast(np.swapaxes(a, -1, -2) @ g, b)


defvjp(P.matmul, _matmul_vjp_a, _matmul_vjp_b)
defvjp(P.matmul_t, lambda g, ans, x, w: g @ w,
       lambda g, ans, x, w: _as_rows(g).T @ _as_rows(x))


def _einsum_vjp(pos, g, ans, *operands, spec):
    inputs, out = spec.split("->")
    inputs = inputs.split(",")
    target = inputs[pos]
    if len(set(target)) != len(target):
        raise NotImplementedError(f"einsum VJP: repeated index in operand {target!r} (diagonal) is not supported")
    others = [s for i, s in enumerate(inputs) if i != pos]
    available = set(out).union(*others)
    kept = "".join(c for c in target if c in available)
    grad = np.einsum(",".join([out] + others) + "->" + kept, g, *[op for i, op in enumerate(operands) if i != pos])
    if kept != target:  # indices summed inside this operand alone: broadcast back over them
        x = operands[pos]
        grad = grad.reshape([x.shape[i] if c in available else 1 for i, c in enumerate(target)])
        grad = np.broadcast_to(grad, x.shape)
    return grad


defvjp_variadic(P.einsum, _einsum_vjp)

def _sort_vjp(g, ans, x, axis=-1):
    xp = namespace(g)
    if axis is None:
        return _sort_vjp(g, ans.reshape(-1), x.reshape(-1), 0).reshape(np.shape(x))
    order = xp.argsort(x, axis=axis, kind="stable")
    out = xp.zeros(np.shape(x), dtype=g.dtype)
    xp.put_along_axis(out, order, g, axis=axis)
    return out


defvjp(P.sort, _sort_vjp)


def _pad_vjp(g, ans, x, pad_width, constant=0):
    return g[tuple(slice(before, g.shape[i] - after) for i, (before, after) in enumerate(pad_width))]


defvjp(P.pad, _pad_vjp)
defvjp(P.roll, lambda g, ans, x, shift, axis=None: namespace(g).roll(
    g, tuple(-s for s in shift) if isinstance(shift, tuple) else -shift, axis))

# --- shapes -------------------------------------------------------------------------------
defvjp(P.reshape, lambda g, ans, x, shape: g.reshape(np.shape(x)))
defvjp(P.transpose, lambda g, ans, x, axes=None:
       g.transpose(tuple(np.argsort(axes)) if axes is not None else None))
defvjp(P.broadcast_to, lambda g, ans, x, shape: unbroadcast(g, x))
defvjp(P.astype, lambda g, ans, x, dtype: g.astype(x.dtype) if np.issubdtype(x.dtype, np.inexact) else None)


def _concatenate_vjp(pos, g, ans, *xs, axis=0):
    start = 0
    for x in xs[:pos]:
        start += x.shape[axis]
    index = [slice(None)] * g.ndim
    index[axis] = slice(start, start + xs[pos].shape[axis])
    return g[tuple(index)]


defvjp_variadic(P.concatenate, _concatenate_vjp)


# --- indexing -----------------------------------------------------------------------------
def _getitem_vjp(g, ans, x, *arrays, index):
    if index == (P.ARRAY_SLOT,) and arrays[0].dtype.kind in "iu" and np.ndim(x) >= 1:
        # a row gather (E[word]): a sparse cotangent, densified once where needed
        idx = arrays[0]
        return SparseRows.rows(np.shape(x), idx.reshape(-1), g.reshape((-1,) + np.shape(x)[1:]),
                               unique=False)
    xp = namespace(g)
    out = xp.zeros(np.shape(x), dtype=g.dtype)
    full = P.fill_index(index, arrays)
    if P.is_advanced_index(index):
        xp.add.at(out, full, g)
    else:
        out[full] = g
    return out


defvjp(P.getitem, _getitem_vjp)


def _index_update_vjp_x(g, ans, x, value, *arrays, index, mode):
    if mode == "add":
        return g
    out = g.copy()
    out[P.fill_index(index, arrays)] = 0
    return out


def _index_update_vjp_value(g, ans, x, value, *arrays, index, mode):
    full = P.fill_index(index, arrays)
    c = g[full]
    if mode == "set" and P.is_advanced_index(index):
        # A position written several times keeps only its last write: replay the writes
        # with the write order as values to find which element of `value` survived.
        xp = namespace(g)
        order = xp.arange(c.size).reshape(c.shape)
        owner = xp.full(np.shape(g), -1, dtype=order.dtype)
        owner[full] = order
        c = xp.where(owner[full] == order, c, 0)
    return unbroadcast(c, value)


defvjp(P.index_update, _index_update_vjp_x, _index_update_vjp_value)


def _take_lanes_vjp(g, ans, x, lanes):
    # lane indices never repeat: the parts scatter with a plain (fast) add
    return SparseRows.rows(np.shape(x), lanes, g, unique=True)


defvjp(P.take_lanes, _take_lanes_vjp)


def _gather_lanes_vjp(pos, g, ans, *sources, parts):
    x = sources[pos]
    out_pos, rows = parts[pos]
    values = g[out_pos]
    if values.dtype != x.dtype:
        values = values.astype(x.dtype)
    return SparseRows.rows(np.shape(x), rows, values, unique=True)


defvjp_variadic(P.gather_lanes, _gather_lanes_vjp)


def _rows_of_sources_vjp(pos, g, ans, *sources, source_of, rows, buffer=None, ids=None):
    x = sources[pos]
    out_pos = (source_of == pos).nonzero()[0]
    values = g[out_pos]
    if values.dtype != x.dtype:
        values = values.astype(x.dtype)
    return SparseRows.rows(np.shape(x), rows[out_pos], values, unique=True)


defvjp_variadic(P.rows_of_sources, _rows_of_sources_vjp)


# --- ragged gather / scatter-add (runtime/segments.py) ----------------------------------------
from ..runtime import segments as S  # noqa: E402

defvjp(S.gather_rows, lambda g, ans, x, *, plan: S.scatter_rows(g, plan, np.shape(x), g.dtype))
defvjp(S.unpack_rows, lambda g, ans, values, *, plan: g.take(plan.index, axis=0))
defvjp(S.scatter_add_rows, lambda g, ans, base, values, *, plan: g,
       lambda g, ans, base, values, *, plan: S.take_valid_rows(g, plan, values.dtype))
