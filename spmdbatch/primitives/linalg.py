"""Linear algebra: matmul, einsum, and matmul_t (``x @ w.T`` in one step, the batched form
of the per-example ``W @ x``).

A batched matmul folds the lanes into the product where it can (one GEMM over all examples);
a ragged one runs (T, d) @ (d, h) on the valid rows only when padding is a large share
(runtime/packed.py), and contracts or keeps the ragged axis of (T,) @ (T, d) and the
products of a transposed ragged value (d, T) (runtime/ragged.py, `RaggedT`).
"""
from __future__ import annotations

import math

import numpy as np

from ..ad.tape import unbroadcast
from ..ad.tracer import is_traced
from ..runtime import primitives as P
from ..runtime import packed
from ..runtime import segments as S
from ..runtime.packed import Packed
from ..runtime.backend import namespace
from ..runtime.batched import Batched
from ..runtime.batching import _ndim, _with_rank
from ..runtime.ragged import Ragged, RaggedT, _einsum, _matmul_t, _plain, _refusal
from .declare import primitive


# --- implementations ----------------------------------------------------------------------
def _matmul(a, b):
    return a @ b


def _einsum_impl(*operands, spec):
    return np.einsum(spec, *operands)


def _x_at_w_t(x, w):
    return x @ w.T


# --- batching rules -----------------------------------------------------------------------
def _squeeze_at(data, axis):
    shape = list(data.shape)
    del shape[axis]
    return P.reshape(data, shape=tuple(shape))


def _matmul_rule(args):
    a, b = args
    ra, rb = _ndim(a), _ndim(b)
    if type(a) is Batched and type(b) is Batched:
        if ra == 1 and rb == 1:
            return Batched(P.sum(P.multiply(a.data, b.data), axis=(1,), keepdims=False))
        if rb == 1:        # (..., m, n) @ (n,)
            bd = _with_rank(P.reshape(b.data, shape=b.data.shape + (1,)), ra)
            return Batched(_squeeze_at(P.matmul(a.data, bd), -1))
        if ra == 1:        # (n,) @ (..., n, k)
            ad = _with_rank(P.reshape(a.data, shape=(a.data.shape[0], 1) + a.shape), rb)
            return Batched(_squeeze_at(P.matmul(ad, b.data), -2))
        rank = max(ra, rb)
        return Batched(P.matmul(_with_rank(a.data, rank), _with_rank(b.data, rank)))
    if type(a) is Batched:  # a varies, b uniform
        ad = a.data
        if rb == 1 or (ra == 1 and rb == 2):
            return Batched(P.matmul(ad, b))
        if ra == 1:        # (n,) @ (..., n, k)
            ad = _with_rank(P.reshape(ad, shape=(ad.shape[0], 1) + a.shape), rb)
            return Batched(_squeeze_at(P.matmul(ad, b), -2))
        if rb == 2:        # fold lanes and leading axes into one matrix product
            flat = P.matmul(P.reshape(ad, shape=(-1, ad.shape[-1])), b)
            return Batched(P.reshape(flat, shape=ad.shape[:-1] + (b.shape[-1],)))
        return Batched(P.matmul(_with_rank(ad, max(ra, rb)), b))
    bd = b.data             # a uniform, b varies
    if ra == 1 and rb == 1:
        return Batched(P.matmul(bd, a))
    if ra == 1:
        return Batched(P.matmul(a, bd))
    if rb == 1:            # (..., m, n) @ (n,): x @ W.T for the common W @ x
        if ra == 2:
            return Batched(P.matmul_t(bd, a))
        col = _with_rank(P.reshape(bd, shape=bd.shape + (1,)), ra)
        return Batched(_squeeze_at(P.matmul(a, col), -1))
    return Batched(P.matmul(a, _with_rank(bd, max(ra, rb))))


