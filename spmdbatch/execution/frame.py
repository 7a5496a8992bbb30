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

The scheduler knows nothing of recursion or of sums; they plug in through two slots of a
frame (see `Frame`): `extension`, which runs lanes of its own besides the call's (recursion by
height, execution/recursion.py), and `finisher`, which turns the returned value into the
call's result (sums over a recursion, execution/sums.py).
"""
from __future__ import annotations

import copy

import numpy as np

from ..ad.tracer import untraced
from ..errors import UnmergeableGroups, UnsupportedConstruct
from ..runtime import views
from ..runtime.blame import user_frame
from ..runtime.batched import Batched
from .lanes import HELPER_RETURN_VALUE, RETURN_VALUE, merge, merge_envs, take, take_env
from .state import STATE
from .stats import STATS, count_running_call

try:            # numpy's C function (np.count_nonzero wraps it in Python: 4x the cost on lane masks)
    from numpy._core._multiarray_umath import count_nonzero as _count_nonzero
except ImportError:     # pragma: no cover  (numpy < 2)
    _count_nonzero = np.count_nonzero
_NDARRAY = np.ndarray
_VIEWS = views.RECORDS
_BOOL = np.dtype(bool)


def _mask_of(cond: Batched):
    """The raw boolean lane mask of a varying condition."""
    data = cond.data
    if type(data) is _NDARRAY and data.dtype is _BOOL and data.ndim == 1:
        return data                      # (the common case: a comparison of lane vectors)
    data = untraced(data)  # tracer -> raw (truth values carry no gradient)
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
    lane vector of Python numbers (weak) or of the number's own dtype (int64, float64); (None,
    None, None) otherwise (`lanes._check_one_dtype`: such groups do not merge)."""
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
        # (a Python number in some examples and numpy data of another dtype in others do not
        # merge: lanes._check_one_dtype)
        if data.dtype != (_FLOAT64 if kind is float else _INT64):
            return None, None, None
        number = np.asarray(number, dtype=data.dtype)
    return (number, data, weak) if number_first else (data, number, weak)


_FLOAT64, _INT64 = np.dtype(np.float64), np.dtype(np.int64)


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


_NATIVE_ITERATORS = tuple(type(it) for it in (iter(range(0)), iter([]), iter(()), iter(""),
                                               iter({}), iter({}.values()), iter({}.items()),
                                               iter(b""), reversed([]), reversed(range(0))))
"""Iterators that `copy.copy` copies at their position (over the same sequence)."""


def _copy_iterator(it):
    """A copy of a native iterator at its position, or None where it cannot be copied
    (`enumerate` and `zip` copy their inner iterators: `copy.copy` would share them)."""
    kind = type(it)
    if kind in _NATIVE_ITERATORS:
        return copy.copy(it)
    if kind is enumerate or kind is zip:
        reduced = it.__reduce__()
        inner = [_copy_iterator(i) for i in reduced[1][:-1 if kind is enumerate else None]]
        if any(i is None for i in inner):
            return None
        if kind is enumerate:
            return enumerate(inner[0], reduced[1][-1])
        return zip(*inner, strict=bool(reduced[2])) if len(reduced) > 2 else zip(*inner)
    return None


def _own_iterators(env, rest):
    """The groups `rest`, which wait while the group of `env` runs on apart from them (they do
    not merge), with their own copies of the native iterators of uniform `for` loops (a Python
    iterator over a uniform range or list) that they share with `env`: otherwise the first
    group's next iterations would advance the others' loop too. A shared iterator that cannot
    be copied (a generator) is refused."""
    shared = {id(v): v for v in env if hasattr(v, "__next__") and not hasattr(v, "_spmd_take_lanes")}
    if not shared:
        return rest
    copies: dict = {}
    out = []
    for lanes, n, group_env in rest:
        new_env = []
        for v in group_env:
            if id(v) in shared and v is shared[id(v)]:
                c = copies.get(id(v))
                if c is None:
                    c = copies[id(v)] = _copy_iterator(v)
                    if c is None:
                        filename, lineno = user_frame()
                        raise UnsupportedConstruct(
                            f"lanes of a loop over a {type(v).__name__} must run apart here (a value "
                            f"has different types in different examples), but the iterator cannot "
                            f"be copied for each of them", filename, lineno,
                            hint="Loop over a list or range, or give the value one type (dtype) "
                                 "on every path.")
                v = c
            new_env.append(v)
        out.append((lanes, n, tuple(new_env)))
    return out


