"""Views and in-place updates of per-example arrays.

In the per-example loop, `w[1:]` of an array is a view and `w += b`, `w[i] = v` and
`numpy.add.at(w, ...)` change `w` in place, so every view of `w`, every other name bound to
it, and (for an update through a view) its base see the change. A batch program updates
per-example arrays functionally: `w` is rebound to a new value and the others keep the old
one. Rather than give silently different values, this module remembers which values are
views of which (`note_view`, at basic indexing, reshapes and transposes of a per-example
array, with the index, so a write that misses a view's region leaves it alone) and which
values an in-place update left behind (`note_update`); using one of those afterwards in an
array operation, or returning it, raises `UnsupportedConstruct` naming the update's line and
the use's line. The records follow lane groups where they split and join (`follow_take`,
`follow_merge`).

The records are per thread and hold weak references only, so values that are no longer used
cost nothing; `check` is one truthiness test while nothing was updated in place.
"""
from __future__ import annotations

import threading
import weakref

import numpy as np

from ..errors import UnsupportedConstruct
from .blame import user_frame


class _Records(threading.local):
    def __init__(self):
        self.views = {}   # id(base) -> (weakref(base), [(weakref(view), index or None), ...])
        self.bases = {}   # id(view) -> (weakref(view), weakref(base), index or None)
        self.stale = {}   # id(value) -> (weakref(value), (filename, lineno) of the update)
        self.keep = []    # the `_GroupBase`s (alive until the outermost @spmd call ends)


class _GroupBase:
    """The base of views in one lane group where the group's environment does not hold the
    base itself (`follow_take`): writes through those views concern that group's lanes only,
    so they must not mark the other groups' views of the same base. `origin` (a weak
    reference) is the base all groups share, marked out of date by such a write."""

    __slots__ = ("origin", "__weakref__")

    def __init__(self, origin):
        self.origin = weakref.ref(origin)


RECORDS = _Records()


def _alive(ref_pair, obj_id, table):
    entry = table.get(obj_id)
    if entry is None:
        return None
    if entry[0]() is None:
        del table[obj_id]
        return None
    return entry


def _ref(value, table):
    """A weak reference to `value` that removes `value`'s entry of `table` when it dies (so
    the tables are empty, and cost nothing, once the values they name are gone)."""
    key = id(value)

    def gone(ref, key=key, table=table):
        entry = table.get(key)
        if entry is not None and entry[0] is ref:
            del table[key]
    return weakref.ref(value, gone)


def note_view(base, view, index=None) -> None:
    """`view` is a view of `base` in the loop (basic indexing of a per-example array by
    `index`; None: all of it, as a reshape or a transpose, or not known)."""
    views = RECORDS.views
    try:
        ref_view = _ref(view, RECORDS.bases)
        ref_base = weakref.ref(base)
    except TypeError:
        return
    entry = _alive(None, id(base), views)
    if entry is None or entry[0]() is not base:
        entry = views[id(base)] = (_ref(base, views), [])
    entry[1].append((ref_view, index))
    RECORDS.bases[id(view)] = (ref_view, ref_base, index)
    root = _alive(None, id(base), RECORDS.bases)        # a view of a view: the same memory
    if root is not None and root[0]() is base and root[1]() is not None:
        note_view(root[1](), view)


def _mark(value, where) -> None:
    stale = RECORDS.stale
    try:
        stale[id(value)] = (_ref(value, stale), where)
    except TypeError:
        pass


def _overlap(base, a, b) -> bool:
    """Whether the regions `base[a]` and `base[b]` of one example's array can overlap
    (basic indices; True when either is not known or not basic)."""
    if a is None or b is None:
        return True
    try:
        region = np.zeros(tuple(base.shape), dtype=bool)
        region[a] = True
        return bool(region[b].any())
    except Exception:
        return True


