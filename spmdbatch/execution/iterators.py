"""Iteration inside batch programs: `for` over uniform and varying iterables.

- A uniform iterable (a Python list, a uniform range, a batched array whose per-example
  length is the same for all lanes) gives a native Python iterator: the loop is uniform.
- `range(n)` with a varying bound gives a `BatchedRange`; its iterator keeps a per-lane
  counter, and a lane leaves the loop when its own range is exhausted.

`iter_next(it)` is one step of a `for` loop: ``(item, more)`` where `more` is True, False, or
a varying boolean (per-lane), as the ForIter terminator of the IR needs.
"""
from __future__ import annotations

import numpy as np

from ..errors import UnmergeableGroups, UnsupportedConstruct, VaryingValueError
from ..runtime.batched import Batched, Ragged
from ..runtime.blame import user_frame
from ..runtime.mapped import LaneMapped
from .lane_list import RaggedList, RaggedListIterator, iterate
from ..runtime.packed import Packed
from .lanes import UNDEFINED, is_varying, merge, take



def _same_kind(group):
    """Iterators of different kinds (a native and a per-lane one: two activations of a
    recursive function at one loop) are different loops: their lanes run separately."""
    kind = type(group[0])
    if any(type(it) is not kind for it in group[1:]):
        raise UnmergeableGroups(f"loops over different kinds of iterables meet "
                                f"({', '.join(sorted({type(it).__name__ for it in group}))})")


def _same_loop(group):
    """`_same_kind`, and every iterator at one position (lanes of one loop in one iteration)."""
    _same_kind(group)
    if any(it.position != group[0].position for it in group):
        raise UnmergeableGroups("lanes of one for loop at different positions")

class BatchedRange:
    """``range(start, stop, step)`` where some bound varies between examples."""

    __slots__ = ("start", "stop", "step")

    def __init__(self, *args):
        if len(args) == 1:
            args = (0, args[0], 1)
        elif len(args) == 2:
            args = (args[0], args[1], 1)
        self.start, self.stop, self.step = args
        if type(self.step) is Batched:
            filename, lineno = user_frame()
            raise VaryingValueError("range() with a varying step is not supported", filename, lineno,
                                    "Use a uniform step (the same for every example).")
        if self.step == 0:
            raise ValueError("range() arg 3 must not be zero")

    def __len__(self):
        filename, lineno = user_frame()
        raise VaryingValueError("len() of a range with a varying bound", filename, lineno,
                                "Compute the length with numpy: max(0, (stop - start + step - 1) // step).")

    def __iter__(self):
        filename, lineno = user_frame()
        raise VaryingValueError("a range with a varying bound can only be iterated directly by a for "
                                "loop in @spmd code", filename, lineno,
                                "Write `for i in range(n):` rather than passing the range elsewhere.")

    def _spmd_take_lanes(self, idx):
        return BatchedRange(take(self.start, idx), take(self.stop, idx), self.step)

    def _spmd_merge_lanes(self, others, counts):
        group = [self] + list(others)
        _same_kind(group)
        return BatchedRange(merge([r.start for r in group], counts), merge([r.stop for r in group], counts),
                            self.step)


class BatchedRangeIterator:
    """The iterator of a `BatchedRange`: a per-lane counter."""

    __slots__ = ("current", "stop", "step")

    def __init__(self, current, stop, step):
        self.current, self.stop, self.step = current, stop, step

    def _spmd_take_lanes(self, idx):
        return BatchedRangeIterator(take(self.current, idx), take(self.stop, idx), self.step)

    def _spmd_merge_lanes(self, others, counts):
        group = [self] + list(others)
        _same_kind(group)
        return BatchedRangeIterator(merge([r.current for r in group], counts),
                                    merge([r.stop for r in group], counts), self.step)

    def next(self):
        current = self.current
        more = current < self.stop if self.step > 0 else current > self.stop
        self.current = current + self.step
        if type(current) is Batched and not current.weak:
            current = Batched(current.data, weak=True)      # a Python int in each example
        return current, more


class LaneSequenceIterator:
    """Iterator over a sequence whose items vary between examples.

    Unlike a native iterator, it follows its lanes: when a loop's lanes are split and merged
    again, each group's iterator holds that group's items. Every lane is at the same
    position (the sequence length is the same for all examples), so the position is uniform.
    """

    __slots__ = ("items", "position")

    def __init__(self, items, position=0):
        self.items = items          # a Batched array (iterated along its first example axis) or a list
        self.position = position

    def _spmd_take_lanes(self, idx):
        items = take(self.items, idx)
        return LaneSequenceIterator(items, self.position)

    def _spmd_merge_lanes(self, others, counts):
        group = [self] + list(others)
        _same_loop(group)
        return LaneSequenceIterator(merge([it.items for it in group], counts), self.position)

    def next(self):
        items, pos = self.items, self.position
        if type(items) is LaneMapped:
            items = self.items = items.materialize()
        if type(items) is Ragged:
            if pos >= items.padded_length:
                return UNDEFINED, False
            self.position = pos + 1
            return Batched(items.data[:, pos]), Batched(pos < items.lengths)
        length = items.shape[0] if type(items) is Batched else len(items)
        if pos >= length:
            return UNDEFINED, False
        self.position = pos + 1
        return items[pos], True


