"""A few data-parallel training steps, run by test_mpi.py under ``mpiexec -n N`` (and in the
test process as one process, the reference).

    python tests/distributed/mpi_worker.py MODE OUT_DIR

MODE: 'dense' (an MLP, Adam with gradient clipping, loss summed over examples, op 'sum'),
'mean' (the same with the loss averaged over equal shards, op 'mean'), 'sparse' (the
Tree-LSTM with Adagrad: the embedding table's gradient is row-sparse; uneven shards, one
rank empty at the last step), 'raise' (rank 1 raises at its second step while the others
wait in the all-reduce). Each rank writes OUT_DIR/rank{r}.npz with its parameters.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import spmdbatch as sb  # noqa: E402
from spmdbatch import distributed as dist  # noqa: E402
from spmdbatch import nn  # noqa: E402


def _mlp_loss(model, x, y):
    return nn.softmax_cross_entropy(model(x), y)


def run_dense(comm, mode):
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(48, 5)).astype(np.float32)
    ys = rng.integers(0, 3, size=48)
    model = nn.Chain(nn.Linear(5, 16, "tanh", rng=comm.rank + 7), nn.Linear(16, 3, rng=comm.rank + 8))
    model = dist.broadcast(model, root=0, comm=comm)   # rank 0's initial parameters everywhere
    opt = nn.Adam(1e-2, clip_norm=5.0, weight_decay=1e-3)
    state = opt.init(model)
    batched = sb.spmd(_mlp_loss, in_axes=(None, 0, 0))
    reduce = (lambda v: v.sum()) if mode == "dense" else (lambda v: v.mean())
    loss_and_grad = sb.value_and_grad(lambda m, x, y: reduce(batched(m, x, y)))
    for step in range(4):
        idx = np.arange(step * 12, (step + 1) * 12)
        x, y = dist.shard(xs[idx], ys[idx], comm=comm)
        loss, grads = loss_and_grad(model, x, y)
        model, state, _ = dist.data_parallel_step(opt, model, grads, state, metrics=float(loss),
                                                  op="sum" if mode == "dense" else "mean", comm=comm)
    return model


def run_sparse(comm, fail=False):
    from examples.treelstm import data as sst
    from examples.treelstm import model as M
    vocab, trees = sst.synthetic_treebank(40, seed=3, num_classes=5)
    model = dist.broadcast(M.TreeLSTM(len(vocab), 5, 12, 8, 0.5, rng=comm.rank + 1), comm=comm)
    opt = nn.Adagrad(lr=0.05, weight_decay=1e-4, groups={"embed": {"lr": 0.1, "weight_decay": 0.0}})
    state = opt.init(model)
    loss_and_grad = sb.value_and_grad(M.minibatch_loss, sparse=True)
    start = 0
    for step, size in enumerate([12, 8, 7, 1]):
        idx = np.arange(start, start + size)
        start += size
        if fail and comm.rank == 1 and step == 1:
            raise ValueError("boom on rank 1 at step 1")
        mine = dist.shard(idx, comm=comm)
        grads, loss = None, 0.0
        if len(mine):
            loss, grads = loss_and_grad(model, [trees[i] for i in mine], mine)
        model, state, _ = dist.data_parallel_step(opt, model, grads, state, metrics=float(loss),
                                                  donate=True, comm=comm)
    return model


def run(mode, comm):
    if mode in ("dense", "mean"):
        return run_dense(comm, mode)
    return run_sparse(comm, fail=mode == "raise")


def main(mode, out):
    comm = dist.init("mpi")
    model = run(mode, comm)
    np.savez(Path(out) / f"rank{comm.rank}.npz", size=comm.size,
             **{name: np.asarray(leaf) for name, leaf in nn.named_leaves(model)})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
