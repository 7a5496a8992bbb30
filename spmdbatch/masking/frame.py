"""The scheduler of one batched call: lane groups flowing through the blocks of a function.

A batched call starts with one group holding all its lanes at the entry block. Running a
block moves the group along its terminator: an unconditional jump moves it whole; a branch
on a varying condition splits it into the lanes that go each way (compaction: each side
only ever computes on its own lanes, so inactive lanes never run, never produce NaN and
never cost work); a return stores the group's result.

`pop` picks the next block to run: the lowest-numbered block with waiting groups, where
blocks are numbered in a loop-contiguous topological order (frontend/schedule.py). Groups
arriving at a loop header along a back edge wait until the whole loop body has drained,
so every lane still in a loop runs the same iteration together and lanes that left the
loop wait at its exit: the reconvergence of SPMD execution. Groups waiting at one block are
merged (their lanes concatenated) before it runs.

A group is ``(lanes, count, env)``: `lanes` are the group's positions in the call's batch
(None for "all of them, in order"), `env` the values of the block's live-in variables.
"""
from __future__ import annotations

import copy
from types import FunctionType

import numpy as np

from ..errors import LaneError, SpmdError, UnmergeableGroups
from ..runtime import primitives as P
from ..runtime.batched import Batched, user_frame
from .lanes import UNDEFINED, _lane_data, fresh, is_varying, merge, take
from .stats import STATS


class _State:
    partial = False   # True while the running group is not every lane of the top-level batch
    frame = None      # the innermost running Frame
    lanes = None      # the running group's lanes in that frame (None: all, in order)


STATE = _State()


def _mask_of(cond: Batched):
    """The raw boolean lane mask of a varying condition."""
    data = cond.data
    data = getattr(data, "value", data)  # tracer -> raw (truth values carry no gradient)
    if data.dtype != np.bool_:
        data = data != 0
    if data.ndim > 1:
        raise ValueError(
            "the truth value of an array with more than one element is ambiguous (in some "
            "example); use .any() or .all()")
    return data


def raise_all_lanes(exc):
    """`raise exc` in straight-line code: every lane of the call raises it; that is only some
    examples of the batch when the call was made under a varying condition."""
    if isinstance(exc, type):
        exc = exc()
    frame = STATE.frame
    if not STATE.partial or frame is None:
        raise exc
    lanes = STATE.lanes if STATE.lanes is not None else np.arange(frame.n)
    which = frame.batch_indices(lanes)
    filename, lineno = user_frame(2)
    raise LaneError(f"{type(exc).__name__}{': ' + str(exc) if str(exc) else ''} (raised in "
                    f"examples {which} of the batch only)", which, filename, lineno) from exc


def count_call(function, *args):
    """Count a straight-line batch program's call in `spmdbatch.stats()` (when open)."""
    if STATS.active is not None:
        from .lanes import lane_count
        n = lane_count(*args)
        frame = STATE.frame
        skipped = 0 if frame is None or STATE.lanes is None else max(0, frame.n - len(STATE.lanes))
        STATS.record_call(function, n, skipped)


