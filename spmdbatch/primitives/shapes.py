"""Shapes: reshape, transpose, broadcast_to, concatenate, astype, roll, pad, full_like.

Batched, each shifts its axes past the lane axis. Ragged, they keep the ragged axis first
((T, a, b) <-> (T, a * b), transposes of the other axes), join sequences example by example
(concatenate along the ragged axis gathers each example's rows in order), roll and pad each
example within its own length; `K.T` of a ragged (T, d) is a `RaggedT` (runtime/ragged.py).
Anything that would move the ragged axis is refused with the user's line.
"""
from __future__ import annotations

import threading
import weakref

import numpy as np

from ..ad.tape import unbroadcast
from ..runtime import primitives as P
from ..runtime.backend import namespace
from ..runtime.batched import Batched
from ..runtime.packed import Packed, same_layout
from ..runtime.batching import _as_lanes, _lanes, _ndim, _with_rank
from ..runtime.ragged import (Ragged, RaggedT, _flatten, _pad_to, _plain, _refusal, _rows,
                              _same_lengths, as_ragged)
from .declare import primitive


# --- implementations ----------------------------------------------------------------------
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


def _full_like_impl(a, fill_value, dtype=None, shape=None):
    return np.full_like(a, fill_value, dtype=dtype, shape=shape)


# --- batching rules -----------------------------------------------------------------------
def _roll_rule(args, shift, axis=None):
    (x,) = args
    data = x.data
    if axis is None:      # over the flattened example
        flat = P.roll(P.reshape(data, shape=(data.shape[0], -1)), shift=shift, axis=1)
        return Batched(P.reshape(flat, shape=data.shape))
    axes = tuple(int(a) % x.ndim + 1 for a in axis) if isinstance(axis, tuple) else int(axis) % x.ndim + 1
    return Batched(P.roll(data, shift=shift, axis=axes))


def _transpose_rule(args, axes=None):
    return Batched(P.transpose(
        args[0].data, axes=(0,) + tuple(int(a) % args[0].ndim + 1 for a in
                                        (axes if axes is not None else range(args[0].ndim - 1, -1, -1)))
        if args[0].ndim else (0,)))


def _broadcast_to_rule(args, shape):
    (x,) = args
    data = _with_rank(x.data, len(shape))
    return Batched(P.broadcast_to(data, shape=(data.shape[0],) + tuple(shape)))


def _concatenate_rule(args, axis=0):
    lanes = _lanes(args)
    nd = _ndim(args[0])
    return Batched(P.concatenate(*[_as_lanes(a, lanes) for a in args], axis=int(axis) % nd + 1))


def _full_like_rule(args, fill_value, dtype=None, shape=None):
    (a,) = args
    # Every lane gets the same constant: the result is uniform.
    return a.xp.full(a.shape if shape is None else shape, fill_value, dtype=dtype or a.dtype)


# --- ragged rules -------------------------------------------------------------------------
def _full_like_ragged(args, fill_value, dtype=None, shape=None):
    (a,) = args
    if shape is not None:
        raise _refusal("full_like(ragged, shape=...) is not supported")
    raw = getattr(a.data, "value", a.data)
    return Ragged(np.full(raw.shape, fill_value, dtype=dtype or raw.dtype), a.lengths)



def _reshape_ragged(args, shape):
    """Reshapes that keep the ragged axis first ((T, a, b) <-> (T, a * b), (T,) <-> (T, 1))
    or flatten the example ((-1,))."""
    (x,) = args
    shape = tuple(shape)
    rest = x.data.shape[2:]
    def free(d):        # the per-example length: given as x.shape[0] or -1
        return type(d) is Batched or (isinstance(d, (int, np.integer)) and d == -1)

    if len(shape) == 1 and free(shape[0]):
        return _flatten(x)
    fixed = [d for d in shape if not free(d)]
    if len(shape) >= 1 and free(shape[0]) and len(fixed) == len(shape) - 1 and \
            int(np.prod(fixed)) == int(np.prod(rest)):
        return Ragged(P.reshape(x.data, shape=x.data.shape[:2] + tuple(fixed)), x.lengths)
    if len(shape) == 2 and _ndim(x) == 1 and shape[0] == 1 and free(shape[1]):
        return RaggedT(Ragged(P.reshape(x.data, shape=x.data.shape + (1,)), x.lengths))   # x[None]
    if len(shape) >= 2 and any(free(d) for d in shape[1:]):
        raise _refusal("a reshape that moves the ragged axis (x[None], numpy.stack along axis 0) "
                       "is not supported",
                       "Keep the per-example length first: x[:, None], numpy.stack(xs, axis=-1).")
    raise _refusal(f"reshape of a ragged value (examples of different lengths) to {shape}",
                   "Only reshapes that keep the ragged axis first are supported: (T, a, b) <-> "
                   "(T, a * b), and (-1,).")



