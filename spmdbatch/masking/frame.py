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

import sys
import threading
from types import FunctionType

import numpy as np

from ..errors import LaneError, UnmergeableGroups
from ..runtime.batched import Batched, set_lane_namer, user_frame
from .lanes import UNDEFINED, fresh, merge, merge_envs, repeat_lanes, take, take_env, weak_merge_dtype
from .recursion import Recursion
from .stats import STATS


class _State(threading.local):
    """The running batch program of this thread (threads run batch programs independently)."""
    partial = False   # True while the running group is not every lane of the top-level batch
    frame = None      # the innermost running Frame
    lanes = None      # the running group's lanes in that frame (None: all, in order)
    max_depth = None  # limit of recursive calls per example (None: sys.getrecursionlimit())


STATE = _State()

try:            # numpy's C function (np.count_nonzero wraps it in Python: 4x the cost on lane masks)
    from numpy._core._multiarray_umath import count_nonzero as _count_nonzero
except ImportError:     # pragma: no cover  (numpy < 2)
    _count_nonzero = np.count_nonzero
_NDARRAY = np.ndarray
_BOOL = np.dtype(bool)


def _mask_of(cond: Batched):
    """The raw boolean lane mask of a varying condition."""
    data = cond.data
    if type(data) is _NDARRAY and data.dtype is _BOOL and data.ndim == 1:
        return data                      # (the common case: a comparison of lane vectors)
    data = getattr(data, "value", data)  # tracer -> raw (truth values carry no gradient)
    if data.dtype != np.bool_:
        data = data != 0
    if data.ndim > 1:
        raise ValueError(
            "the truth value of an array with more than one element is ambiguous (in some "
            "example); use .any() or .all()")
    return data


_INT64_MIN, _INT64_MAX = -2 ** 63, 2 ** 63 - 1


def _number_and_lanes(a, b):
    """(a, b, weak) for `numpy.where` when one of them is a Python int or float and the other a
    lane vector of numpy data, in the dtype their join would have (`weak_merge_dtype`); (None,
    None, None) otherwise."""
    number_first = type(a) is int or type(a) is float
    number, lanes = (a, b) if number_first else (b, a)
    kind = type(number)
    if not (kind is int or kind is float) or type(lanes) is not Batched:
        return None, None, None
    data = lanes.data
    if type(data) is not _NDARRAY or data.ndim != 1 or \
            (kind is int and not _INT64_MIN <= number <= _INT64_MAX):
        return None, None, None
    weak = lanes.weak
    if not weak:
        dtype = weak_merge_dtype([lanes, number])
        if dtype is None:
            return None, None, None
        if data.dtype != dtype:
            data = data.astype(dtype)
        number = np.asarray(number, dtype=dtype)
    return (number, data, weak) if number_first else (data, number, weak)


def select_env(cond, n, t_env, f_env):
    """The environment of a join reached from both sides of a branch that compute nothing
    (`x = 0 if c else 1`), selected lane by lane where `cond` holds, without splitting the
    group: slots that agree stay as they are; Python numbers of one type, and lane vectors of
    numpy data of one dtype, become `numpy.where`. None when some slot is another kind of
    value, the group is empty or `cond` is uniform (other groups wait): `branch` then moves
    or splits the group as usual."""
    if not n or type(cond) is not Batched:
        return None
    mask = None
    out = []
    for a, b in zip(t_env, f_env):
        if a is b:
            out.append(a)
            continue
        kind = type(a)
        if kind is not type(b):
            a, b, weak = _number_and_lanes(a, b)
            if a is None:
                return None
        elif kind is int or kind is float or kind is bool:
            if a == b:
                out.append(a)            # (as `merge` keeps equal numbers uniform)
                continue
            if kind is int and not (_INT64_MIN <= a <= _INT64_MAX and _INT64_MIN <= b <= _INT64_MAX):
                return None
            weak = True
        elif kind is Batched:
            da, db = a.data, b.data
            if type(da) is not _NDARRAY or type(db) is not _NDARRAY or da.ndim != 1 or db.ndim != 1 \
                    or da.dtype != db.dtype or a.weak != b.weak:
                return None
            a, b, weak = da, db, a.weak
        else:
            return None
        if mask is None:
            mask = _mask_of(cond)
        out.append(Batched(np.where(mask, a, b), weak))
    return tuple(out)


