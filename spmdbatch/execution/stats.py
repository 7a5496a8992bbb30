"""Counting the schedule of batch programs: `spmdbatch.stats()`.

    with spmdbatch.stats() as s:
        spmd(encode)(...)
    s.calls_by_function["encode"]   # batched calls made to encode
    s.lanes["encode"]               # lanes of each of those calls
    s.skipped_lanes                 # lanes left out of calls by compaction
    print(s)                        # a table

A batched call is one run of a function's batch program (the outermost @spmd call
included). A call made by a group that is not every lane of the calling batch leaves the
other lanes out: they are counted in `skipped_lanes`. A `stats()` block counts the calls
made by its own thread only.
"""
from __future__ import annotations

import threading
from collections import defaultdict

from .lanes import lane_count
from .state import STATE


class Stats:
    """Counters of one `stats()` block."""

    def __init__(self):
        self.lanes: dict = defaultdict(list)
        self.skipped_lanes = 0
        self.fused_calls = 0

    @property
    def calls_by_function(self) -> dict:
        return {name: len(v) for name, v in self.lanes.items()}

    @property
    def calls(self) -> int:
        return sum(len(v) for v in self.lanes.values())

    def __repr__(self):
        rows = ["function | batched calls | lanes (total) | lanes per call (min/mean/max)",
                "--- | --- | --- | ---"]
        for name, lanes in sorted(self.lanes.items()):
            rows.append(f"{name} | {len(lanes)} | {sum(lanes)} | {min(lanes)}/"
                        f"{sum(lanes) / len(lanes):.1f}/{max(lanes)}")
        rows.append(f"fused calls: {self.fused_calls}; lanes skipped by compaction: {self.skipped_lanes}")
        return "\n".join(rows)


class _Recorder(threading.local):
    """The active counters of this thread (None when no `stats()` block is open in it)."""

    active = None

    def record_call(self, name, lanes, skipped):
        s = self.active
        if s is not None:
            s.lanes[name].append(lanes)
            s.skipped_lanes += skipped

    def record_fused(self, count):
        if self.active is not None:
            self.active.fused_calls += 1


STATS = _Recorder()


class stats:  # noqa: N801  (used as a function / context manager)
    """Context manager collecting batched-call statistics; yields a `Stats`."""

    def __enter__(self) -> Stats:
        self.previous = STATS.active
        STATS.active = Stats()
        return STATS.active

    def __exit__(self, *exc):
        STATS.active = self.previous
        return False


def count_running_call(function, n):
    """Count a batched call of `function` over `n` lanes made by the running group (the other
    lanes of the running frame are left out of it)."""
    frame = STATE.frame
    skipped = 0 if frame is None or STATE.lanes is None else max(0, frame.n - len(STATE.lanes))
    STATS.record_call(function, n, skipped)


def count_call(function, *args):
    """Count a straight-line batch program's call (generated code; when `stats()` is open)."""
    if STATS.active is not None:
        count_running_call(function, lane_count(*args))
