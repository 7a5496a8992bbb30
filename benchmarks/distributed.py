"""Data-parallel Tree-LSTM training: trees/s at 1 and 2 MPI processes, and a scaling model.

Measured: each process count runs ``mpiexec -n N`` on this script's worker mode, which trains
the Tree-LSTM of examples/treelstm (hidden 150, embedding 300, Adagrad, float32,
OPENBLAS_NUM_THREADS=1) on SST training trees with a per-process batch of 25 (global batch
25 x N: weak scaling, as `mpiexec -n N python -m examples.treelstm.train` does) and times
`--steps` steps after `--warmup` steps, split into gradient (forward+backward), all-reduce
and optimiser time. Rounds alternate the order of the process counts; the table gives the
median over rounds.

Modelled (no cluster here): the time of one step at P ranks is

    gradient(25 trees) + combine(P) + update(P) + communication(P)

with the gradient and update times measured above at one process; combine (adding up the
gathered embedding rows on every rank) and the growth of the update with the union of the
rows (the Adagrad step on it) timed on this machine on the rows real SST shards touch;
`--reference-step-ms` adds a table with all these CPU times scaled to another one-process
step time (that of an idle machine, when this one is shared); communication from a ring model:
a dense all-reduce of D bytes costs 2 (P-1)/P D / bandwidth + 2 (P-1) latency, a ring
all-gather of every rank's rows (P-1) r (4 E + 8) / bandwidth + (P-1) latency per
all-gather (three: descriptors, row indices, rows). Efficiency is the one-process step
time over the modelled step time (communication not overlapped with computation, as in
`data_parallel_step`).

    python benchmarks/distributed.py --data ../shared/data/sst --reference-step-ms 38
    python benchmarks/distributed.py --quick          # smoke test (synthetic trees)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import spmdbatch as sb  # noqa: E402
from _bench_common import RESULTS_DIR, environment, markdown_table, write_json  # noqa: E402
from examples.treelstm import data as sst  # noqa: E402
from examples.treelstm import model as M  # noqa: E402
from spmdbatch import distributed as dist  # noqa: E402
from spmdbatch import nn  # noqa: E402
from spmdbatch.ad.sparse import SparseRows  # noqa: E402
from spmdbatch.distributed.collectives import combine_rows  # noqa: E402

NETWORKS = {  # name: (bytes per second, latency per message in seconds): assumptions
    "10 Gb/s (TCP, 30 us)": (10e9 / 8, 30e-6),
    "100 Gb/s (RDMA, 3 us)": (100e9 / 8, 3e-6),
}
RANKS = [8, 16, 32, 64]


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="SST directory (default: ../shared/data/sst if present)")
    ap.add_argument("--batch", type=int, default=25, help="trees per process and step")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per run (default 30; 3 quick)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; 1 quick)")
    ap.add_argument("--rounds", type=int, default=None, help="runs per process count (default 3; 1 quick)")
    ap.add_argument("--procs", default="1,2", help="process counts to measure")
    ap.add_argument("--quick", action="store_true", help="smoke test: synthetic trees, few steps")
    ap.add_argument("--reference-step-ms", type=float, default=None,
                    help="also model with every CPU time scaled so that the one-process step takes this "
                         "long (e.g. the step time of an idle machine, when this one is shared)")
    ap.add_argument("--json", type=Path, default=RESULTS_DIR / "distributed.json")
    ap.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.steps = args.steps or (3 if args.quick else 30)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.rounds = args.rounds or (1 if args.quick else 3)
    if args.data is None and not args.quick:
        args.data = sst.default_data_dir()
    return args


def load(args):
    """(vocabulary size, classes, training trees)."""
    if args.data and not args.quick:
        corpus = sst.load_sst(args.data)
        return len(corpus.vocab), corpus.num_classes, corpus.train, f"SST ({args.data})"
    vocab, trees = sst.synthetic_treebank(400, seed=0, num_classes=5)
    return len(vocab), 5, trees, "synthetic treebank"


def make_model(vocab, classes):
    return M.TreeLSTM(vocab, classes, 300, 150, 0.5, rng=0)


def make_optimizer():
    return nn.Adagrad(lr=0.05, weight_decay=1e-4, groups={"embed": {"lr": 0.1, "weight_decay": 0.0}})


def global_batches(n_trees, batch, steps, seed=0):
    """Index arrays of `steps` global minibatches of `batch` trees (cycling through epochs)."""
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(n_trees) for _ in range(steps * batch // n_trees + 1)])
    return [order[i * batch:(i + 1) * batch] for i in range(steps)]


# --- worker: one process of an mpiexec run --------------------------------------------------------
def worker(args):
    comm = dist.init("mpi")
    vocab, classes, trees, source = load(args)
    model = dist.broadcast(make_model(vocab, classes))
    opt = make_optimizer()
    state = opt.init(model)
    loss_and_grad = sb.value_and_grad(M.minibatch_loss, sparse=True)
    batches = global_batches(len(trees), args.batch * comm.size, args.warmup + args.steps)
    times = {"gradient": [], "allreduce": [], "update": []}
    for i, idx in enumerate(batches):
        if i == args.warmup:
            comm.barrier()
            start = time.perf_counter()
        mine = dist.shard(idx)
        t0 = time.perf_counter()
        loss, grads = loss_and_grad(model, [trees[k] for k in mine], mine.astype(np.int64))
        t1 = time.perf_counter()
        grads, loss = dist.allreduce((grads, float(loss)), "sum")   # = data_parallel_step,
        t2 = time.perf_counter()                                     # timed in two parts
        model, state = opt.update(model, grads, state, donate=True)
        t3 = time.perf_counter()
        if i >= args.warmup:
            times["gradient"].append(t1 - t0)
            times["allreduce"].append(t2 - t1)
            times["update"].append(t3 - t2)
    comm.barrier()
    elapsed = time.perf_counter() - start
    if comm.rank == 0:
        args.worker.write_text(json.dumps({
            "processes": comm.size, "global_batch": args.batch * comm.size, "steps": args.steps,
            "seconds": elapsed, "trees_per_s": args.steps * args.batch * comm.size / elapsed,
            "ms_per_step": {k: 1e3 * statistics.median(v) for k, v in times.items()},
            "communicator": comm.name, "data": source}))


def measure(args, procs):
    mpiexec = shutil.which("mpiexec", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                             os.environ.get("PATH", "")]))
    if mpiexec is None:
        sys.exit("mpiexec not found: pip install -e \".[distributed]\" (mpi4py and the mpich wheel)")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    runs = {n: [] for n in procs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for n in (procs if r % 2 == 0 else procs[::-1]):
                out = Path(tmp) / f"{n}-{r}.json"
                cmd = [mpiexec, "-n", str(n), sys.executable, __file__, "--worker", str(out),
                       "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup)]
                cmd += ["--quick"] if args.quick else ["--data", str(args.data)] if args.data else []
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
                if proc.returncode != 0:
                    sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
                runs[n].append(json.loads(out.read_text()))
                print(f"  round {r + 1}, {n} process(es): {runs[n][-1]['trees_per_s']:.0f} trees/s", flush=True)
    return runs


# --- the scaling model ------------------------------------------------------------------------------
def _words(tree):
    return tree.word[np.asarray(tree.left) < 0]


def model_inputs(vocab, classes, trees, batch, samples=max(RANKS)):
    """Sizes and timings of the real model on real minibatches (one process, no MPI)."""
    model = make_model(vocab, classes)
    leaves = nn.named_leaves(model)
    embed = next(a for n, a in leaves if n == "embed.table")
    dense = sum(a.size for n, a in leaves if n != "embed.table")
    rng = np.random.default_rng(1)
    shards = [rng.choice(len(trees), batch, replace=False) for _ in range(samples)]
    rows = [np.unique(np.concatenate([_words(trees[k]) for k in s])) for s in shards]
    per_rank = float(np.mean([len(r) for r in rows]))
    return {"vocabulary": vocab, "embedding": embed.shape[1], "table_parameters": int(embed.size),
            "dense_parameters": int(dense), "rows_per_rank": per_rank, "shard_rows": rows,
            "model": model}


def time_combine_and_update(inputs, p, repeat=5):
    """(combine s, update s, union rows): add up p ranks' gathered rows (as allreduce does on
    every rank) and take the Adagrad step on their union, on real SST row sets."""
    rows_list = [inputs["shard_rows"][k % len(inputs["shard_rows"])] for k in range(p)]
    e = inputs["embedding"]
    rng = np.random.default_rng(0)
    values = [rng.normal(size=(len(r), e)).astype(np.float32) for r in rows_list]
    all_rows = np.concatenate(rows_list)
    all_values = np.concatenate(values)
    best_c = best_u = float("inf")
    model = inputs["model"]
    opt = make_optimizer()
    for _ in range(repeat):
        t0 = time.perf_counter()
        union, summed = combine_rows(all_rows, all_values, [len(r) for r in rows_list])
        best_c = min(best_c, time.perf_counter() - t0)
        grads = sb.tree_map(lambda a: np.zeros_like(a), model)
        grads = grads.replace(embed=grads.embed.replace(
            table=SparseRows.rows(model.embed.table.shape, union, summed, True)))
        params = sb.tree_map(lambda a: a.copy(), model)     # a training loop donates its arrays
        state = opt.init(params)
        t0 = time.perf_counter()
        opt.update(params, grads, state, donate=True)
        best_u = min(best_u, time.perf_counter() - t0)
    return best_c, best_u, len(union)


def comm_seconds(inputs, p, bandwidth, latency):
    """(seconds, bytes sent per rank, path) of one step's all-reduce at p ranks (ring model)."""
    dense_bytes = 4 * inputs["dense_parameters"] + 8      # + the loss
    row_bytes = 4 * inputs["embedding"] + 8
    gathered = p * inputs["rows_per_rank"] * row_bytes
    table = 4 * inputs["table_parameters"]
    t = 2 * (p - 1) / p * dense_bytes / bandwidth + 2 * (p - 1) * latency        # dense ring all-reduce
    t += (p - 1) * latency                                                       # descriptor all-gather
    sent = 2 * (p - 1) / p * dense_bytes
    if gathered <= 2 * table + inputs["vocabulary"]:
        t += (p - 1) / p * gathered / bandwidth + 2 * (p - 1) * latency         # rows + indices
        sent += (p - 1) / p * gathered
        path = "rows gathered"
    else:
        dense_table = table + inputs["vocabulary"]                               # + row mask
        t += 2 * (p - 1) / p * dense_table / bandwidth + 4 * (p - 1) * latency
        sent += 2 * (p - 1) / p * dense_table
        path = "table all-reduced"
    return t, sent, path


