"""Several ranks in one process: a communicator whose ranks are threads.

`run_ranks(n, fn)` calls ``fn(comm)`` on n threads, each with its own `ThreadComm`, and
returns their results in rank order (or re-raises, per rank, what they raised). The
collectives follow the semantics of MPI's (sums added in rank order), so
`spmdbatch.distributed` runs its multi-rank code paths without MPI. A rank that waits
for the others longer than the timeout raises (a hang becomes a test failure).
"""
from __future__ import annotations

import threading

import numpy as np


class _Group:
    def __init__(self, n, timeout):
        self.n = n
        self.barrier = threading.Barrier(n, timeout=timeout)
        self.slots = [None] * n
        self.calls = []             # (rank, collective name), for tests that check the path taken
        self.lock = threading.Lock()


class ThreadComm:
    def __init__(self, group, rank):
        self.group, self.rank, self.size = group, rank, group.n
        self.name = f"{group.n} threads"

    def _exchange(self, name, value):
        g = self.group
        with g.lock:
            g.calls.append((self.rank, name))
        g.slots[self.rank] = value
        g.barrier.wait()
        out = list(g.slots)
        g.barrier.wait()
        return out

    def allgather_object(self, obj):
        return self._exchange("allgather_object", obj)

    def allreduce_(self, buf, op):
        parts = self._exchange("allreduce_" + op, buf.copy())
        total = parts[0].copy()
        for p in parts[1:]:
            total = total + p if op == "sum" else np.maximum(total, p)
        buf[...] = total

    def allgatherv(self, buf, counts):
        parts = self._exchange("allgatherv", np.array(buf, copy=True))
        for r, (p, c) in enumerate(zip(parts, counts)):
            assert p.ndim == 1 and len(p) == c, (r, p.shape, c)
        return np.concatenate(parts)

    def bcast_(self, buf, root):
        buf[...] = self._exchange("bcast", buf.copy())[root]

    def barrier(self):
        self._exchange("barrier", None)

    def abort(self, code=1):
        raise SystemExit(code)


class RankErrors(Exception):
    """What each rank raised: `errors[rank]` (None for a rank that returned)."""

    def __init__(self, errors):
        self.errors = errors
        super().__init__("; ".join(f"rank {r}: {type(e).__name__}: {e}" for r, e in enumerate(errors) if e))


def run_ranks(n, fn, timeout=60.0, group=None):
    """[fn(comm of rank 0), ..., fn(comm of rank n-1)], run on n threads."""
    group = group or _Group(n, timeout)
    results, errors = [None] * n, [None] * n

    def target(r):
        try:
            results[r] = fn(ThreadComm(group, r))
        except BaseException as exc:   # noqa: BLE001  (reported per rank)
            errors[r] = exc             # (the others, if waiting, time out at the barrier)

    threads = [threading.Thread(target=target, args=(r,), daemon=True) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)
    if any(t.is_alive() for t in threads):
        raise TimeoutError("a rank is still running: the collectives hang")
    if any(e is not None for e in errors):
        raise RankErrors(errors)
    return results


def new_group(n, timeout=60.0):
    return _Group(n, timeout)
