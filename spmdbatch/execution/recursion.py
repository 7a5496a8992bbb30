"""Recursion scheduled by height: the state a frame keeps once a function called itself.

frontend/recursion.py ends a block at a call of the function to itself; `recurse` then adds
the callee lanes to the running frame and parks the calling lanes here until all their
callees returned (see docs/DESIGN.md, "Recursion, by height"). A `Recursion` is the frame's
`extension` (execution/frame.py): the scheduler hands it returning groups and takes resumed ones.
"""
from __future__ import annotations

import copy
import sys
from types import FunctionType

import numpy as np

from ..errors import LaneError, SpmdError, UnmergeableGroups
from ..runtime import primitives as P
from ..runtime import segments as S
from ..runtime.backend import namespace
from ..runtime.batched import Batched
from ..runtime.blame import user_frame
from ..runtime.segments import RowPlan
from .calls import call, call_fused
from .lanes import (UNDEFINED, _lane_data, check_row_shapes, fresh, is_varying, merge, merge_calls,
                    merge_envs, take)
from .return_rows import ReturnRows
from .state import STATE
from .stats import STATS


class Recursion:
    """The recursive calls of one frame: callee lanes, parked callers and returned values.

    Lanes ``0..n-1`` are the frame's own (its caller's); each recursive call numbers its
    callee lanes next. `origin` maps every lane to the frame's own lane it descends from
    (errors name batch examples through it). Each group's returned value is kept as it came
    (a *chunk*); lane i returned row `row_of[i]` of chunk `chunk_of[i]`. The chunks' arrays are
    also copied into per-lane buffers as they return (`ReturnRows`), so parked lanes read their
    callees' results with one take per array; values that do not fit one structure are
    gathered from the chunks instead, in one step per value (no growing copies).

    A parked group keeps its environment whole; `pending` marks its lanes still waiting.
    Per lane, `_waiting` counts the callees (or iteration lanes) a parked lane still waits
    for and `_caller` names the lane a callee returns to; a return decrements its callers'
    counts and queues those that reached zero (`_ready`), and `_group`/`_slot` say where a
    parked lane's environment is. So a resume touches the lanes that resume, not every parked
    lane: the cost of a recursion level does not grow with the depth.
    """

    __slots__ = ("n", "total", "capacity", "_origin", "_depth", "parked", "chunks", "_chunk_of",
                 "_row_of", "_unconsolidated", "_store", "_loop_store", "_waiting", "_caller",
                 "_group", "_slot", "_first", "_iterations", "_ready", "_next_group")

    _TABLES = (("_origin", 0), ("_depth", 0), ("_chunk_of", -1), ("_row_of", -1), ("_waiting", 0),
               ("_caller", -1), ("_group", -1), ("_slot", -1), ("_first", -1), ("_iterations", 0))

    def __init__(self, n):
        self.n = n
        self.total = n
        self.capacity = max(4 * n, 64)
        for name, fill in self._TABLES:
            setattr(self, name, np.full(self.capacity, fill, dtype=np.intp))
        self._origin[:n] = np.arange(n)
        # `_depth`: recursive calls above each lane; `_first`, `_iterations`: a parked loop
        # lane's first iteration lane and their number. parked: group id -> [cont, lanes, env, varying slots, callees (calls x lanes,
        # or the iteration lanes), pending mask, pending count, whether env holds native
        # iterators, loop (None, or (owner of each iteration lane, sums))]
        self.parked = {}
        self._next_group = 0
        self._ready = []              # arrays of lanes whose callees all returned
        self._unconsolidated = False  # groups parked since the last `_consolidate`
        self.chunks = []          # (value, lane count) of every returning group
        self._store = None        # ReturnRows once a group returned; False when values do not fit
        self._loop_store = None   # the same for what iteration lanes of parallel loops added

    # per-lane tables (grown by doubling): the example, returning chunk and row of each lane
    origin = property(lambda self: self._origin[:self.total])
    chunk_of = property(lambda self: self._chunk_of[:self.total])
    row_of = property(lambda self: self._row_of[:self.total])

    def _reserve(self, end):
        """Grow the per-lane tables to hold lanes up to `end`."""
        if end > self.capacity:
            grow = max(end, 2 * self.capacity) - self.capacity
            for name, fill in self._TABLES:
                setattr(self, name, np.concatenate([getattr(self, name),
                                                    np.full(grow, fill, dtype=np.intp)]))
            self.capacity += grow

    def start(self, lanes, m):
        """Number the callee lanes of `m` calls made by `lanes`: an (m, len(lanes)) array."""
        k = len(lanes)
        start, end = self.total, self.total + m * k
        self._reserve(end)
        self._origin[start:end].reshape(m, k)[:] = self._origin[lanes]     # (each call's lanes)
        self._depth[start:end].reshape(m, k)[:] = self._depth[lanes] + 1
        self.total = end
        return np.arange(start, end).reshape(m, k)

    def start_iterations(self, lanes, counts):
        """Number the iteration lanes of a parallel loop (frontend/child_loops.py): lane
        ``lanes[i]`` gets ``counts[i]`` of them, consecutive; returns their ids. They belong to
        the same activation (same example, same depth)."""
        owners = np.repeat(lanes, counts)
        start, end = self.total, self.total + len(owners)
        self._reserve(end)
        self._origin[start:end] = self._origin[owners]
        self._depth[start:end] = self._depth[owners]
        self.total = end
        return np.arange(start, end)

    def too_deep(self, callees, limit):
        """The callee lanes (of `start`) whose recursion depth exceeds `limit`."""
        flat = callees.reshape(-1)
        depth = self._depth[flat[:1]] if len(flat) else None
        if depth is None or (depth[0] <= limit and self._depth[flat].max() <= limit):
            return flat[:0]
        return flat[self._depth[flat] > limit]

    def park(self, cont, lanes, env, callees, loop=None):
        """Lanes `lanes` wait at block `cont` until their callees (an (m, len(lanes)) array)
        returned; or, with `loop` = ``(owner, sums)``, until their iteration lanes `callees`
        (a flat array, grouped by lane: ``owner[i]`` is the position in `lanes` of iteration
        lane ``callees[i]``) ended; the last `sums` slots of `env` then get what the
        iterations added (`_loop_sums`)."""
        varying = tuple([is_varying(v) for v in env])
        iterators = _has_iterators(env, varying)
        if iterators:
            env = _own_iterators(env, varying)
        k = len(lanes)
        pending = np.empty(k, dtype=bool)
        pending.fill(True)
        if loop is None:
            self._caller[callees] = lanes
            self._waiting[lanes] = len(callees)
        else:
            owner = loop[0]
            self._caller[callees] = lanes[owner]
            counts = np.bincount(owner, minlength=k)
            self._waiting[lanes] = counts
            self._first[lanes] = callees[np.cumsum(counts) - counts]
            self._iterations[lanes] = counts
        group = self._next_group
        self._next_group += 1
        self._group[lanes] = group
        self._slot[lanes] = np.arange(k)
        self.parked[group] = [cont, lanes, env, varying, callees, pending, k, iterators, loop]
        self._unconsolidated = True

    def returned(self, lanes, n, value, loop=False):
        """Group `lanes` returned `value` (`loop`: iteration lanes ended with these sums)."""
        callers = self._caller[lanes]
        callers = callers[callers >= 0]
        if len(callers):
            waiting = self._waiting
            if len(callers) > 1:                     # (siblings share a caller)
                callers = np.sort(callers)
                np.subtract.at(waiting, callers, 1)
                first = np.empty(len(callers), dtype=bool)
                first[0] = True
                np.not_equal(callers[1:], callers[:-1], out=first[1:])
                callers = callers[first]
            else:
                waiting[callers] -= 1
            done = callers[waiting[callers] == 0]
            if len(done):
                self._ready.append(done)
        self._chunk_of[lanes] = len(self.chunks)
        self._row_of[lanes] = np.arange(n)
        self.chunks.append((value, n))
        store = self._loop_store if loop else self._store
        if store is None:
            store = ReturnRows.of(value) or False
            if loop:
                self._loop_store = store
            else:
                self._store = store
        if store is not False and not store.add(value, lanes, n, self.capacity):
            if loop:
                self._loop_store = False
            else:
                self._store = False

    def gather(self, ids, loop=False):
        """The returned values of lanes `ids`, in that order."""
        if not len(ids):
            value, n = self.chunks[0]
            return take(value, ids, {})
        which = self._chunk_of[ids]
        store = self._loop_store if loop else self._store
        if store:
            first = which[0]
            value, n = self.chunks[first]
            rows = self._row_of[ids] if store.traced or len(ids) == n else None
            if len(ids) == n and rows[0] == 0 and not np.count_nonzero(which != first) \
                    and not np.count_nonzero(rows[1:] <= rows[:-1]):
                return value                                # (one group's rows, in order)
            return store.read(ids, which, rows, self.chunks)
        order = which.argsort(kind="stable")
        ordered = which[order]
        rows = self._row_of[ids]
        if ordered[0] == ordered[-1]:                       # every lane from one chunk
            value, n = self.chunks[int(ordered[0])]
            if len(rows) == n and rows[0] == 0 and not np.count_nonzero(rows[1:] <= rows[:-1]):
                return value                                # (all its rows, in order)
            return take(value, rows, {})
        bounds = [0] + ((ordered[1:] != ordered[:-1]).nonzero()[0] + 1).tolist() + [len(order)]
        chunks = self.chunks
        parts, values, counts = [], [], []
        for a, b in zip(bounds, bounds[1:]):
            pos = order[a:b]
            value, n = chunks[int(ordered[a])]
            parts.append((pos, rows[pos]))
            values.append(value)
            counts.append(n)
        return _gather(values, counts, tuple(parts), len(ids))

    def result(self, returns):
        """The returned values of the frame's own lanes (plus `returns`, made before the
        first recursive call), in lane order."""
        for lanes, n, value in returns:
            self.returned(np.arange(n) if lanes is None else lanes, n, value)
        if self.chunk_of[:self.n].min(initial=0) < 0:
            raise AssertionError("batched call finished without a return")
        return self.gather(np.arange(self.n))

    def _consolidate(self):
        """Merge the parked groups of each continuation into one (they arrive one per
        recursion depth), so each resume takes every environment slot once. Lanes that
        resumed already are left out of the merged group."""
        self._unconsolidated = False
        by_cont: dict = {}
        for group in self.parked.values():
            by_cont.setdefault(group[0], []).append(group)
        if len(by_cont) == len(self.parked):
            return
        merged = []
        for cont, groups in by_cont.items():
            if len(groups) == 1:
                merged.append(groups[0])
                continue
            groups = [_pending_only(g) for g in groups]
            counts = [len(g[1]) for g in groups]
            try:
                env = merge_envs([g[2] for g in groups], counts)
            except UnmergeableGroups:
                merged.extend(groups)
                continue
            varying = tuple(is_varying(v) for v in env)
            if groups[0][8] is None:
                callees, loop = np.concatenate([g[4] for g in groups], axis=1), None
            else:                                   # (iteration lanes: owners renumbered)
                offsets = np.cumsum([0] + counts[:-1])
                callees = np.concatenate([g[4] for g in groups])
                loop = (np.concatenate([g[8][0] + o for g, o in zip(groups, offsets)]), groups[0][8][1])
            merged.append([cont, np.concatenate([g[1] for g in groups]), env, varying, callees,
                           np.concatenate([g[5] for g in groups]), sum(g[6] for g in groups),
                           _has_iterators(env, varying), loop])
        self.parked = {}
        for group in merged:
            gid = self._next_group
            self._next_group += 1
            self.parked[gid] = group
            slots = group[5].nonzero()[0]          # (resumed lanes may be parked elsewhere now)
            self._group[group[1][slots]] = gid
            self._slot[group[1][slots]] = slots

    def resume(self):
        """(cont, lanes, n, env + results) of the parked lanes whose callees all returned: one
        group per continuation block, each result gathered in one step."""
        if self._unconsolidated:
            self._consolidate()
        if not self._ready:
            raise AssertionError("recursive calls are waiting but no lane can run")
        ready = self._ready[0] if len(self._ready) == 1 else np.concatenate(self._ready)
        self._ready = []
        groups = self._group[ready]
        ids = [int(groups[0])] if not np.count_nonzero(groups != groups[0]) else np.unique(groups).tolist()
        pieces: dict = {}
        for gid in ids:
            group = self.parked[gid]
            cont, lanes, env, varying, callees, pending, count, iterators, loop = group
            idx = self._slot[ready if len(ids) == 1 else ready[groups == gid]]
            idx.sort()
            k = len(idx)
            pending[idx] = False
            group[6] = count = count - k
            if not count:
                del self.parked[gid]
            if k < len(lanes):
                memo: dict = {}
                env = tuple([take(v, idx, memo) if var else v for v, var in zip(env, varying)])
                if iterators:
                    env = _own_iterators(env, varying)
                lanes = lanes[idx]
                if loop is None:
                    callees = callees[:, idx]
            if loop is not None:
                counts = self._iterations[lanes]
                first = self._first[lanes]
                owner = np.repeat(np.arange(k), counts)
                within = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)
                env = self._loop_sums(env, first[owner] + within, owner, k, loop[1])
                callees = None
            pieces.setdefault(cont, []).append((lanes, k, env, callees))
        out = []
        for cont, parts in pieces.items():
            if len(parts) > 1:
                counts = [p[1] for p in parts]
                try:
                    env = merge_envs([p[2] for p in parts], counts)
                    callees = None if parts[0][3] is None else \
                        np.concatenate([p[3] for p in parts], axis=1)
                    parts = [(np.concatenate([p[0] for p in parts]), sum(counts), env, callees)]
                except UnmergeableGroups:
                    pass                        # the groups go on separately
            for lanes, k, env, callees in parts:
                if callees is not None:
                    env = env + tuple(self.gather(c) for c in callees)
                out.append((cont, lanes, k, env))
        return out

    def _loop_sums(self, env, ids, owner, k, sums):
        """`env` of `k` resuming lanes with its last `sums` slots (the accumulators' values
        before the loop) plus what their iteration lanes `ids` added (``owner[i]``: the
        resuming lane of ``ids[i]``), as the loop as written would have added it."""
        if not sums:
            return env
        added = self.gather(ids, loop=True)
        wanted = added[len(added) - sums:] if type(added) is tuple else (added,)
        out = list(env[:len(env) - sums])
        plan = RowPlan(owner, None, k)
        for before, terms in zip(env[len(env) - sums:], wanted):
            out.append(_plus_segment_sums(before, terms, plan, k))
        return tuple(out)