def cpu_times(inputs, quick=False):
    """{ranks: (combine s, update s, union rows)} measured on this machine."""
    return {p: time_combine_and_update(inputs, p, repeat=1 if quick else 5) for p in [1] + RANKS}


def scaling_model(inputs, one_process_ms, cpu, scale=1.0):
    """Rows of the modelled efficiency table (per-rank batch fixed); CPU times x `scale`."""
    grad_s = scale * one_process_ms["gradient"] / 1e3
    update_1 = scale * one_process_ms["update"] / 1e3    # coalescing the rank's own rows included
    base = grad_s + update_1
    rows = []
    for p in RANKS:
        combine, update, union = cpu[p]
        # the update grows with the union of the rows: its measured growth from 1 to p ranks
        combine, update = scale * combine, update_1 + scale * max(0.0, update - cpu[1][1])
        row = {"ranks": p, "union_rows": union, "combine_ms": 1e3 * combine, "update_ms": 1e3 * update,
               "step_ms_one_process": 1e3 * base}
        for name, (bw, lat) in NETWORKS.items():
            t, sent, path = comm_seconds(inputs, p, bw, lat)
            step = grad_s + combine + update + t
            row[name] = {"communication_ms": 1e3 * t, "megabytes_sent_per_rank": sent / 1e6,
                         "path": path, "step_ms": 1e3 * step, "efficiency": base / step}
        rows.append(row)
    return rows


