"""Scalar-heavy per-example programs: the per-example Python loop vs @spmd (forward only).

Five programs written for one example, each run on a batch of random inputs two ways: a
Python loop calling the function on every example, and the function batched with @spmd.
Both are checked to return the same values before timing. Rounds are interleaved; the
ratio (loop time / spmd time, > 1 means @spmd is faster) is taken per round and the median
reported. A program @spmd cannot run raises at the check and is reported as skipped, with
the error.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/scalar_programs.py
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from _bench_common import (environment, interleaved, markdown_table, paired_ratio,  # noqa: E402
                           parse_args, summary, write_json)

import spmdbatch as sb  # noqa: E402

NAME = "scalar_programs"


# --------------------------------------------------------------------------- the programs

def collatz(n):
    """Steps of the Collatz map from n to 1."""
    steps = 0
    while n != 1:
        if n % 2 == 0:
            n = n // 2
        else:
            n = 3 * n + 1
        steps += 1
    return steps


def levenshtein(a, b):
    """Edit distance of two integer sequences (one DP row at a time)."""
    prev = np.zeros(len(b) + 1, dtype=np.int64)
    for j in range(len(b) + 1):
        prev[j] = j
    for i in range(len(a)):
        cur = np.zeros(len(b) + 1, dtype=np.int64)
        cur[0] = i + 1
        for j in range(len(b)):
            cost = 0 if a[i] == b[j] else 1
            cur[j + 1] = min(prev[j + 1] + 1, cur[j] + 1, prev[j] + cost)
        prev = cur
    return prev[len(b)]


def ctc_forward(logp, labels):
    """CTC negative log-likelihood of `labels` under per-frame log-probabilities (blank 0)."""
    ext = np.zeros(2 * len(labels) + 1, dtype=np.int64)
    for s in range(len(labels)):
        ext[2 * s + 1] = labels[s]
    S = len(ext)
    alpha = np.full(S, -np.inf)
    alpha[0] = logp[0, 0]
    alpha[1] = logp[0, ext[1]]
    for t in range(1, logp.shape[0]):
        new = np.full(S, -np.inf)
        for s in range(S):
            a = alpha[s]
            if s >= 1:
                a = np.logaddexp(a, alpha[s - 1])
            if s >= 2 and ext[s] != 0 and ext[s] != ext[s - 2]:
                a = np.logaddexp(a, alpha[s - 2])
            new[s] = a + logp[t, ext[s]]
        alpha = new
    return -np.logaddexp(alpha[S - 1], alpha[S - 2])


def evaluate(expr, k):
    """Value of node k of an expression tree (op 0: constant, 1: +, 2: *, 3: -)."""
    if expr.op[k] == 0:
        return expr.value[k]
    a = evaluate(expr, expr.left[k])
    b = evaluate(expr, expr.right[k])
    if expr.op[k] == 1:
        return a + b
    if expr.op[k] == 2:
        return a * b
    return a - b


def eval_root(expr):
    return evaluate(expr, len(expr.op) - 1)


def dfs_sum(tree):
    """Sum of node values weighted by depth, by depth-first search with an explicit stack."""
    stack = [len(tree.left) - 1]
    depths = [0]
    total = 0.0
    while len(stack) > 0:
        k = stack.pop()
        d = depths.pop()
        total += tree.value[k] * (d + 1)
        if tree.left[k] >= 0:
            stack.append(tree.left[k])
            depths.append(d + 1)
            stack.append(tree.right[k])
            depths.append(d + 1)
    return total


# --------------------------------------------------------------------------- inputs

class Expr(NamedTuple):
    """An expression tree as post-order node arrays (the root is the last node)."""
    op: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray


class Tree(NamedTuple):
    """A binary tree with a value per node, post-order (the root is the last node)."""
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray


def random_tree(rng, leaves):
    """Post-order arrays (left, right) of a random binary tree with `leaves` leaves."""
    left, right = [], []

    def build(n):
        if n == 1:
            left.append(-1)
            right.append(-1)
            return len(left) - 1
        m = int(rng.integers(1, n))
        a, b = build(m), build(n - m)
        left.append(a)
        right.append(b)
        return len(left) - 1
    build(leaves)
    return np.array(left, dtype=np.int64), np.array(right, dtype=np.int64)


def make_inputs(name, batch, rng):
    """(args per example, in_axes) for `batch` random examples of program `name`."""
    if name == "collatz":
        return [(int(n),) for n in rng.integers(1, 10_000, batch)], 0
    if name == "levenshtein":
        return [(rng.integers(0, 4, int(rng.integers(3, 12))), rng.integers(0, 4, int(rng.integers(3, 12))))
                for _ in range(batch)], 0
    if name == "ctc_forward":
        out = []
        for _ in range(batch):
            T, L = int(rng.integers(8, 16)), int(rng.integers(1, 4))
            logits = rng.normal(size=(T, 6))
            logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
            out.append((logp, rng.integers(1, 6, L)))
        return out, 0
    if name == "expression_tree":
        out = []
        for _ in range(batch):
            left, right = random_tree(rng, int(rng.integers(1, 12)))
            op = np.where(left < 0, 0, rng.integers(1, 4, len(left)))
            out.append((Expr(op, left, right, rng.normal(size=len(left))),))
        return out, 0
    if name == "tree_dfs_stack":
        out = []
        for _ in range(batch):
            left, right = random_tree(rng, int(rng.integers(1, 12)))
            out.append((Tree(left, right, rng.normal(size=len(left))),))
        return out, 0
    raise ValueError(name)


PROGRAMS = {"collatz": collatz, "levenshtein": levenshtein, "ctc_forward": ctc_forward,
            "expression_tree": eval_root, "tree_dfs_stack": dfs_sum}


def columns(examples):
    """Per-argument lists (or int arrays) of a batch of per-example argument tuples."""
    cols = []
    for values in zip(*examples):
        if all(isinstance(v, int) for v in values):
            cols.append(np.array(values, dtype=np.int64))
        else:
            cols.append(list(values))
    return cols


def main(argv=None):
    def add(ap):
        ap.add_argument("--batch-sizes", default="64,1024")
        ap.add_argument("--programs", default=",".join(PROGRAMS))
    args = parse_args(NAME, __doc__.splitlines()[0], default_repeat=7, quick_repeat=1,
                      add_arguments=add, argv=argv)
    if args.quick:
        args.batch_sizes = "8"
    target_s = 0.02 if args.quick else 0.5
    results, skipped = [], {}
    for name in args.programs.split(","):
        fn = PROGRAMS[name]
        batched = sb.spmd(fn)
        for bsz in [int(b) for b in args.batch_sizes.split(",")]:
            examples, _ = make_inputs(name, bsz, np.random.default_rng(0))
            cols = columns(examples)
            expected = np.array([fn(*ex) for ex in examples])
            try:
                got = np.asarray(batched(*cols))
            except Exception as exc:          # noqa: BLE001  (reported, not hidden)
                kind = ("unsupported" if isinstance(exc, sb.SpmdError)
                        else "a bug: the contract asks for an SpmdError or the loop's result")
                skipped[name] = f"{kind}; {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                break
            if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-9, atol=1e-9):
                raise SystemExit(f"{name}: @spmd result differs from the loop at batch {bsz}")

            def loop(fn=fn, examples=examples):
                return [fn(*ex) for ex in examples]

            def spmd_call(batched=batched, cols=cols):
                return batched(*cols)
            t = interleaved({"loop": loop, "spmd": spmd_call}, args.repeat, target_s)
            results.append({
                "program": name, "batch": bsz,
                "loop_ms": summary(t["loop"]["times"], 1e3),
                "spmd_ms": summary(t["spmd"]["times"], 1e3),
                "ratio_loop_over_spmd": paired_ratio(t["loop"]["times"], t["spmd"]["times"]),
            })
    print(f"Scalar programs, forward, loop time / @spmd time (> 1: @spmd faster), median of "
          f"{args.repeat} interleaved rounds, {args.threads} BLAS thread(s)\n")
    print(markdown_table(
        ["program", "batch", "loop ms", "spmd ms", "loop / spmd"],
        [[r["program"], r["batch"], f"{r['loop_ms']['median']:.2f}", f"{r['spmd_ms']['median']:.2f}",
          f"{r['ratio_loop_over_spmd']['median']:.3f}"] for r in results]))
    for name, why in skipped.items():
        print(f"skipped {name}: @spmd cannot run it on this branch ({why})")
    write_json(args.json, {
        "benchmark": NAME,
        "config": {"repeat": args.repeat, "quick": args.quick, "threads": args.threads,
                   "batch_sizes": args.batch_sizes, "programs": args.programs},
        "environment": environment(),
        "results": results,
        "skipped": skipped,
    })
    return results


if __name__ == "__main__":
    main()
