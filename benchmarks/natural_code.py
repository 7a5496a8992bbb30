"""Tree-LSTM training written naturally vs the example model vs PyTorch hand-batched by height.

Three implementations of one model (binary Tree-LSTM, SST, float32, hidden 150, embedding
300, no dropout, Adagrad with the example's rates), each trained for whole passes over the
first N training trees at each batch size:

- natural: benchmarks/_natural_treelstm.py, the model as a user writes it (dict of
  parameters, the cell inline with its own `sigmoid`, the loss summed in the recursion
  through ``sub = 0.0`` / ``sub = ll + lr``), batched with @spmd;
- example: examples/treelstm/model.py (library cells, ``return h, c, loss_l + loss_r +
  node_loss(...)``) with dropout 0, batched with @spmd;
- unstaged, example-unstaged: `natural` and `example` with staged regions turned off
  (execution/staging.py `disabled()`), to show what staging gains or costs (only when
  ``--impls`` names them);
- torch: PyTorch, the nodes grouped by height by hand (examples/treelstm/handbatched.py's
  plan), sparse embedding gradients; only when torch is installed (the `bench` extra).

Before timing, the implementations are checked to give the same loss and gradients on one
minibatch. Rounds are interleaved (the order alternates); a ratio is taken per round and the
median reported. Throughput is trees/s of forward, backward and optimiser step.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/natural_code.py
"""
from __future__ import annotations

import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import _natural_treelstm as N  # noqa: E402
from _bench_common import (add_sst_argument, environment, markdown_table, paired_ratio,  # noqa: E402
                           parse_args, sst_trees, write_json)

import spmdbatch as sb  # noqa: E402
from examples.treelstm import handbatched as HB  # noqa: E402
from examples.treelstm import model as M  # noqa: E402
from spmdbatch import nn  # noqa: E402
from spmdbatch.execution import staging  # noqa: E402

NAME = "natural_code"
warnings.filterwarnings("ignore", message="Sparse invariant checks")   # torch's Adagrad, sparse rows
LR, EMBED_LR, WEIGHT_DECAY = 0.05, 0.1, 1e-4


def add_arguments(ap):
    add_sst_argument(ap)
    ap.add_argument("--trees", type=int, default=300, help="training trees per pass")
    ap.add_argument("--batch-sizes", default="25,100")
    ap.add_argument("--hidden", type=int, default=150)
    ap.add_argument("--embedding", type=int, default=300)
    ap.add_argument("--impls", default="natural,example,torch",
                    help="comma-separated subset of natural,example,torch,unstaged,example-unstaged")


# --------------------------------------------------------------------------- implementations

def spmd_trainer(loss_fn, params):
    """(step(batch, keys), current params) for an @spmd loss: value_and_grad + Adagrad."""
    opt = nn.Adagrad(lr=LR, weight_decay=WEIGHT_DECAY,
                     groups={"embed": {"lr": EMBED_LR, "weight_decay": 0.0}})
    loss_and_grad = sb.value_and_grad(loss_fn, sparse=True)
    box = {"params": params, "state": opt.init(params)}

    def step(batch, keys):
        _, grads = loss_and_grad(box["params"], batch, keys)
        box["params"], box["state"] = opt.update(box["params"], grads, box["state"], donate=True)
    return step


def torch_model(params):
    import torch
    return {k: torch.tensor(np.array(v), requires_grad=True) for k, v in params.items()}


def torch_loss(P, trees, plan=None):
    """The summed loss of a minibatch, nodes batched by height (as HB.minibatch_loss)."""
    import torch
    import torch.nn.functional as F
    plan = HB.plan_by_height(trees, np.zeros(len(trees), dtype=np.int64)) if plan is None else plan
    x = F.embedding(torch.from_numpy(plan.leaf_words), P["embed"], sparse=True)
    i, o, u = (x @ P["W"].T + P["b_leaf"]).chunk(3, dim=1)
    c = torch.sigmoid(i) * torch.tanh(u)
    h = torch.sigmoid(o) * torch.tanh(c)
    hs, cs = [h], [c]
    for left, right in plan.levels:
        all_h, all_c = torch.cat(hs), torch.cat(cs)
        left, right = torch.from_numpy(left), torch.from_numpy(right)
        z = torch.cat([all_h[left], all_h[right]], dim=1) @ P["U"].T + P["b"]
        i, fl, fr, o, u = z.chunk(5, dim=1)
        c = torch.sigmoid(i) * torch.tanh(u) + torch.sigmoid(fl) * all_c[left] + torch.sigmoid(fr) * all_c[right]
        h = torch.sigmoid(o) * torch.tanh(c)
        hs.append(h)
        cs.append(c)
    scores = torch.cat(hs) @ P["Wc"].T + P["bc"]
    labels = torch.from_numpy(plan.labels)
    nll = torch.logsumexp(scores, dim=1) - scores.gather(1, labels.clamp(min=0)[:, None])[:, 0]
    return torch.where(labels >= 0, nll, torch.zeros_like(nll)).sum()


def torch_trainer(params):
    import torch
    P = torch_model(params)
    opt = torch.optim.Adagrad([
        {"params": [P["embed"]], "lr": EMBED_LR, "weight_decay": 0.0},
        {"params": [v for k, v in P.items() if k != "embed"], "lr": LR, "weight_decay": WEIGHT_DECAY}])

    def step(batch, keys):
        opt.zero_grad(set_to_none=True)
        torch_loss(P, batch).backward()
        opt.step()
    return step


# --------------------------------------------------------------------------- agreement check

def dense(g):
    return np.asarray(g, dtype=np.float64)


