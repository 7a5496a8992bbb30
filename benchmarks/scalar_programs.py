"""Scalar-heavy per-example programs: the per-example Python loop vs @spmd (forward only).

Five programs written for one example, each run on a batch of random inputs three ways: a
Python loop calling the function on every example, the function batched with @spmd, and the
same algorithm batched by hand with numpy (`HAND`). All are checked to return the same values
before timing. Rounds are interleaved; the ratios (loop time / spmd time and numpy time /
spmd time, > 1 means @spmd is faster) are taken per round and the median reported. A program @spmd cannot run raises at the check and is reported as skipped, with
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


# --------------------------------------------------------------------------- by hand, batched
# The same algorithms vectorised over the batch by hand with numpy (what a careful user would
# write instead of the loop): each takes the batch's examples and returns the results of all.
# They keep each program's own loops and vectorise across examples only, so they do the work
# the batch program does; lanes that have finished are dropped (collatz, dfs) or masked.

def _padded(arrays, fill, dtype):
    """Rows of different lengths as one (B, max length) array and the lengths."""
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    out = np.full((len(arrays), max(1, int(lengths.max()))), fill, dtype=dtype)
    for i, a in enumerate(arrays):
        out[i, :len(a)] = a
    return out, lengths


def collatz_numpy(examples):
    n = np.array([ex[0] for ex in examples], dtype=np.int64)
    steps = np.zeros(len(n), dtype=np.int64)
    idx = (n != 1).nonzero()[0]
    cur = n[idx]
    while len(idx):
        cur = np.where(cur % 2 == 0, cur // 2, 3 * cur + 1)
        steps[idx] += 1
        keep = cur != 1
        idx, cur = idx[keep], cur[keep]
    return steps


def levenshtein_numpy(examples):
    A, la = _padded([ex[0] for ex in examples], -1, np.int64)
    Bs, lb = _padded([ex[1] for ex in examples], -2, np.int64)
    rows = np.arange(len(examples))
    prev = np.broadcast_to(np.arange(Bs.shape[1] + 1), (len(examples), Bs.shape[1] + 1)).copy()
    for i in range(A.shape[1]):
        cur = np.empty_like(prev)
        cur[:, 0] = i + 1
        for j in range(Bs.shape[1]):
            cost = (A[:, i] != Bs[:, j]).astype(np.int64)
            cur[:, j + 1] = np.minimum(np.minimum(prev[:, j + 1] + 1, cur[:, j] + 1), prev[:, j] + cost)
        prev = np.where((i < la)[:, None], cur, prev)
    return prev[rows, lb]


def ctc_forward_numpy(examples):
    B = len(examples)
    T = np.array([ex[0].shape[0] for ex in examples])
    logp = np.zeros((B, T.max(), examples[0][0].shape[1]))
    for i, ex in enumerate(examples):
        logp[i, :T[i]] = ex[0]
    labels, L = _padded([ex[1] for ex in examples], 0, np.int64)
    S = 2 * L + 1
    Smax = int(S.max())
    ext = np.zeros((B, Smax), dtype=np.int64)
    ext[:, 1:2 * labels.shape[1]:2] = labels
    rows = np.arange(B)
    alpha = np.full((B, Smax), -np.inf)
    alpha[:, 0] = logp[:, 0, 0]
    alpha[:, 1] = logp[rows, 0, ext[:, 1]]
    for t in range(1, int(T.max())):
        new = np.full((B, Smax), -np.inf)
        live = t < T
        for s in range(Smax):
            a = alpha[:, s]
            if s >= 1:
                a = np.logaddexp(a, alpha[:, s - 1])
            if s >= 2:
                skip = (ext[:, s] != 0) & (ext[:, s] != ext[:, s - 2])
                a = np.where(skip, np.logaddexp(a, alpha[:, s - 2]), a)
            new[:, s] = a + logp[rows, t, ext[:, s]]
        alpha = np.where(live[:, None], new, alpha)
    return -np.logaddexp(alpha[rows, S - 1], alpha[rows, S - 2])


def expression_tree_numpy(examples):
    op, n = _padded([ex[0].op for ex in examples], 0, np.int64)
    left, _ = _padded([ex[0].left for ex in examples], 0, np.int64)
    right, _ = _padded([ex[0].right for ex in examples], 0, np.int64)
    value, _ = _padded([ex[0].value for ex in examples], 0.0, np.float64)
    rows = np.arange(len(examples))
    val = np.zeros(op.shape)
    for k in range(op.shape[1]):        # post-order: children come before their parent
        a, b = val[rows, left[:, k]], val[rows, right[:, k]]
        o = op[:, k]
        val[:, k] = np.where(o == 0, value[:, k], np.where(o == 1, a + b, np.where(o == 2, a * b, a - b)))
    return val[rows, n - 1]


def tree_dfs_stack_numpy(examples):
    left, n = _padded([ex[0].left for ex in examples], -1, np.int64)
    right, _ = _padded([ex[0].right for ex in examples], -1, np.int64)
    value, _ = _padded([ex[0].value for ex in examples], 0.0, np.float64)
    B, size = left.shape
    stack = np.zeros((B, size + 1), dtype=np.int64)
    depth = np.zeros((B, size + 1), dtype=np.int64)
    stack[:, 0] = n - 1
    top = np.ones(B, dtype=np.int64)
    total = np.zeros(B)
    idx = np.arange(B)
    while len(idx):
        top[idx] -= 1
        k, d = stack[idx, top[idx]], depth[idx, top[idx]]
        total[idx] += value[idx, k] * (d + 1)
        inner = left[idx, k] >= 0
        i, t, ki = idx[inner], top[idx[inner]], k[inner]
        stack[i, t], depth[i, t] = left[i, ki], d[inner] + 1
        stack[i, t + 1], depth[i, t + 1] = right[i, ki], d[inner] + 1
        top[i] += 2
        idx = idx[top[idx] > 0]
    return total


HAND = {"collatz": collatz_numpy, "levenshtein": levenshtein_numpy, "ctc_forward": ctc_forward_numpy,
        "expression_tree": expression_tree_numpy, "tree_dfs_stack": tree_dfs_stack_numpy}


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
        ap.add_argument("--batch-sizes", default="64,256")
        ap.add_argument("--programs", default=",".join(PROGRAMS))
    args = parse_args(NAME, __doc__.splitlines()[0], default_repeat=7, quick_repeat=1,
                      add_arguments=add, argv=argv)
    if args.quick:
        args.batch_sizes = "8"
    target_s = 0.02 if args.quick else 0.5
    results, skipped = [], {}
    for name in args.programs.split(","):
        fn = PROGRAMS[name]
        hand = HAND[name]
        batched = sb.spmd(fn)
        for bsz in [int(b) for b in args.batch_sizes.split(",")]:
            examples, _ = make_inputs(name, bsz, np.random.default_rng(0))
            cols = columns(examples)
            expected = np.array([fn(*ex) for ex in examples])
            if not np.allclose(hand(examples), expected, rtol=1e-9, atol=1e-9):
                raise SystemExit(f"{name}: the hand-batched numpy version differs from the loop")
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

            def numpy_call(hand=hand, examples=examples):
                return hand(examples)
            t = interleaved({"loop": loop, "spmd": spmd_call, "numpy": numpy_call}, args.repeat, target_s)
            results.append({
                "program": name, "batch": bsz,
                "loop_ms": summary(t["loop"]["times"], 1e3),
                "spmd_ms": summary(t["spmd"]["times"], 1e3),
                "numpy_ms": summary(t["numpy"]["times"], 1e3),
                "ratio_loop_over_spmd": paired_ratio(t["loop"]["times"], t["spmd"]["times"]),
                "ratio_numpy_over_spmd": paired_ratio(t["numpy"]["times"], t["spmd"]["times"]),
            })
    print(f"Scalar programs, forward, time / @spmd time (> 1: @spmd faster), median of "
          f"{args.repeat} interleaved rounds, {args.threads} BLAS thread(s); numpy: the same "
          f"algorithm batched by hand\n")
    print(markdown_table(
        ["program", "batch", "loop ms", "numpy ms", "spmd ms", "loop / spmd", "numpy / spmd"],
        [[r["program"], r["batch"], f"{r['loop_ms']['median']:.2f}", f"{r['numpy_ms']['median']:.2f}",
          f"{r['spmd_ms']['median']:.2f}", f"{r['ratio_loop_over_spmd']['median']:.3f}",
          f"{r['ratio_numpy_over_spmd']['median']:.3f}"] for r in results]))
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