def _einsum_rule(args, spec):
    inputs, out = spec.split("->")
    letter = next(c for c in "ZYXWVUTSRQPONMLKJIHGFEDCBAzyxwvutsrqponmlkjihgfedcba" if c not in spec)
    subs = [letter + s if type(a) is Batched else s for a, s in zip(args, inputs.split(","))]
    data = [a.data if type(a) is Batched else a for a in args]
    return Batched(P.einsum(*data, spec=",".join(subs) + "->" + letter + out))


# --- ragged rules -------------------------------------------------------------------------
def _matmul_ragged(args):
    a, b = args
    if type(a) is RaggedT or type(b) is RaggedT:
        return _matmul_t(a, b)
    if type(a) is Ragged and not isinstance(b, Batched) and _ndim(a) == 2 and _ndim(b) == 2:
        out = packed.ragged_matmul(a, b)       # (T, d) @ (d, h) on the valid rows only
        if out is not None:
            return out
    if type(a) is Ragged and type(b) is not Ragged and _ndim(a) >= 2 and _ndim(b) <= 2:
        return Ragged(P.matmul(_plain(a), b).data, a.lengths)   # (T, d) @ (d[, h])
    if type(a) is Ragged and type(b) is Ragged and _ndim(a) == 1 and _ndim(b) <= 2:
        # (T,) @ (T,) and (T,) @ (T, d): the ragged axis is contracted
        return _einsum((a, b), "t,t->" if _ndim(b) == 1 else "t,td->d")
    raise _refusal("matmul with a ragged operand: only (T, d) @ (d, h), (T,) @ (T,) and "
                   "(T,) @ (T, d) with the ragged axis T are supported",
                   "Write (d,) @ (d, T) as (T, d) @ (d,) (q @ K.T as K @ q), or use einsum.")


# --- VJP rules ----------------------------------------------------------------------------
def _as_arrays(g, *operands):
    """Operands as arrays (a constant operand may be a list or a Python scalar; a traced
    operand, in `grad` of `grad`, stays traced)."""
    if all(type(x) is np.ndarray for x in operands):
        return operands
    xp = namespace(g)
    return tuple(x if is_traced(x) else xp.asarray(x) for x in operands)


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


def _as_rows(m):
    """`m` as a matrix of its last axis (also when it has no elements: reshape(-1, n) fails)."""
    return m.reshape(math.prod(m.shape[:-1]), m.shape[-1])


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



def _matmul_packed(args):
    """Packed rule of matmul: ``(T, d) @ (d, h)`` (or ``@ (d,)``) with a uniform right operand
    is one product over the rows; None otherwise."""
    a, b = args
    if type(a) is Packed and not isinstance(b, Batched) and not hasattr(b, "_spmd_take_lanes") \
            and a.rows.ndim == 2 and np.ndim(b) in (1, 2):
        source = a.gathered_from
        if source is not None and source[0].shape[0] < a.rows.shape[0]:
            # h[src] @ W as (h @ W)[src]: one GEMM over the nodes instead of the (more) edges,
            # in the forward and the backward pass (each row is the same product)
            return Packed(S.gather_rows(P.matmul(source[0], b), plan=source[1]), a.layout)
        return Packed(P.matmul(a.rows, b), a.layout)
    return None


# --- the primitives -------------------------------------------------------------------------
matmul = primitive("matmul", _matmul, batch=_matmul_rule, ragged=_matmul_ragged, packed=_matmul_packed,
                   vjp=(_matmul_vjp_a, _matmul_vjp_b), numpy=np.matmul)
matmul_t = primitive("matmul_t", _x_at_w_t,
                     batch=lambda args: P.matmul(args[0], np.swapaxes(args[1], -1, -2)),
                     ragged="it is made by batching rules on lane-major data, never by user code",
                     vjp=(lambda g, ans, x, w: g @ w,
                          lambda g, ans, x, w: _as_rows(g).T @ _as_rows(x)))
"""``x @ w.T`` in one step: the batched form of the per-example ``W @ x``."""
einsum = primitive("einsum", _einsum_impl, batch=_einsum_rule, ragged=_einsum, vjp=_einsum_vjp)
"""numpy.einsum with an explicit spec (``spec="ij,j->i"``) and one or two operands."""
