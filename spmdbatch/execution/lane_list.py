"""Lists and dicts built inside a batch program: per-example containers.

Python's ``[]`` and ``{}`` inside a per-example function make one container per example.
In a batch program they make a `LaneList` / `LaneDict`, owned by the lanes of the group
that holds them: when a group splits, each side gets its own copy (`_spmd_take_lanes`), so
an `append` in one branch is never seen by the lanes of the other; when groups meet, their
containers are merged lane by lane (`_spmd_merge_lanes`).

Representation (fast in the common case, no Python list of lanes):

- `LaneList` (every lane has the same length): a `list` whose items are values over the
  group's lanes, exactly the list the code would hold without divergence. Its methods are
  `list`'s own (C speed); numpy sees a plain sequence of batched items.
- `RaggedList` (lengths differ between lanes): the same object with its class switched. Its
  items are *columns*: item ``j`` is a value over all lanes, meaningful in the lanes whose
  length is more than ``j`` (elsewhere it holds a copy of some other lane's value, never
  read); ``lengths`` holds each lane's length. Per-lane `append`, `pop`, `insert`,
  `extend`, indexing, `len`, truth value and iteration work column by column, selecting
  lanes (`_select`, `_gather`: one take, one merge); `numpy.stack` and friends give a
  `Ragged` array. When the lanes' lengths become equal again it switches back.

A `LaneDict` keeps one key set for all lanes of a group; groups whose dicts have different
keys do not merge (`UnmergeableGroups`: they run on separately, and a return says why).

A list passed to a batched call is lent to it (`BORROWED`, `lend`): a callee that changes it
while all its lanes run together changes the caller's list, but once the callee's lanes
split, each group holds a copy, which would not reach the caller; those copies (and the
copies recursive calls and fused calls get) are `FrozenList`s or frozen `RaggedList`s, whose
changes raise `DivergentSideEffect` instead of being lost.
"""
from __future__ import annotations

import numpy as np

from ..ad.tracer import Tracer, untraced
from ..errors import DivergentSideEffect, LaneError, UnmergeableGroups, VaryingValueError
from ..runtime import primitives as P
from ..runtime import pytree
from ..runtime.batched import Batched, Ragged
from ..runtime.blame import user_frame
from .lanes import OWNED_CONTAINERS, UNDEFINED, fresh, is_varying, lane_count, merge, take
from .state import STATE, running_examples, running_lane_count


# Lists passed to the batched calls now running (`calls.run_batched`): id -> [list, count].
# A group of the callee that takes one (its lanes split) gets a read-only copy: a change there
# could not reach the caller's list.
BORROWED: dict = {}


class LaneList(list):
    """A list built by a batch program, every lane of the holding group at one length."""

    __slots__ = ("lengths", "frozen")

    def _spmd_take_lanes(self, idx, memo=None):
        out = (FrozenList if id(self) in BORROWED else LaneList)(take(v, idx, memo)
                                                                 for v in list.__iter__(self))
        out.lengths = None
        return out

    def _spmd_freeze(self):
        out = FrozenList(fresh(v) for v in list.__iter__(self))
        out.lengths = None
        return out

    def _spmd_merge_lanes(self, others, counts):
        return merge_lists([self] + list(others), counts)

    def _spmd_lane_count(self):
        for v in list.__iter__(self):
            if is_varying(v):
                return lane_count(v)
        return None

    def copy(self):
        return LaneList(list.__iter__(self))

    def __add__(self, other):
        out = LaneList(list.__iter__(self))
        out.lengths = None
        extend_lanes(out, other) if type(other) is RaggedList else out.extend(other)
        return out