def _plus_segment_sums(before, terms, plan, k):
    """``before`` (one value per resuming lane) plus, per lane, the sum of the rows of
    `terms` it owns (`plan`: the owner of each row, a scatter-add in a few buffered rounds)."""
    if type(terms) is Batched:
        data, weak = terms.data, terms.weak
    else:                                   # (the same number or array in every iteration)
        weak = isinstance(terms, (bool, int, float, complex))
        if hasattr(terms, "value"):          # (a traced uniform term)
            from ..runtime.numpy_api import broadcast_to
            data = broadcast_to(terms[None], (len(plan.index),) + tuple(terms.shape))
        else:
            raw = np.asarray(terms)
            data = np.broadcast_to(raw[None], (len(plan.index),) + raw.shape)
    raw = getattr(data, "value", data)
    if type(before) is Batched and not before.weak:
        base = getattr(before.data, "value", before.data)
        if base.dtype == raw.dtype and base.shape == (k,) + raw.shape[1:] and \
                np.result_type(base, raw) == base.dtype:
            return Batched(S.scatter_add_rows(before.data, data, plan=plan))
    zeros = namespace(raw).zeros((k,) + tuple(raw.shape[1:]), dtype=raw.dtype)
    return before + Batched(S.scatter_add_rows(zeros, data, plan=plan), weak)


