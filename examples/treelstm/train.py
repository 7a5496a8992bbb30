"""Train the Tree-LSTM on the Stanford Sentiment Treebank, in minibatches.

    python -m examples.treelstm.train --data ../shared/data/sst            # fine-grained
    python -m examples.treelstm.train --data ../shared/data/sst --binary   # binary
    python -m examples.treelstm.train --impl handbatched                   # compare

Without SST (no --data, no SPMDBATCH_SST_DIR, no ../shared/data/sst) it trains on a
synthetic treebank. Each epoch reports dev accuracy (root and all phrases), keeps the best
model (best.npz), and the run ends with the test accuracy of that model, a PNG of the
curves and a JSON log in --out.

Data-parallel on N processes: ``mpiexec -n N python -m examples.treelstm.train ...``
(``pip install -e ".[distributed]"``). --batch-size is then per process: every step
takes a global minibatch of N x --batch-size trees, each process computes the gradient of
its slice, and all take the same Adagrad step with the summed gradient
(`spmdbatch.distributed`). Rank 0 alone prints, shows progress and writes files.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import spmdbatch as sb
from spmdbatch import distributed as dist
from spmdbatch import nn

from . import data as sst
from . import handbatched
from . import model as M

IMPLEMENTATIONS = {
    "spmd": M.minibatch_loss,                      # the per-example model, batched with @spmd
    "handbatched": handbatched.minibatch_loss,     # nodes grouped by height by hand
    "per-example": M.per_example_loss,             # one tree at a time
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="SST directory with train/dev/test.txt "
                    "(default: $SPMDBATCH_SST_DIR or ../shared/data/sst; synthetic data if absent)")
    ap.add_argument("--synthetic", type=int, default=0, metavar="N",
                    help="train on N synthetic trees instead of SST")
    ap.add_argument("--binary", action="store_true", help="binary sentiment (neutral dropped)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=25)
    ap.add_argument("--hidden", type=int, default=150)
    ap.add_argument("--embedding", type=int, default=300)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--embed-lr", type=float, default=0.1, help="Adagrad rate of the embedding table")
    ap.add_argument("--weight-decay", type=float, default=1e-4,
                    help="L2 weight decay of the model's weights (not of the embedding table, whose "
                         "updates stay row-sparse)")
    ap.add_argument("--dropout", type=float, default=0.5)
    ap.add_argument("--impl", choices=sorted(IMPLEMENTATIONS), default="spmd")
    ap.add_argument("--backend", choices=["numpy", "cupy"], default="numpy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-train", type=int, default=0, help="use only the first N training trees")
    ap.add_argument("--max-eval", type=int, default=0, help="use only the first N dev/test trees")
    ap.add_argument("--out", default="runs/treelstm", help="checkpoint, log and plot folder")
    ap.add_argument("--no-progress", action="store_true")
    return ap.parse_args(argv)


def load_data(args):
    directory = args.data or (None if args.synthetic else sst.default_data_dir())
    if directory is None:
        n = args.synthetic or 3000
        print(f"no SST directory found: training on {n} synthetic trees "
              f"(get SST with examples.treelstm.data.download, or pass --data DIR)")
        vocab, trees = sst.synthetic_treebank(n + 1000, seed=args.seed,
                                              num_classes=2 if args.binary else 5)
        return vocab, trees[:n], trees[n:n + 500], trees[n + 500:], 2 if args.binary else 5
    corpus = sst.load_sst(directory, binary=args.binary)
    print(f"SST from {directory}: {len(corpus.train)} train, {len(corpus.dev)} dev, "
          f"{len(corpus.test)} test trees, vocabulary {len(corpus.vocab)}, {corpus.num_classes} classes")
    return corpus.vocab, corpus.train, corpus.dev, corpus.test, corpus.num_classes


def make_optimizer(args):
    """Adagrad; the embedding table has its own rate and no weight decay (row-sparse updates)."""
    return nn.Adagrad(lr=args.lr, weight_decay=args.weight_decay,
                      groups={"embed": {"lr": args.embed_lr, "weight_decay": 0.0}})


def evaluate(model, trees, batch_size=200):
    total, trees = len(trees), dist.shard(trees)   # each process its slice, then the sums
    loss = correct = count = root = 0
    for i in range(0, len(trees), batch_size):
        l, c, n, r = M.minibatch_metrics(model, trees[i:i + batch_size])
        loss, correct, count, root = loss + l, correct + c, count + n, root + r
    loss, correct, count, root = dist.allreduce((loss, correct, count, root), "sum")
    return {"loss": loss / max(count, 1), "phrase_acc": correct / max(count, 1),
            "root_acc": root / max(total, 1)}


def progress(iterable, total, enabled):
    if enabled:
        try:
            from tqdm import tqdm
            return tqdm(iterable, total=total, unit="batch", leave=False, mininterval=1.0)
        except ImportError:
            pass
    return iterable


def plot(log, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install -e '.[examples]')")
        return
    epochs = [e["epoch"] for e in log["epochs"]]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(epochs, [e["train_loss"] for e in log["epochs"]], label="train (per node)")
    a1.plot(epochs, [e["dev"]["loss"] for e in log["epochs"]], label="dev (per node)")
    a1.set_xlabel("epoch")
    a1.set_title("loss")
    a1.legend()
    a2.plot(epochs, [e["dev"]["root_acc"] for e in log["epochs"]], label="dev root")
    a2.plot(epochs, [e["dev"]["phrase_acc"] for e in log["epochs"]], label="dev all phrases")
    a2.set_xlabel("epoch")
    a2.set_title("accuracy")
    a2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    comm = dist.init()                  # MPI under mpiexec, else one process
    if comm.rank != 0:                  # rank 0 alone prints and writes
        sys.stdout = open(os.devnull, "w")
    out = Path(args.out)
    if comm.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    vocab, train, dev, test, classes = load_data(args)
    if args.max_train:
        train = train[:args.max_train]
    if args.max_eval:
        dev, test = dev[:args.max_eval], test[:args.max_eval]
    model = dist.broadcast(M.TreeLSTM(len(vocab), classes, args.embedding, args.hidden, args.dropout,
                                      rng=args.seed))
    if args.backend == "cupy":
        model = sb.to_device(model, "cupy")
        train, dev, test = (sb.to_device(t, "cupy") for t in (train, dev, test))
    opt = make_optimizer(args)
    state = opt.init(model)
    loss_and_grad = sb.value_and_grad(IMPLEMENTATIONS[args.impl], sparse=True)
    rng = np.random.default_rng(args.seed)
    log = {"config": vars(args), "processes": comm.size, "epochs": []}
    best = -1.0
    global_batch = args.batch_size * comm.size
    print(f"training {args.impl} Tree-LSTM ({args.hidden} hidden, {args.embedding} embedding) on "
          f"{len(train)} trees, batch {args.batch_size}, {args.epochs} epochs"
          + (f", {comm.size} processes (global batch {global_batch})" if comm.size > 1 else ""))
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(train))
        batches = [[train[i] for i in order[j:j + global_batch]]
                   for j in range(0, len(order), global_batch)]
        total_loss, total_nodes, t0 = 0.0, 0, time.perf_counter()
        bar = progress(batches, len(batches), not args.no_progress and comm.rank == 0)
        for b, batch in enumerate(bar):
            keys = (epoch * len(train) + order[b * global_batch:(b + 1) * global_batch]).astype(np.int64)
            batch, keys = dist.shard(batch, keys)     # this process's slice of the global batch
            loss, grads = loss_and_grad(model, batch, keys) if batch else (0.0, None)
            nodes = sum(int((t.label >= 0).sum()) for t in batch)
            model, state, (loss, nodes) = dist.data_parallel_step(  # summed gradients, same step
                opt, model, grads, state, metrics=(float(loss), nodes), donate=True)
            total_loss += loss
            total_nodes += nodes
            if hasattr(bar, "set_postfix") and b % 10 == 0:
                done = sum(len(x) for x in batches[:b + 1])
                bar.set_postfix(trees_per_s=f"{done / (time.perf_counter() - t0):.0f}",
                                loss=f"{total_loss / max(total_nodes, 1):.3f}")
        seconds = time.perf_counter() - t0
        dev_metrics = evaluate(model, dev)
        entry = {"epoch": epoch, "train_loss": total_loss / max(total_nodes, 1), "seconds": seconds,
                 "trees_per_s": len(train) / seconds, "dev": dev_metrics}
        log["epochs"].append(entry)
        improved = dev_metrics["root_acc"] > best
        if improved:
            best = dev_metrics["root_acc"]
            if comm.rank == 0:
                sb.to_device(model, "numpy").save(out / "best.npz")
        print(f"epoch {epoch:2d}  train loss {entry['train_loss']:.4f}  {entry['trees_per_s']:.0f} trees/s  "
              f"dev root {dev_metrics['root_acc']:.3f}  dev phrases {dev_metrics['phrase_acc']:.3f}"
              f"{'  (best, saved)' if improved else ''}", flush=True)
    best_model = M.TreeLSTM(len(vocab), classes, args.embedding, args.hidden, args.dropout)
    best_model = dist.broadcast(best_model.load(out / "best.npz") if comm.rank == 0 else best_model)
    if args.backend == "cupy":
        best_model = sb.to_device(best_model, "cupy")
    log["test"] = evaluate(best_model, test)
    log["best_dev_root_acc"] = best
    print(f"test of the best dev model: root {log['test']['root_acc']:.3f}  "
          f"phrases {log['test']['phrase_acc']:.3f}")
    if comm.rank == 0:
        with open(out / "log.json", "w") as fh:
            json.dump(log, fh, indent=2)
        plot(log, out / "curves.png")
    print(f"wrote {out / 'best.npz'}, {out / 'log.json'}, {out / 'curves.png'}")
    return log


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