class RaggedList(LaneList):
    """A `LaneList` whose lanes have different lengths (see module docstring)."""

    __slots__ = ()

    # --- lanes ---------------------------------------------------------------------------------
    def _spmd_take_lanes(self, idx, memo=None):
        cols = [take(v, idx, memo) for v in list.__iter__(self)]
        return _make(cols, self.lengths[idx], _is_frozen(self) or id(self) in BORROWED)

    def _spmd_freeze(self):
        return _make([fresh(v) for v in list.__iter__(self)], self.lengths.copy(), True)

    def _spmd_lane_count(self):
        return len(self.lengths)

    # --- Python's list protocol, per lane -----------------------------------------------------
    def __len__(self):
        filename, lineno = user_frame()
        raise VaryingValueError("len() of a list whose length differs between examples, as a Python "
                                "int", filename, lineno, "Inside @spmd code len(x) works (it is varying).")

    def __bool__(self):
        filename, lineno = user_frame()
        raise VaryingValueError("truth value of a list whose length differs between examples",
                                filename, lineno, "Use it in an if/while of the @spmd function.")

    def __iter__(self):
        filename, lineno = user_frame()
        raise VaryingValueError(
            "a list whose length differs between examples passed to code that iterates it natively",
            filename, lineno, "Iterate it with a for loop in the @spmd function, or make it an array "
            "with numpy.stack.")

    def __repr__(self):
        return f"RaggedList(lanes={len(self.lengths)}, lengths={self.lengths.tolist()})"

    def copy(self):
        return _make(list.copy(self), self.lengths.copy())

    def _spmd_is_frozen(self):
        return _is_frozen(self)

    def __add__(self, other):
        out = self.copy()
        out.extend(other)
        return out

    def __iadd__(self, other):
        self.extend(other)
        return self

    def append(self, value):
        append_where(self, value, None)

    def extend(self, other):
        extend_lanes(self, other)

    def pop(self, index=-1):
        return pop_lanes(self, index)

    def insert(self, index, value):
        insert_lanes(self, index, value)

    def clear(self):
        list.clear(self)
        self.lengths = None
        self.__class__ = LaneList

    def __getitem__(self, index):
        return getitem_lanes(self, index)

    def __setitem__(self, index, value):
        setitem_lanes(self, index, value)

    def _unsupported(self, *args, **kwargs):
        filename, lineno = user_frame()
        raise VaryingValueError("this list method on a list whose length differs between examples "
                                "is not supported", filename, lineno,
                                "Use append, pop, insert, extend, indexing, len and for loops, or "
                                "make it an array with numpy.stack.")

    remove = index = count = sort = reverse = __delitem__ = __contains__ = __mul__ = __rmul__ = \
        __imul__ = __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __reversed__ = _unsupported
    __hash__ = None


class FrozenList(LaneList):
    """A read-only `LaneList`: a callee's copy of a list its caller passed in, once the callee's
    lanes took different paths (or the list was passed to a recursive call). Reading works;
    changing it raises `DivergentSideEffect`, since the change could not reach the caller."""

    __slots__ = ()

    def _spmd_take_lanes(self, idx, memo=None):
        out = FrozenList(take(v, idx, memo) for v in list.__iter__(self))
        out.lengths = None
        return out

    def _refuse(self, *args, **kwargs):
        _refuse_borrowed()

    append = extend = insert = pop = remove = clear = sort = reverse = __setitem__ = __delitem__ = \
        __iadd__ = __imul__ = _refuse

    def copy(self):
        out = LaneList(list.__iter__(self))
        out.lengths = None
        return out


def _is_frozen(lst) -> bool:
    return type(lst) is FrozenList or (type(lst) is RaggedList and getattr(lst, "frozen", False))


def _refuse_borrowed():
    filename, lineno = user_frame(3)
    raise DivergentSideEffect(
        "changing a list that was passed to this function, after its examples took different paths "
        "here (or inside a recursive call), is not supported: the change would not reach the "
        "caller's list", filename, lineno,
        "Return the new items (or a new list) from the function and change the list in the caller.")


def lend(values):
    """Mark the lists among a batched call's arguments as lent to it (see `BORROWED`)."""
    lent = [v for v in values if type(v) is LaneList or type(v) is RaggedList]
    for v in lent:
        entry = BORROWED.get(id(v))
        if entry is None:
            BORROWED[id(v)] = [v, 1]
        else:
            entry[1] += 1
    return lent


def give_back(lent):
    for v in lent:
        entry = BORROWED[id(v)]
        entry[1] -= 1
        if not entry[1]:
            del BORROWED[id(v)]


pytree.register_node(LaneList, lambda s: (list(list.__iter__(s)), None), lambda aux, ch: LaneList(ch))
pytree.register_node(FrozenList, lambda s: (list(list.__iter__(s)), None), lambda aux, ch: FrozenList(ch))
pytree.register_leaf_type(RaggedList)


