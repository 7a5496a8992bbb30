"""The running batch program of each thread: its innermost frame and the running group.

Generated code, batched calls, lists and errors read this instead of being handed the frame,
so the modules that need it (lane lists, calls, the scheduler) depend on this small module
only. Threads run batch programs independently, so the state is thread-local.
"""
from __future__ import annotations

import threading

import numpy as np

from ..runtime.blame import set_lane_namer


class _State(threading.local):
    partial = False   # True while the running group is not every lane of the top-level batch
    frame = None      # the innermost running Frame (execution/frame.py)
    lanes = None      # the running group's lanes in that frame (None: all, in order)
    max_depth = None  # limit of recursive calls per example (None: sys.getrecursionlimit())
    calls = 0         # batch programs running in this batch level (1: the @spmd function's own)


STATE = _State()


def running_lane_count() -> int:
    """The number of lanes of the running group (1 outside a batch program)."""
    frame = STATE.frame
    if frame is None:
        return 1
    return frame.n if STATE.lanes is None else len(STATE.lanes)


def running_examples(local):
    """Batch indices (of the outermost @spmd call) of the running group's lanes at positions
    `local`, sorted and without repeats."""
    local = np.asarray(local, dtype=np.intp).reshape(-1)
    frame = STATE.frame
    if frame is None:
        return sorted({int(i) for i in local})
    lanes = STATE.lanes
    return frame.batch_indices(local if lanes is None else np.asarray(lanes)[local])


set_lane_namer(running_examples)    # (runtime errors name examples through this)