class Frame:
    """Waiting lane groups of one batched call (see module docstring)."""

    __slots__ = ("loop_end", "names", "fwd", "back", "returns", "n", "base_partial", "parent",
                 "parent_lanes", "recursion", "sums", "stash")

    def __init__(self, loop_end, n: int, names=None, function: str = "?"):
        self.loop_end = loop_end   # loop_end[b]: last block of the loop headed by b, or -1
        self.names = names         # env variable names per block, for error messages
        self.fwd: dict = {}
        self.back: dict = {}
        self.returns: list = []
        self.n = n
        self.base_partial = STATE.partial
        self.parent = STATE.frame          # the calling frame, and the lanes of its group that
        self.parent_lanes = STATE.lanes    # make this call's batch (None: all of them)
        self.recursion = None              # a _Recursion once a recursive call started lanes
        self.sums = ()                     # return positions summed over the recursion
        self.stash: dict = {}              # position -> recorded terms (frontend/reduction.py)
        STATE.frame = self
        if STATS.active is not None:
            skipped = 0 if self.parent is None or self.parent_lanes is None else \
                max(0, self.parent.n - len(self.parent_lanes))
            STATS.record_call(function, n, skipped)

    # --- moving groups ----------------------------------------------------------------------
    def jump(self, block, lanes, n, env):
        self.fwd.setdefault(block, []).append((lanes, n, env))

    def jump_back(self, block, lanes, n, env):
        self.back.setdefault(block, []).append((lanes, n, env))

    def branch(self, cond, lanes, n, t_block, t_env, f_block, f_env, t_back=False, f_back=False):
        """Send the group to `t_block` where `cond` holds and to `f_block` elsewhere."""
        if type(cond) is not Batched:
            if cond:
                (self.jump_back if t_back else self.jump)(t_block, lanes, n, t_env)
            else:
                (self.jump_back if f_back else self.jump)(f_block, lanes, n, f_env)
            return
        mask = _mask_of(cond)
        k = int(np.count_nonzero(mask)) if n else 0
        if n and k == n:
            (self.jump_back if t_back else self.jump)(t_block, lanes, n, t_env)
        elif k == 0:
            if n == 0 and t_block > f_block:
                # An empty group still runs (to give results their structure) but must never
                # take a back edge: the higher-numbered target always leads forward.
                self.jump(t_block, lanes, 0, t_env)
            else:
                (self.jump_back if f_back else self.jump)(f_block, lanes, n, f_env)
        else:
            t_idx = np.flatnonzero(mask)
            f_idx = np.flatnonzero(~mask)
            t_lanes = t_idx if lanes is None else lanes[t_idx]
            f_lanes = f_idx if lanes is None else lanes[f_idx]
            (self.jump_back if t_back else self.jump)(t_block, t_lanes, k, take(t_env, t_idx, {}))
            (self.jump_back if f_back else self.jump)(f_block, f_lanes, n - k, take(f_env, f_idx, {}))

    def ret(self, lanes, n, value):
        rec = self.recursion
        if rec is None:
            self.returns.append((lanes, n, value))
            return
        # own lanes and callee lanes alike: `result` gathers the own lanes from the store
        rec.returned(np.arange(n) if lanes is None else lanes, n, value)

    # --- recursion scheduled by height (frontend/recursion.py) ---------------------------------
    def recurse(self, cont, lanes, n, funcs, args, kwargs, env, fused, spec, globals_):
        """Calls of the function to itself from the running group: the callee lanes join this
        frame at the entry block and the group waits at block `cont` for their results. Calls
        of any other function run now (as ordinary batched calls) and the group goes on."""
        code, entry, entry_args = spec
        if n == 0 or any(kwargs) or not all(type(f) is FunctionType and f.__code__ is code
                                            and f.__globals__ is globals_ for f in funcs):
            from .calls import call, call_fused
            if fused:
                results = call_fused(funcs, args, kwargs)
            else:
                results = (call(funcs[0], *args[0], **kwargs[0]),)
            if self.sums and n:
                results = tuple(self._record_sums_of(r, lanes, n) for r in results)
            self.jump(cont, lanes, n, env + tuple(results))
            return
        rec = self.recursion
        if rec is None:
            rec = self.recursion = _Recursion(self.n)
        m = len(funcs)
        if m > 1:
            STATS.record_fused(m)
        ids = np.arange(self.n) if lanes is None else lanes
        callees = rec.start(ids, m)
        arity = len(args[0])
        # (one call: the callee lanes get their own copies of the caller's varying objects,
        # since one object in two groups of the frame would read as uniform)
        merged = [merge([a[i] for a in args], [n] * m, f"argument {i}", disjoint=False)
                  for i in range(arity)] if m > 1 else [fresh(a) for a in args[0]]
        if STATS.active is not None:
            STATS.record_call(code.co_qualname if hasattr(code, "co_qualname") else code.co_name,
                              m * n, 0)
        self.jump(entry, callees.reshape(-1), m * n,
                  tuple(merged[i] if i >= 0 else UNDEFINED for i in entry_args))
        rec.park(cont, ids, env, callees)

    # --- sums over the recursion (frontend/reduction.py) ------------------------------------------
    def accumulate(self, position, lanes, n, value):
        """Record `value` as a term of sum `position` for the running lanes."""
        if n:
            self.stash.setdefault(position, []).append((lanes, n, value, None))

    def defer(self, position, lanes, n, fn, args, kwargs):
        """Record the term ``fn(*args, **kwargs)``, to be called when the batched call ends."""
        if n:
            self.stash.setdefault(position, []).append((lanes, n, None, (fn, args, kwargs)))

    def _record_sums_of(self, result, lanes, n):
        """A complete result (of a call that ran as an ordinary batched call): its sums become
        terms of the calling lanes, as the continuation no longer adds them."""
        if type(result) is not tuple or len(result) <= max(self.sums):
            filename, lineno = user_frame(3)
            raise SpmdError("a recursive call site returned a value that is not a tuple of the "
                            "function's own shape", filename, lineno,
                            "Do not rebind the function's global name while it runs.")
        items = list(result)
        for p in self.sums:
            self.accumulate(p, lanes, n, items[p])
            items[p] = None
        return tuple(items)

    def _total(self, position):
        """Sum `position` of every own lane: deferred calls run once over all their lanes."""
        from ..runtime.array_methods import index_update
        from ..runtime.backend import namespace
        from .calls import call, _same_function
        parts, pending = [], []
        for lanes, n, value, deferred in self.stash.pop(position, []):
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
                STATE.frame, STATE.lanes, STATE.partial = self, ids, True
                parts.append((ids, len(ids), call(fn, *args, **kwargs)))
        finally:
            STATE.frame, STATE.lanes, STATE.partial = saved
        if not parts:
            return Batched(np.zeros(self.n))
        # Python numbers take the arrays' type, as in `loss_l + loss_r + 0.0` (weak scalars)
        dtype = np.result_type(*[v if isinstance(v, (bool, int, float, complex)) else v.dtype
                                 for _, _, v in parts])
        datas = [_term_data(np.asarray(v, dtype=dtype) if isinstance(v, (bool, int, float, complex))
                            else v, n) for _, n, v in parts]
        ids = np.concatenate([p[0] for p in parts])
        own = self.recursion.origin[ids] if self.recursion is not None else ids
        data = datas[0] if len(datas) == 1 else P.concatenate(*datas, axis=0)
        xp = namespace(getattr(data, "value", data))
        total = xp.zeros((self.n,) + tuple(data.shape[1:]), dtype=data.dtype)
        return Batched(index_update(total, own, data, mode="add"))

    def _resume_parked(self):
        """Move every parked lane whose callees have all returned to its continuation."""
        for cont, lanes, n, env in self.recursion.resume():
            self.jump(cont, lanes, n, env)

    # --- choosing the next block ----------------------------------------------------------------
    def pop(self):
        """The next ``(block, lanes, n, env)`` to run, or ``(-1, None, 0, None)`` when done."""
        fwd, back = self.fwd, self.back
        if not fwd and not back and self.recursion is not None and self.recursion.parked:
            self._resume_parked()
        if not back:
            if not fwd:
                STATE.partial = self.base_partial
                STATE.frame = self.parent
                STATE.lanes = self.parent_lanes
                return -1, None, 0, None
            block = min(fwd)
            groups = fwd.pop(block)
        else:
            block = self._ready_block()
            groups = fwd.pop(block, []) + back.pop(block, [])
        if len(groups) == 1:
            lanes, n, env = groups[0]
        else:
            try:
                lanes, n, env = self._merge(block, groups)
            except UnmergeableGroups:
                # (different loop iterators, say): run one group now, the others after it
                (lanes, n, env), rest = groups[0], groups[1:]
                fwd.setdefault(block, []).extend(rest)
        # (a permutation of all lanes is complete; once callee lanes joined, no group is)
        STATE.partial = self.base_partial or n != self.n or self.recursion is not None
        STATE.lanes = lanes
        return block, lanes, n, env

    def _ready_block(self):
        candidates = sorted(set(self.fwd) | set(self.back))
        for i, block in enumerate(candidates):
            if block in self.fwd:
                return block
            # only back-edge groups wait here: run the header once its loop body has drained
            if i + 1 == len(candidates) or candidates[i + 1] > self.loop_end[block]:
                return block
        raise AssertionError("scheduler found no runnable block")

    def _merge(self, block, groups):
        counts = [g[1] for g in groups]
        lanes = np.concatenate([np.arange(g[1]) if g[0] is None else g[0] for g in groups])
        names = self.names[block] if self.names else None
        width = len(groups[0][2])
        env = tuple(merge([g[2][i] for g in groups], counts,
                          f"variable {names[i]!r}" if names else "a variable") for i in range(width))
        return lanes, sum(counts), env

    # --- results ------------------------------------------------------------------------------
    def result(self):
        """The returned value of every lane, in the call's lane order."""
        value = self._returned()
        if self.sums:
            items = list(value)
            for p in self.sums:
                items[p] = self._total(p)
            value = tuple(items)
        return value

    def _returned(self):
        returns = self.returns
        if self.recursion is not None:
            return self.recursion.result(returns)
        if len(returns) == 1 and returns[0][0] is None:
            return returns[0][2]
        if not returns:
            raise AssertionError("batched call finished without a return")
        counts = [r[1] for r in returns]
        value = merge([r[2] for r in returns], counts, "the return value")
        lanes = np.concatenate([np.arange(r[1]) if r[0] is None else r[0] for r in returns])
        order = np.argsort(lanes, kind="stable")
        if np.array_equal(order, np.arange(len(order))):
            return value
        return take(value, order, {})

    def raise_in_lanes(self, exc, lanes, n):
        """Raise `exc` for the running group: as a LaneError naming the examples (batch
        indices of the outermost @spmd call) when only some examples raise it."""
        if isinstance(exc, type):
            exc = exc()
        if not self.base_partial and (
                n == self.n if self.recursion is None else
                len(np.unique(self.recursion.origin[np.arange(n) if lanes is None else lanes])) == self.n):
            raise exc                         # every example raises it
        which = self.batch_indices(np.arange(n) if lanes is None else lanes)
        filename, lineno = user_frame(2)
        raise LaneError(f"{type(exc).__name__}{': ' + str(exc) if str(exc) else ''} (raised in "
                        f"examples {which} of the batch only)", which, filename, lineno) from exc

    def batch_indices(self, local):
        """Positions in the outermost batch of this frame's lanes `local`."""
        idx = np.asarray(local)
        frame = self
        while frame is not None:
            if frame.recursion is not None:
                idx = frame.recursion.origin[idx]
            if frame.parent_lanes is not None:
                idx = frame.parent_lanes[idx]
            frame = frame.parent
        return sorted({int(i) for i in np.asarray(idx).reshape(-1)})


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