def note_update(old, rebound: bool, index=None) -> None:
    """An in-place update of the per-example array `old` (`rebound`: the program's variable
    now holds a new value, so `old` itself, reached through another name, is out of date;
    `index`: the basic index written, None for all of it). A view of `old` whose region the
    write does not touch (`w[1:]` while `w[0]` is written) keeps its values, as in the loop."""
    if not RECORDS.views and not RECORDS.bases and not rebound:
        return
    where = user_frame()
    if rebound:
        _mark(old, where)
    entry = _alive(None, id(old), RECORDS.views)
    if entry is not None and entry[0]() is old:
        for ref, region in entry[1]:
            v = ref()
            if v is not None and v is not old and _overlap(old, region, index):
                _mark(v, where)
    back = _alive(None, id(old), RECORDS.bases)
    if back is not None and back[0]() is old:
        base = back[1]()
        if base is not None:
            _mark(base, where)
            if type(base) is _GroupBase and base.origin() is not None:
                _mark(base.origin(), where)
            sibling = _alive(None, id(base), RECORDS.views)
            if sibling is not None and sibling[0]() is base:
                for ref, _ in sibling[1]:
                    v = ref()
                    if v is not None and v is not old:
                        _mark(v, where)


def check(args) -> None:
    """Refuse an operation on a value an in-place update left out of date."""
    stale = RECORDS.stale
    if not stale:
        return
    for a in args:
        entry = stale.get(id(a))
        if entry is not None:
            if entry[0]() is not a:
                del stale[id(a)]
                continue
            ufile, uline = entry[1]
            filename, lineno = user_frame()
            raise UnsupportedConstruct(
                f"this array shares memory with one updated in place at {ufile}:{uline} (a view "
                f"such as w[1:], or another name for the same array): the per-example loop sees "
                f"that update here, a batch program does not", filename, lineno,
                "Copy it where it is taken (w[1:].copy(), v = w.copy()), or update with a new "
                "array (w = w + b) where other names must keep the old values.")


def _base_of(value):
    """(base, index) of a recorded view, or (None, None)."""
    entry = _alive(None, id(value), RECORDS.bases)
    if entry is None or entry[0]() is not value:
        return None, None
    return entry[1](), entry[2]


def _stale_where(value):
    entry = _alive(None, id(value), RECORDS.stale)
    if entry is None or entry[0]() is not value:
        return None
    return entry[1]


def follow_take(olds, news) -> None:
    """The lanes of the values `olds` (an environment) were taken into `news` (a group split
    at a branch): each new value keeps the records of its old one. A view's new value is a
    view of its base's new value (or of a `_GroupBase` standing for it where the environment
    does not hold it), and a value an update left out of date stays out of date, so a write through a view
    on one side of a branch, or a use of an out-of-date value there, is still seen."""
    if not RECORDS.bases and not RECORDS.stale:
        return
    new_of = {id(o): n for o, n in zip(olds, news) if o is not n}
    for o, n in zip(olds, news):
        if o is n:
            continue
        where = _stale_where(o)
        if where is not None:
            _mark(n, where)
        base, index = _base_of(o)
        if base is not None:
            target = new_of.get(id(base))
            if target is None:
                target = new_of[id(base)] = _GroupBase(base)
                RECORDS.keep.append(target)
            note_view(target, n, index)


def follow_merge(groups, merged) -> None:
    """`merged` is the environment joined from the environments `groups` (lane groups meeting
    where control flow joins): a slot out of date in any group is out of date, and a slot
    that is a view in any group is a view of what that group's base became (its slot in
    `merged`, or the base itself)."""
    if not RECORDS.bases and not RECORDS.stale:
        return
    for env in groups:
        slot_of = {id(v): i for i, v in enumerate(env)}
        for i, v in enumerate(env):
            out = merged[i]
            if v is out:
                continue
            where = _stale_where(v)
            if where is not None:
                _mark(out, where)
            base, index = _base_of(v)
            if base is not None:
                j = slot_of.get(id(base))
                target = merged[j] if j is not None else base
                if target is not out:
                    note_view(target, out, index)


def check_results(values) -> None:
    """Refuse returning a value an in-place update left out of date (the loop's result would
    show the update)."""
    if RECORDS.stale:
        check(_leaves(values, []))


def _leaves(values, out):
    for v in values:
        if type(v) is tuple or type(v) is list:
            _leaves(v, out)
        elif type(v) is dict:
            _leaves(list(v.values()), out)
        else:
            out.append(v)
    return out


def forget() -> None:
    """Drop every record (the outermost @spmd call of the thread ended)."""
    RECORDS.views.clear()
    RECORDS.bases.clear()
    RECORDS.stale.clear()
    RECORDS.keep.clear()
