"""Multinomial logistic regression trained with spmdbatch's reverse-mode autodiff.

A synthetic task: 3 classes in 20 dimensions, each class a mixture of two Gaussian blobs.
The model is an affine score ``x @ w.T + b`` with a softmax cross-entropy loss, written as
plain numpy on traced values; `spmdbatch.value_and_grad` gives the gradient and a small
RMSProp over pytrees (`spmdbatch.tree_map`) updates the parameters.

    python examples/logistic_regression.py [--epochs N] [--seed S] [--check]
    python -m examples.logistic_regression --check
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import NamedTuple

import numpy as np

if __package__ in (None, ""):  # run as a script from a source checkout without installing
    import os
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import spmdbatch as sb

FLOAT = sb.DEFAULT_FLOAT
N_FEATURES = 20
N_CLASSES = 3
N_TRAIN = 1500
N_TEST = 500


# --- data ---------------------------------------------------------------------------------
def make_data(seed: int, n_train: int = N_TRAIN, n_test: int = N_TEST):
    """Train and test sets drawn from one mixture of Gaussians (2 blobs per class).

    The class centres are orthogonal, 2.6 from the origin (about 3.7 apart); each class is
    two blobs offset 1.0 from its centre in random directions, with unit-variance noise, so
    the classes overlap a little and the best linear classifier errs on a few percent.
    """
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((N_FEATURES, N_FEATURES)))
    centres = 2.6 * basis[:N_CLASSES]
    offsets = rng.standard_normal((N_CLASSES, 2, N_FEATURES))
    offsets /= np.linalg.norm(offsets, axis=-1, keepdims=True)
    blobs = centres[:, None, :] + 1.0 * offsets

    def sample(n):
        y = rng.integers(0, N_CLASSES, size=n)
        blob = rng.integers(0, 2, size=n)
        x = blobs[y, blob] + rng.standard_normal((n, N_FEATURES))
        return x.astype(FLOAT), y.astype(np.int64)

    return sample(n_train), sample(n_test)


# --- model --------------------------------------------------------------------------------
class Params(NamedTuple):
    w: np.ndarray  # (N_CLASSES, N_FEATURES)
    b: np.ndarray  # (N_CLASSES,)


def init_params(seed: int) -> Params:
    rng = np.random.default_rng(seed + 1)
    w = 0.01 * rng.standard_normal((N_CLASSES, N_FEATURES))
    return Params(w=w.astype(FLOAT), b=np.zeros(N_CLASSES, dtype=FLOAT))


def scores(params: Params, x):
    return x @ params.w.T + params.b


def cost(params: Params, x, y):
    """Mean softmax cross-entropy of the affine scores against integer labels `y`."""
    log_p = sb.log_softmax(scores(params, x), axis=-1)
    return -log_p[np.arange(len(y)), y].mean()


def error_rate(params: Params, x, y) -> float:
    return float(np.mean(np.argmax(scores(params, x), axis=-1) != y))


# --- optimizer ----------------------------------------------------------------------------
def rmsprop_init(params):
    return sb.tree_map(np.zeros_like, params)


def rmsprop_update(params, grads, state, lr=0.01, decay=0.9, eps=1e-8):
    """One RMSProp step: returns (new params, new state)."""
    state = sb.tree_map(lambda s, g: decay * s + (1 - decay) * g * g, state, grads)
    params = sb.tree_map(lambda p, g, s: p - lr * g / (np.sqrt(s) + eps), params, grads, state)
    return params, state


# --- driver -------------------------------------------------------------------------------
def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100, help="passes over the training set")
    parser.add_argument("--seed", type=int, default=0, help="seed for data, init and shuffling")
    parser.add_argument("--batch-size", type=int, default=100, help="minibatch size")
    parser.add_argument("--check", action="store_true",
                        help="check the cost's gradients against finite differences first")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    """Train and evaluate; returns the metrics (losses per epoch, errors, seconds)."""
    args = parse_args(argv)
    (x_train, y_train), (x_test, y_test) = make_data(args.seed)
    params = init_params(args.seed)

    checked = None
    if args.check:
        xs, ys = x_train[:8], y_train[:8]
        sb.check_gradients(lambda p: cost(p, xs, ys), params)
        checked = True
        print("gradient check passed (reverse mode vs. finite differences, 8 examples)")

    loss_and_grad = sb.value_and_grad(cost)
    state = rmsprop_init(params)
    rng = np.random.default_rng(args.seed + 2)
    losses = []
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(y_train))
        for i in range(0, len(order), args.batch_size):
            batch = order[i:i + args.batch_size]
            _, grads = loss_and_grad(params, x_train[batch], y_train[batch])
            params, state = rmsprop_update(params, grads, state)
        losses.append(float(cost(params, x_train, y_train)))
        if epoch == 1 or epoch % 10 == 0 or epoch == args.epochs:
            print(f"epoch {epoch:4d}  train loss {losses[-1]:.4f}")
    seconds = time.perf_counter() - start

    metrics = {
        "losses": losses,
        "initial_loss": float(cost(init_params(args.seed), x_train, y_train)),
        "final_loss": losses[-1] if losses else None,
        "train_error": error_rate(params, x_train, y_train),
        "test_error": error_rate(params, x_test, y_test),
        "seconds": seconds,
        "check_passed": checked,
        "params": params,
    }
    print(f"trained {args.epochs} epochs in {seconds:.2f} s")
    print(f"train error {metrics['train_error']:.2%}  test error {metrics['test_error']:.2%}")
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
