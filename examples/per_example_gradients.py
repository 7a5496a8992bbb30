"""DP-SGD on logistic regression: per-example gradients by ``spmd(grad(...))``.

Differentially private SGD (Abadi et al. 2016) bounds each example's influence on a step:
every example's gradient is clipped to norm at most `clip`, the clipped gradients are
summed, Gaussian noise of standard deviation ``noise_multiplier * clip`` is added, and the
sum is divided by the batch size. That needs one gradient per example, not the batch's.

The per-example code below computes one example's gradient with `spmdbatch.grad` and
clips it with a data-dependent `if`; `spmdbatch.spmd` batches it over the minibatch (the
gradient transform runs inside the batch program, one tape leaf per example), so a step
costs a few batched array operations instead of a Python loop over examples. `--check`
compares the batched per-example gradient norms and clipped gradients with the
per-example loop before and after training.

The data and the model (3 classes, 20 features, affine scores, softmax cross-entropy) are
those of `examples/logistic_regression.py`. No privacy accounting is done here (the
example shows the mechanism, not an epsilon).

    python examples/per_example_gradients.py [--epochs N] [--clip C] [--noise-multiplier S] [--check]
    python -m examples.per_example_gradients --check
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

if __package__ in (None, ""):  # run as a script from a source checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import spmdbatch as sb  # noqa: E402
from examples.logistic_regression import Params, error_rate, init_params, make_data, scores  # noqa: E402


# --- per-example code ----------------------------------------------------------------------
def example_loss(params: Params, x, y):
    """Softmax cross-entropy of ONE example (`x` of shape (features,), `y` an int label)."""
    return -sb.log_softmax(scores(params, x), axis=-1)[y]


def clipped_gradient(params: Params, x, y, clip):
    """ONE example's gradient, scaled down to norm `clip` when it is longer; and its norm."""
    g = sb.grad(example_loss)(params, x, y)
    norm = np.sqrt((g.w * g.w).sum() + (g.b * g.b).sum())
    if norm > clip:
        g = Params(w=g.w * (clip / norm), b=g.b * (clip / norm))
    return g, norm


per_example = sb.spmd(clipped_gradient, in_axes=(None, 0, 0, None))
"""``per_example(params, xs, ys, clip)``: clipped gradients (leaves with a leading batch axis)
and the unclipped norms, one per example."""


# --- DP-SGD ----------------------------------------------------------------------------------
def dp_sgd_step(params: Params, xs, ys, rng, *, lr, clip, noise_multiplier):
    """One DP-SGD step on a minibatch; returns (new params, per-example norms)."""
    grads, norms = per_example(params, xs, ys, clip)
    n = len(ys)

    def noisy_mean(g):
        total = g.sum(axis=0)
        noise = rng.normal(0.0, noise_multiplier * clip, size=total.shape)
        return ((total + noise) / n).astype(total.dtype)
    update = sb.tree_map(noisy_mean, grads)
    params = sb.tree_map(lambda p, u: p - lr * u, params, update)
    return params, norms


def check_against_loop(params: Params, xs, ys, clip) -> dict:
    """Batched per-example norms and clipped gradients against the per-example loop."""
    grads, norms = per_example(params, xs, ys, clip)
    loop_norms, loop_w, loop_b = [], [], []
    for x, y in zip(xs, ys):
        g = sb.grad(example_loss)(params, x, y)
        norm = float(np.sqrt((g.w.astype(np.float64) ** 2).sum() + (g.b.astype(np.float64) ** 2).sum()))
        scale = min(1.0, clip / norm)
        loop_norms.append(norm)
        loop_w.append(g.w * scale)
        loop_b.append(g.b * scale)
    out = {
        "norm_max_abs_diff": float(np.max(np.abs(norms - np.array(loop_norms)))),
        "grad_max_abs_diff": float(max(np.max(np.abs(grads.w - np.stack(loop_w))),
                                       np.max(np.abs(grads.b - np.stack(loop_b))))),
        "clipped_fraction": float(np.mean(np.array(loop_norms) > clip)),
        "norms": norms,
        "loop_norms": np.array(loop_norms),
    }
    return out


# --- driver -------------------------------------------------------------------------------
def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20, help="passes over the training set")
    parser.add_argument("--seed", type=int, default=0, help="seed for data, init, shuffling, noise")
    parser.add_argument("--batch-size", type=int, default=100, help="minibatch size")
    parser.add_argument("--lr", type=float, default=0.5, help="learning rate")
    parser.add_argument("--clip", type=float, default=1.0, help="per-example gradient norm bound")
    parser.add_argument("--noise-multiplier", type=float, default=1.0,
                        help="noise standard deviation, in units of --clip")
    parser.add_argument("--n-train", type=int, default=1500, help="training examples")
    parser.add_argument("--check", action="store_true",
                        help="check per-example norms and clipped gradients against the loop first")
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "n_train"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.clip <= 0 or args.noise_multiplier < 0 or args.lr <= 0:
        parser.error("--clip and --lr must be positive, --noise-multiplier not negative")
    return args


def main(argv=None) -> dict:
    """Train with DP-SGD and evaluate; returns the metrics."""
    args = parse_args(argv)
    (x_train, y_train), (x_test, y_test) = make_data(args.seed, n_train=args.n_train)
    params = init_params(args.seed)

    check = None
    if args.check:
        check = check_against_loop(params, x_train[:64], y_train[:64], args.clip)
        print(f"per-example gradients vs. the loop (64 examples): norms differ by at most "
              f"{check['norm_max_abs_diff']:.2e}, clipped gradients by "
              f"{check['grad_max_abs_diff']:.2e}; {check['clipped_fraction']:.0%} clipped")

    rng = np.random.default_rng(args.seed + 3)
    mean_norms = []
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(y_train))
        norms = []
        for i in range(0, len(order), args.batch_size):
            batch = order[i:i + args.batch_size]
            params, n = dp_sgd_step(params, x_train[batch], y_train[batch], rng, lr=args.lr,
                                    clip=args.clip, noise_multiplier=args.noise_multiplier)
            norms.append(n)
        mean_norms.append(float(np.mean(np.concatenate(norms))))
        if epoch == 1 or epoch % 5 == 0 or epoch == args.epochs:
            print(f"epoch {epoch:3d}  mean per-example gradient norm {mean_norms[-1]:.3f}  "
                  f"test error {error_rate(params, x_test, y_test):.2%}")
    seconds = time.perf_counter() - start
    check_end = None
    if args.check:      # trained: some examples are clipped, the others not
        check_end = check_against_loop(params, x_train[:256], y_train[:256], args.clip)
        print(f"after training (256 examples): norms differ by at most "
              f"{check_end['norm_max_abs_diff']:.2e}, clipped gradients by "
              f"{check_end['grad_max_abs_diff']:.2e}; {check_end['clipped_fraction']:.0%} clipped")
    metrics = {
        "mean_norms": mean_norms,
        "train_error": error_rate(params, x_train, y_train),
        "test_error": error_rate(params, x_test, y_test),
        "seconds": seconds,
        "check": check,
        "check_end": check_end,
        "params": params,
    }
    print(f"DP-SGD ({args.epochs} epochs, clip {args.clip}, noise multiplier "
          f"{args.noise_multiplier}) in {seconds:.2f} s: train error {metrics['train_error']:.2%}, "
          f"test error {metrics['test_error']:.2%}")
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