class LaneDict(dict):
    """A dict built by a batch program: the same keys in every lane of the holding group."""

    __slots__ = ()

    def _spmd_take_lanes(self, idx, memo=None):
        return LaneDict({k: take(v, idx, memo) for k, v in self.items()})

    def _spmd_freeze(self):
        return {k: fresh(v) for k, v in self.items()}   # (a plain dict: changes are refused)

    def _spmd_merge_lanes(self, others, counts):
        return merge_dicts([self] + list(others), counts)

    def _spmd_lane_count(self):
        for v in self.values():
            if is_varying(v):
                return lane_count(v)
        return None

    def copy(self):
        return LaneDict(self)


# --- state -----------------------------------------------------------------------------------------
def _make(cols, lengths, frozen=False):
    """A LaneList (equal lengths) or RaggedList from columns and per-lane lengths (read-only
    ones when `frozen`)."""
    if not len(lengths) or int(lengths.min()) == int(lengths.max()):
        out = (FrozenList if frozen else LaneList)(cols[:int(lengths.max())] if len(lengths) else cols)
        out.lengths = None
        return out
    n = len(lengths)
    out = RaggedList([_varying_column(c, n) for c in cols[:int(lengths.max())]])
    out.lengths = lengths
    out.frozen = frozen
    return out


def _varying_column(value, n):
    """A column of a ragged list as a batched value when it is a plain number or array (so that
    native code that reads the list's storage directly meets a refusal, never padding)."""
    if type(value) is Tracer:
        return Batched(P.broadcast_to(value, shape=(n,) + tuple(value.shape)))
    if isinstance(value, (int, float, complex, np.generic, np.ndarray)) and not isinstance(value, Batched):
        a = np.asarray(value)
        return Batched(np.array(np.broadcast_to(a, (n,) + a.shape)))
    return value


def _store(lst, cols, lengths):
    """Make `lst` (in place: other names of it see the change) hold `cols` and `lengths`."""
    if _is_frozen(lst):
        _refuse_borrowed()
    new = _make(cols, lengths)
    list.__init__(lst, list.__iter__(new))
    if type(new) is RaggedList:
        lst.__class__ = RaggedList
        lst.lengths = new.lengths
        lst.frozen = False
    else:
        lst.__class__ = LaneList
        lst.lengths = None


def _state(lst, n=None, *others):
    """(columns, lengths array) of a LaneList in either mode (`others`: varying operands of
    the operation, whose lanes are the list's when its items are uniform)."""
    cols = list(list.__iter__(lst))
    if type(lst) is RaggedList:
        return cols, lst.lengths
    if n is None:
        n = _lanes_or_none(lst, *others)
    return cols, np.full(n, len(cols), dtype=np.intp)


def _lanes_or_none(lst, *others):
    n = LaneList._spmd_lane_count(lst)
    for v in others:
        if n is None and is_varying(v):
            n = lane_count(v)
    if n is None:
        return running_lane_count()
    return n


def _positions(index, lengths, what, insert=False):
    """Per-lane non-negative positions of a (uniform or varying) Python index."""
    if type(index) is Batched:
        data = untraced(index.data)
        if data.ndim != 1 or data.dtype.kind not in "iub":
            filename, lineno = user_frame(3)
            raise VaryingValueError(f"{what}: list indices must be integers", filename, lineno)
        pos = data.astype(np.intp)
    else:
        pos = np.full(len(lengths), int(index), dtype=np.intp)
    pos = np.where(pos < 0, pos + lengths, pos)
    if insert:
        return np.clip(pos, 0, lengths)
    return pos


def _lane_error(message, bad):
    """Raise IndexError `message` for the running group's lanes `bad` (a LaneError naming them)."""
    filename, lineno = user_frame(3)
    which = running_examples(bad)
    if STATE.frame is not None and not STATE.partial and len(which) == STATE.frame.n:
        raise IndexError(message)           # (every example of the batch raises it)
    raise LaneError(f"IndexError: {message} (raised in examples {which} of the batch only)",
                    which, filename, lineno)