class LaneZip:
    """``zip(*sources)`` / ``enumerate(source, start)`` where some source varies: every lane
    steps through its own sources at one shared position (the loop keeps all lanes in the
    same iteration), and a lane leaves the loop when its shortest source ends."""

    __slots__ = ("sources", "start")

    def __init__(self, sources, start=None):
        for s in sources:
            if not (_positional(s) or type(s) is LaneZip):
                filename, lineno = user_frame(3)
                raise UnsupportedConstruct(
                    f"zip/enumerate over a {type(s).__name__} together with per-example values",
                    filename, lineno, "Use sequences (arrays, lists, tuples, ranges) as the sources.")
        self.sources = tuple(sources)
        self.start = start          # None: zip; else enumerate's first count

    def _spmd_take_lanes(self, idx):
        return LaneZip([take(s, idx) for s in self.sources], take(self.start, idx))

    def _spmd_merge_lanes(self, others, counts):
        group = [self] + list(others)
        _same_kind(group)
        return LaneZip([merge([z.sources[i] for z in group], counts) for i in range(len(self.sources))],
                       None if self.start is None else merge([z.start for z in group], counts))

    def __iter__(self):
        filename, lineno = user_frame()
        raise VaryingValueError("zip/enumerate over per-example values can only be iterated directly "
                                "by a for loop in @spmd code", filename, lineno,
                                "Write `for i, x in enumerate(xs):` rather than passing it elsewhere.")

    def item_at(self, pos):
        """(item, more) at position `pos` of every lane (`more` may be varying)."""
        items, more = [], True
        for s in self.sources:
            item, m = _item_at(s, pos)
            if m is False:
                return UNDEFINED, False
            items.append(item)
            more = m if more is True else (more if m is True else more & m)
        if self.start is not None:
            return (self.start + pos, items[0]), more
        return tuple(items), more


def _positional(s) -> bool:
    return type(s) in (Ragged, Batched, LaneMapped, BatchedRange, list, tuple, range) or \
        (hasattr(s, "shape") and hasattr(s, "__getitem__"))


def _item_at(s, pos):
    """Item `pos` of source `s` for every lane, and whether the lane has it."""
    kind = type(s)
    if kind is LaneZip:
        return s.item_at(pos)
    if kind is LaneMapped or kind is Packed:
        s = s.materialize()
        kind = type(s)
    if kind is Ragged:
        if pos >= s.padded_length:
            return UNDEFINED, False
        return Batched(s.data[:, pos]), Batched(pos < s.lengths)
    if kind is BatchedRange:
        start = s.start + pos * s.step
        return start, (start < s.stop if s.step > 0 else start > s.stop)
    if kind is Batched:
        if not s.shape:
            filename, lineno = user_frame(4)
            raise VaryingValueError("iteration over a per-example scalar", filename, lineno)
        length = s.shape[0]
    else:
        length = len(s)
    if pos >= length:
        return UNDEFINED, False
    return s[pos], True


class LaneZipIterator:
    """The iterator of a `LaneZip`: its sources and the shared position."""

    __slots__ = ("zipped", "position")

    def __init__(self, zipped, position=0):
        self.zipped = zipped
        self.position = position

    def _spmd_take_lanes(self, idx):
        return LaneZipIterator(take(self.zipped, idx), self.position)

    def _spmd_merge_lanes(self, others, counts):
        group = [self] + list(others)
        _same_loop(group)
        return LaneZipIterator(merge([it.zipped for it in group], counts), self.position)

    def next(self):
        item, more = self.zipped.item_at(self.position)
        if more is not False:
            self.position += 1
        return item, more


def lane_zip(*sources, strict=False):
    """`zip` in batch programs: a `LaneZip` when a source varies."""
    if strict or not any(is_varying(s) for s in sources):
        return zip(*sources, strict=strict) if strict else zip(*sources)
    return LaneZip(sources)


def lane_enumerate(source, start=0):
    """`enumerate` in batch programs: a `LaneZip` with a count when the source varies."""
    if not is_varying(source) and not is_varying(start):
        return enumerate(source, start)
    return LaneZip((source,), start)


def get_iter(value):
    """`iter(value)` for batch programs."""
    if type(value) is RaggedList:
        return iterate(value)
    if type(value) is LaneMapped or type(value) is Packed:
        value = value.materialize()
    if type(value) is BatchedRange:
        start = value.start
        if type(start) is not Batched and type(value.stop) is Batched:
            start = Batched(np.full(value.stop.data.shape[0], start, dtype=np.result_type(value.stop.dtype, int)))
        return BatchedRangeIterator(start, value.stop, value.step)
    if type(value) is Ragged:
        return LaneSequenceIterator(value)
    if type(value) is LaneZip:
        return LaneZipIterator(value)
    if type(value) is Batched:
        if not value.shape:
            filename, lineno = user_frame()
            raise VaryingValueError("iteration over a per-example scalar", filename, lineno)
        return LaneSequenceIterator(value)
    if isinstance(value, (list, tuple)) and is_varying(value):
        return LaneSequenceIterator(list(value))
    if isinstance(value, (dict, set, frozenset, str, bytes, range)):
        return iter(value)
    if is_varying(value):
        return LaneSequenceIterator(list(value))
    return iter(value)


def iter_next(iterator):
    """One `for` step: ``(item, more)``; `more` may be varying."""
    kind = type(iterator)
    if kind is BatchedRangeIterator or kind is LaneSequenceIterator or kind is RaggedListIterator \
            or kind is LaneZipIterator:
        return iterator.next()
    try:
        return next(iterator), True
    except StopIteration:
        return UNDEFINED, False



def batched_range(*args):
    """`range` in batch programs: a `BatchedRange` when a bound varies."""
    if any(type(a) is Batched for a in args):
        return BatchedRange(*args)
    return range(*args)