def _transpose_ragged(args, axes=None):
    (x,) = args
    nd = _ndim(x)
    axes = tuple(range(nd - 1, -1, -1)) if axes is None else tuple(int(a) % nd for a in axes)
    if nd == 2 and axes == (1, 0):
        return RaggedT(x)                 # (d, T): K.T of attention scores q @ K.T
    if axes[0] != 0:
        raise _refusal("a transpose that moves the ragged (per-example length) axis of a value "
                       "of rank > 2", "Keep the ragged axis first: contract it with einsum.")
    return Ragged(P.transpose(x.data, axes=(0, 1) + tuple(a + 1 for a in axes[1:])), x.lengths)



def _concatenate_ragged(args, axis=0):
    lanes = next(a.data.shape[0] for a in args if isinstance(a, Batched))
    nd = _ndim(next(a for a in args if type(a) is Ragged))
    axis = int(axis) % nd
    if any(type(a) is not Ragged for a in args):
        if axis != 0:
            raise _refusal("concatenating a ragged value with a regular one along another axis")
        args = [as_ragged(a) if isinstance(a, Batched) else
                as_ragged(Batched(P.broadcast_to(a, shape=(lanes,) + tuple(np.shape(a))))) for a in args]
    if axis != 0:
        lengths = _same_lengths(args, "concatenate")
        width = max(a.padded_length for a in args)
        return Ragged(P.concatenate(*[_pad_to(a.data, width) for a in args], axis=axis + 1), lengths)
    # along the ragged axis: each example's sequences one after the other
    joined = P.concatenate(*[a.data for a in args], axis=1)
    lengths = np.zeros(lanes, dtype=np.intp)
    width = sum(a.padded_length for a in args)
    idx = np.zeros((lanes, width), dtype=np.intp)
    j = np.arange(width)
    offset = 0
    for a in args:
        n = np.asarray(a.lengths)
        inside = (j >= lengths[:, None]) & (j < (lengths + n)[:, None])
        idx = np.where(inside, offset + j - lengths[:, None], idx)
        lengths = lengths + n
        offset += a.padded_length
    top = int(lengths.max()) if lanes else 0
    return Ragged(_rows(Batched(joined), idx[:, :top]), lengths)