def _pending_only(group):
    """A parked group without its lanes that resumed already."""
    cont, lanes, env, varying, callees, pending, count, iterators, loop = group
    if count == len(lanes):
        return group
    idx = pending.nonzero()[0]
    memo: dict = {}
    env = tuple([take(v, idx, memo) if var else v for v, var in zip(env, varying)])
    if loop is None:
        callees = callees[:, idx]
    else:
        keep = pending[loop[0]]
        position = np.cumsum(pending) - 1
        callees, loop = callees[keep], (position[loop[0][keep]], loop[1])
    return [cont, lanes[idx], env, varying, callees, pending[idx], count, iterators, loop]


def _has_iterators(env, varying) -> bool:
    """Whether uniform slots of `env` hold native iterators (see `_own_iterators`)."""
    for v, var in zip(env, varying):
        if not var and hasattr(type(v), "__next__"):
            return True
    return False


def _own_iterators(env, varying):
    """`env` with a copy of every native iterator (a `for` loop over a uniform sequence).

    Groups of lanes normally advance such an iterator together (a loop's lanes meet at its
    header), but parked lanes resume at other times than the rest of their group, so they
    must not share its position."""
    if not _has_iterators(env, varying):
        return env
    copies: dict = {}
    out = []
    for v, var in zip(env, varying):
        if not var and hasattr(type(v), "__next__"):
            if id(v) not in copies:
                try:
                    copies[id(v)] = copy.copy(v)
                except TypeError:
                    filename, lineno = user_frame(4)
                    raise SpmdError(f"a recursive call inside a loop over a {type(v).__name__}",
                                    filename, lineno,
                                    "Loop over a list, tuple or range (their position can be "
                                    "copied for lanes that resume at different times).") from None
            v = copies[id(v)]
        out.append(v)
    return tuple(out)