def _filler(values, counts):
    """Values for the groups that hold UNDEFINED: a lane of a defined group, repeated."""
    source = None
    for v, n in zip(values, counts):
        if v is not UNDEFINED and (n or source is None):
            source = (v, n)
            if n:
                break
    v, m = source
    out = []
    for w, n in zip(values, counts):
        if w is not UNDEFINED:
            out.append(w)
        elif not is_varying(v) or not m:
            out.append(v)
        else:
            out.append(take(v, np.zeros(n, dtype=np.intp)))
    return out


def _gather(cols, pos):
    """The value whose lane ``i`` is lane ``i`` of ``cols[pos[i]]`` (positions in range)."""
    n = len(pos)
    if n == 0:
        return cols[0]
    first = int(pos[0])
    if not np.count_nonzero(pos != first):
        return cols[first]
    parts, idxs = [], []
    for j in np.unique(pos):
        idx = (pos == j).nonzero()[0]
        idxs.append(idx)
        parts.append(take(cols[int(j)], idx))
    merged = merge(parts, [len(i) for i in idxs], "a list item")
    return take(merged, np.concatenate(idxs).argsort(kind="stable"), {})


def _select(mask, a, b):
    """Lanes where `mask` holds take `a`, the others `b`."""
    return _gather([b, a], mask.astype(np.intp))


# --- operations ------------------------------------------------------------------------------------
def append_where(lst, value, mask):
    """`lst.append(value)` in the lanes where `mask` holds (every lane: None)."""
    cols, lengths = _state(lst, None, value)
    n = len(lengths)
    if mask is None:
        mask = np.ones(n, dtype=bool)
    width = len(cols)
    for j in np.unique(lengths[mask]):
        j = int(j)
        here = mask & (lengths == j)
        if j == width:
            cols.append(value)           # (lanes that are shorter hold a copy: never read)
            width += 1
        else:
            cols[j] = _select(here, value, cols[j])
    _store(lst, cols, lengths + mask)


def extend_lanes(lst, other):
    """`lst.extend(other)` per lane."""
    if type(other) is RaggedList:
        ocols, olengths = _state(other)
        for j, col in enumerate(ocols):
            append_where(lst, col, olengths > j)
        return
    if type(other) is Ragged:
        for j in range(other.padded_length):
            append_where(lst, Batched(other.data[:, j]), np.asarray(other.lengths) > j)
        return
    if type(other) is Batched:
        other = [other[j] for j in range(other.shape[0])]
    for v in list(other) if not isinstance(other, LaneList) else list(list.__iter__(other)):
        append_where(lst, v, None)


def getitem_lanes(lst, index):
    """`lst[index]` per lane (an int or a varying int; a slice gives a new list)."""
    cols, lengths = _state(lst, None, index)
    if isinstance(index, slice):
        return _slice(cols, lengths, index)
    pos = _positions(index, lengths, "list index")
    bad = ((pos < 0) | (pos >= lengths)).nonzero()[0]
    if bad.size:
        _lane_error("list index out of range", bad)
    return _gather(cols, pos)


def _slice(cols, lengths, index):
    if any(type(s) is Batched for s in (index.start, index.stop, index.step)):
        filename, lineno = user_frame(3)
        raise VaryingValueError("a slice of a list with varying bounds", filename, lineno,
                                "Use uniform bounds, or an array (numpy.stack) and numpy indexing.")
    sources = []
    for m in np.unique(lengths):
        sources.append((m, range(*index.indices(int(m)))))
    new_len = np.zeros_like(lengths)
    for m, r in sources:
        new_len[lengths == m] = len(r)
    width = int(new_len.max()) if len(new_len) else 0
    out = []
    for j in range(width):
        pos = np.zeros_like(lengths)
        for m, r in sources:
            if j < len(r):
                pos[lengths == m] = r[j]
        live = new_len > j
        # lanes the column is not meaningful in read any valid position (their own first)
        pos = np.where(live, pos, pos[live.nonzero()[0][0]])
        out.append(_gather(cols, pos))
    return _make(out, new_len)


