"""Views and in-place updates of per-example arrays.

In the per-example loop, `w[1:]` of an array is a view and `w += b`, `w[i] = v` and
`numpy.add.at(w, ...)` change `w` in place, so every view of `w`, every other name bound to
it, and (for an update through a view) its base see the change. A batch program updates
per-example arrays functionally: `w` is rebound to a new value and the others keep the old
one. Rather than give silently different values, this module remembers which values are
views of which (`note_view`, at basic indexing of a per-example array) and which values an
in-place update left behind (`note_update`); using one of those afterwards in an array
operation raises `UnsupportedConstruct` naming the update's line and the use's line.

The records are per thread and hold weak references only, so values that are no longer used
cost nothing; `check` is one truthiness test while nothing was updated in place.
"""
from __future__ import annotations

import threading
import weakref

from ..errors import UnsupportedConstruct
from .blame import user_frame


class _Records(threading.local):
    def __init__(self):
        self.views = {}   # id(base) -> (weakref(base), [weakref(view), ...])
        self.bases = {}   # id(view) -> (weakref(view), weakref(base))
        self.stale = {}   # id(value) -> (weakref(value), (filename, lineno) of the update)


RECORDS = _Records()


def _alive(ref_pair, obj_id, table):
    entry = table.get(obj_id)
    if entry is None:
        return None
    if entry[0]() is None:
        del table[obj_id]
        return None
    return entry


def note_view(base, view) -> None:
    """`view` is a view of `base` in the loop (basic indexing of a per-example array)."""
    try:
        ref_view = weakref.ref(view)
        ref_base = weakref.ref(base)
    except TypeError:
        return
    views = RECORDS.views
    entry = _alive(None, id(base), views)
    if entry is None or entry[0]() is not base:
        entry = views[id(base)] = (ref_base, [])
    entry[1].append(ref_view)
    RECORDS.bases[id(view)] = (ref_view, ref_base)
    root = _alive(None, id(base), RECORDS.bases)        # a view of a view: the same memory
    if root is not None and root[0]() is base and root[1]() is not None:
        note_view(root[1](), view)


def _mark(value, where) -> None:
    try:
        RECORDS.stale[id(value)] = (weakref.ref(value), where)
    except TypeError:
        pass


def note_update(old, rebound: bool) -> None:
    """An in-place update of the per-example array `old` (`rebound`: the program's variable
    now holds a new value, so `old` itself, reached through another name, is out of date)."""
    if not RECORDS.views and not RECORDS.bases and not rebound:
        return
    where = user_frame()
    if rebound:
        _mark(old, where)
    entry = _alive(None, id(old), RECORDS.views)
    if entry is not None and entry[0]() is old:
        for ref in entry[1]:
            v = ref()
            if v is not None and v is not old:
                _mark(v, where)
    back = _alive(None, id(old), RECORDS.bases)
    if back is not None and back[0]() is old:
        base = back[1]()
        if base is not None:
            _mark(base, where)
            sibling = _alive(None, id(base), RECORDS.views)
            if sibling is not None and sibling[0]() is base:
                for ref in sibling[1]:
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


def forget() -> None:
    """Drop every record (the outermost @spmd call of the thread ended)."""
    RECORDS.views.clear()
    RECORDS.bases.clear()
    RECORDS.stale.clear()