def raise_all_lanes(exc):
    """`raise exc` in straight-line code: every lane of the call raises it; that is only some
    examples of the batch when the call was made under a varying condition."""
    if isinstance(exc, type):
        exc = exc()
    frame = STATE.frame
    if frame is None:
        exc = _own_exception(exc, None, 0)
    else:
        exc = _own_exception(exc, frame, STATE.lanes if STATE.lanes is not None else frame.n)
    if not STATE.partial or frame is None:
        raise exc
    lanes = STATE.lanes if STATE.lanes is not None else np.arange(frame.n)
    which = frame.batch_indices(lanes)
    filename, lineno = user_frame(2)
    raise LaneError(f"{type(exc).__name__}{': ' + str(exc) if str(exc) else ''} (raised in "
                    f"examples {which} of the batch only)", which, filename, lineno) from exc


def _own_exception(exc, frame, lanes):
    """`exc` with the message of the first example that raises it, when it was built from
    per-example values (an f-string of a varying value): `lanes` are the raising group's lanes
    of `frame` (or their count)."""
    from .formatting import example_exception
    from .lanes import is_varying
    if not any(is_varying(a) for a in getattr(exc, "args", ())):
        return exc
    local = np.arange(lanes) if isinstance(lanes, int) else np.asarray(lanes)
    if frame is None or not len(local):
        return example_exception(exc, 0)
    first = min(range(len(local)), key=lambda p: frame.batch_indices(local[p:p + 1])[0])
    return example_exception(exc, first)


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
        self.recursion = None              # a Recursion once a recursive call started lanes
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

    def branch(self, cond, lanes, n, t_block, t_env, f_block, f_env, t_back=False, f_back=False,
               empty=None):
        """Send the group to `t_block` where `cond` holds and to `f_block` elsewhere (an empty
        group to `empty` when given: the side without recursive calls)."""
        if type(cond) is not Batched:
            if cond:
                (self.jump_back if t_back else self.jump)(t_block, lanes, n, t_env)
            else:
                (self.jump_back if f_back else self.jump)(f_block, lanes, n, f_env)
            return
        mask = _mask_of(cond)
        k = _count_nonzero(mask) if n else 0
        if n and k == n:
            (self.jump_back if t_back else self.jump)(t_block, lanes, n, t_env)
        elif k == 0:
            if n == 0 and empty is not None:
                self.jump(empty, lanes, 0, t_env if empty == t_block else f_env)
            elif n == 0 and t_block > f_block:
                # An empty group still runs (to give results their structure) but must never
                # take a back edge: the higher-numbered target always leads forward.
                self.jump(t_block, lanes, 0, t_env)
            else:
                (self.jump_back if f_back else self.jump)(f_block, lanes, n, f_env)
        else:
            t_idx = mask.nonzero()[0]            # (the methods: numpy's functions wrap them)
            f_idx = (~mask).nonzero()[0]
            t_lanes = t_idx if lanes is None else lanes[t_idx]
            f_lanes = f_idx if lanes is None else lanes[f_idx]
            (self.back if t_back else self.fwd).setdefault(t_block, []).append(
                (t_lanes, k, take_env(t_env, t_idx)))
            (self.back if f_back else self.fwd).setdefault(f_block, []).append(
                (f_lanes, n - k, take_env(f_env, f_idx)))

    def ret(self, lanes, n, value):
        rec = self.recursion
        if rec is None:
            self.returns.append((lanes, n, value))
            return
        # own lanes and callee lanes alike: `result` gathers the own lanes from the chunks
        rec.returned(np.arange(n) if lanes is None else lanes, n, value)

    # --- recursion scheduled by height (frontend/recursion.py) ---------------------------------
    def recurse(self, cont, lanes, n, funcs, args, kwargs, env, spec, globals_):
        """Calls of the function to itself from the running group: the callee lanes join this
        frame at the entry block and the group waits at block `cont` for their results. Calls
        of any other function run now (as ordinary batched calls) and the group goes on."""
        code, entry, entry_args = spec
        if n == 0 or any(kwargs) or not all(type(f) is FunctionType and f.__code__ is code
                                            and f.__globals__ is globals_ for f in funcs):
            from .calls import call, call_fused
            if len(funcs) > 1:                  # (a fused group of calls)
                results = call_fused(funcs, args, kwargs)
            else:
                results = (call(funcs[0], *args[0], **kwargs[0]),)
            if self.sums and n:
                results = tuple(record_sums_of(self, r, lanes, n) for r in results)
            self.jump(cont, lanes, n, env + tuple(results))
            return
        rec = self.recursion
        if rec is None:
            rec = self.recursion = Recursion(self.n)
        m = len(funcs)
        if m > 1:
            STATS.record_fused(m)
        ids = np.arange(self.n) if lanes is None else lanes
        callees = rec.start(ids, m)
        limit = STATE.max_depth if STATE.max_depth is not None else sys.getrecursionlimit()
        deep = rec.too_deep(callees, limit)
        if len(deep):
            which = self.batch_indices(deep)
            filename, lineno = user_frame(2)
            raise LaneError(f"RecursionError: maximum recursion depth ({limit} calls) exceeded (in "
                            f"examples {which} of the batch)", which, filename, lineno,
                            "The recursion does not end for these examples (a cycle in a tree?). "
                            "The limit is spmd(..., max_depth=N), by default sys.getrecursionlimit().")
        # (one call: the callee lanes get their own copies of the caller's varying objects,
        # since one object in two groups of the frame would read as uniform)
        if m > 1:
            merged = []
            first_args = args[0]
            for i, value in enumerate(first_args):
                same = True
                for a in args:
                    if a[i] is not value:
                        same = False
                        break
                merged.append(repeat_lanes(value, m, n) if same else
                              merge([a[i] for a in args], [n] * m, f"argument {i}", disjoint=False))
        else:
            merged = [fresh(a) for a in args[0]]
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
        """Record the term ``fn(*args, **kwargs)``, to be called when the batched call ends
        (called now instead when `fn` might have side effects: `sums.may_defer`)."""
        if not n:
            return
        if may_defer(fn):
            self.stash.setdefault(position, []).append((lanes, n, None, (fn, args, kwargs)))
        else:
            from .calls import call
            self.accumulate(position, lanes, n, call(fn, *args, **kwargs))

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
                # (loops of two activations of a recursive function, say): run the groups that
                # merge with the first one now, the others after them
                cluster, rest = [groups[0]], []
                for g in groups[1:]:
                    try:
                        self._merge(block, cluster + [g])
                        cluster.append(g)
                    except UnmergeableGroups:
                        rest.append(g)
                lanes, n, env = cluster[0] if len(cluster) == 1 else self._merge(block, cluster)
                fwd.setdefault(block, []).extend(rest)
        # (a permutation of all lanes is complete; once callee lanes joined, no group is)
        STATE.partial = self.base_partial or n != self.n or self.recursion is not None
        STATE.lanes = lanes
        return block, lanes, n, env

    def _ready_block(self):
        fwd, back = self.fwd, self.back
        first = min(back)
        if fwd:
            ahead = min(fwd)
            if ahead <= first:
                return ahead
        else:
            ahead = None
        if len(back) == 1 and (ahead is None or ahead > self.loop_end[first]):
            return first       # (the common case: one loop's header, its exits waiting beyond)
        candidates = sorted(set(fwd) | set(back))
        for i, block in enumerate(candidates):
            if block in self.fwd:
                return block
            # only back-edge groups wait here: run the header once its loop body has drained
            if i + 1 == len(candidates) or candidates[i + 1] > self.loop_end[block]:
                return block
        raise AssertionError("scheduler found no runnable block")

    def _merge(self, block, groups):
        counts = [g[1] for g in groups]
        lanes = np.concatenate([np.arange(g[1]) if g[0] is None else g[0] for g in groups], axis=0)
        env = merge_envs([g[2] for g in groups], counts, self.names[block] if self.names else None)
        return lanes, sum(counts), env

    # --- results ------------------------------------------------------------------------------
    def result(self):
        """The returned value of every lane, in the call's lane order."""
        value = self._returned()
        if self.sums:
            items = list(value)
            for p in self.sums:
                items[p] = total(self, p)
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
        if not np.count_nonzero(lanes[1:] < lanes[:-1]):
            return value                   # (already in lane order)
        return take(value, lanes.argsort(kind="stable"), {})

    def raise_in_lanes(self, exc, lanes, n):
        """Raise `exc` for the running group: as a LaneError naming the examples (batch
        indices of the outermost @spmd call) when only some examples raise it."""
        if isinstance(exc, type):
            exc = exc()
        exc = _own_exception(exc, self, np.arange(n) if lanes is None else lanes)
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


def _examples_of_lanes(local):
    """Batch indices of the running group's lanes at positions `local` (for runtime errors)."""
    local = np.asarray(local, dtype=np.intp).reshape(-1)
    frame = STATE.frame
    if frame is None:
        return sorted({int(i) for i in local})
    lanes = STATE.lanes
    return frame.batch_indices(local if lanes is None else np.asarray(lanes)[local])


set_lane_namer(_examples_of_lanes)

from .sums import may_defer, record_sums_of, total  # noqa: E402  (sums reads STATE, defined above)
