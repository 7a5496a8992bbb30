"""Ragged per-example values: examples whose first axis differs in length.

A `Ragged` is a `Batched` whose `data` is padded (with zeros) to the longest example along
the first per-example axis, plus `lengths` (one int per lane). Each example sees its own
length: `x.shape[0]` and `len(x)` are varying, iteration stops at the lane's own end, and
reductions over the ragged axis ignore the padding (they fill it with the reduction's
identity first). Padding never leaks into results or gradients: it is either masked away
or kept out of the example's view.

Primitives get ragged rules in `RAGGED_RULES`; a primitive without one refuses ragged
operands with an `UnsupportedConstruct` that names it and the user's line (never a silently
padded result). Operations that give each example a result of its own length (a slice with
negative or varying bounds or a step, a boolean mask, `arange(len(x))`) return a `Ragged`
built by one gather per lane (`_rows`); an index past an example's end raises a `LaneError`
naming the examples.
"""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedOperation
from . import primitives as P
from . import segments
from .array_methods import ArrayMethods
from .batched import Batched, lane_error, user_frame
from .dispatch import register_value_type
from .mapped import LaneMapped

RAGGED_RULES: dict = {}


class Ragged(Batched):
    """Per-example arrays of different lengths along their first axis (padded, see module)."""

    __slots__ = ("lengths",)

    def __init__(self, data, lengths):
        self.data = data
        self.lengths = lengths
        self.weak = False

    @property
    def shape(self):
        return (Batched(self.lengths, weak=True),) + tuple(self.data.shape[2:])   # Python ints

    @property
    def padded_length(self) -> int:
        return self.data.shape[1]

    def mask(self):
        """Boolean data (lanes, padded length, 1, ...) that is True inside each example."""
        data = self.data
        valid = np.arange(data.shape[1])[None, :] < np.asarray(self.lengths)[:, None]
        return valid.reshape(valid.shape + (1,) * (data.ndim - 2))

    def _spmd_take_lanes(self, idx):
        if type(self.data) is np.ndarray:   # raw per-lane data: follow lanes by index map
            return LaneMapped(self.data, idx, self.lengths)
        return Ragged(P.take_lanes(self.data, idx), self.lengths[idx])

    def _spmd_merge_lanes(self, others, counts):
        group = [self] + list(others)
        if not all(type(g) is Ragged for g in group):
            if all(type(g) in (Ragged, Batched) and g.data.ndim >= 2 for g in group):
                group = [as_ragged(g) for g in group]     # (a regular array: every length full)
            else:
                raise _refusal("a variable holds a ragged value on some paths and another kind of "
                               "value on others where control flow joins")
        width = max(g.padded_length for g in group)
        return Ragged(P.concatenate(*[_pad_to(g.data, width) for g in group], axis=0),
                      np.concatenate([g.lengths for g in group]))

    def _spmd_assign(self, other):
        Batched._spmd_assign(self, other)
        self.lengths = other.lengths

    def _spmd_stop_gradient(self):
        return Ragged(getattr(self.data, "value", self.data), self.lengths)

    def __len__(self):
        filename, lineno = user_frame()
        from ..errors import VaryingValueError
        raise VaryingValueError("len() of a ragged value as a Python int", filename, lineno,
                                "Inside @spmd code len(x) works (it is varying); elsewhere use x.shape[0].")

    def __repr__(self):
        return f"Ragged(lanes={self.data.shape[0]}, padded shape={self.data.shape[1:]}, dtype={self.dtype})"


def _refusal(what: str, hint: str = "Pad the examples to one length before batching, or "
                                     "index, reduce or iterate over the ragged axis instead.",
             depth: int = 3) -> UnsupportedOperation:
    filename, lineno = user_frame(depth)
    return UnsupportedOperation(what, filename, lineno, hint)


def as_ragged(x):
    """`x` as a `Ragged` (a regular varying array: every example's full length)."""
    if type(x) is Ragged:
        return x
    data = x.data
    return Ragged(data, np.full(data.shape[0], data.shape[1], dtype=np.intp))


def _raw(value):
    """Raw numpy data of an index-like operand (no gradient flows through indices)."""
    data = value.data if isinstance(value, Batched) else value
    return np.asarray(getattr(data, "value", data))


