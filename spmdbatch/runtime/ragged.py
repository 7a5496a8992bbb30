"""The rules of ragged per-example values: examples whose first axis differs in length.

A `Ragged` (runtime/batched.py, beside `Batched`) is a `Batched` whose `data` is padded (with
zeros) to the longest example along the first per-example axis, plus `lengths` (one int
per lane). Each example sees its own length: `x.shape[0]` and `len(x)` are varying,
iteration stops at the lane's own end, and reductions over the ragged axis ignore the
padding (they fill it with the reduction's identity first). Padding never leaks into results or gradients: it is either masked away
or kept out of the example's view.

A primitive applied to a ragged operand runs its ragged rule (`Primitive.ragged`, declared
with the primitive in spmdbatch/primitives/; here: the dispatch handler, the helpers those
rules share, and the rule of elementwise primitives). A primitive that refuses ragged
operands does so with an `UnsupportedOperation` that names it and the user's line (never a
silently padded result). Operations that give each example a result of its own length (a
slice with negative or varying bounds or a step, a boolean mask, `arange(len(x))`) return a
`Ragged` built by one gather per lane (`_rows`); an index past an example's end raises a
`LaneError` naming the examples.
"""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedOperation
from . import primitives as P
from .array_methods import ArrayMethods
from .batched import Batched, Ragged, _pad_to, as_ragged
from .blame import lane_error, user_frame
from .mapped import LaneMapped
from .dispatch import register_value_type


def _refusal(what: str, hint: str = "Pad the examples to one length before batching, or "
                                     "index, reduce or iterate over the ragged axis instead.",
             depth: int = 3) -> UnsupportedOperation:
    filename, lineno = user_frame(depth)
    return UnsupportedOperation(what, filename, lineno, hint)



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
    rule = prim.ragged
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
def elementwise(prim):
    """Rule for elementwise primitives: operands of one ragged length, padded alike; the
    padding computes anything (masked out of the example's view)."""
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




# --- helpers of the rules -----------------------------------------------------------------------------
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



def _flatten(x):
    """A ragged (T, ...) value as the ragged 1-D sequence of its elements (row-major)."""
    if _ndim(x) == 1:
        return x
    inner = int(np.prod(x.data.shape[2:]))
    data = P.reshape(x.data, shape=(x.data.shape[0], x.padded_length * inner))
    return Ragged(data, x.lengths * inner)



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
        base = self.base
        if type(base) is Ragged and type(base.data) is np.ndarray:   # raw data: map, do not copy
            return RaggedT(LaneMapped(base.data, idx, base.lengths))
        return RaggedT(base._spmd_take_lanes(idx))

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
    if prim.elementwise:
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


register_value_type(RaggedT, 3.5, _ragged_t_apply)   # (before Ragged when they meet)
