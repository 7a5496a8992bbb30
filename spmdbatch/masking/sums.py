"""Sums over a recursion at run time: terms recorded per lane, added up per example.

frontend/reduction.py turns ``return h, loss_l + loss_r + node_loss(...)`` into recorded
terms (`Frame.accumulate`, `Frame.defer`); when the batched call ends, `total` runs each
deferred function once over all its lanes and adds every term into its example's sum.
"""
from __future__ import annotations

import numpy as np

from ..errors import SpmdError
from ..runtime import primitives as P
from ..runtime.array_methods import index_update
from ..runtime.backend import namespace
from ..runtime.batched import Batched
from ..runtime.blame import user_frame
from .frame import STATE
from .lanes import merge


def _defer_anything(fn) -> bool:
    return True


_DEFERRAL_CHECK = [_defer_anything]


def set_deferral_check(check):
    """Install the test of which term functions may run late (frontend/reduction.py)."""
    _DEFERRAL_CHECK[0] = check


def may_defer(fn) -> bool:
    return _DEFERRAL_CHECK[0](fn)


def record_sums_of(frame, result, lanes, n):
    """A complete result (of a call that ran as an ordinary batched call): its sums become
    terms of the calling lanes, as the continuation no longer adds them."""
    if type(result) is not tuple or len(result) <= max(frame.sums):
        filename, lineno = user_frame(3)
        raise SpmdError("a recursive call site returned a value that is not a tuple of the "
                        "function's own shape", filename, lineno,
                        "Do not rebind the function's global name while it runs.")
    items = list(result)
    for p in frame.sums:
        frame.accumulate(p, lanes, n, items[p])
        items[p] = None
    return tuple(items)


def total(frame, position):
    """Sum `position` of every own lane: deferred calls run once over all their lanes."""
    from .calls import call, _same_function      # (calls imports this module's users)
    parts, pending = [], []
    for lanes, n, value, deferred in frame.stash.pop(position, []):
        ids = np.arange(n) if lanes is None else lanes
        if deferred is None:
            parts.append((ids, n, value))
            continue
        for group in pending:
            if _same_function(group[0], deferred[0]) and len(group[1][0][3][1]) == len(deferred[1]) \
                    and set(group[1][0][3][2]) == set(deferred[2]):
                group[1].append((ids, n, value, deferred))
                break
        else:
            pending.append((deferred[0], [(ids, n, value, deferred)]))
    saved = STATE.frame, STATE.lanes, STATE.partial
    try:
        for fn, entries in pending:
            counts = [e[1] for e in entries]
            ids = np.concatenate([e[0] for e in entries])
            args = [merge([e[3][1][i] for e in entries], counts, f"argument {i}", disjoint=False)
                    for i in range(len(entries[0][3][1]))]
            kwargs = {k: merge([e[3][2][k] for e in entries], counts, f"argument {k!r}", disjoint=False)
                      for k in entries[0][3][2]}
            STATE.frame, STATE.lanes, STATE.partial = frame, ids, True
            parts.append((ids, len(ids), call(fn, *args, **kwargs)))
    finally:
        STATE.frame, STATE.lanes, STATE.partial = saved
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
    own = frame.recursion.origin[ids] if frame.recursion is not None else ids
    data = datas[0] if len(datas) == 1 else P.concatenate(*datas, axis=0)
    xp = namespace(getattr(data, "value", data))
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
        from ..runtime.numpy_api import broadcast_to
        return broadcast_to(value[None], (n,) + shape)
    return np.broadcast_to(np.asarray(value)[None], (n,) + shape)


def _broadcast_lanes(data, shape):
    """Lane-major `data` broadcast to per-example `shape` (trailing axes align, as numpy's)."""
    from ..runtime.numpy_api import broadcast_to
    lead = len(shape) - (data.ndim - 1)
    if lead > 0:     # (lanes, *s) -> (lanes, 1.., *s): the per-example axes align on the right
        data = data.reshape((data.shape[0],) + (1,) * lead + tuple(data.shape[1:]))
    return broadcast_to(data, (data.shape[0],) + tuple(shape))
