"""Communicators: the processes of a data-parallel job and the few collectives it needs.

`init()` picks the communicator once per process:

- under an MPI launcher (``mpiexec -n N python ...``) with `mpi4py` installed
  (``pip install -e ".[distributed]"`` installs it with the `mpich` wheel): `MPIComm` over
  ``MPI.COMM_WORLD``;
- otherwise: `SelfComm`, a job of one process, where every collective is the identity.

A process started by a launcher for several processes without `mpi4py` would train alone
and write the same files as its siblings, so `init` refuses that with `DistributedError`.

With `MPIComm`, an exception that reaches the top of a rank (``sys.excepthook``) prints its
traceback and aborts the whole job (``MPI_Abort``), so the other ranks stop instead of
waiting forever in their next collective.

The collectives take and fill contiguous numpy buffers; `collectives.py` builds pytree
operations on them. Any object with these methods (see `SelfComm`) can stand in for a
communicator (the tests run several ranks as threads that way).
"""
from __future__ import annotations

import os
import sys

import numpy as np


class DistributedError(RuntimeError):
    """Ranks disagree (different gradient trees, shapes or dtypes) or the job is set up wrongly.
    Raised on every rank alike, never on one rank only (which would leave the others waiting)."""


class SelfComm:
    """A job of one process: every collective returns its own input."""

    rank = 0
    size = 1
    name = "single process"

    def allgather_object(self, obj):
        """[obj of rank 0, obj of rank 1, ...]: small picklable objects."""
        return [obj]

    def allreduce_(self, buf: np.ndarray, op: str) -> None:
        """In place: `buf` becomes the element-wise ``op`` ('sum' or 'max') over ranks."""

    def allgatherv(self, buf: np.ndarray, counts: list[int]) -> np.ndarray:
        """The concatenation, in rank order, of every rank's 1-d `buf` (rank r sends counts[r])."""
        return buf.copy()

    def bcast_(self, buf: np.ndarray, root: int) -> None:
        """In place: `buf` becomes root's `buf`."""

    def barrier(self) -> None:
        pass

    def abort(self, code: int = 1) -> None:
        raise SystemExit(code)


class MPIComm:
    """The processes of an MPI communicator (mpi4py)."""

    def __init__(self, comm, mpi):
        self.comm = comm
        self.mpi = mpi
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.name = f"MPI ({mpi.Get_library_version().splitlines()[0].strip()})"
        self._ops = {"sum": mpi.SUM, "max": mpi.MAX}

    def allgather_object(self, obj):
        return self.comm.allgather(obj)

    def allreduce_(self, buf, op):
        self.comm.Allreduce(self.mpi.IN_PLACE, buf, op=self._ops[op])

    def allgatherv(self, buf, counts):
        out = np.empty(sum(counts), dtype=buf.dtype)
        self.comm.Allgatherv(np.ascontiguousarray(buf), [out, list(counts)])
        return out

    def bcast_(self, buf, root):
        self.comm.Bcast(buf, root=root)

    def barrier(self):
        self.comm.Barrier()

    def abort(self, code=1):
        self.comm.Abort(code)


_COMM = None

_LAUNCHER_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE",
                            "MV2_COMM_WORLD_SIZE")


def launched_size() -> int:
    """The number of processes an MPI launcher says this job has (1 when not launched)."""
    for name in _LAUNCHER_SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def init(backend: str = "auto"):
    """The communicator of this process, created on the first call (later calls return it).

    `backend`: ``"auto"`` (MPI when `mpi4py` imports, else a single process), ``"mpi"``
    (MPI or an error), ``"self"`` (a single process even under a launcher)."""
    global _COMM
    if _COMM is not None:
        if backend == "mpi" and not isinstance(_COMM, MPIComm):
            raise DistributedError("init(backend='mpi') after the job was set up as a single process")
        return _COMM
    if backend not in ("auto", "mpi", "self"):
        raise ValueError(f"unknown backend {backend!r}: use 'auto', 'mpi' or 'self'")
    if backend == "self":
        _COMM = SelfComm()
        return _COMM
    try:
        from mpi4py import MPI  # noqa: PLC0415  (lazy: MPI starts only when asked for)
    except ImportError as exc:
        n = launched_size()
        if backend == "mpi" or n > 1:
            raise DistributedError(
                f"{'an MPI launcher started ' + str(n) + ' processes' if n > 1 else 'MPI was requested'} "
                f"but mpi4py cannot be imported ({exc}): install it with "
                f"pip install -e \".[distributed]\" (mpi4py and the mpich wheel)") from None
        _COMM = SelfComm()
        return _COMM
    _COMM = MPIComm(MPI.COMM_WORLD, MPI)
    if _COMM.size > 1:
        _install_abort_hook(_COMM)
    return _COMM


def get_comm():
    """The communicator (`init()` on first use)."""
    return _COMM if _COMM is not None else init()


def rank() -> int:
    """This process's index in the job, 0 .. size() - 1."""
    return get_comm().rank


def size() -> int:
    """The number of processes in the job."""
    return get_comm().size


def _install_abort_hook(comm) -> None:
    previous = sys.excepthook

    def abort_all(exc_type, exc, tb):
        try:
            previous(exc_type, exc, tb)
            sys.stderr.write(f"spmdbatch.distributed: rank {comm.rank} of {comm.size} raised "
                             f"{exc_type.__name__}; aborting every rank\n")
            sys.stderr.flush()
            sys.stdout.flush()
        finally:
            comm.abort(1)

    sys.excepthook = abort_all
