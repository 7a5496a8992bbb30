"""Parallel loops at run time: every iteration of a loop over a node's children at once.

frontend/child_loops.py gives a loop whose iterations are independent except for sums a
`ParallelFor` entry. `parallel_for` splits the running group's iterable into items: each
(lane, item) pair becomes an *iteration lane* of the frame (`Recursion.start_iterations`)
that runs one pass of the body from its first block, with the item as the loop variable,
every accumulator at 0 and the lane's other variables; the lane itself parks at the loop's
exit until all its iteration lanes ended (`end_iteration`), and resumes there with each
accumulator's value plus the sum of what its iterations added (`Recursion._loop_sums`).
Lanes with no items go to the exit at once. An iterable that cannot be split into per-lane
items of numbers (an iterator, a list of objects, a list the program built) makes
`parallel_for` return False: the loop then runs as written.
"""
from __future__ import annotations

import numpy as np

from ..ad.tracer import Tracer
from ..runtime import pytree
from ..runtime import segments as S
from ..runtime.segments import RowPlan
from ..runtime.batched import Batched
from ..runtime.mapped import LaneMapped
from ..runtime.ragged import Ragged
from .iterators import BatchedRange
from .lanes import is_varying, take
from .recursion import Recursion


def parallel_for(frame, lanes, n, iterable, cont, cont_env, sums, body, body_env, item_slot,
                 acc_slots):
    """Start the iteration lanes of the running group (module docstring); False when the
    iterable cannot be split (nothing was started)."""
    split = _items(iterable, n)
    if split is None:
        return False
    counts, items = split
    if not n or not all(_repeatable(v) for v in body_env):
        return False
    some = counts > 0
    k = int(np.count_nonzero(some))
    if k < n:
        none = (~some).nonzero()[0]
        frame.jump(cont, none if lanes is None else lanes[none], n - k, take(cont_env, none, {}))
        if not k:
            return True
    rec = frame.extension
    if rec is None:
        rec = frame.extension = Recursion(frame.n)
    ids = np.arange(n) if lanes is None else lanes
    sel = some.nonzero()[0]
    if k < n:
        ids, counts = ids[sel], counts[sel]
    owner = np.repeat(np.arange(k), counts)          # (position among the k parked lanes)
    iterations = rec.start_iterations(ids, counts)
    rows = sel[owner]                                 # (position in the running group)
    memo: dict = {}
    env = []
    plan = None
    for i, v in enumerate(body_env):
        if i == item_slot:
            env.append(items)
        elif i in acc_slots:
            env.append(0)
        else:
            if plan is None and _traced(v):
                plan = RowPlan(rows, None, n)
            env.append(_repeat(v, rows, memo, plan))
    frame.jump(body, iterations, len(iterations), tuple(env))
    rec.park(cont, ids, cont_env if k == n else take(cont_env, sel, {}), iterations, (owner, sums))
    return True


def _repeat(value, rows, memo, plan):
    """`value` at lanes `rows` of its group, where a row may repeat (every iteration lane of
    a lane gets its values): traced arrays through `gather_rows` (`plan`: of `rows`), whose
    gradient adds the repeated rows up (`take_lanes` is for rows without repeats)."""
    kind = type(value)
    if kind is Batched and type(value.data) is Tracer:
        return Batched(S.gather_rows(value.data, plan=plan), value.weak)
    if kind is tuple or kind is list:
        return kind(_repeat(v, rows, memo, plan) for v in value)
    return take(value, rows, memo)


def _traced(value) -> bool:
    kind = type(value)
    if kind is Batched:
        return type(value.data) is Tracer
    if kind is tuple or kind is list:
        return any(_traced(v) for v in value)
    return False


def _repeatable(value) -> bool:
    """Whether `_repeat` gives `value` the right gradient: no traced data in a container
    other than tuples and lists (their items are handled one by one)."""
    kind = type(value)
    if kind is Batched or kind is LaneMapped:
        return True                 # (lane-mapped data is raw: never traced)
    if kind is tuple or kind is list:
        return all(_repeatable(v) for v in value)
    if kind is Tracer or not is_varying(value):
        return True             # (a uniform value is shared, not taken)
    leaves, _ = pytree.flatten(value)
    return not any(type(leaf) is Tracer or (type(leaf) is Batched and type(leaf.data) is Tracer)
                   for leaf in leaves)


def end_iteration(frame, lanes, n, added):
    """Iteration lanes `lanes` ended their pass of the body: `added` holds the accumulators'
    values, which started at 0 (what this iteration added)."""
    if n:
        frame.extension.returned(lanes, n, added, loop=True)


def _items(iterable, n):
    """``(counts, items)``: the number of items of each of the `n` lanes and the items of all
    lanes in lane order (a `Batched` over the iteration lanes); None when the iterable
    cannot be split."""
    kind = type(iterable)
    if kind is LaneMapped:
        iterable = iterable.materialize()
        kind = type(iterable)
    if kind is range or kind is BatchedRange:
        start, stop, step = iterable.start, iterable.stop, iterable.step
        starts, stops = _ints(start, n), _ints(stop, n)
        if starts is None or stops is None or type(step) is not int:
            return None
        span = stops - starts if step > 0 else starts - stops
        counts = np.maximum(0, (span + abs(step) - 1) // abs(step))
        owner = np.repeat(np.arange(n), counts)
        within = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)
        return counts, Batched(starts[owner] + within * step, weak=True)
    if kind is Ragged:
        data = iterable.data
        if type(data) is not np.ndarray:
            return None
        lengths = np.asarray(iterable.lengths)
        mask = np.arange(data.shape[1])[None, :] < lengths[:, None]
        return lengths.astype(np.intp), Batched(data[mask])
    if kind is Batched:
        data = iterable.data
        if type(data) is not np.ndarray or data.ndim < 2:
            return None
        return np.full(n, data.shape[1], dtype=np.intp), Batched(data.reshape((-1,) + data.shape[2:]))
    if kind in (list, tuple) or kind is np.ndarray:
        try:
            values = np.asarray(iterable)
        except Exception:
            return None
        if values.dtype.kind not in "biuf" or values.ndim < 1:
            return None
        # (a Python number in each example is weak, as the loop's item would be)
        weak = kind is not np.ndarray and all(type(v) in (bool, int, float) for v in iterable)
        return np.full(n, len(values), dtype=np.intp), \
            Batched(np.tile(values, (n,) + (1,) * (values.ndim - 1)), weak=weak)
    return None


def _ints(value, n):
    """A range bound as an int array over the lanes (None: not an integer)."""
    if type(value) is Batched:
        data = value.data
        if type(data) is not np.ndarray or data.ndim != 1 or data.dtype.kind not in "iu":
            return None
        return data.astype(np.int64)
    if isinstance(value, (int, np.integer)):
        return np.full(n, int(value), dtype=np.int64)
    return None
