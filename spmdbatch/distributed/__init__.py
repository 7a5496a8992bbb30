"""spmdbatch.distributed: data-parallel training over processes and machines, with MPI.

    from spmdbatch import distributed as dist
    dist.init()                                    # MPI under mpiexec, else one process
    params = dist.broadcast(params)                # rank 0's initial parameters everywhere
    for batch, keys in global_minibatches:         # the same global minibatches on every rank
        local, local_keys = dist.shard(batch, keys)
        loss, grads = loss_and_grad(params, local, local_keys)
        params, state, loss = dist.data_parallel_step(opt, params, grads, state,
                                                      metrics=float(loss), donate=True)
    if dist.rank() == 0: ...                       # write checkpoints and logs once

Run it with ``mpiexec -n 4 python train.py``; ``pip install -e ".[distributed]"`` installs
mpi4py and the MPICH wheel. Without them (or without a launcher) every function works as a
job of one process. Modules: `comm` (communicators, `init`, aborting on errors),
`collectives` (`allreduce`, `broadcast` of pytrees, row-sparse gradients included),
`shard` (each rank's slice of a minibatch), `step` (`data_parallel_step`).
"""
from .collectives import NO_GRADIENT, allreduce, broadcast, zeros_like_leaves
from .comm import DistributedError, MPIComm, SelfComm, get_comm, init, launched_size, rank, size
from .shard import shard, shard_slice
from .step import data_parallel_step

__all__ = [
    "init", "rank", "size", "get_comm", "launched_size", "allreduce", "broadcast", "shard",
    "shard_slice", "data_parallel_step", "NO_GRADIENT", "zeros_like_leaves", "DistributedError",
    "SelfComm", "MPIComm",
]