def setitem_lanes(lst, index, value):
    """`lst[index] = value` per lane."""
    cols, lengths = _state(lst, None, index, value)
    if isinstance(index, slice):
        filename, lineno = user_frame(3)
        raise VaryingValueError("slice assignment into a list whose length differs between examples",
                                filename, lineno, "Assign items one by one.")
    pos = _positions(index, lengths, "list assignment index")
    bad = ((pos < 0) | (pos >= lengths)).nonzero()[0]
    if bad.size:
        _lane_error("list assignment index out of range", bad)
    for j in np.unique(pos):
        j = int(j)
        cols[j] = _select(pos == j, value, cols[j])
    _store(lst, cols, lengths)


def pop_lanes(lst, index=-1):
    """`lst.pop(index)` per lane."""
    cols, lengths = _state(lst, None, index)
    pos = _positions(index, lengths, "pop index")
    bad = ((pos < 0) | (pos >= lengths)).nonzero()[0]
    if bad.size:
        empty = lengths[bad] == 0
        _lane_error("pop from empty list" if empty.all() else "pop index out of range", bad)
    value = _gather(cols, pos)
    lo = int(pos.min()) if len(pos) else 0
    for j in range(lo, len(cols) - 1):
        shift = pos <= j
        if shift.any():
            cols[j] = _select(shift, cols[j + 1], cols[j])
    _store(lst, cols, lengths - 1)
    return value


def insert_lanes(lst, index, value):
    """`lst.insert(index, value)` per lane."""
    cols, lengths = _state(lst, None, index, value)
    pos = _positions(index, lengths, "insert index", insert=True)
    if not cols:
        _store(lst, [value], lengths + 1)
        return
    cols.append(cols[-1])
    lo = int(pos.min()) if len(pos) else 0
    for j in range(len(cols) - 1, lo, -1):
        shift = pos < j
        cols[j] = _select(shift, cols[j - 1], cols[j])
    for j in np.unique(pos):
        j = int(j)
        cols[j] = _select(pos == j, value, cols[j])
    _store(lst, cols, lengths + 1)


def length(lst):
    """`len(lst)`: an int, or per lane."""
    if type(lst) is RaggedList:
        return Batched(lst.lengths.copy())
    return list.__len__(lst)


def truth(lst):
    """The truth value of a ragged list, per lane."""
    return Batched(lst.lengths > 0)


class RaggedListIterator:
    """A `for` loop over a RaggedList: lane ``i`` leaves the loop after its own items."""

    __slots__ = ("cols", "lengths", "position")

    def __init__(self, cols, lengths, position=0):
        self.cols, self.lengths, self.position = cols, lengths, position

    def _spmd_take_lanes(self, idx):
        return RaggedListIterator([take(c, idx) for c in self.cols], self.lengths[idx], self.position)

    def _spmd_merge_lanes(self, others, counts):
        group = [self] + list(others)
        if any(type(it) is not RaggedListIterator or it.position != self.position for it in group):
            raise UnmergeableGroups("lanes of one for loop at different positions")
        width = max(len(it.cols) for it in group)
        cols = [merge(_filler([it.cols[j] if j < len(it.cols) else UNDEFINED for it in group], counts),
                      counts, "a list item") for j in range(width)]
        return RaggedListIterator(cols, np.concatenate([it.lengths for it in group]), self.position)

    def _spmd_lane_count(self):
        return len(self.lengths)

    def next(self):
        pos = self.position
        if pos >= len(self.cols):
            return UNDEFINED, False
        self.position = pos + 1
        return self.cols[pos], Batched(self.lengths > pos)


def iterate(lst):
    return RaggedListIterator(list(list.__iter__(lst)), lst.lengths)


def sum_lanes(lst, start=0):
    """Builtin `sum` of a ragged list, per lane."""
    cols, lengths = _state(lst)
    total = start
    for j, col in enumerate(cols):
        total = _select(lengths > j, total + col, total)
    return total


def contains_lanes(lst, item):
    """`item in lst` per lane, over each lane's own items (scalar items compared with ==)."""
    cols, lengths = _state(lst, None, item)
    found = Batched(np.zeros(len(lengths), dtype=bool))
    for j, col in enumerate(cols):
        hit = col == item
        if getattr(hit, "ndim", 0) != 0 and not (type(hit) is Batched and hit.data.ndim == 1):
            filename, lineno = user_frame(3)
            raise VaryingValueError("`in` over a per-example list of arrays compares arrays "
                                    "(ambiguous truth value)", filename, lineno,
                                    "Compare with numpy ((np.stack(lst) == x).all(1).any()).")
        found = _select(lengths > j, found | hit, found)
    return found