def _roll_ragged(args, shift, axis=None):
    (x,) = args
    shape = None
    if axis is None:
        shape = x.data.shape[2:]
        x, axis = _flatten(x), 0
    if not isinstance(axis, (int, np.integer)):
        raise _refusal("numpy.roll over several axes of a ragged value", "Roll one axis at a time.")
    if int(axis) % _ndim(x) != 0:
        return Ragged(P.roll(_plain(x), shift=shift, axis=axis).data, x.lengths)
    n = np.asarray(x.lengths)
    width = x.padded_length
    j = np.arange(width)
    with np.errstate(all="ignore"):
        idx = np.where(n[:, None] > 0, (j - np.asarray(shift).reshape(-1, 1)) % np.maximum(n, 1)[:, None], 0)
    out = Ragged(_rows(x, np.where(j < n[:, None], idx, 0)), x.lengths)
    if shape:     # (back to the example's rows)
        out = Ragged(P.reshape(out.data, shape=(out.data.shape[0], -1) + tuple(shape)),
                     out.lengths // int(np.prod(shape)))
    return out



def _pad_ragged(args, pad_width, constant=0):
    (x,) = args
    (before, after), rest = pad_width[0], tuple(pad_width[1:])
    data = x.data
    if any(w != (0, 0) for w in rest):
        data = P.pad(data, pad_width=((0, 0), (0, 0)) + rest, constant=constant)
    if (before, after) == (0, 0):
        return Ragged(data, x.lengths)
    data = P.pad(data, pad_width=((0, 0), (before, after)) + ((0, 0),) * (data.ndim - 2),
                 constant=constant)
    n = np.asarray(x.lengths)
    j = np.arange(data.shape[1])
    tail = (j >= before + n[:, None]).reshape((len(n), -1) + (1,) * (data.ndim - 2))
    return Ragged(P.where(tail, np.asarray(constant, dtype=getattr(data, "dtype", None)), data),
                  n + before + after)



# --- VJP rules ----------------------------------------------------------------------------
def _pad_vjp(g, ans, x, pad_width, constant=0):
    return g[tuple(slice(before, g.shape[i] - after) for i, (before, after) in enumerate(pad_width))]


class _Offsets(threading.local):
    """The operands' start offsets of the concatenation whose VJP ran last (per thread)."""
    of = None      # weak reference to that node's result
    starts = None


_OFFSETS = _Offsets()


def _concatenate_vjp(pos, g, ans, *xs, axis=0):
    # The tape runs this rule once per operand, one operand after the other: the offsets are
    # computed once per node, so a merge of one piece per level of a deep tree costs linear
    # time, not quadratic.
    memo = _OFFSETS
    if memo.of is not None and memo.of() is ans:
        starts = memo.starts
    else:
        starts = [0]
        for x in xs:
            starts.append(starts[-1] + x.shape[axis])
        try:
            memo.of, memo.starts = weakref.ref(ans), starts
        except TypeError:           # (a result that cannot be weakly referenced: no memo)
            memo.of = None
    start = starts[pos]
    index = [slice(None)] * g.ndim
    index[axis] = slice(start, start + xs[pos].shape[axis])
    return g[tuple(index)]


def _reshape_packed(args, shape):
    """Packed rule of reshape: a new shape of each row, the ragged axis first (its length
    written as the varying length or -1); None otherwise."""
    x = args[0]
    if type(x) is not Packed:
        return None
    shape = tuple(shape)
    rest = tuple(x.rows.shape[1:])
    if len(shape) >= 1 and (type(shape[0]) is Batched or (isinstance(shape[0], (int, np.integer))
                                                          and shape[0] == -1 and len(shape) > 1)):
        fixed = shape[1:]
        if all(isinstance(d, (int, np.integer)) and d >= 0 for d in fixed) and \
                int(np.prod(fixed)) == int(np.prod(rest)):
            return Packed(P.reshape(x.rows, shape=(x.layout.total,) + tuple(int(d) for d in fixed)), x.layout)
    return None


def _transpose_packed(args, axes=None):
    """Packed rule of transpose: permutations that keep the ragged axis first."""
    x = args[0]
    if type(x) is not Packed:
        return None
    nd = x.rows.ndim
    if axes is None:
        return None if nd > 1 else x
    axes = tuple(int(a) % nd for a in axes)
    if axes[0] != 0:
        return None
    return Packed(P.transpose(x.rows, axes=axes), x.layout)


def _concatenate_packed(args, axis=0):
    """Packed rule of concatenate: along a trailing axis, of Packed operands of the same
    lengths."""
    if not all(type(a) is Packed for a in args):
        return None
    nd = args[0].rows.ndim
    if axis % max(max(a.rows.ndim for a in args), 1) == 0:
        return None
    first = args[0].layout
    if not all(same_layout(first, a.layout) for a in args[1:]):
        return None
    return Packed(P.concatenate(*[a.rows for a in args], axis=int(axis) % nd), first)


def _astype_packed(args, dtype):
    return Packed(P.astype(args[0].rows, dtype=dtype), args[0].layout)


# --- the primitives -------------------------------------------------------------------------
reshape = primitive("reshape", _reshape, ragged=_reshape_ragged, packed=_reshape_packed,
                    batch=lambda args, shape: Batched(
                        P.reshape(args[0].data, shape=(args[0].data.shape[0],) + tuple(shape))),
                    vjp=(lambda g, ans, x, shape: g.reshape(np.shape(x)),))
transpose = primitive("transpose", _transpose, ragged=_transpose_ragged, packed=_transpose_packed,
                      batch=_transpose_rule,
                      vjp=(lambda g, ans, x, axes=None:
                           g.transpose(tuple(np.argsort(axes)) if axes is not None else None),))
broadcast_to = primitive("broadcast_to", _broadcast_to, batch=_broadcast_to_rule,
                         ragged="broadcasting to a shape would stretch or move the ragged axis",
                         vjp=(lambda g, ans, x, shape: unbroadcast(g, x),))
concatenate = primitive("concatenate", _concatenate, batch=_concatenate_rule, ragged=_concatenate_ragged,
                        packed=_concatenate_packed, vjp=_concatenate_vjp)
astype = primitive("astype", _astype,
                   batch=lambda args, dtype: Batched(P.astype(args[0].data, dtype=dtype)),
                   ragged=lambda args, dtype: Ragged(P.astype(args[0].data, dtype=dtype), args[0].lengths),
                   packed=_astype_packed,
                   vjp=(lambda g, ans, x, dtype:
                        g.astype(x.dtype) if np.issubdtype(x.dtype, np.inexact) else None,))
roll = primitive("roll", _roll, batch=_roll_rule, ragged=_roll_ragged,
                 vjp=(lambda g, ans, x, shift, axis=None: namespace(g).roll(
                     g, tuple(-s for s in shift) if isinstance(shift, tuple) else -shift, axis),))
pad = primitive("pad", _pad, ragged=_pad_ragged,
                batch=lambda args, pad_width, constant=0: Batched(
                    P.pad(args[0].data, pad_width=((0, 0),) + tuple(pad_width), constant=constant)),
                vjp=(_pad_vjp,))
"""Constant padding: `pad_width` is ((before, after),) per axis."""
full_like = primitive("full_like", _full_like_impl, batch=_full_like_rule, ragged=_full_like_ragged,
                      differentiable=False)
"""numpy.full_like (zeros_like, ones_like, empty_like): a constant, the same for every example."""
