"""`LaneMapped`: per-lane data reached through an index map, so it follows lanes for free.

Lane i of a `LaneMapped` is ``base[index[i]]``. Compacting lanes (a varying branch) or
joining groups for a fused call only composes or concatenates the small `index`, instead
of copying the per-lane data (such as each example's tree arrays) at every level of a
recursion. Indexing it with one per-lane integer (`tree.left[k]`) gathers straight from
`base` in one step; any other operation first materializes ``base[index]``.

Only raw (not differentiated) data is mapped: values on the autodiff tape are copied, so
their gradients flow through the lane-gather primitive. Taking and merging lanes of mapped
values (and of a mix of mapped and other values) is execution/lanes.py's `take` and `merge`.
"""
from __future__ import annotations

import numpy as np

from . import primitives as P
from . import views
from .array_methods import ArrayMethods
from .backend import namespace
from .batched import Batched, Ragged
from .blame import lane_error
from .dispatch import bind, register_value_type
from .refusals import RefusesConcrete

MIN_MAPPED_SIZE = 8
"""Per-lane values with fewer elements are copied (a copy is as cheap as a map)."""


class LaneMapped(RefusesConcrete, ArrayMethods):
    """Varying raw data: lane i is ``base[index[i]]`` (ragged when `lengths` is given: lane i
    then has length ``lengths[index[i]]`` along its first axis)."""

    __slots__ = ("base", "index", "lengths", "_lane_lengths", "__weakref__")
    _notes_views = True      # (its lanes are per-example arrays: views are tracked, runtime/views.py)

    def __init__(self, base, index, lengths=None):
        self.base = base
        self.index = index
        self.lengths = lengths
        self._lane_lengths = None

    def lane_lengths(self):
        """Each lane's own length (ragged only), computed once per lane map (the fields of a
        record share their lane map, so they share this too)."""
        if self._lane_lengths is None:
            key = (id(self.index), id(self.lengths))
            hit = _LANE_LENGTHS.get(key)
            if hit is not None and hit[0] is self.index and hit[1] is self.lengths:
                self._lane_lengths = hit[2]
            else:
                if len(_LANE_LENGTHS) > 256:
                    _LANE_LENGTHS.clear()
                self._lane_lengths = self.lengths[self.index]
                _LANE_LENGTHS[key] = (self.index, self.lengths, self._lane_lengths)
        return self._lane_lengths

    @property
    def shape(self):
        if self.lengths is not None:
            return (Batched(self.lane_lengths(), weak=True),) + tuple(self.base.shape[2:])
        return self.base.shape[1:]

    ndim = property(lambda self: self.base.ndim - 1)
    dtype = property(lambda self: self.base.dtype)
    xp = property(lambda self: namespace(self.base))

    def materialize(self) -> Batched:
        if self.lengths is not None:
            return Ragged(self.base[self.index], self.lengths[self.index])
        return Batched(self.base[self.index])

    def _spmd_lane_count(self):
        return len(self.index)

    def _spmd_take_lanes(self, idx):
        return LaneMapped(self.base, self.index[idx], self.lengths)

    def _spmd_stop_gradient(self):
        return self

    def __repr__(self):
        return f"LaneMapped(lanes={len(self.index)}, shape={self.shape}, dtype={self.dtype})"


def mappable(value) -> bool:
    """True for a Batched holding raw data large enough to be worth mapping."""
    data = value.data
    return type(data) is np.ndarray and data.size >= MIN_MAPPED_SIZE * max(1, data.shape[0])


_INTP, _UINTP = np.dtype(np.intp), np.dtype(np.uintp)
_count_nonzero = getattr(getattr(np, "_core", None), "multiarray", np).count_nonzero  # (no dispatch)
_LANE_LENGTHS: dict = {}      # (id(index), id(lengths)) -> (index, lengths, lane lengths)
_IDENTITY: dict = {}          # n -> read-only 0..n-1


def identity_index(n: int):
    """The lane map 0..n-1 (one shared read-only array per n, so values mapped from the same
    lanes share their index and move together)."""
    out = _IDENTITY.get(n)
    if out is None:
        out = np.arange(n)
        out.flags.writeable = False
        if len(_IDENTITY) > 256:
            _IDENTITY.clear()
        _IDENTITY[n] = out
    return out


def as_mapped(value) -> LaneMapped:
    """A Batched value viewed through the identity lane map."""
    return LaneMapped(value.data, identity_index(value.data.shape[0]))


def _mapped_apply(prim, args, params):
    if views.RECORDS.stale:
        views.check(args)          # (a value an in-place update left out of date)
    if prim is P.getitem:
        x = args[0]
        template = params["index"]
        if type(x) is LaneMapped and len(template) == 1:
            item = template[0]
            if item is P.ARRAY_SLOT and type(args[1]) is Batched and args[1].data.ndim == 1 \
                    and type(args[1].data) is np.ndarray:
                return mapped_rows(x, args[1].data)                  # tree.left[k]
            if isinstance(item, (int, np.integer)) and (item >= 0 or x.lengths is None):
                if x.lengths is not None:
                    _check_positions(x, np.full(len(x.index), item))
                elif not -x.base.shape[1] <= item < x.base.shape[1]:
                    raise lane_error(IndexError(f"index {item} is out of bounds for axis 0 with size "
                                                f"{x.base.shape[1]}"), np.arange(len(x.index)))
                return Batched(x.base[x.index, item])
        elif type(x) is LaneMapped and len(template) == 2 and template[0] is P.ARRAY_SLOT \
                and template[1] is P.ARRAY_SLOT and x.base.ndim == 3:
            rows, cols = args[1], args[2]            # logp[t, k]: one element per lane
            if type(rows) is Batched and type(cols) is Batched:
                r, c = rows.data, cols.data
                if type(r) is np.ndarray and type(c) is np.ndarray and r.ndim == 1 and c.ndim == 1 \
                        and r.dtype.kind in "iu" and c.dtype.kind in "iu":
                    if x.lengths is not None:
                        r = _check_positions(x, r)
                    try:
                        return Batched(x.base[x.index, r, c])
                    except IndexError:
                        pass                        # (the general path names the examples)
    args = tuple(a.materialize() if type(a) is LaneMapped else a for a in args)
    return bind(prim, args, params)


def mapped_rows(x, k):
    """Each lane's element `k[lane]` of lane-mapped `x` (``tree.left[k]``), bounds checked
    against each lane's length when ragged (negative positions count from the lane's end)."""
    if x.lengths is not None:
        k = _check_positions(x, k)
    try:
        return Batched(x.base[x.index, k])
    except IndexError:
        width = x.base.shape[1]
        bad = ((k >= width) | (k < -width)).nonzero()[0]
        raise lane_error(IndexError(f"index out of bounds for axis 0 with size {width}"), bad) from None


def _check_positions(x, k):
    """`k`, checked against each lane's length (negative positions wrapped)."""
    lengths = x._lane_lengths
    if lengths is None:
        lengths = x.lane_lengths()
    if k.dtype == _INTP and lengths.dtype == _INTP:
        # 0 <= k < length in one comparison: negative positions wrap to huge unsigned values
        if _count_nonzero(k.view(_UINTP) < lengths.view(_UINTP)) == len(k):
            return k
    elif (k < lengths).all() and (k >= 0).all():
        return k
    k = np.where(k < 0, k + lengths, k)
    bad = np.flatnonzero((k >= lengths) | (k < 0))
    if bad.size:
        raise lane_error(IndexError("index out of range for the ragged axis"), bad, depth=4)
    return k


register_value_type(LaneMapped, 4, _mapped_apply)
