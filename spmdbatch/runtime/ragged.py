"""Ragged per-example values: examples whose first axis differs in length.

A `Ragged` is a `Batched` whose `data` is padded (with zeros) to the longest example along
the first per-example axis, plus `lengths` (one int per lane). Each example sees its own
length: `x.shape[0]` and `len(x)` are varying, iteration stops at the lane's own end, and
reductions over the ragged axis ignore the padding (they fill it with the reduction's
identity first). Padding never leaks into results or gradients: it is either masked away
or kept out of the example's view.

Primitives get ragged rules in `RAGGED_RULES`; a primitive without one refuses ragged
operands with a NotImplementedError that names it (never a silently padded result).
"""
from __future__ import annotations

import numpy as np

from ..errors import LaneError
from . import primitives as P
from . import segments
from .batched import Batched, user_frame
from .dispatch import register_value_type

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
            from .mapped import LaneMapped
            return LaneMapped(self.data, idx, self.lengths)
        return Ragged(P.take_lanes(self.data, idx), self.lengths[idx])

    def _spmd_merge_lanes(self, others, counts):
        group = [self] + list(others)
        if not all(type(g) is Ragged for g in group):
            raise NotImplementedError("a variable holds a ragged value on some paths and a regular "
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
        filename, lineno = user_frame()
        raise NotImplementedError(
            f"{filename}:{lineno}: {prim.name} on a ragged per-example value (examples of different "
            f"lengths) is not supported; index, reduce or iterate over the ragged axis instead, or "
            f"pad the examples to one length before batching")
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
                    raise NotImplementedError(
                        f"{prim.name}: broadcasting a ragged value against a value of higher rank "
                        f"would move the ragged axis; expand the ragged value's dimensions first")
                if lengths is not None and not np.array_equal(lengths, a.lengths):
                    raise ValueError(f"{prim.name}: ragged operands with different lengths in some example")
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
        raise NotImplementedError("full_like(ragged, shape=...) is not supported")
    raw = getattr(a.data, "value", a.data)
    return Ragged(np.full(raw.shape, fill_value, dtype=dtype or raw.dtype), a.lengths)


RAGGED_RULES[P.full_like] = _full_like


# --- reductions ---------------------------------------------------------------------------------------
def _fill_value(dtype, kind):
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
        if axis is None or axis % _ndim(x) != 0:
            if axis is None:
                raise NotImplementedError(f"{prim.name} over a flattened ragged value is not supported")
            return Ragged(prim(_plain(x), axis=axis).data, x.lengths)
        return Ragged(prim(Batched(_masked(x, kind)), axis=0).data, x.lengths)
    return rule


RAGGED_RULES[P.softmax] = _along_axis(P.softmax, "low")
RAGGED_RULES[P.log_softmax] = _along_axis(P.log_softmax, "low")
RAGGED_RULES[P.cumsum] = _along_axis(P.cumsum, "zero")


def _matmul(args):
    a, b = args
    if type(a) is Ragged and not isinstance(b, Batched) and _ndim(a) == 2 and _ndim(b) == 2:
        out = segments.ragged_matmul(a, b)       # (T, d) @ (d, h) on the valid rows only
        if out is not None:
            return out
    if type(a) is Ragged and type(b) is not Ragged and _ndim(a) >= 2 and _ndim(b) <= 2:
        return Ragged(P.matmul(_plain(a), b).data, a.lengths)   # (T, d) @ (d[, h])
    if type(a) is Ragged and type(b) is Ragged and _ndim(a) == 1 and _ndim(b) == 1:
        return P.sum(P.multiply(a, b), axis=None, keepdims=False)   # dot product of sequences
    raise NotImplementedError("matmul with a ragged operand: only (T, d) @ (d, h) and (T,) @ (T,) "
                              "with the ragged axis T are supported")


RAGGED_RULES[P.matmul] = _matmul


# --- indexing -------------------------------------------------------------------------------------------
def _check_in_range(x, index_data):
    """Raise an IndexError (as a LaneError naming the lanes) where an index is past the example."""
    lengths = np.asarray(x.lengths)
    idx = np.asarray(getattr(index_data, "value", index_data))
    bad = np.flatnonzero(np.any((idx >= lengths.reshape((-1,) + (1,) * (idx.ndim - 1))) |
                                (idx < 0), axis=tuple(range(1, idx.ndim))) if idx.ndim > 1
                         else (idx >= lengths) | (idx < 0))
    if bad.size:
        filename, lineno = user_frame(3)
        raise LaneError(f"IndexError: index out of range for the ragged axis in examples "
                        f"{bad.tolist()}", bad.tolist(), filename, lineno)


def _getitem(args, index):
    x, *arrays = args
    if index == (P.ARRAY_SLOT,) and isinstance(x, Batched) and x.data.ndim >= 2 \
            and segments.applies(arrays[0], rank=None):
        return segments.gather(x, arrays[0])      # h[src]: rows by a per-example index
    if type(x) is not Ragged:
        # a regular array gathered with a ragged index (table[ids]): the result is ragged
        if index == (P.ARRAY_SLOT,) and type(arrays[0]) is Ragged:
            ids = arrays[0]
            out = P.getitem(x, Batched(ids.data), index=index)
            return Ragged(out.data, ids.lengths)
        raise NotImplementedError("indexing with a ragged index array is supported only as "
                                  "table[ids] (one index array)")
    first = index[0] if index else slice(None)
    rest = index[1:]
    if first is Ellipsis:
        raise NotImplementedError("Ellipsis as the first index of a ragged value is not supported")
    lanes = x.data.shape[0]
    if isinstance(first, (int, np.integer)) or first is P.ARRAY_SLOT:
        if first is P.ARRAY_SLOT:
            idx = arrays[0]
            arrays = arrays[1:]
            idx_data = idx.data if isinstance(idx, Batched) else np.broadcast_to(idx, (lanes,) + np.shape(idx))
        else:
            i = int(first)
            idx_data = np.asarray(x.lengths) + i if i < 0 else np.full(lanes, i)
        _check_in_range(x, idx_data)
        return P.getitem(Batched(x.data), Batched(idx_data), *arrays, index=(P.ARRAY_SLOT,) + tuple(rest))
    if isinstance(first, slice):
        if any(item is P.ARRAY_SLOT for item in rest):
            raise NotImplementedError("array indices after a slice of a ragged value are not supported")
        start, stop, step = first.start, first.stop, first.step
        if (step not in (None, 1) or (start is not None and start < 0) or (stop is not None and stop < 0)):
            raise NotImplementedError("slicing a ragged axis supports only non-negative start/stop "
                                      "and step 1")
        start = start or 0
        lengths = np.asarray(x.lengths)
        if stop is not None:
            lengths = np.minimum(lengths, stop)
        lengths = np.maximum(lengths - start, 0)
        out = P.getitem(Batched(x.data), *arrays, index=(slice(start, stop),) + tuple(rest))
        return Ragged(out.data, lengths)
    raise NotImplementedError(f"index {first!r} on a ragged value is not supported")


RAGGED_RULES[P.getitem] = _getitem


def _index_update(args, index, mode):
    x, value, *arrays = args
    if mode == "add" and index == (P.ARRAY_SLOT,) and np.ndim(x) >= 1 and segments.applies(arrays[0]):
        if not isinstance(x, Batched):                      # a uniform array: one copy per lane
            lanes = arrays[0].data.shape[0]
            x = Batched(P.broadcast_to(x, shape=(lanes,) + tuple(np.shape(x))))
        return segments.scatter_add(x, arrays[0], value)   # add.at(agg, dst, msg)
    if type(x) is not Ragged or type(value) is Ragged or any(type(a) is Ragged for a in arrays):
        raise NotImplementedError("index update with a ragged value or index is not supported; "
                                  "only updating positions of a ragged array is")
    first = index[0] if index else slice(None)
    lanes = x.data.shape[0]
    if first is P.ARRAY_SLOT:
        idx = arrays[0]
        idx_data = idx.data if isinstance(idx, Batched) else np.broadcast_to(idx, (lanes,) + np.shape(idx))
        _check_in_range(x, idx_data)
    elif isinstance(first, (int, np.integer)):
        if first < 0:
            raise NotImplementedError("negative positions in a ragged array update are not supported")
        _check_in_range(x, np.full(lanes, int(first)))
    elif first != slice(None):
        raise NotImplementedError("slices of a ragged axis in an index update are not supported")
    out = P.index_update(Batched(x.data), value, *arrays, index=index, mode=mode)
    return Ragged(out.data, x.lengths)


RAGGED_RULES[P.index_update] = _index_update