class _Recursion:
    """The recursive calls of one frame: callee lanes, parked callers and returned values.

    Lanes ``0..n-1`` are the frame's own (its caller's); each recursive call numbers its
    callee lanes next. `origin` maps every lane to the frame's own lane it descends from
    (errors name batch examples through it). Each group's returned value is kept as it came
    (a *chunk*); lane i returned row `row_of[i]` of chunk `chunk_of[i]`. Parked lanes get their
    callees' results gathered from the chunks in one step per value (no growing copies).
    A parked group keeps its environment whole; `pending` marks its lanes still waiting.
    """

    __slots__ = ("n", "total", "capacity", "_origin", "parked", "chunks", "_chunk_of", "_row_of")

    def __init__(self, n):
        self.n = n
        self.total = n
        self.capacity = max(4 * n, 64)
        self._origin = np.zeros(self.capacity, dtype=np.intp)
        self._origin[:n] = np.arange(n)
        self.parked = []          # [cont, lanes, env, varying slots, callees (calls x lanes), pending]
        self.chunks = []          # (value, lane count) of every returning group
        self._chunk_of = np.full(self.capacity, -1, dtype=np.intp)
        self._row_of = np.full(self.capacity, -1, dtype=np.intp)

    # per-lane tables (grown by doubling): the example, returning chunk and row of each lane
    origin = property(lambda self: self._origin[:self.total])
    chunk_of = property(lambda self: self._chunk_of[:self.total])
    row_of = property(lambda self: self._row_of[:self.total])

    def start(self, lanes, m):
        """Number the callee lanes of `m` calls made by `lanes`: an (m, len(lanes)) array."""
        k = len(lanes)
        start, end = self.total, self.total + m * k
        if end > self.capacity:
            grow = max(end, 2 * self.capacity) - self.capacity
            self._origin = np.concatenate([self._origin, np.zeros(grow, dtype=np.intp)])
            self._chunk_of = np.concatenate([self._chunk_of, np.full(grow, -1, dtype=np.intp)])
            self._row_of = np.concatenate([self._row_of, np.full(grow, -1, dtype=np.intp)])
            self.capacity += grow
        self._origin[start:end] = np.tile(self._origin[lanes], m)
        self.total = end
        return np.arange(start, end).reshape(m, k)

    def park(self, cont, lanes, env, callees):
        varying = tuple(is_varying(v) for v in env)
        env = _own_iterators(env, varying)
        self.parked.append([cont, lanes, env, varying, callees, np.ones(len(lanes), dtype=bool)])

    def returned(self, lanes, n, value):
        self._chunk_of[lanes] = len(self.chunks)
        self._row_of[lanes] = np.arange(n)
        self.chunks.append((value, n))

    def gather(self, ids):
        """The returned values of lanes `ids`, in that order."""
        which, rows = self.chunk_of[ids], self.row_of[ids]
        if not len(which) or (which == which[0]).all():
            value, n = self.chunks[int(which[0])] if len(which) else self.chunks[0]
            if len(rows) == n and np.array_equal(rows, np.arange(n)):
                return value
            return take(value, rows, {})
        order = np.argsort(which, kind="stable")
        ordered = which[order]
        cuts = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
        starts = [0] + cuts.tolist()
        ends = cuts.tolist() + [len(order)]
        parts, values, counts = [], [], []
        for a, b in zip(starts, ends):
            pos = order[a:b]
            value, n = self.chunks[int(ordered[a])]
            parts.append((pos, rows[pos]))
            values.append(value)
            counts.append(n)
        return _gather(values, counts, parts, len(ids))

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
        recursion depth), so each resume takes every environment slot once."""
        by_cont: dict = {}
        for group in self.parked:
            by_cont.setdefault(group[0], []).append(group)
        if len(by_cont) == len(self.parked):
            return
        merged = []
        for cont, groups in by_cont.items():
            if len(groups) == 1:
                merged.append(groups[0])
                continue
            counts = [len(g[1]) for g in groups]
            try:
                env = tuple(merge([g[2][i] for g in groups], counts, "a variable")
                            for i in range(len(groups[0][2])))
            except UnmergeableGroups:
                merged.extend(groups)
                continue
            merged.append([cont, np.concatenate([g[1] for g in groups]), env,
                           tuple(is_varying(v) for v in env),
                           np.concatenate([g[4] for g in groups], axis=1),
                           np.concatenate([g[5] for g in groups])])
        self.parked = merged

    def resume(self):
        """(cont, lanes, n, env + results) of the parked lanes whose callees all returned: one
        group per continuation block, each result gathered in one step."""
        done = self.chunk_of >= 0
        pieces: dict = {}
        self._consolidate()
        for group in self.parked:
            cont, lanes, env, varying, callees, pending = group
            ready = done[callees].all(axis=0) & pending
            idx = np.flatnonzero(ready)
            if not len(idx):
                continue
            pending[idx] = False
            if len(idx) < len(lanes):
                memo: dict = {}
                env = _own_iterators(tuple(take(v, idx, memo) if var else v
                                           for v, var in zip(env, varying)), varying)
                lanes, callees = lanes[idx], callees[:, idx]
            pieces.setdefault(cont, []).append((lanes, len(idx), env, callees))
        self.parked = [g for g in self.parked if g[5].any()]
        if not pieces:
            raise AssertionError("recursive calls are waiting but no lane can run")
        out = []
        for cont, parts in pieces.items():
            if len(parts) > 1:
                counts = [p[1] for p in parts]
                try:
                    env = tuple(merge([p[2][i] for p in parts], counts, "a variable")
                                for i in range(len(parts[0][2])))
                    parts = [(np.concatenate([p[0] for p in parts]), sum(counts), env,
                              np.concatenate([p[3] for p in parts], axis=1))]
                except UnmergeableGroups:
                    pass                        # the groups go on separately
            for lanes, k, env, callees in parts:
                results = tuple(self.gather(c) for c in callees)
                out.append((cont, lanes, k, env + results))
        return out


def _own_iterators(env, varying):
    """`env` with a copy of every native iterator (a `for` loop over a uniform sequence).

    Groups of lanes normally advance such an iterator together (a loop's lanes meet at its
    header), but parked lanes resume at other times than the rest of their group, so they
    must not share its position."""
    if not any(hasattr(type(v), "__next__") for v, var in zip(env, varying) if not var):
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
    if all(v is first for v in values[1:]) and not is_varying(first):
        return first
    kind = type(first)
    if (kind is tuple or kind is list) and all(type(v) is kind and len(v) == len(first) for v in values):
        return kind(_gather([v[i] for v in values], counts, parts, size) for i in range(len(first)))
    if any(type(v) is Batched for v in values) and \
            all(type(v) is Batched or isinstance(v, (bool, int, float, complex, np.generic, np.ndarray))
                for v in values):
        datas = [_lane_data(v, n) for v, n in zip(values, counts)]
        return Batched(P.gather_lanes(*datas, parts=tuple(parts)))
    merged = merge(values, counts, "the return value")
    order = np.empty(size, dtype=np.intp)
    offset = 0
    for (pos, rows), n in zip(parts, counts):
        order[pos] = offset + rows
        offset += n
    return take(merged, order, {})
