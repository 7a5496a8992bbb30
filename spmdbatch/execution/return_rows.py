"""Every lane's returned arrays in buffers with one row per lane (recursion by height).

The lanes of a recursive frame return in groups (about one per tree height), and a parked
caller's callees returned in many of them. Gathering group by group costs a take and a
write per group and array. `ReturnRows` instead copies each group's arrays into buffers
indexed by lane id as the group returns, so a parked group reads its callees' rows with one
take per array. Under autodiff the read is one `rows_of_sources` operation over the
returning groups' traced arrays, so gradients still reach each group.

It applies while every returned value has one structure: a `Batched` array, or a tuple or
list of `Batched` arrays (one array type, dtype and row shape per position) and uniform
objects (the same object in every group, such as None). When a group's value does not fit,
`add` says so and the recursion gathers group by group from then on (`Recursion.gather`).
"""
from __future__ import annotations

import numpy as np

from ..ad.tracer import Tracer, untraced
from ..runtime import primitives as P
from ..runtime.backend import namespace
from ..runtime.batched import Batched
from .lanes import is_varying


class _Rows:
    """A position of the returned value that holds per-lane rows."""

    __slots__ = ("array_type", "dtype", "tail")

    def __init__(self, raw):
        self.array_type, self.dtype, self.tail = type(raw), raw.dtype, raw.shape[1:]

    def fits(self, raw) -> bool:
        return type(raw) is self.array_type and raw.dtype == self.dtype and raw.shape[1:] == self.tail


class ReturnRows:
    """Returned values of one recursion by lane id (see module docstring)."""

    __slots__ = ("kind", "slots", "buffers", "traced")

    def __init__(self, kind, slots):
        self.kind = kind                # Batched, tuple or list
        self.slots = slots              # per position: a _Rows, or the uniform object itself
        self.buffers = [None] * sum(type(s) is _Rows for s in slots)   # (capacity, *tail) rows
        self.traced = False             # whether some group's data is a Tracer

    @classmethod
    def of(cls, value):
        """A store for values shaped like `value`, or None when it cannot hold them."""
        kind = type(value)
        items = value if kind is tuple or kind is list else (value,) if kind is Batched else None
        if items is None:
            return None
        slots = []
        for v in items:
            if type(v) is Batched:
                slots.append(_Rows(_raw(v.data)))
            elif is_varying(v):
                return None
            else:
                slots.append(v)
        return cls(kind, slots)

    def add(self, value, lanes, n, capacity) -> bool:
        """Store the rows a group of `n` lanes (`lanes`) returned; False if `value` does not fit
        (then nothing is stored)."""
        kind = type(value)
        if kind is not self.kind or (kind is not Batched and len(value) != len(self.slots)):
            return False
        items = (value,) if kind is Batched else value
        datas = []
        for v, slot in zip(items, self.slots):
            if type(slot) is _Rows:
                if type(v) is not Batched:
                    return False
                raw = _raw(v.data)
                if not slot.fits(raw) or raw.shape[0] != n:
                    return False
                datas.append((v.data, raw))
            elif v is not slot:
                return False
        for j, (data, raw) in enumerate(datas):
            buffer = self.buffers[j]
            if buffer is None or buffer.shape[0] < capacity:
                buffer = self.buffers[j] = _grown(buffer, raw, capacity)
            buffer[lanes] = raw
            if type(data) is Tracer:
                self.traced = True
        return True

    def read(self, ids, which, rows, chunks):
        """The returned values of lanes `ids`: lane ``ids[i]`` returned row ``rows[i]`` of group
        ``which[i]``; `chunks` holds each group's ``(value, lane count)`` in order. `rows` and
        `chunks` are only read when traced (the groups' data are the operation's sources)."""
        out = []
        j = 0
        sourcing = None
        for position, slot in enumerate(self.slots):
            if type(slot) is not _Rows:
                out.append(slot)
                continue
            buffer = self.buffers[j]
            if self.traced:
                if sourcing is None:
                    # (by the groups these lanes came from, not all groups: linear in depth)
                    sourcing = _sources(which)
                involved, source_of = sourcing
                sources = [_item(chunks[g][0], self.kind, position).data for g in involved]
                data = P.rows_of_sources(*sources, source_of=source_of, rows=rows, buffer=buffer,
                                         ids=ids)
            else:
                data = buffer.take(ids, axis=0)
            out.append(Batched(data))
            j += 1
        return out[0] if self.kind is Batched else self.kind(out)


def _sources(which):
    """(the distinct groups in `which`, as a list; each entry's position in that list)."""
    present = np.zeros(int(which.max()) + 1, dtype=bool)     # (group ids are small: a table
    present[which] = True                                      # is cheaper than numpy.unique)
    position = np.cumsum(present)
    position -= 1
    return present.nonzero()[0].tolist(), position[which]


def _item(value, kind, position):
    return value if kind is Batched else value[position]


def _raw(data):
    return untraced(data)


def _grown(buffer, raw, capacity):
    new = namespace(raw).empty((capacity,) + tuple(raw.shape[1:]), dtype=raw.dtype)
    if buffer is not None:
        new[:buffer.shape[0]] = buffer
    return new