def _rows(x, idx):
    """Each lane's rows `idx[lane]` (an int array (lanes, k)) of ragged or regular `x`'s data."""
    data = x.data
    lanes = data.shape[0]
    if idx.shape[1] == 0 or data.shape[1] == 0:
        return P.getitem(data, index=(slice(None), slice(0, 0)))
    lane = np.arange(lanes).reshape(lanes, 1)
    return P.getitem(data, lane, idx, index=(P.ARRAY_SLOT, P.ARRAY_SLOT))


def _positions(start, step, lengths):
    """Row indices (lanes, max length): start + j * step below each lane's length, else 0."""
    width = int(lengths.max()) if lengths.size else 0
    j = np.arange(width)
    idx = np.asarray(start).reshape(-1, 1) + np.asarray(step).reshape(-1, 1) * j
    return np.where(j < lengths[:, None], idx, 0).astype(np.intp)


def _slice_rows(sl, lengths):
    """Python's slice semantics per lane: (first row, step, result length) arrays."""
    step = 1 if sl.step is None else sl.step
    if type(step) is Batched:
        raise _refusal("a slice of a ragged axis with a varying step", "Use a uniform step.", 4)
    step = int(step)
    if step == 0:
        raise ValueError("slice step cannot be zero")
    n = np.asarray(lengths)
    lower, upper = (np.full_like(n, -1), n - 1) if step < 0 else (np.zeros_like(n), n)

    def bound(value, default):
        if value is None:
            return default
        v = _raw(value).astype(np.intp)
        return np.where(v < 0, np.maximum(v + n, lower), np.minimum(v, upper))

    start = bound(sl.start, upper if step < 0 else lower)
    stop = bound(sl.stop, lower if step < 0 else upper)
    if step > 0:
        count = np.where(stop > start, (stop - start - 1) // step + 1, 0)
    else:
        count = np.where(start > stop, (start - stop - 1) // -step + 1, 0)
    return start, step, count.astype(np.intp)


def ragged_arange(*args, dtype=None):
    """``numpy.arange`` with a varying bound: each example's own range (a Ragged)."""
    if len(args) == 1:
        args = (0, args[0], 1)
    elif len(args) == 2:
        args = (args[0], args[1], 1)
    lanes = next(a.data.shape[0] for a in args if isinstance(a, Batched))
    if dtype is None:        # numpy's choice for arguments of these types
        dtype = np.arange(*[_raw(a).dtype.type(1) if isinstance(a, Batched) else a for a in args[:2]],
                          1 if not isinstance(args[2], Batched) else _raw(args[2]).dtype.type(1)).dtype
    start, stop, step = (np.broadcast_to(_raw(a), (lanes,)) for a in args)
    if np.any(step == 0):
        raise ZeroDivisionError("numpy.arange: step 0")
    with np.errstate(all="ignore"):
        count = np.maximum(np.ceil((stop - start) / step), 0).astype(np.intp)
    width = int(count.max()) if count.size else 0
    data = (start[:, None] + np.arange(width) * step[:, None]).astype(dtype)
    return Ragged(data, count)


def _pad_to(data, width):
    missing = width - data.shape[1]
    if missing == 0:
        return data
    raw = getattr(data, "value", data)
    zeros = np.zeros((data.shape[0], missing) + tuple(data.shape[2:]), dtype=raw.dtype)
    return P.concatenate(data, zeros, axis=1)


def from_examples(arrays):
    """A Ragged from per-example numpy arrays of equal rank (>= 1) and different lengths; its
    dtype is numpy's promotion over all examples (as numpy.stack would give)."""
    rest = {a.shape[1:] for a in arrays}
    if len(rest) > 1:
        raise NotImplementedError(
            f"per-example arrays may differ only in their first axis (ragged), got shapes "
            f"{sorted({a.shape for a in arrays})[:4]}; pad them to a common shape")
    lengths = np.array([a.shape[0] for a in arrays], dtype=np.intp)
    width = int(lengths.max()) if len(arrays) else 0
    data = np.zeros((len(arrays), width) + next(iter(rest)), dtype=np.result_type(*arrays))
    if len(arrays):
        # the valid positions in row-major order are the examples' elements one after another
        data[np.arange(width) < lengths[:, None]] = np.concatenate(arrays)
    return Ragged(data, lengths)


def to_examples(value):
    """Per-example arrays (each trimmed to its length) of a Ragged result."""
    return [value.data[i, :int(n)] for i, n in enumerate(value.lengths)]


# --- dispatch -------------------------------------------------------------------------------------
def ragged_apply(prim, args, params):
    rule = RAGGED_RULES.get(prim)
    if rule is None:
        raise _refusal(f"{prim.name} on a ragged per-example value (examples of different "
                       f"lengths) is not supported")
    return rule(args, **params)


register_value_type(Ragged, 3, ragged_apply)


def _plain(a):
    return Batched(a.data) if type(a) is Ragged else a


def _ndim(a):
    return len(a.data.shape) - 1 if isinstance(a, Batched) else np.ndim(a)


# --- elementwise ------------------------------------------------------------------------------------
def _elementwise(prim):
    def rule(args, **params):
        rank = max(_ndim(a) for a in args)
        lengths = None
        for a in args:
            if type(a) is Ragged:
                if _ndim(a) != rank:
                    raise _refusal(f"{prim.name}: broadcasting a ragged value against a value of "
                                   f"higher rank would move the ragged axis",
                                   "Expand the ragged value's dimensions first (x[:, None]).")
                if lengths is not None and not np.array_equal(lengths, a.lengths):
                    bad = np.flatnonzero(lengths != a.lengths)
                    raise lane_error(ValueError(f"operands could not be broadcast together ({prim.name} "
                                                f"of sequences of different lengths)"), bad)
                lengths = a.lengths
        width = max(a.padded_length for a in args if type(a) is Ragged)
        operands = [Batched(_pad_to(a.data, width)) if type(a) is Ragged else a for a in args]
        with np.errstate(all="ignore"):  # padding positions may compute anything; they are masked
            out = prim(*operands, **params)
        return Ragged(out.data, lengths)
    return rule


for _prim in P.ELEMENTWISE | {P.sigmoid, P.where, P.round}:
    RAGGED_RULES[_prim] = _elementwise(_prim)
RAGGED_RULES[P.astype] = lambda args, dtype: Ragged(P.astype(args[0].data, dtype=dtype), args[0].lengths)


def _full_like(args, fill_value, dtype=None, shape=None):
    (a,) = args
    if shape is not None:
        raise _refusal("full_like(ragged, shape=...) is not supported")
    raw = getattr(a.data, "value", a.data)
    return Ragged(np.full(raw.shape, fill_value, dtype=dtype or raw.dtype), a.lengths)


RAGGED_RULES[P.full_like] = _full_like


# --- reductions ---------------------------------------------------------------------------------------
def _fill_value(dtype, kind):
    if kind == "last":              # sorts after every value (stable sorts keep it last)
        if np.issubdtype(dtype, np.inexact):
            return np.nan
        if dtype == np.bool_:
            return True
        return np.iinfo(dtype).max
    if kind == "zero":
        return 0
    if kind == "false":
        return False
    if kind == "true":
        return True
    if np.issubdtype(dtype, np.floating):
        return -np.inf if kind == "low" else np.inf
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    if info is None:
        return kind == "high"
    return info.min if kind == "low" else info.max


def _masked(x, kind):
    """x's data with padding replaced by the identity of a reduction (`kind`)."""
    return P.where(x.mask(), x.data, _fill_value(x.dtype, kind))


def _reduction(prim, kind):
    def rule(args, axis=None, keepdims=False):
        (x,) = args
        nd = _ndim(x)
        axes = tuple(range(nd)) if axis is None else tuple(a % nd for a in
                                                            ((axis,) if isinstance(axis, int) else axis))
        if 0 not in axes:
            return Ragged(prim(_plain(x), axis=axis, keepdims=keepdims).data, x.lengths)
        return prim(Batched(_masked(x, kind)), axis=axis, keepdims=keepdims)
    return rule


for _prim, _kind in ((P.sum, "zero"), (P.max, "low"), (P.min, "high"), (P.logsumexp, "low"),
                     (P.any, "false"), (P.all, "true"), (P.argmax, "low"), (P.argmin, "high")):
    RAGGED_RULES[_prim] = _reduction(_prim, _kind)


def _along_axis(prim, kind):
    def rule(args, axis=-1):
        (x,) = args
        if axis is None:                      # over the flattened example
            x = _flatten(x)
            axis = 0
        if axis % _ndim(x) != 0:
            return Ragged(prim(_plain(x), axis=axis).data, x.lengths)
        return Ragged(prim(Batched(_masked(x, kind)), axis=0).data, x.lengths)
    return rule


RAGGED_RULES[P.softmax] = _along_axis(P.softmax, "low")
RAGGED_RULES[P.log_softmax] = _along_axis(P.log_softmax, "low")
RAGGED_RULES[P.cumsum] = _along_axis(P.cumsum, "zero")
# sorting: padding sorts after every element of the example (NaN after the largest value and
# after the example's own NaNs, since the sort is stable)
RAGGED_RULES[P.sort] = _along_axis(P.sort, "last")
RAGGED_RULES[P.argsort] = _along_axis(P.argsort, "last")


def _flatten(x):
    """A ragged (T, ...) value as the ragged 1-D sequence of its elements (row-major)."""
    if _ndim(x) == 1:
        return x
    inner = int(np.prod(x.data.shape[2:]))
    data = P.reshape(x.data, shape=(x.data.shape[0], x.padded_length * inner))
    return Ragged(data, x.lengths * inner)


def _reshape(args, shape):
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


RAGGED_RULES[P.reshape] = _reshape


def _transpose(args, axes=None):
    (x,) = args
    nd = _ndim(x)
    axes = tuple(range(nd - 1, -1, -1)) if axes is None else tuple(int(a) % nd for a in axes)
    if nd == 2 and axes == (1, 0):
        return RaggedT(x)                 # (d, T): K.T of attention scores q @ K.T
    if axes[0] != 0:
        raise _refusal("a transpose that moves the ragged (per-example length) axis of a value "
                       "of rank > 2", "Keep the ragged axis first: contract it with einsum.")
    return Ragged(P.transpose(x.data, axes=(0, 1) + tuple(a + 1 for a in axes[1:])), x.lengths)


RAGGED_RULES[P.transpose] = _transpose


def _same_lengths(operands, what):
    """The common lengths of ragged operands (a LaneError names examples where they differ)."""
    lengths = None
    for a in operands:
        if type(a) is Ragged:
            if lengths is None:
                lengths = a.lengths
            elif not np.array_equal(lengths, a.lengths):
                bad = np.flatnonzero(lengths != a.lengths)
                raise lane_error(ValueError(f"{what}: sequences of different lengths"), bad)
    return lengths


def _concatenate(args, axis=0):
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


RAGGED_RULES[P.concatenate] = _concatenate


def _roll(args, shift, axis=None):
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


RAGGED_RULES[P.roll] = _roll


def _pad(args, pad_width, constant=0):
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


RAGGED_RULES[P.pad] = _pad


def _einsum(args, spec):
    """Contractions whose ragged axis (the first subscript of each ragged operand) is summed
    over (padding counts as zero), or kept as the first axis of the result."""
    inputs, out = spec.split("->")
    subs = inputs.split(",")
    letters = {s[0] for a, s in zip(args, subs) if type(a) is Ragged}
    if len(letters) != 1:
        raise _refusal("einsum over ragged operands with different ragged axes")
    (t,) = letters
    if any(type(a) is not Ragged and t in sub for a, sub in zip(args, subs)) or \
            any(type(a) is Ragged and t in sub[1:] for a, sub in zip(args, subs)):
        raise _refusal("einsum where the ragged axis meets a regular axis or repeats in an operand")
    lengths = _same_lengths(args, "einsum")
    width = max(a.padded_length for a in args if type(a) is Ragged)
    operands = [Batched(_pad_to(_masked(a, "zero"), width)) if type(a) is Ragged else a for a in args]
    result = P.einsum(*operands, spec=spec)
    if t not in out:
        return result
    if out[0] != t:
        raise _refusal("einsum whose output has the ragged axis after another axis",
                       "Put the ragged axis first in the output subscripts.")
    return Ragged(result.data, lengths)


RAGGED_RULES[P.einsum] = _einsum


def _matmul(args):
    a, b = args
    if type(a) is RaggedT or type(b) is RaggedT:
        return _matmul_t(a, b)
    if type(a) is Ragged and not isinstance(b, Batched) and _ndim(a) == 2 and _ndim(b) == 2:
        out = segments.ragged_matmul(a, b)       # (T, d) @ (d, h) on the valid rows only
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


RAGGED_RULES[P.matmul] = _matmul


# --- indexing -------------------------------------------------------------------------------------------
_INTP, _UINTP = np.dtype(np.intp), np.dtype(np.uintp)
try:
    from numpy._core._multiarray_umath import count_nonzero as _count_nonzero
except ImportError:     # pragma: no cover  (numpy < 2)
    _count_nonzero = np.count_nonzero


def _check_in_range(x, index_data):
    """Each lane's indices along the ragged axis, negative ones counted from the lane's end;
    an index past the example raises a LaneError naming the examples."""
    lengths = np.asarray(x.lengths)
    idx = np.asarray(getattr(index_data, "value", index_data))
    if idx.ndim == 1 and idx.dtype == _INTP and lengths.dtype == _INTP and \
            _count_nonzero(idx.view(_UINTP) < lengths.view(_UINTP)) == len(idx):
        return idx            # (one position per lane, all in range: 0 <= idx < length)
    n = lengths.reshape((-1,) + (1,) * (idx.ndim - 1))
    idx = np.where(idx < 0, idx + n, idx)
    bad_at = (idx >= n) | (idx < 0)
    bad = np.flatnonzero(np.any(bad_at, axis=tuple(range(1, idx.ndim))) if idx.ndim > 1 else bad_at)
    if bad.size:
        raise lane_error(IndexError("index out of range for the ragged axis"), bad, depth=4)
    return idx


def _select(x, mask):
    """``x[mask]`` with a per-example boolean mask over the first axis (or over every axis of
    a regular x): each example keeps its selected elements, in order (a Ragged)."""
    regular = type(x) is not Ragged
    x = as_ragged(x)
    lanes = x.data.shape[0]
    m = _raw(mask) if isinstance(mask, Batched) else np.broadcast_to(np.asarray(mask), (lanes,) + np.shape(mask))
    m_lengths = np.asarray(mask.lengths) if type(mask) is Ragged else np.full(lanes, m.shape[1] if m.ndim > 1 else 0)
    if m.ndim > 2 and regular and type(mask) is not Ragged and m.shape == tuple(x.data.shape):
        x, m = _flatten(x), m.reshape(lanes, -1)           # (a mask over the whole example)
        m_lengths = np.full(lanes, m.shape[1])
    elif m.ndim != 2:
        raise _refusal("this per-example boolean mask (one boolean per row, or one per element of "
                       "a regular array, is supported)", "Use numpy.where(mask, x, 0).", 4)
    bad = np.flatnonzero(m_lengths != np.asarray(x.lengths))
    if bad.size:
        raise lane_error(IndexError("boolean index did not match the indexed array along axis 0 "
                                    "(the mask and the array have different lengths)"), bad, depth=4)
    valid = m & (np.arange(m.shape[1]) < m_lengths[:, None])
    counts = np.count_nonzero(valid, axis=1).astype(np.intp)
    order = np.argsort(~valid, axis=1, kind="stable")[:, :int(counts.max()) if lanes else 0]
    return Ragged(_rows(x, np.where(np.arange(order.shape[1]) < counts[:, None], order, 0)), counts)


def _getitem(args, index):
    x, *arrays = args
    if index == (P.ARRAY_SLOT,) and isinstance(x, Batched) and x.data.ndim >= 2 \
            and segments.applies(arrays[0], rank=None):
        return segments.gather(x, arrays[0])      # h[src]: rows by a per-example index
    if type(x) is not Ragged:
        # a regular array gathered with a ragged index (table[ids]): the result is ragged
        if index == (P.ARRAY_SLOT,) and type(arrays[0]) is Ragged:
            ids = arrays[0]
            if ids.dtype == np.bool_:
                return _select(x, ids)
            out = P.getitem(x, Batched(ids.data), index=index)
            return Ragged(out.data, ids.lengths)
        raise _refusal("indexing with a ragged index array is supported only as table[ids] "
                       "(one index array)")
    first = index[0] if index else slice(None)
    rest = index[1:]
    if first is Ellipsis:
        consumed = sum(1 for i in rest if i is not None)
        if Ellipsis in rest or consumed > _ndim(x):
            raise _refusal("this Ellipsis index of a ragged value is not supported")
        index = (slice(None),) * (_ndim(x) - consumed) + tuple(rest)
        if not index:
            return x
        first, rest = index[0], index[1:]
    if first is None:
        raise _refusal("a new axis before the ragged axis (x[None]) would move the ragged axis",
                       "Keep the ragged axis first: x[:, None].")
    lanes = x.data.shape[0]
    if first is P.ARRAY_SLOT and getattr(arrays[0], "dtype", None) == np.bool_:
        if rest:
            raise _refusal("a boolean mask followed by more indices on a ragged value",
                           "Apply the mask first, then index the result.")
        return _select(x, arrays[0])
    if isinstance(first, (int, np.integer)) or first is P.ARRAY_SLOT:
        if first is P.ARRAY_SLOT:
            idx = arrays[0]
            arrays = arrays[1:]
            idx_data = idx.data if isinstance(idx, Batched) else np.broadcast_to(idx, (lanes,) + np.shape(idx))
        else:
            idx_data = np.full(lanes, int(first))
        idx_data = _check_in_range(x, idx_data)
        return P.getitem(Batched(x.data), Batched(idx_data), *arrays, index=(P.ARRAY_SLOT,) + tuple(rest))
    if isinstance(first, slice):
        if any(item is P.ARRAY_SLOT for item in rest):
            raise _refusal("array indices after a slice of a ragged value are not supported",
                           "Index the rows first, then the columns.")
        start, stop, step = first.start, first.stop, first.step
        if step in (None, 1) and type(start) is not Batched and type(stop) is not Batched and \
                (start is None or start >= 0) and (stop is None or stop >= 0):
            start = start or 0          # (the common x[a:b]: one slice of the padded data)
            lengths = np.asarray(x.lengths)
            if stop is not None:
                lengths = np.minimum(lengths, stop)
            lengths = np.maximum(lengths - start, 0)
            out = P.getitem(Batched(x.data), *arrays, index=(slice(start, stop),) + tuple(rest))
            return Ragged(out.data, lengths)
        first_row, step, count = _slice_rows(first, x.lengths)
        out = Ragged(_rows(x, _positions(first_row, step, count)), count)
        return P.getitem(out, *arrays, index=(slice(None),) + tuple(rest)) if rest else out
    raise _refusal(f"index {first!r} on a ragged value is not supported")


RAGGED_RULES[P.getitem] = _getitem


def _index_update(args, index, mode):
    x, value, *arrays = args
    if mode == "add" and index == (P.ARRAY_SLOT,) and np.ndim(x) >= 1 and segments.applies(arrays[0]):
        if not isinstance(x, Batched):                      # a uniform array: one copy per lane
            lanes = arrays[0].data.shape[0]
            x = Batched(P.broadcast_to(x, shape=(lanes,) + tuple(np.shape(x))))
        return segments.scatter_add(x, arrays[0], value)   # add.at(agg, dst, msg)
    if type(x) is not Ragged or type(value) is Ragged or any(type(a) is Ragged for a in arrays):
        raise _refusal("index update with a ragged value or index is not supported; only "
                       "updating positions of a ragged array is")
    first = index[0] if index else slice(None)
    lanes = x.data.shape[0]
    if first is P.ARRAY_SLOT:
        idx = arrays[0]
        idx_data = idx.data if isinstance(idx, Batched) else np.broadcast_to(idx, (lanes,) + np.shape(idx))
        if getattr(idx_data, "dtype", None) == np.bool_:
            raise _refusal("an update through a boolean mask of a ragged array",
                           "Use numpy.where(mask, value, x).")
        arrays = [Batched(_check_in_range(x, idx_data))] + list(arrays[1:])
    elif isinstance(first, (int, np.integer)):
        position = _check_in_range(x, np.full(lanes, int(first)))
        index = (P.ARRAY_SLOT,) + tuple(index[1:])
        arrays = [Batched(position)] + list(arrays)
    elif first != slice(None):
        raise _refusal("slices of a ragged axis in an index update are not supported",
                       "Update positions one index array at a time.")
    out = P.index_update(Batched(x.data), value, *arrays, index=index, mode=mode)
    return Ragged(out.data, x.lengths)


RAGGED_RULES[P.index_update] = _index_update


# --- a ragged matrix seen transposed ---------------------------------------------------------------
class RaggedT(ArrayMethods):
    """A ragged (T, d) value seen as its transpose (d, T): the ragged axis last. It supports
    what models do with it: transposing back, products that contract or keep T (q @ K.T,
    W @ K.T, K.T @ a), reductions, elementwise operations with scalars or with values of
    its own shape, indexing, and concatenation along the first axis (numpy.stack of ragged
    sequences); anything else is refused with file:line."""

    __slots__ = ("base",)

    def __init__(self, base):
        self.base = base        # the Ragged (T, d)

    shape = property(lambda self: tuple(reversed(self.base.shape)))
    ndim = property(lambda self: 2)
    dtype = property(lambda self: self.base.dtype)
    xp = property(lambda self: self.base.xp)

    def _spmd_take_lanes(self, idx):
        return RaggedT(self.base._spmd_take_lanes(idx))

    def _spmd_merge_lanes(self, others, counts):
        if not all(type(o) is RaggedT for o in others):
            raise _refusal("a variable holds a transposed ragged value on some paths and another "
                           "kind of value on others where control flow joins")
        base = self.base
        if type(base) is not Ragged:
            base = base.materialize()
        return RaggedT(base._spmd_merge_lanes([o.base for o in others], counts))

    def _spmd_stop_gradient(self):
        return RaggedT(self.base._spmd_stop_gradient())

    def _spmd_examples(self):
        """The per-example results (transposed back), for spmd's return value."""
        return [e.T for e in to_examples(self.base)]

    def __repr__(self):
        return f"RaggedT(of {self.base!r})"


def _matmul_t(a, b):
    if type(b) is RaggedT and type(a) is not RaggedT and type(a) is not Ragged:
        k = b.base                           # (T, d)
        if _ndim(a) == 1:                    # (d,) @ (d, T) = K @ q
            return P.matmul(k, a)
        if _ndim(a) == 2:                    # (h, d) @ (d, T) = (K @ W.T).T
            return RaggedT(P.matmul(k, P.transpose(a, axes=(1, 0))))
    if type(a) is RaggedT and type(b) is Ragged and _ndim(b) <= 2:
        # (d, T) @ (T,) and (d, T) @ (T, k): the ragged axis is contracted
        return _einsum((a.base, b), "td,t->d" if _ndim(b) == 1 else "td,tk->dk")
    raise _refusal("this matmul with a transposed ragged value (d, T) is not supported",
                   "Supported: (d,) @ (d, T), (h, d) @ (d, T), (d, T) @ (T,) and (d, T) @ (T, k).")


def _ragged_t_apply(prim, args, params):
    t = next(a for a in args if type(a) is RaggedT)
    if prim is P.matmul:
        return _matmul_t(*args)
    if prim is P.transpose:
        axes = params.get("axes")
        if axes is None or tuple(int(a) % 2 for a in axes) == (1, 0):
            return t.base
        return t
    if prim in RAGGED_T_ELEMENTWISE:
        operands = []
        for a in args:
            if type(a) is RaggedT:
                operands.append(a.base)
            elif np.ndim(a) == 0 or (isinstance(a, Batched) and a.data.ndim == 1):
                operands.append(a)
            else:
                raise _refusal(f"{prim.name} of a transposed ragged value (d, T) with a value of "
                               f"another shape", "Transpose back first (x.T) and broadcast there.")
        return RaggedT(prim(*operands, **params))
    if prim in (P.sum, P.max, P.min, P.any, P.all, P.logsumexp):
        axis, keepdims = params.get("axis"), params.get("keepdims", False)
        if keepdims:
            raise _refusal(f"{prim.name}(keepdims=True) of a transposed ragged value")
        if axis is None or len(axis) == 2:
            return prim(t.base, axis=None, keepdims=False)
        (ax,) = axis
        out = prim(t.base, axis=(1 - ax % 2,), keepdims=False)
        return out
    if prim is P.getitem:
        index = params["index"]
        if all(isinstance(i, (int, np.integer, slice)) for i in index) and len(index) <= 2:
            first, second = (tuple(index) + (slice(None),) * 2)[:2]
            out = P.getitem(t.base, index=(second, first))
            return RaggedT(out) if isinstance(first, slice) and isinstance(second, slice) else out
    if prim is P.concatenate and params.get("axis", 0) % 2 == 0 and all(type(a) is RaggedT for a in args):
        return RaggedT(P.concatenate(*[a.base for a in args], axis=1))
    if prim is P.astype:
        return RaggedT(P.astype(t.base, **params))
    raise _refusal(f"{prim.name} on a transposed ragged value (d, T) is not supported",
                   "Keep the ragged axis first (transpose back with x.T).")


RAGGED_T_ELEMENTWISE = P.ELEMENTWISE | {P.sigmoid}
register_value_type(RaggedT, 3.5, _ragged_t_apply)   # (before Ragged when they meet)
