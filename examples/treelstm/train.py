"""Train the Tree-LSTM on the Stanford Sentiment Treebank, in minibatches.

    python -m examples.treelstm.train --data ../shared/data/sst            # fine-grained
    python -m examples.treelstm.train --data ../shared/data/sst --binary   # binary
    python -m examples.treelstm.train --impl handbatched                   # compare
    python -m examples.treelstm.train --resume runs/treelstm               # continue a run

Without SST (no --data, no SPMDBATCH_SST_DIR, no ../shared/data/sst) it trains on a
synthetic treebank. Each epoch reports dev accuracy (root and all phrases), keeps the best
model (best.npz), saves the whole training state (train_state.npz) and appends a line to
log.jsonl; the run ends with the test accuracy of the best model, a PNG of the curves and a
JSON log in --out. An interrupted run continues with --resume DIR exactly as if it had not
been interrupted (see checkpoint.py for the files).

Options are checked before training: a bad value, an empty split, a data path that is a file
or an output folder that cannot be written ends the run with one line ``error: ...`` and exit
status 2. A loss that is not finite stops training (exit status 1); the last saved state
(the previous epoch's) is kept.

Data-parallel on N processes: ``mpiexec -n N python -m examples.treelstm.train ...``
(``pip install -e ".[distributed]"``). --batch-size is then per process: every step
takes a global minibatch of N x --batch-size trees, each process computes the gradient of
its slice, and all take the same Adagrad step with the summed gradient
(`spmdbatch.distributed`). Rank 0 alone prints, shows progress and writes files; a resumed
run reads its folder on every process (a folder all processes see).
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import spmdbatch as sb
from spmdbatch import distributed as dist
from spmdbatch import nn
from spmdbatch.files import CheckpointError

from .. import threads
from . import checkpoint as ckpt
from . import data as sst
from . import handbatched
from . import model as M

IMPLEMENTATIONS = {
    "spmd": M.minibatch_loss,                      # the per-example model, batched with @spmd
    "handbatched": handbatched.minibatch_loss,     # nodes grouped by height by hand
    "per-example": M.per_example_loss,             # one tree at a time
}

#: Options that may differ from the saved configuration when a run is resumed.
RESUME_OVERRIDES = ("resume", "epochs", "no_progress", "backend", "data", "out", "threads")


class UsageError(Exception):
    """Bad options or input data: `main` prints ``error: <message>`` and exits with status 2."""


class TrainingStopped(Exception):
    """Training cannot go on (a non-finite loss): `main` prints the message, exits with 1."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block)."""

    def error(self, message):
        raise UsageError(message)


def build_parser(suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """The command line; with `suppress_defaults`, options not given are absent from the
    result (to tell which options a resumed run was given explicitly)."""
    ap = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                 prog="python -m examples.treelstm.train",
                 argument_default=argparse.SUPPRESS if suppress_defaults else None)

    def add(*names, default=None, **kwargs):
        if not suppress_defaults:
            kwargs["default"] = default
        ap.add_argument(*names, **kwargs)

    add("--data", help="SST directory with train/dev/test.txt "
        "(default: $SPMDBATCH_SST_DIR or ../shared/data/sst; synthetic data if absent)")
    add("--synthetic", type=int, default=0, metavar="N", help="train on N synthetic trees instead of SST")
    add("--binary", action="store_true", default=False, help="binary sentiment (neutral dropped)")
    add("--epochs", type=int, default=10)
    add("--batch-size", type=int, default=25)
    add("--hidden", type=int, default=150)
    add("--embedding", type=int, default=300)
    add("--lr", type=float, default=0.05)
    add("--embed-lr", type=float, default=0.1, help="Adagrad rate of the embedding table")
    add("--weight-decay", type=float, default=1e-4,
        help="L2 weight decay of the model's weights (not of the embedding table, whose "
             "updates stay row-sparse)")
    add("--dropout", type=float, default=0.5)
    add("--impl", choices=sorted(IMPLEMENTATIONS), default="spmd")
    add("--backend", choices=["numpy", "cupy"], default="numpy")
    add("--seed", type=int, default=0)
    add("--max-train", type=int, default=0, help="use only the first N training trees")
    add("--max-eval", type=int, default=0, help="use only the first N dev/test trees")
    add("--out", default="runs/treelstm", help="checkpoint, log and plot folder")
    add("--resume", metavar="DIR", help="continue the run whose --out was DIR (its options are "
        "used; --epochs may raise the number of epochs)")
    add("--no-progress", action="store_true", default=False)
    threads.add_option(add)
    return ap


