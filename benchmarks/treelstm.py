"""Tree-LSTM training throughput: @spmd vs hand-batched vs one tree at a time.

Trees/s of a training pass (forward, backward, Adagrad step) over the first N SST training
trees, float32, hidden 150, embedding 300, for each implementation and batch size, measured
in one run with the repetitions interleaved (the order of the implementations alternates
between rounds, since which one ran just before changes the memory allocator's state); plus
peak traced memory of one training step.

    python benchmarks/treelstm.py --data ../shared/data/sst
    python benchmarks/treelstm.py --backend cupy --batch-sizes 25,100,512   # on a GPU
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import add_sst_argument, add_threads_argument, limit_threads, sst_trees  # noqa: E402

import spmdbatch as sb  # noqa: E402
from examples.treelstm import model as M  # noqa: E402
from examples.treelstm import train as T  # noqa: E402


def training_step(impl, opt):
    loss_and_grad = sb.value_and_grad(T.IMPLEMENTATIONS[impl], sparse=True)

    def step(model, state, batch, keys):
        loss, grads = loss_and_grad(model, batch, keys)
        return opt.update(model, grads, state, donate=True)
    return step


def fresh_copy(model):
    """A copy of the parameters to train from (a step donates the arrays it is given)."""
    return sb.tree_map(lambda leaf: leaf.copy() if hasattr(leaf, "copy") else leaf, model)


def run_pass(step, model, state, batches):
    for i, batch in enumerate(batches):
        keys = np.arange(len(batch), dtype=np.int64) + 1000 * i
        model, state = step(model, state, batch, keys)
    return model, state


def peak_memory_mb(step, model, state, batch):
    tracemalloc.start()
    step(model, state, batch, np.arange(len(batch), dtype=np.int64))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sst_argument(ap)
    ap.add_argument("--trees", type=int, default=500, help="training trees per pass")
    ap.add_argument("--per-example-trees", type=int, default=100, help="trees per pass for per-example")
    ap.add_argument("--batch-sizes", default="25,100")
    ap.add_argument("--impls", default="spmd,handbatched,per-example")
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=150)
    ap.add_argument("--embedding", type=int, default=300)
    ap.add_argument("--backend", choices=["numpy", "cupy"], default="numpy")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, synthetic trees (smoke test)")
    ap.add_argument("--json", default="benchmarks/results/treelstm.json")
    add_threads_argument(ap)
    args = ap.parse_args(argv)
    if args.threads < 1:
        ap.error("--threads must be at least 1")
    limit_threads(args.threads)
    if args.quick:
        args.trees, args.per_example_trees, args.repeat = 40, 10, 1
        args.hidden, args.embedding, args.batch_sizes = 16, 16, "10"
    vocab, trees, source = sst_trees(args.data, args.trees, synthetic=args.quick)
    model = M.TreeLSTM(len(vocab), 5, args.embedding, args.hidden, rng=0)
    if args.backend == "cupy":
        model, trees = sb.to_device(model, "cupy"), sb.to_device(trees, "cupy")
    targs = argparse.Namespace(lr=0.05, embed_lr=0.1, weight_decay=1e-4)
    impls = args.impls.split(",")
    rows = []
    for bsz in [int(b) for b in args.batch_sizes.split(",")]:
        times = {impl: [] for impl in impls}
        counts, memory = {}, {}
        for impl in impls:
            n = args.per_example_trees if impl == "per-example" else len(trees)
            counts[impl] = n
            opt = T.make_optimizer(targs)
            step = training_step(impl, opt)
            state = opt.init(model)
            model_, state = step(fresh_copy(model), state, trees[:bsz],
                                 np.arange(min(bsz, len(trees)), dtype=np.int64))  # warm-up
            memory[impl] = peak_memory_mb(step, model_, state, trees[:bsz])
        for r in range(args.repeat):           # interleaved: every implementation once per round,
            for impl in (impls if r % 2 == 0 else impls[::-1]):   # in alternating order
                opt = T.make_optimizer(targs)
                start = fresh_copy(model)
                step, state = training_step(impl, opt), opt.init(start)
                subset = trees[:counts[impl]]
                batches = [subset[i:i + bsz] for i in range(0, len(subset), bsz)]
                t0 = time.perf_counter()
                run_pass(step, start, state, batches)
                times[impl].append(time.perf_counter() - t0)
        row = {"batch": bsz}
        for impl in impls:
            row[f"{impl}_trees_per_s"] = counts[impl] / min(times[impl])
            row[f"{impl}_peak_mb"] = memory[impl]
        if "spmd" in impls and "handbatched" in impls:
            ratios = [counts["spmd"] / s / (counts["handbatched"] / h)
                      for s, h in zip(times["spmd"], times["handbatched"])]
            row["spmd_over_handbatched"] = float(np.median(ratios))
        if "spmd" in impls and "per-example" in impls:
            row["spmd_over_per_example"] = row["spmd_trees_per_s"] / row["per-example_trees_per_s"]
        rows.append(row)
    print(f"Tree-LSTM training pass (forward, backward, Adagrad step), {source}, hidden {args.hidden}, "
          f"embedding {args.embedding}, float32, backend {args.backend}, "
          f"{args.threads} BLAS thread(s)\n")
    head = "| batch | " + " | ".join(f"{i} trees/s" for i in impls) + " | spmd / hand-batched | spmd / per-example | " \
        + " | ".join(f"{i} peak MB" for i in impls) + " |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        print(f"| {r['batch']} | " + " | ".join(f"{r[f'{i}_trees_per_s']:.0f}" for i in impls)
              + f" | {r.get('spmd_over_handbatched', float('nan')):.2f} | {r.get('spmd_over_per_example', float('nan')):.1f} | "
              + " | ".join(f"{r[f'{i}_peak_mb']:.0f}" for i in impls) + " |")
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump({"config": vars(args), "machine": platform.platform(), "numpy": np.__version__,
                   "source": source, "rows": rows}, fh, indent=2)
    return rows


if __name__ == "__main__":
    main()
