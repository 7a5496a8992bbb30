"""One data-parallel training step: all-reduce the gradients, then the same optimiser step
on every rank.

    loss, grads = loss_and_grad(params, *shard(batch, keys))
    params, state, (loss, count) = data_parallel_step(opt, params, grads, state,
                                                      metrics=(float(loss), count), donate=True)

The gradients and `metrics` (any tree of numbers, e.g. the summed loss and the number of
examples, for logging) are reduced in one collective; every rank then holds the same
gradient, bit for bit (row-sparse rows are added in rank order on every rank; MPICH's
all-reduce of dense buffers gives every rank the same result), so the same optimiser step
keeps the replicas identical without exchanging parameters.

`op` follows the loss: ``'sum'`` when each rank's loss is the sum over its examples (the
total over ranks is then the loss of the global minibatch, whatever the split), ``'mean'``
when it is the mean over an equal-sized shard.
"""
from __future__ import annotations

from .collectives import allreduce, zeros_like_leaves
from .comm import get_comm


def data_parallel_step(optimizer, params, grads, state, *, metrics=None, op: str = "sum",
                       donate: bool = False, comm=None):
    """``(new params, new state, reduced metrics)`` after reducing `grads` over the ranks and
    taking one `optimizer` step with them. A rank with no examples in this minibatch passes
    ``grads=None`` (it contributes nothing, and still takes the step)."""
    comm = comm or get_comm()
    if grads is None:
        grads = zeros_like_leaves(params)
    grads, metrics = allreduce((grads, metrics), op, comm=comm)
    params, state = optimizer.update(params, grads, state, donate=donate)
    return params, state, metrics