def parse_args(argv=None):
    """The options of a run (see `build_parser`)."""
    return build_parser().parse_args(argv)


def check_options(args) -> None:
    """Raise `UsageError` (one line) for option values that cannot train a model."""
    for name in ("epochs", "batch_size", "hidden", "embedding"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("synthetic", "max_train", "max_eval", "seed", "threads"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(args, name)}")
    for name, low in (("lr", "positive"), ("embed_lr", "positive"), ("weight_decay", "non-negative")):
        value = getattr(args, name)
        if not math.isfinite(value) or value < 0 or (low == "positive" and value == 0):
            raise UsageError(f"--{name.replace('_', '-')} must be a finite {low} number, got {value}")
    if not (math.isfinite(args.dropout) and 0.0 <= args.dropout < 1.0):
        raise UsageError(f"--dropout must be in [0, 1), got {args.dropout}")
    if args.data is not None and Path(args.data).exists() and not Path(args.data).is_dir():
        raise UsageError(f"--data {args.data} is a file; pass the folder that holds train.txt, "
                         f"dev.txt and test.txt")


def resume_options(args, argv) -> argparse.Namespace:
    """The options of the run in ``args.resume``: its saved configuration, with the options of
    `RESUME_OVERRIDES` given on this command line; any other option given here must agree."""
    folder = Path(args.resume)
    if not ckpt.has_state(folder):
        raise UsageError(f"--resume {folder}: no {ckpt.STATE_FILE} there (not the --out folder of "
                         f"a run that finished an epoch)")
    try:
        saved = ckpt.read_config(folder)
    except (CheckpointError, OSError) as exc:
        raise UsageError(f"--resume {folder}: {exc}") from None
    given = vars(build_parser(suppress_defaults=True).parse_args(argv))
    if "out" in given and Path(given["out"]).resolve() != folder.resolve():
        raise UsageError(f"--out {given['out']} differs from --resume {folder}; a resumed run "
                         f"writes into the folder it resumes")
    for name, value in given.items():
        if name not in RESUME_OVERRIDES and value != saved.get(name):
            raise UsageError(f"--{name.replace('_', '-')} {value} differs from the run being resumed "
                             f"({saved.get(name)}); drop it, or start a new run with another --out")
    merged = {**vars(args), **saved, **{k: v for k, v in given.items() if k in RESUME_OVERRIDES}}
    merged["out"], merged["resume"] = str(folder), str(folder)
    return argparse.Namespace(**merged)


def prepare_output(out: Path) -> None:
    """Create `out` and make sure files can be written there (`UsageError` otherwise)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=out)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None


def load_data(args, vocab=None):
    """``(vocab, train, dev, test, classes, source)``: SST or the synthetic treebank, cut to
    --max-train/--max-eval, each split checked to be non-empty (`UsageError` otherwise). With
    `vocab` (a resumed run's), SST is encoded with it and synthetic data must match it."""
    directory = args.data or (None if args.synthetic else sst.default_data_dir())
    if directory is None:
        n = args.synthetic or 3000
        print(f"no SST directory found: training on {n} synthetic trees "
              f"(get SST with examples.treelstm.data.download, or pass --data DIR)")
        made, trees = sst.synthetic_treebank(n + 1000, seed=args.seed,
                                             num_classes=2 if args.binary else 5)
        if vocab is not None and vocab != made:
            raise UsageError("the saved vocabulary differs from the synthetic treebank's")
        splits = {"train": trees[:n], "dev": trees[n:n + 500], "test": trees[n + 500:]}
        vocab, classes, source = made, 2 if args.binary else 5, f"synthetic treebank ({n} trees)"
    else:
        try:
            corpus = sst.load_sst(directory, binary=args.binary, vocab=vocab)
        except (OSError, ValueError) as exc:
            raise UsageError(str(exc)) from None
        print(f"SST from {directory}: {len(corpus.train)} train, {len(corpus.dev)} dev, "
              f"{len(corpus.test)} test trees, vocabulary {len(corpus.vocab)}, {corpus.num_classes} classes")
        splits = {"train": corpus.train, "dev": corpus.dev, "test": corpus.test}
        vocab, classes, source = corpus.vocab, corpus.num_classes, str(directory)
    if args.max_train:
        splits["train"] = splits["train"][:args.max_train]
    if args.max_eval:
        splits["dev"], splits["test"] = splits["dev"][:args.max_eval], splits["test"][:args.max_eval]
    for name, trees in splits.items():
        if not trees:
            raise UsageError(f"the {name} split of {source} has no trees"
                             f"{' (in the binary view)' if args.binary else ''}: nothing to "
                             f"{'train on' if name == 'train' else 'evaluate on'}")
    return vocab, splits["train"], splits["dev"], splits["test"], classes, source


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


def plot(log, path) -> bool:
    """Plot the loss and accuracy curves to `path`; False (and a note) without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install -e '.[examples]')")
        return False
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
    return True


def main(argv=None):
    """Run the command line (`argv`, default ``sys.argv[1:]``); returns the run's log.

    Bad options or data: ``error: ...`` on stderr and ``SystemExit(2)``; a non-finite loss:
    ``SystemExit(1)``; an interrupt (Ctrl-C): ``SystemExit(130)`` after saying how to resume.
    """
    try:
        return run(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except TrainingStopped as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def setup(argv):
    """Checked options and output folder: ``(args, out)`` (raises `UsageError`)."""
    args = parse_args(argv)
    if args.resume:
        args = resume_options(args, argv)
    check_options(args)
    out = Path(args.out)
    prepare_output(out)
    return args, out


def run(argv=None):
    """Check the options, load the data, train (or resume) and test; returns the log."""
    args, out = setup(argv)
    threads.limit(args.threads)
    comm = dist.init()                  # MPI under mpiexec, else one process
    if comm.rank != 0:                  # rank 0 alone prints and writes
        sys.stdout = open(os.devnull, "w")
    vocab = None
    if args.resume:
        try:
            vocab = sst.Vocab.load(out / ckpt.VOCAB_FILE)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--resume {out}: cannot read {ckpt.VOCAB_FILE} ({exc})") from None
    vocab, train, dev, test, classes, _ = load_data(args, vocab)
    model, opt, state, status = start_or_resume(args, out, vocab, classes)
    if args.backend == "cupy":
        model, state = sb.to_device(model, "cupy"), sb.to_device(state, "cupy")
        train, dev, test = (sb.to_device(t, "cupy") for t in (train, dev, test))
    print(f"training {args.impl} Tree-LSTM ({args.hidden} hidden, {args.embedding} embedding) on "
          f"{len(train)} trees, batch {args.batch_size}, {args.epochs} epochs"
          + (f", {comm.size} processes (global batch {args.batch_size * comm.size})"
             if comm.size > 1 else ""))
    try:
        model, state, status = fit(args, out, model, opt, state, status, train, dev)
    except Interrupted as stop:
        where = (f"{out / ckpt.STATE_FILE} holds epoch {stop.epoch}; continue with --resume {out}"
                 if stop.epoch else "no epoch was finished, so there is nothing to resume")
        print(f"\ninterrupted: {where}", file=sys.stderr)
        raise SystemExit(130) from None
    return finish(args, out, vocab, classes, test, status)


def start_or_resume(args, out, vocab, classes):
    """``(model, optimizer, optimizer state, status)`` of a new run (its vocabulary saved, the
    folder's previous run state removed) or of the run resumed from ``out``."""
    model = dist.broadcast(M.TreeLSTM(len(vocab), classes, args.embedding, args.hidden,
                                      args.dropout, rng=args.seed))
    opt = make_optimizer(args)
    writer = dist.rank() == 0
    state = opt.init(model)
    if args.resume:
        try:
            model, state, status = ckpt.load_state(out, model, state)
        except (CheckpointError, OSError) as exc:
            raise UsageError(f"--resume {out}: {exc}") from None
        if status.epoch > args.epochs:
            raise UsageError(f"--resume {out}: the run has done {status.epoch} epochs, more than "
                             f"--epochs {args.epochs}")
        status.config = {**status.config, **{k: getattr(args, k) for k in RESUME_OVERRIDES}}
        print(f"resuming {out} after epoch {status.epoch} (best dev root "
              f"{status.best:.3f} at epoch {status.best_epoch})")
    else:
        if ckpt.has_state(out) and writer:
            print(f"note: {out} held a run (epoch {ckpt.saved_epoch(out)}); a new one replaces it "
                  f"(--resume {out} continues a run instead)")
            (out / ckpt.STATE_FILE).unlink()
        if writer:
            vocab.save(out / ckpt.VOCAB_FILE)
        status = ckpt.Progress(epoch=0, rng_state=ckpt.make_rng(args.seed).bit_generator.state,
                               best=-1.0, best_epoch=0, log=[], config=vars(args))
    if writer:
        ckpt.rewrite_log_lines(out, status.log)
    return model, opt, state, status


class Interrupted(Exception):
    """Ctrl-C (or SIGTERM) during training, after `epoch` saved epochs of this run."""

    def __init__(self, epoch: int):
        super().__init__(epoch)
        self.epoch = epoch


def fit(args, out, model, opt, state, status, train, dev):
    """Train from ``status.epoch + 1`` to ``args.epochs``; after each epoch save best.npz
    (when dev root accuracy improved), then train_state.npz, then a line of log.jsonl."""
    try:
        return _fit(args, out, model, opt, state, status, train, dev)
    except KeyboardInterrupt:
        raise Interrupted(ckpt.saved_epoch(out)) from None     # (the folder's state is this run's)


def _fit(args, out, model, opt, state, status, train, dev):
    loss_and_grad = sb.value_and_grad(IMPLEMENTATIONS[args.impl], sparse=True)
    rng = ckpt.make_rng(args.seed, status.rng_state)
    writer = dist.rank() == 0
    global_batch = args.batch_size * dist.size()
    for epoch in range(status.epoch + 1, args.epochs + 1):
        order = rng.permutation(len(train))
        batches = [[train[i] for i in order[j:j + global_batch]]
                   for j in range(0, len(order), global_batch)]
        total_loss, total_nodes, t0 = 0.0, 0, time.perf_counter()
        bar = progress(batches, len(batches), not args.no_progress and writer)
        for b, batch in enumerate(bar):
            keys = (epoch * len(train) + order[b * global_batch:(b + 1) * global_batch]).astype(np.int64)
            batch, keys = dist.shard(batch, keys)     # this process's slice of the global batch
            loss, grads = loss_and_grad(model, batch, keys) if batch else (0.0, None)
            nodes = sum(int((t.label >= 0).sum()) for t in batch)
            loss = float(loss)
            if not math.isfinite(dist.allreduce(loss, "sum")):   # every process stops together
                raise TrainingStopped(_stopped(out, status, f"epoch {epoch}, batch {b + 1} of "
                                               f"{len(batches)}: the training loss is not finite"))
            model, state, (loss, nodes) = dist.data_parallel_step(  # summed gradients, same step
                opt, model, grads, state, metrics=(loss, nodes), donate=True)
            total_loss += loss
            total_nodes += nodes
            if hasattr(bar, "set_postfix") and b % 10 == 0:
                done = sum(len(x) for x in batches[:b + 1])
                bar.set_postfix(trees_per_s=f"{done / (time.perf_counter() - t0):.0f}",
                                loss=f"{total_loss / max(total_nodes, 1):.3f}")
        seconds = time.perf_counter() - t0
        host_model, host_state = sb.to_device(model, "numpy"), sb.to_device(state, "numpy")
        if not finite_parameters((host_model, host_state)):
            raise TrainingStopped(_stopped(out, status, f"epoch {epoch}: the parameters are not "
                                           f"finite after the last update"))
        dev_metrics = evaluate(model, dev)
        entry = {"epoch": epoch, "train_loss": total_loss / max(total_nodes, 1), "seconds": seconds,
                 "trees_per_s": len(train) / seconds, "dev": dev_metrics}
        improved = dev_metrics["root_acc"] > status.best
        if improved and writer:
            host_model.save(out / ckpt.BEST_FILE)
        status = ckpt.Progress(
            epoch=epoch, rng_state=rng.bit_generator.state,
            best=dev_metrics["root_acc"] if improved else status.best,
            best_epoch=epoch if improved else status.best_epoch,
            log=status.log + [entry], config=status.config)
        if writer:
            ckpt.save_state(out, host_model, host_state, status)
            ckpt.append_log_line(out, entry)
        print(f"epoch {epoch:2d}  train loss {entry['train_loss']:.4f}  {entry['trees_per_s']:.0f} trees/s  "
              f"dev root {dev_metrics['root_acc']:.3f}  dev phrases {dev_metrics['phrase_acc']:.3f}"
              f"{'  (best, saved)' if improved else ''}", flush=True)
    return model, state, status


def finite_parameters(tree) -> bool:
    """Whether every floating leaf of `tree` (host arrays) is finite."""
    for _, leaf in nn.named_leaves(tree):
        a = np.asarray(leaf)
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            return False
    return True


def _stopped(out, status, what) -> str:
    kept = (f"{out / ckpt.STATE_FILE} (epoch {status.epoch}) and {out / ckpt.BEST_FILE} are kept"
            if status.epoch else "no epoch was finished, so nothing was saved")
    return (f"{what} (not finite), so training stopped; {kept}. Start again with a lower --lr "
            f"(or --weight-decay)")


def finish(args, out, vocab, classes, test, status) -> dict:
    """Test the best dev model, write log.json and the plot; returns the log."""
    writer = dist.rank() == 0
    best_model = M.TreeLSTM(len(vocab), classes, args.embedding, args.hidden, args.dropout)
    best_model = dist.broadcast(best_model.load(out / ckpt.BEST_FILE) if writer else best_model)
    if args.backend == "cupy":
        best_model = sb.to_device(best_model, "cupy")
    log = {"config": status.config, "processes": dist.size(), "epochs": status.log}
    log["test"] = evaluate(best_model, test)
    log["best_dev_root_acc"] = status.best
    log["best_epoch"] = status.best_epoch
    print(f"test of the best dev model: root {log['test']['root_acc']:.3f}  "
          f"phrases {log['test']['phrase_acc']:.3f}")
    if not writer:
        return log
    written = [out / ckpt.BEST_FILE, out / ckpt.STATE_FILE, out / ckpt.LOG_LINES_FILE,
               ckpt.write_summary(out, log)]
    if plot(log, out / ckpt.PLOT_FILE):
        written.append(out / ckpt.PLOT_FILE)
    print(f"wrote {', '.join(map(str, written))}")
    return log


def _terminated(signum, frame):
    """SIGTERM ends a run like Ctrl-C: temporary files removed, how to resume printed."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminated)
    sys.exit(0 if main() else 1)
