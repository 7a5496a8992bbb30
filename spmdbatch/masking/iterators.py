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

from ..errors import UnmergeableGroups, VaryingValueError
from ..runtime.batched import Batched, user_frame
from ..runtime.mapped import LaneMapped
from ..runtime.ragged import Ragged
from .lanes import UNDEFINED, is_varying, merge, take



def _same_kind(group):
    """Iterators of different kinds (a native and a per-lane one: two activations of a
    recursive function at one loop) are different loops: their lanes run separately."""
    kind = type(group[0])
    if any(type(it) is not kind for it in group[1:]):
        raise UnmergeableGroups(f"loops over different kinds of iterables meet "
                                f"({', '.join(sorted({type(it).__name__ for it in group}))})")

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
        _same_kind(group)
        if any(it.position != self.position for it in group):
            raise UnmergeableGroups("lanes of one for loop at different positions")
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


def get_iter(value):
    """`iter(value)` for batch programs."""
    from .lane_list import RaggedList, iterate
    if type(value) is RaggedList:
        return iterate(value)
    if type(value) is LaneMapped:
        value = value.materialize()
    if type(value) is BatchedRange:
        start = value.start
        if type(start) is not Batched and type(value.stop) is Batched:
            start = Batched(np.full(value.stop.data.shape[0], start, dtype=np.result_type(value.stop.dtype, int)))
        return BatchedRangeIterator(start, value.stop, value.step)
    if type(value) is Ragged:
        return LaneSequenceIterator(value)
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
    if kind is BatchedRangeIterator or kind is LaneSequenceIterator or kind is RaggedListIterator:
        return iterator.next()
    try:
        return next(iterator), True
    except StopIteration:
        return UNDEFINED, False


from .lane_list import RaggedListIterator  # noqa: E402  (lane_list imports lanes only)


def batched_range(*args):
    """`range` in batch programs: a `BatchedRange` when a bound varies."""
    if any(type(a) is Batched for a in args):
        return BatchedRange(*args)
    return range(*args)