def check_agreement(model, impls, trees):
    """Max relative difference of loss and gradients of every implementation vs `natural`."""
    params = N.params_of(model)
    keys = np.arange(len(trees), dtype=np.int64)
    results = {}
    if "natural" in impls:
        loss, g = sb.value_and_grad(N.minibatch_loss)(params, trees, keys)
        results["natural"] = (float(loss), {k: dense(v) for k, v in g.items()})
    if "example" in impls:
        loss, g = sb.value_and_grad(M.minibatch_loss)(model, trees, keys)
        results["example"] = (float(loss), {k: dense(v) for k, v in N.params_of(g).items()})
    if "torch" in impls:
        P = torch_model(params)
        loss = torch_loss(P, trees)
        loss.backward()
        results["torch"] = (float(loss.detach()), {k: v.grad.to_dense().numpy().astype(np.float64) for k, v in P.items()})
    ref_name = next(iter(results))
    ref_loss, ref_g = results[ref_name]
    out = {}
    for name, (loss, g) in results.items():
        err = abs(loss - ref_loss) / max(abs(ref_loss), 1e-30)
        for k in ref_g:
            scale = max(np.abs(ref_g[k]).max(), 1e-30)
            err = max(err, float(np.abs(g[k] - ref_g[k]).max() / scale))
        out[name] = err
        if err > 1e-3:
            raise SystemExit(f"{name} disagrees with {ref_name}: max relative difference {err:.2e}")
    return ref_name, out


# --------------------------------------------------------------------------- timing

def main(argv=None):
    args = parse_args(NAME, __doc__.splitlines()[0], default_repeat=5, quick_repeat=1,
                      add_arguments=add_arguments, argv=argv)
    impls = [i for i in args.impls.split(",") if i]
    torch_note = None
    if "torch" in impls:
        try:
            import torch
            torch.set_num_threads(args.threads)
        except ImportError:
            impls.remove("torch")
            torch_note = ("PyTorch is not installed: the torch column is left out "
                          "(pip install 'spmdbatch[bench]' adds it)")
            print(torch_note)
    if args.quick:
        args.trees, args.hidden, args.embedding, args.batch_sizes = 24, 16, 16, "8"
    vocab, trees, source = sst_trees(args.data, args.trees, synthetic=args.quick)
    model = M.TreeLSTM(len(vocab), 5, args.embedding, args.hidden, dropout=0.0, rng=0)
    ref_name, agreement = check_agreement(model, impls, trees[:min(len(trees), 25)])
    print(f"loss and gradients agree (max relative difference vs {ref_name}): "
          + ", ".join(f"{k} {v:.1e}" for k, v in agreement.items()))

    def trainer(impl):
        fresh = sb.tree_map(lambda a: a.copy() if hasattr(a, "copy") else a, model)
        if impl == "natural":
            return spmd_trainer(N.minibatch_loss, N.params_of(fresh))
        if impl in ("unstaged", "example-unstaged"):
            step = (spmd_trainer(N.minibatch_loss, N.params_of(fresh)) if impl == "unstaged"
                    else spmd_trainer(M.minibatch_loss, fresh))

            def unstaged_step(batch, keys):
                with staging.disabled():
                    step(batch, keys)
            return unstaged_step
        if impl == "example":
            return spmd_trainer(M.minibatch_loss, fresh)
        return torch_trainer(N.params_of(fresh))

    results = []
    for bsz in [int(b) for b in args.batch_sizes.split(",")]:
        batches = [trees[i:i + bsz] for i in range(0, len(trees), bsz)]
        keys = [np.arange(len(b), dtype=np.int64) + 1000 * j for j, b in enumerate(batches)]
        steps = {impl: trainer(impl) for impl in impls}
        for impl in impls:                      # warm-up: transforms, caches, allocator
            steps[impl](batches[0], keys[0])
        times = {impl: [] for impl in impls}
        for r in range(args.repeat):
            for impl in (impls if r % 2 == 0 else impls[::-1]):
                t0 = time.perf_counter()
                for b, k in zip(batches, keys):
                    steps[impl](b, k)
                times[impl].append(time.perf_counter() - t0)
        row = {"batch": bsz, "trees": len(trees)}
        for impl in impls:
            rates = [len(trees) / t for t in times[impl]]
            row[f"{impl}_trees_per_s"] = {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}
        for a, b in (("natural", "example"), ("natural", "torch"), ("example", "torch"),
                     ("natural", "unstaged"), ("example", "example-unstaged")):
            if a in impls and b in impls:   # throughput ratio a/b = time b / time a, per round
                row[f"ratio_{a}_over_{b}"] = paired_ratio(times[b], times[a])
        results.append(row)

    print(f"\nTree-LSTM training (forward, backward, Adagrad), {source}, hidden {args.hidden}, "
          f"embedding {args.embedding}, float32, no dropout, {args.threads} BLAS thread(s), "
          f"{args.repeat} interleaved rounds; trees/s median of rounds, ratios median of per-round ratios\n")
    pairs = [k for k in results[0] if k.startswith("ratio_")]
    headers = ["batch"] + [f"{i} trees/s" for i in impls] + [k[6:].replace("_over_", " / ") for k in pairs]
    rows = [[r["batch"]] + [f"{r[f'{i}_trees_per_s']['median']:.0f}" for i in impls]
            + [f"{r[k]['median']:.2f}" for k in pairs] for r in results]
    print(markdown_table(headers, rows))
    write_json(args.json, {
        "benchmark": NAME,
        "config": {"repeat": args.repeat, "quick": args.quick, "threads": args.threads,
                   "trees": args.trees, "hidden": args.hidden, "embedding": args.embedding,
                   "source": source, "impls": impls, "torch_note": torch_note},
        "agreement_max_relative_difference": agreement,
        "environment": environment(),
        "results": results,
    })
    return results


if __name__ == "__main__":
    main()
