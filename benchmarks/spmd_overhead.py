"""Overhead of @spmd on straight-line code: a per-example MLP vs the same model hand-batched.

The model is a 2-layer MLP (20 -> 64 tanh -> 10) with softmax cross-entropy on an integer
label, in float32.  The per-example version is written for ONE example and batched with
``spmd(loss, in_axes=(None, 0, 0))`` and summed over the batch; the hand-batched version
carries the batch axis itself (``X @ W1.T`` ...).  Both are timed forward+backward
(``spmdbatch.value_and_grad`` w.r.t. the parameter dict) and forward only, at several batch
sizes; the variants are interleaved in every repetition and the ratio spmd/hand is taken
per repetition (paired), then the median over repetitions is reported. The per-example
function is straight-line code, which @spmd replays as staged code (execution/staging.py); the
"unstaged" column runs the same calls with staging turned off (the general path: a batching
rule per operation).

Before timing, the script asserts once per batch size that both give the same loss and
gradients (1e-4 relative, float32).

    python benchmarks/spmd_overhead.py [--repeat N] [--quick] [--cpu-time] [--json PATH]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import spmdbatch as sb  # noqa: E402
from spmdbatch.execution import staging  # noqa: E402
import _bench_common  # noqa: E402
from _bench_common import (environment, interleaved, markdown_table, paired_ratio,  # noqa: E402
                           parse_args, summary, write_json)

NAME = "spmd_overhead"
D_IN, D_HIDDEN, D_OUT = 20, 64, 10
DTYPE = np.float32
RTOL = 1e-4


# --- the model, per example and hand-batched ------------------------------------------------
def loss(params, x, y):
    """Cross-entropy of one example: x has shape (20,), y is an integer label."""
    h = np.tanh(params["W1"] @ x + params["b1"])
    logits = params["W2"] @ h + params["b2"]
    return -sb.log_softmax(logits)[y]


spmd_loss = sb.spmd(loss, in_axes=(None, 0, 0))


def spmd_total(params, X, Y):
    return spmd_loss(params, X, Y).sum()


def hand_total(params, X, Y):
    """The same model with an explicit batch axis: X has shape (B, 20), Y shape (B,)."""
    H = np.tanh(X @ params["W1"].T + params["b1"])
    logits = H @ params["W2"].T + params["b2"]
    logp = sb.log_softmax(logits, axis=-1)
    return -logp[np.arange(X.shape[0]), Y].sum()


spmd_vg = sb.value_and_grad(spmd_total)
hand_vg = sb.value_and_grad(hand_total)


def make_data(batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    params = {
        "W1": (rng.standard_normal((D_HIDDEN, D_IN)) / np.sqrt(D_IN)).astype(DTYPE),
        "b1": (0.1 * rng.standard_normal(D_HIDDEN)).astype(DTYPE),
        "W2": (rng.standard_normal((D_OUT, D_HIDDEN)) / np.sqrt(D_HIDDEN)).astype(DTYPE),
        "b2": (0.1 * rng.standard_normal(D_OUT)).astype(DTYPE),
    }
    X = rng.standard_normal((batch, D_IN)).astype(DTYPE)
    Y = rng.integers(0, D_OUT, batch)
    return params, X, Y


def _close(a, b, what):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == np.float32 and b.dtype == np.float32, f"{what}: dtypes {a.dtype}, {b.dtype}"
    scale = max(float(np.max(np.abs(b))), np.finfo(np.float32).tiny)
    err = float(np.max(np.abs(a - b))) / scale if a.size else 0.0
    assert err <= RTOL, f"{what}: relative difference {err:.3g} > {RTOL}"
    return err


def verify(params, X, Y) -> dict:
    """Assert that spmd and hand-batched agree on loss and gradients; return the errors."""
    v_s, g_s = spmd_vg(params, X, Y)
    v_h, g_h = hand_vg(params, X, Y)
    errors = {"loss": _close(v_s, v_h, "loss (value_and_grad)"),
              "loss_forward": _close(spmd_total(params, X, Y), hand_total(params, X, Y),
                                     "loss (forward)")}
    assert set(g_s) == set(g_h) == set(params)
    for k in params:
        assert g_s[k].shape == params[k].shape, (k, g_s[k].shape)
        errors[f"grad_{k}"] = _close(g_s[k], g_h[k], f"gradient {k}")
    return errors


def main():
    def add_arguments(ap):
        ap.add_argument("--cpu-time", action="store_true",
                        help="time with the process's CPU time (time.process_time) instead of "
                             "wall time: steadier on a machine other processes load")
    args = parse_args(NAME, __doc__.splitlines()[0], default_repeat=20, quick_repeat=3,
                      add_arguments=add_arguments)
    if args.cpu_time:
        _bench_common.CLOCK = time.process_time
    batches = [16] if args.quick else [16, 64, 256]
    target_s = 0.005 if args.quick else 0.05
    modes = {
        "fwd+bwd": (lambda p, X, Y: spmd_vg(p, X, Y), lambda p, X, Y: hand_vg(p, X, Y)),
        "fwd": (spmd_total, hand_total),
    }

    def unstaged(fn):
        def run(*args):
            with staging.disabled():
                return fn(*args)
        return run
    results, rows = [], []
    for mode, (spmd_fn, hand_fn) in modes.items():
        for batch in batches:
            params, X, Y = make_data(batch)
            errors = verify(params, X, Y)
            general = unstaged(spmd_fn)
            timed = interleaved({"spmd": lambda: spmd_fn(params, X, Y),
                                 "hand": lambda: hand_fn(params, X, Y),
                                 "unstaged": lambda: general(params, X, Y)},
                                repeat=args.repeat, target_s=target_s)
            s = summary(timed["spmd"]["times"], 1e3)
            h = summary(timed["hand"]["times"], 1e3)
            u = summary(timed["unstaged"]["times"], 1e3)
            ratio = paired_ratio(timed["spmd"]["times"], timed["hand"]["times"])
            ratio_u = paired_ratio(timed["unstaged"]["times"], timed["hand"]["times"])
            results.append({
                "mode": mode, "batch": batch,
                "spmd_ms": s, "hand_ms": h, "unstaged_ms": u, "ratio_spmd_over_hand": ratio,
                "ratio_unstaged_over_hand": ratio_u,
                "calls_per_repeat": {k: timed[k]["number"] for k in timed},
                "max_relative_error": max(errors.values()),
            })
            rows.append([mode, batch, f"{s['median']:.3f} ({s['min']:.3f})",
                         f"{h['median']:.3f} ({h['min']:.3f})",
                         f"{ratio['median']:.2f} ({ratio['min']:.2f}-{ratio['max']:.2f})",
                         f"{ratio_u['median']:.2f} ({ratio_u['min']:.2f}-{ratio_u['max']:.2f})"])
    print(f"## spmd overhead: per-example MLP {D_IN}->{D_HIDDEN}->{D_OUT} (float32), "
          f"spmd(loss, in_axes=(None, 0, 0)) summed vs hand-batched\n")
    print(f"verified: loss and gradients agree to {RTOL:g} relative at every batch size\n")
    print(markdown_table(
        ["mode", "batch", "spmd ms/iter median (min)", "hand-batched ms/iter median (min)",
         "ratio spmd/hand median (range)", "unstaged spmd/hand median (range)"], rows))
    print(f"\n{args.repeat} interleaved repetitions per row; ratio paired per repetition.")
    write_json(args.json, {
        "benchmark": NAME,
        "config": {"repeat": args.repeat, "quick": args.quick, "batches": batches,
                   "clock": "process_time" if args.cpu_time else "perf_counter",
                   "dims": [D_IN, D_HIDDEN, D_OUT], "dtype": "float32",
                   "target_seconds_per_repeat": target_s, "rtol": RTOL},
        "environment": environment(),
        "results": results,
    })


if __name__ == "__main__":
    main()
