"""Sums over a recursion at run time: terms recorded per lane, added up per example.

frontend/reduction.py turns ``return h, loss_l + loss_r + node_loss(...)`` into recorded
terms: the batch program makes its frame's `finisher` a `Sums` of the summed return
positions and records terms there (`Sums.add`, `Sums.defer`); when the batched call ends,
`Sums.finish` runs each deferred function once over all its lanes (`calls.call_merged`)
and adds every term into its example's sum.
"""
from __future__ import annotations

import numpy as np

from ..ad.tracer import untraced
from ..errors import SpmdError
from ..runtime import primitives as P
from ..runtime.array_methods import index_update
from ..runtime.backend import namespace
from ..runtime.batched import Batched
from ..runtime.blame import user_frame
from ..runtime.numpy_api import broadcast_to
from .calls import call, call_merged, same_function
from .lanes import merge_calls


def _defer_anything(fn) -> bool:
    return True


_DEFERRAL_CHECK = [_defer_anything]


def set_deferral_check(check):
    """Install the test of which term functions may run late (frontend/reduction.py)."""
    _DEFERRAL_CHECK[0] = check


def may_defer(fn) -> bool:
    return _DEFERRAL_CHECK[0](fn)


class Sums:
    """The finisher (execution/frame.py) of a frame whose return positions `positions` are sums
    over the recursion: their terms, recorded per group of lanes, and their totals."""

    __slots__ = ("positions", "stash")

    def __init__(self, positions):
        self.positions = positions
        self.stash: dict = {}       # position -> [(lanes, n, value, deferred call or None)]

    def add(self, position, lanes, n, value):
        """Record `value` as a term of sum `position` for the running lanes."""
        if n:
            self.stash.setdefault(position, []).append((lanes, n, value, None))

    def defer(self, position, lanes, n, fn, args, kwargs):
        """Record the term ``fn(*args, **kwargs)``, to be called when the batched call ends
        (called now instead when `fn` might have side effects: `may_defer`)."""
        if not n:
            return
        if may_defer(fn):
            self.stash.setdefault(position, []).append((lanes, n, None, (fn, args, kwargs)))
        else:
            self.add(position, lanes, n, call(fn, *args, **kwargs))

    def record_result(self, result, lanes, n):
        """A complete result (of a call that ran as an ordinary batched call): its sums become
        terms of the calling lanes, as the continuation no longer adds them."""
        if type(result) is not tuple or len(result) <= max(self.positions):
            filename, lineno = user_frame(3)
            raise SpmdError("a recursive call site returned a value that is not a tuple of the "
                            "function's own shape", filename, lineno,
                            "Do not rebind the function's global name while it runs.")
        items = list(result)
        for p in self.positions:
            self.add(p, lanes, n, items[p])
            items[p] = None
        return tuple(items)

    def finish(self, frame, value):
        """The call's result: `value` with the sums in place."""
        items = list(value)
        for p in self.positions:
            items[p] = self.total(frame, p)
        return tuple(items)

    def total(self, frame, position):
        """Sum `position` of every own lane of `frame`: deferred calls run once over all
        their lanes."""
        parts, pending = [], []
        for lanes, n, value, deferred in self.stash.pop(position, []):
            ids = np.arange(n) if lanes is None else lanes
            if deferred is None:
                parts.append((ids, n, value))
                continue
            for group in pending:
                if same_function(group[0], deferred[0]) and len(group[1][0][3][1]) == len(deferred[1]) \
                        and set(group[1][0][3][2]) == set(deferred[2]):
                    group[1].append((ids, n, value, deferred))
                    break
            else:
                pending.append((deferred[0], [(ids, n, value, deferred)]))
        for fn, entries in pending:
            ids = np.concatenate([e[0] for e in entries])
            args, kwargs = merge_calls([e[3][1] for e in entries], [e[3][2] for e in entries],
                                       [e[1] for e in entries])
            parts.append((ids, len(ids), call_merged(fn, args, kwargs, frame, ids, True)))
        if not parts:
            return Batched(np.zeros(frame.n))
        # Python numbers take the arrays' type, as in `loss_l + loss_r + 0.0` (weak scalars)
        dtype = np.result_type(*[v if isinstance(v, (bool, int, float, complex)) else v.dtype
                                 for _, _, v in parts])
        datas = [_term_data(np.asarray(v, dtype=dtype) if isinstance(v, (bool, int, float, complex))
                            else v, n) for _, n, v in parts]
        # terms broadcast to the sum's per-example shape, as `a + b + 1.0` does for vectors a, b
        shape = np.broadcast_shapes(*[tuple(d.shape[1:]) for d in datas])
        datas = [d if tuple(d.shape[1:]) == shape else _broadcast_lanes(d, shape) for d in datas]
        ids = np.concatenate([p[0] for p in parts])
        own = frame.extension.origin[ids] if frame.extension is not None else ids
        data = datas[0] if len(datas) == 1 else P.concatenate(*datas, axis=0)
        xp = namespace(untraced(data))
        zeros = xp.zeros((frame.n,) + tuple(data.shape[1:]), dtype=data.dtype)
        return Batched(index_update(zeros, own, data, mode="add"))


def _term_data(value, n):
    """Lane-major data of a recorded term (`n` lanes; a uniform term is repeated)."""
    if type(value) is Batched:
        return value.data
    if hasattr(value, "materialize"):
        value = value.materialize()
        if type(value) is Batched:
            return value.data
    if hasattr(value, "lengths") or hasattr(value, "_spmd_take_lanes"):
        filename, lineno = user_frame(3)
        raise SpmdError(f"a sum over the recursion of {type(value).__name__} values (shapes that "
                        f"differ between examples)", filename, lineno,
                        "Sum per-example arrays of one shape, or reduce them to numbers first.")
    if isinstance(value, (bool, int, float, complex)):
        value = np.asarray(value)
    shape = tuple(value.shape)
    if hasattr(value, "value"):         # a traced uniform term
        return broadcast_to(value[None], (n,) + shape)
    return np.broadcast_to(np.asarray(value)[None], (n,) + shape)


def _broadcast_lanes(data, shape):
    """Lane-major `data` broadcast to per-example `shape` (trailing axes align, as numpy's)."""
    lead = len(shape) - (data.ndim - 1)
    if lead > 0:     # (lanes, *s) -> (lanes, 1.., *s): the per-example axes align on the right
        data = data.reshape((data.shape[0],) + (1,) * lead + tuple(data.shape[1:]))
    return broadcast_to(data, (data.shape[0],) + tuple(shape))