class Frame:
    """Waiting lane groups of one batched call (see module docstring).

    Lanes ``0..n-1`` are the call's own. Two slots let other modules extend a frame:

    - `extension`: None, or an object that runs more lanes in this frame (recursion by
      height: `recursion.Recursion`). The scheduler then hands it every returning group
      (``returned(lanes, n, value)``); when no group waits and ``parked`` is true, takes the
      groups that ``resume()`` gives (``(block, lanes, n, env)``); gets the call's result from
      ``result(returns)``; and maps any lane to the own lane it serves by ``origin[lane]``.
    - `finisher`: None, or an object whose ``finish(frame, value)`` gives the call's result
      from the returned value (the totals of sums over a recursion: `sums.Sums`).
    """

    __slots__ = ("loop_end", "names", "fwd", "back", "returns", "n", "base_partial", "parent",
                 "parent_lanes", "extension", "finisher", "top", "function")

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
        self.extension = None              # (see the class docstring)
        self.finisher = None
        self.top = STATE.calls <= 1        # the @spmd function's own call (not a helper's)
        self.function = function
        if STATS.active is not None:
            count_running_call(function, n)
        STATE.frame = self

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
            (self.jump_back if t_back else self.jump)(t_block, t_lanes, k, take_env(t_env, t_idx))
            (self.jump_back if f_back else self.jump)(f_block, f_lanes, n - k, take_env(f_env, f_idx))

    def ret(self, lanes, n, value):
        if _VIEWS.stale:
            views.check_results((value,))   # (the loop's result would show an in-place update)
        ext = self.extension
        if ext is None:
            self.returns.append((lanes, n, value))
            return
        # own lanes and extension lanes alike: its `result` picks the own lanes
        ext.returned(np.arange(n) if lanes is None else lanes, n, value)

    # --- choosing the next block ----------------------------------------------------------------
    def pop(self):
        """The next ``(block, lanes, n, env)`` to run, or ``(-1, None, 0, None)`` when done."""
        fwd, back = self.fwd, self.back
        if not fwd and not back and self.extension is not None and self.extension.parked:
            for block, lanes, n, env in self.extension.resume():
                self.jump(block, lanes, n, env)
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
                fwd.setdefault(block, []).extend(_own_iterators(env, rest))
        # (a permutation of all lanes is complete; once an extension runs lanes, no group is)
        STATE.partial = self.base_partial or n != self.n or self.extension is not None
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
        lanes = np.concatenate([np.arange(g[1]) if g[0] is None else g[0] for g in groups])
        env = merge_envs([g[2] for g in groups], counts, self.names[block] if self.names else None)
        return lanes, sum(counts), env

    # --- results ------------------------------------------------------------------------------
    def result(self):
        """The returned value of every lane, in the call's lane order."""
        value = self._returned()
        if self.finisher is not None:
            return self.finisher.finish(self, value)
        return value

    def _returned(self):
        returns = self.returns
        if self.extension is not None:
            return self.extension.result(returns)
        if len(returns) == 1 and returns[0][0] is None:
            return returns[0][2]
        if not returns:
            raise AssertionError("batched call finished without a return")
        counts = [r[1] for r in returns]
        # The batch's result promotes the examples' dtypes, as stacking the loop's results
        # does; a helper's result is used on by its caller, where each example of the loop
        # computes with its own dtype: returns of different dtypes are refused there
        # (`lanes._check_one_dtype`).
        value = merge([r[2] for r in returns], counts,
                      RETURN_VALUE if self.top else f"{HELPER_RETURN_VALUE} ({self.function})")
        lanes = np.concatenate([np.arange(r[1]) if r[0] is None else r[0] for r in returns])
        if not np.count_nonzero(lanes[1:] < lanes[:-1]):
            return value                   # (already in lane order)
        return take(value, lanes.argsort(kind="stable"), {})

    def batch_indices(self, local):
        """Positions in the outermost batch of this frame's lanes `local`."""
        idx = np.asarray(local)
        frame = self
        while frame is not None:
            if frame.extension is not None:
                idx = frame.extension.origin[idx]
            if frame.parent_lanes is not None:
                idx = frame.parent_lanes[idx]
            frame = frame.parent
        return sorted({int(i) for i in np.asarray(idx).reshape(-1)})