def main():
    args = parse_args()
    if args.worker is not None:
        return worker(args)
    procs = [int(p) for p in args.procs.split(",")]
    vocab, classes, trees, source = load(args)
    print(f"Tree-LSTM data-parallel training on {source}, {args.batch} trees per process and step, "
          f"{args.steps} timed steps, {args.rounds} round(s), OPENBLAS_NUM_THREADS=1, "
          f"{os.cpu_count()} CPU cores")
    runs = measure(args, procs)
    results = []
    base = statistics.median(r["trees_per_s"] for r in runs[procs[0]])
    for n in procs:
        rate = statistics.median(r["trees_per_s"] for r in runs[n])
        ms = {k: statistics.median(r["ms_per_step"][k] for r in runs[n]) for k in ("gradient", "allreduce", "update")}
        results.append({"processes": n, "global_batch": args.batch * n, "trees_per_s": rate,
                        "all_trees_per_s": [r["trees_per_s"] for r in runs[n]],
                        "speedup": rate / base, "efficiency": rate / base / (n / procs[0]), "ms_per_step": ms})
    print()
    print(markdown_table(
        ["processes", "global batch", "trees/s", "speedup", "efficiency", "ms/step gradient",
         "ms/step all-reduce", "ms/step update"],
        [[r["processes"], r["global_batch"], f"{r['trees_per_s']:.0f}", f"{r['speedup']:.2f}",
          f"{r['efficiency']:.2f}", f"{r['ms_per_step']['gradient']:.1f}",
          f"{r['ms_per_step']['allreduce']:.2f}", f"{r['ms_per_step']['update']:.1f}"] for r in results]))

    inputs = model_inputs(vocab, classes, trees, args.batch)
    one = next(r for r in results if r["processes"] == 1) if 1 in procs else results[0]
    cpu = cpu_times(inputs, args.quick)
    one_ms = one["ms_per_step"]["gradient"] + one["ms_per_step"]["update"]
    tables = {"as measured": scaling_model(inputs, one["ms_per_step"], cpu)}
    if args.reference_step_ms:
        tables[f"scaled to a {args.reference_step_ms:g} ms step"] = scaling_model(
            inputs, one["ms_per_step"], cpu, args.reference_step_ms / one_ms)
    print(f"\nscaling model: {inputs['dense_parameters']:,} dense parameters "
          f"({4 * inputs['dense_parameters'] / 1e6:.2f} MB), embedding table {inputs['vocabulary']:,} x "
          f"{inputs['embedding']} ({4 * inputs['table_parameters'] / 1e6:.1f} MB), "
          f"{inputs['rows_per_rank']:.0f} rows per rank and step "
          f"({inputs['rows_per_rank'] * (4 * inputs['embedding'] + 8) / 1e6:.2f} MB); "
          f"one-process step {one['ms_per_step']['gradient'] + one['ms_per_step']['update']:.1f} ms")
    headers = ["ranks", "1-process step ms", "union rows", "combine ms", "update ms"]
    for name in NETWORKS:
        headers += [f"{name}: MB sent/rank", "comm ms", "efficiency"]
    for title, model_rows in tables.items():
        print(f"\nCPU times {title}:")
        print(markdown_table(headers, [
            [r["ranks"], f"{r['step_ms_one_process']:.1f}", r["union_rows"], f"{r['combine_ms']:.1f}",
             f"{r['update_ms']:.1f}"]
            + sum(([f"{r[n]['megabytes_sent_per_rank']:.1f}", f"{r[n]['communication_ms']:.1f}",
                    f"{r[n]['efficiency']:.2f}"] for n in NETWORKS), []) for r in model_rows]))
    for k in ("shard_rows", "model"):
        inputs.pop(k)
    write_json(args.json, {
        "benchmark": "distributed", "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": environment(), "data": source, "results": results,
        "model": {"inputs": inputs, "networks": {k: {"bytes_per_s": v[0], "latency_s": v[1]} for k, v in NETWORKS.items()},
                  "rows": tables["as measured"], "tables": tables}})


if __name__ == "__main__":
    main()
