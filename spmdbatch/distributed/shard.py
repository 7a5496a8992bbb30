"""The sharder: each rank's slice of a global minibatch.

A global minibatch of n examples is cut into `size` contiguous blocks, rank r taking
``[r * n // size, (r + 1) * n // size)``: blocks differ by at most one example, and with
a global batch of (per-rank batch) x size every rank gets exactly its per-rank batch. A
minibatch smaller than the number of ranks leaves some ranks empty (they contribute no
gradient: `data_parallel_step(..., grads=None)`).
"""
from __future__ import annotations

from .comm import get_comm


def shard_slice(n: int, *, comm=None) -> slice:
    """This rank's slice of a global minibatch of `n` examples."""
    if n < 0:
        raise ValueError(f"a minibatch has a non-negative number of examples, not {n}")
    comm = comm or get_comm()
    return slice(comm.rank * n // comm.size, (comm.rank + 1) * n // comm.size)


def shard(*batches, comm=None):
    """This rank's slice of each of `batches` (lists, arrays: anything sliceable along its
    first axis, all of the same length): ``trees, keys = shard(trees, keys)``; one batch
    gives one slice."""
    if not batches:
        raise TypeError("shard() needs at least one minibatch")
    lengths = {len(b) for b in batches}
    if len(lengths) != 1:
        raise ValueError(f"shard() got minibatches of different lengths {sorted(len(b) for b in batches)}: "
                         f"pass aligned examples, labels and keys")
    part = shard_slice(lengths.pop(), comm=comm)
    out = tuple(b[part] for b in batches)
    return out[0] if len(out) == 1 else out