def stack_lanes(lst, axis=0, kind="stack"):
    """`numpy.stack` (or `array`, `concatenate`) of a ragged list: a `Ragged` array."""
    cols, lengths = _state(lst)
    if axis not in (0, None) and kind != "array":
        filename, lineno = user_frame(3)
        raise VaryingValueError(f"numpy.{kind} of a list whose length differs between examples along "
                                f"axis {axis}", filename, lineno, "Stack along axis 0 (the ragged axis).")
    empty = (lengths == 0).nonzero()[0]
    if empty.size and kind != "array":
        filename, lineno = user_frame(3)
        which = running_examples(empty)
        raise LaneError(f"ValueError: need at least one array to {kind} (raised in examples {which} "
                        f"of the batch only)", which, filename, lineno)
    n = len(lengths)
    datas = []
    for col in cols:
        if type(col) is Batched:
            datas.append(col.data)
        elif isinstance(col, Batched):
            filename, lineno = user_frame(3)
            raise VaryingValueError(f"numpy.{kind} of a list of ragged arrays whose length differs "
                                    f"between examples", filename, lineno)
        else:                                   # (a uniform item: a number, an array, a tracer)
            a = col if type(col) is Tracer or isinstance(col, np.ndarray) else np.asarray(col)
            datas.append(P.broadcast_to(a, shape=(n,) + tuple(a.shape)))
    tails = {tuple(d.shape[1:]) for d in datas}
    if len(tails) > 1:
        filename, lineno = user_frame(3)
        raise VaryingValueError(f"numpy.{kind} of list items of different shapes {sorted(tails)}",
                                filename, lineno)
    dtype = np.result_type(*[untraced(d).dtype for d in datas])
    datas = [d if untraced(d).dtype == dtype else P.astype(d, dtype=dtype) for d in datas]
    data = P.concatenate(*[P.reshape(d, shape=(n, 1) + tuple(d.shape[1:])) for d in datas], axis=1)
    tail = tuple(data.shape[2:])
    if kind == "concatenate":
        if not tail:
            filename, lineno = user_frame(3)
            raise VaryingValueError("zero-dimensional arrays cannot be concatenated", filename, lineno)
        k = tail[0]
        data = P.reshape(data, shape=(n, data.shape[1] * k) + tail[1:])
        lengths = lengths * k
    valid = np.arange(data.shape[1])[None, :] < lengths[:, None]
    valid = valid.reshape(valid.shape + (1,) * (data.ndim - 2))
    raw = untraced(data)
    data = P.where(valid, data, np.zeros((), dtype=raw.dtype))
    return Ragged(data, lengths)


# --- merging ---------------------------------------------------------------------------------------
def _memo_merge(merge, values, counts, name, disjoint, memo):
    """`merge(values, ...)`, once per tuple of groups' containers in `memo`: one container
    held by several variables (or containers) stays one container."""
    memo = {} if memo is None else memo
    key = ("owned",) + tuple(id(v) for v in values)
    hit = memo.get(key)
    if hit is None:
        memo[key] = hit = merge(values, counts, name, disjoint, memo)
    return hit


def merge_lists(values, counts, name="a list", disjoint=True, memo=None):
    """Lane groups' lists (LaneList, RaggedList, plain lists, UNDEFINED) as one list; `memo`
    keeps one list held by several variables (or lists) one list."""
    return _memo_merge(_merge_lists, values, counts, name, disjoint, memo)