def _gather(values, counts, parts, size):
    """Rows ``parts[i] = (output positions, rows)`` of lane groups `values` (pytrees of one
    structure): arrays in one `gather_lanes` step, other per-lane values by merge and take."""
    first = values[0]
    kind = type(first)
    if kind is Batched:                         # the common cases first, without tree walks
        datas = []
        for v in values:
            if type(v) is not Batched:
                break
            datas.append(v.data)
        else:
            return Batched(P.gather_lanes(*datas, parts=parts))
    elif kind is tuple or kind is list:
        n = len(first)
        for v in values:
            if type(v) is not kind or len(v) != n:
                break
        else:
            if all(v is first for v in values) and not is_varying(first):
                return first                    # (one uniform object stays that object)
            return kind([_gather([v[i] for v in values], counts, parts, size) for i in range(n)])
    if all(v is first for v in values) and not is_varying(first):
        return first
    if any(type(v) is Batched for v in values) and \
            all(type(v) is Batched or isinstance(v, (bool, int, float, complex, np.generic, np.ndarray))
                for v in values):
        datas = [_lane_data(v, n) for v, n in zip(values, counts)]
        check_row_shapes(datas, "the return value of a recursive call")
        return Batched(P.gather_lanes(*datas, parts=parts))
    merged = merge(values, counts, "the return value")
    order = np.empty(size, dtype=np.intp)
    offset = 0
    for (pos, rows), n in zip(parts, counts):
        order[pos] = offset + rows
        offset += n
    return take(merged, order, {})