def _merge_lists(values, counts, name, disjoint, memo):
    values = [LaneList(v) if type(v) is list else v for v in values]
    for v in values:
        if v is not UNDEFINED and not isinstance(v, LaneList):
            filename, lineno = user_frame()
            raise UnmergeableGroups(f"{name} holds a list in some examples and a {type(v).__name__} "
                                    f"in others where control flow joins", filename, lineno)
    defined = [v for v in values if v is not UNDEFINED]
    # lanes of fused calls sharing one list, or a callee's copies of a lent list: read-only
    frozen = not disjoint or any(_is_frozen(v) or id(v) in BORROWED for v in defined)
    if all(type(v) is LaneList or type(v) is FrozenList for v in defined) and len(defined) == len(values):
        m = list.__len__(values[0])
        if all(list.__len__(v) == m for v in values[1:]):
            cols = [merge([list.__getitem__(v, j) for v in values], counts, name, disjoint, memo)
                    for j in range(m)]
            out = (FrozenList if frozen else LaneList)(cols)
            out.lengths = None
            return out
    lengths, cols_of = [], []
    for v, n in zip(values, counts):
        if v is UNDEFINED:
            lengths.append(np.zeros(n, dtype=np.intp))
            cols_of.append([])
        else:
            c, l = _state(v, n)
            lengths.append(l)
            cols_of.append(c)
    width = max(len(c) for c in cols_of)
    cols = [merge(_filler([c[j] if j < len(c) else UNDEFINED for c in cols_of], counts), counts, name,
                  disjoint, memo) for j in range(width)]
    return _make(cols, np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.intp), frozen)


def merge_dicts(values, counts, name="a dict", disjoint=True, memo=None):
    """Lane groups' dicts (the same keys in every group) as one dict."""
    return _memo_merge(_merge_dicts, values, counts, name, disjoint, memo)


def _merge_dicts(values, counts, name, disjoint, memo):
    values = [LaneDict(v) if type(v) is dict else v for v in values]
    if any(not isinstance(v, dict) for v in values):
        filename, lineno = user_frame()
        raise UnmergeableGroups(f"{name} holds a dict in some examples and another object in others "
                                f"where control flow joins", filename, lineno)
    keys = list(values[0])
    if any(list(v) != keys for v in values[1:]) and any(set(v) != set(keys) for v in values[1:]):
        filename, lineno = user_frame()
        raise UnmergeableGroups(f"{name} has different keys in different examples where control flow "
                                f"joins", filename, lineno,
                                "Give the dict the same keys on every path (set them before the branch).")
    return LaneDict({k: merge([v[k] for v in values], counts, name, disjoint, memo) for k in keys})


def _list_varying(lst):
    return any(is_varying(v) for v in list.__iter__(lst))


OWNED_CONTAINERS[LaneList] = (merge_lists, _list_varying)
OWNED_CONTAINERS[FrozenList] = (merge_lists, _list_varying)
OWNED_CONTAINERS[RaggedList] = (merge_lists, lambda lst: True)
OWNED_CONTAINERS[LaneDict] = (merge_dicts, lambda d: any(is_varying(v) for v in d.values()))


def to_user(value, batch, unwrap):
    """A batch program's result as the caller sees it: `unwrap(leaf, batch)` of each leaf (a
    batched array gets its batch axis), lists and dicts made plain Python ones. A list of equal
    length in every example stays one list of batched items; a list whose length differs
    between examples becomes one list per example (as the per-example loop returns them)."""
    kind = type(value)
    if kind is RaggedList:
        cols = list(list.__iter__(value))
        return [[_one(take(cols[j], np.array([i])), unwrap) for j in range(int(value.lengths[i]))]
                for i in range(batch)]
    if kind is LaneList or kind is FrozenList or kind is list:
        return [to_user(v, batch, unwrap) for v in list.__iter__(value)]
    if kind is tuple:
        return tuple(to_user(v, batch, unwrap) for v in value)
    if kind is LaneDict or kind is dict:
        return {k: to_user(v, batch, unwrap) for k, v in value.items()}
    return pytree.tree_map(lambda leaf: unwrap(leaf, batch), value)


def _one(value, unwrap):
    """The caller's view of a one-lane value: its example's own value."""
    kind = type(value)
    if kind is LaneList or kind is FrozenList or kind is list:
        return [_one(v, unwrap) for v in list.__iter__(value)]
    if kind is tuple:
        return tuple(_one(v, unwrap) for v in value)
    if kind is LaneDict or kind is dict:
        return {k: _one(v, unwrap) for k, v in value.items()}
    if kind is Ragged:
        return unwrap(value, 1)[0]
    return pytree.tree_map(lambda leaf: unwrap(leaf, 1)[0] if is_varying(leaf) else leaf, value)