def recurse(frame, cont, lanes, n, funcs, args, kwargs, env, spec, globals_):
    """Calls of the function to itself from the running group of `frame` (the generated code
    of a `Recurse` terminator, frontend/recursion.py): the callee lanes join the frame at the
    entry block (the frame's `extension` is this frame's `Recursion`) and the group parks at
    block `cont` until their results are in. Calls of any other function (a rebound global,
    keyword arguments) run now, as ordinary batched calls, and the group goes on to `cont`.
    `spec` is (the function's code object, the entry block, the entry environment's argument
    positions)."""
    code, entry, entry_args = spec
    if n == 0 or any(kwargs) or not all(type(f) is FunctionType and f.__code__ is code
                                        and f.__globals__ is globals_ for f in funcs):
        if len(funcs) > 1:                  # (a fused group of calls)
            results = call_fused(funcs, args, kwargs)
        else:
            results = (call(funcs[0], *args[0], **kwargs[0]),)
        sums = frame.finisher               # (the continuation will not add these results'
        if sums is not None and n:          # sums: they become terms, execution/sums.py)
            results = tuple(sums.record_result(r, lanes, n) for r in results)
        frame.jump(cont, lanes, n, env + tuple(results))
        return
    rec = frame.extension
    if rec is None:
        rec = frame.extension = Recursion(frame.n)
    m = len(funcs)
    if m > 1:
        STATS.record_fused(m)
    ids = np.arange(frame.n) if lanes is None else lanes
    callees = rec.start(ids, m)
    limit = STATE.max_depth if STATE.max_depth is not None else sys.getrecursionlimit()
    deep = rec.too_deep(callees, limit)
    if len(deep):
        which = frame.batch_indices(deep)
        filename, lineno = user_frame(2)
        raise LaneError(f"RecursionError: maximum recursion depth ({limit} calls) exceeded (in "
                        f"examples {which} of the batch)", which, filename, lineno,
                        "The recursion does not end for these examples (a cycle in a tree?). "
                        "The limit is spmd(..., max_depth=N), by default sys.getrecursionlimit().")
    if m > 1:
        merged, _ = merge_calls(args, kwargs, [n] * m)
    else:
        # (the callee lanes get their own copies of the caller's varying objects, since one
        # object in two groups of the frame would read as uniform)
        merged = [fresh(a) for a in args[0]]
    if STATS.active is not None:
        STATS.record_call(code.co_qualname if hasattr(code, "co_qualname") else code.co_name,
                          m * n, 0)
    frame.jump(entry, callees.reshape(-1), m * n,
               tuple(merged[i] if i >= 0 else UNDEFINED for i in entry_args))
    rec.park(cont, ids, env, callees)
