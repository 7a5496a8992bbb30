"""Batched recursion benchmark: a recursive Tree-LSTM encoder under @spmd vs hand-batched.

The per-example model is the natural recursive one (binary Tree-LSTM of Tai et al. 2015,
a softmax classifier on every node, loss summed over nodes). It is compared, in one run,
with a hand-batched implementation that groups the nodes of the minibatch by height and
uses the same primitives and autodiff, on forward+backward (value_and_grad).

    python benchmarks/tree_recursion.py                 # random trees, SST-like sizes
    python benchmarks/tree_recursion.py --data ../shared/data/sst
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import add_threads_argument, limit_threads  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import spmdbatch as sb  # noqa: E402
from examples.treelstm import handbatched  # noqa: E402


class Tree(NamedTuple):
    word: np.ndarray
    left: np.ndarray
    right: np.ndarray
    label: np.ndarray


# --- data -------------------------------------------------------------------------------------------
def random_tree(rng, n_leaves, vocab, classes):
    """A random binary tree (post-order arrays, root last) with `n_leaves` leaves."""
    word, left, right = [], [], []

    def build(n):  # the shape first (random splits), then the arrays in post-order
        if n == 1:
            return None
        m = int(rng.integers(1, n))
        return (build(m), m, build(n - m), n - m)
    shape = build(n_leaves)

    def emit(node, n):
        if node is None:
            word.append(int(rng.integers(1, vocab)))
            left.append(-1)
            right.append(-1)
            return len(word) - 1
        lnode, lm, rnode, rm = node
        lc = emit(lnode, lm)
        rc = emit(rnode, rm)
        word.append(0)
        left.append(lc)
        right.append(rc)
        return len(word) - 1
    emit(shape, n_leaves)
    n = len(word)
    return Tree(np.array(word), np.array(left), np.array(right), rng.integers(classes, size=n))


def sst_like_trees(n, vocab, classes, seed=0):
    """Random trees whose leaf counts follow SST's sentence lengths (about 19 words on average)."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.gamma(3.5, 19.0 / 3.5, size=n).astype(int), 1, 56)
    return [random_tree(rng, int(k), vocab, classes) for k in lengths]


def load_trees(data_dir, n):
    from examples.treelstm import data as sst
    corpus = sst.load_sst(data_dir)
    trees = [Tree(t.word, t.left, t.right, t.label) for t in corpus.train[:n]]
    return trees, len(corpus.vocab), corpus.num_classes


def depth(tree, k=None):
    depths = np.ones(len(tree.word), dtype=int)
    for k in range(len(tree.word)):
        if tree.left[k] >= 0:
            depths[k] = 1 + max(depths[tree.left[k]], depths[tree.right[k]])
    return int(depths[-1])


# --- the model ---------------------------------------------------------------------------------------
def init_params(vocab, emb, hidden, classes, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    u = lambda *shape: rng.uniform(-0.05, 0.05, size=shape).astype(dtype)  # noqa: E731
    return {"E": u(vocab, emb), "W": u(3 * hidden, emb), "bw": np.zeros(3 * hidden, dtype),
            "U": u(5 * hidden, 2 * hidden), "bu": np.zeros(5 * hidden, dtype),
            "S": u(classes, hidden), "bs": np.zeros(classes, dtype)}


def leaf_cell(p, x):
    i, o, u = np.split(p["W"] @ x + p["bw"], 3)
    c = sb.sigmoid(i) * np.tanh(u)
    return sb.sigmoid(o) * np.tanh(c), c


def node_cell(p, hl, cl, hr, cr):
    i, fl, fr, o, u = np.split(p["U"] @ np.concatenate([hl, hr]) + p["bu"], 5)
    c = sb.sigmoid(i) * np.tanh(u) + sb.sigmoid(fl) * cl + sb.sigmoid(fr) * cr
    return sb.sigmoid(o) * np.tanh(c), c


def node_loss(p, h, label):
    return -sb.log_softmax(p["S"] @ h + p["bs"])[label]


def encode(p, tree, k):
    if tree.left[k] < 0:
        h, c = leaf_cell(p, p["E"][tree.word[k]])
        return h, c, node_loss(p, h, tree.label[k])
    hl, cl, ll = encode(p, tree, tree.left[k])
    hr, cr, lr = encode(p, tree, tree.right[k])
    h, c = node_cell(p, hl, cl, hr, cr)
    return h, c, ll + lr + node_loss(p, h, tree.label[k])


def tree_loss(p, tree):
    return encode(p, tree, len(tree.word) - 1)[2]


def spmd_loss(p, trees):
    return sb.spmd(tree_loss, in_axes=(None, 0))(p, trees).sum()


def tree_loss_postorder(p, tree):
    """The same model as a loop over the nodes in post-order (children before parents)."""
    n = len(tree.word)
    hidden = p["S"].shape[1]
    hs = np.zeros((n, hidden), dtype=p["S"].dtype)
    cs = np.zeros((n, hidden), dtype=p["S"].dtype)
    loss = 0.0
    for k in range(n):
        if tree.left[k] < 0:
            h, c = leaf_cell(p, p["E"][tree.word[k]])
        else:
            h, c = node_cell(p, hs[tree.left[k]], cs[tree.left[k]], hs[tree.right[k]], cs[tree.right[k]])
        hs[k] = h
        cs[k] = c
        loss = loss + node_loss(p, h, tree.label[k])
    return loss


def spmd_postorder_loss(p, trees):
    return sb.spmd(tree_loss_postorder, in_axes=(None, 0))(p, trees).sum()


def per_example_loss(p, trees):
    total = 0.0
    for t in trees:
        total = total + tree_loss(p, t)
    return total


# --- hand-batched by height ---------------------------------------------------------------------------
def plan_by_height(trees):
    """Nodes grouped by height: the example's hand-batched planner (dropout keys unused here)."""
    return handbatched.plan_by_height(trees, np.zeros(len(trees), dtype=np.int64))


def hand_batched_loss(p, plan):
    h, c = leaf_cell_batch(p, p["E"][plan.leaf_words])
    hs, cs = [h], [c]
    for left, right in plan.levels:
        all_h = np.concatenate(hs) if len(hs) > 1 else hs[0]
        all_c = np.concatenate(cs) if len(cs) > 1 else cs[0]
        h, c = node_cell_batch(p, all_h[left], all_c[left], all_h[right], all_c[right])
        hs.append(h)
        cs.append(c)
    all_h = np.concatenate(hs)
    logp = sb.log_softmax(all_h @ p["S"].T + p["bs"], axis=1)
    return -logp[np.arange(len(plan.labels)), plan.labels].sum()


def leaf_cell_batch(p, x):
    i, o, u = np.split(x @ p["W"].T + p["bw"], 3, axis=1)
    c = sb.sigmoid(i) * np.tanh(u)
    return sb.sigmoid(o) * np.tanh(c), c


def node_cell_batch(p, hl, cl, hr, cr):
    i, fl, fr, o, u = np.split(np.concatenate([hl, hr], axis=1) @ p["U"].T + p["bu"], 5, axis=1)
    c = sb.sigmoid(i) * np.tanh(u) + sb.sigmoid(fl) * cl + sb.sigmoid(fr) * cr
    return sb.sigmoid(o) * np.tanh(c), c


# --- benchmark ----------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="SST directory (train.txt); random SST-like trees if omitted")
    ap.add_argument("--trees", type=int, default=200, help="trees per measurement pass")
    ap.add_argument("--batch-sizes", default="25,100")
    ap.add_argument("--hidden", type=int, default=150)
    ap.add_argument("--embedding", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--per-example", action="store_true", help="also time one tree at a time")
    ap.add_argument("--postorder", action="store_true",
                    help="also time the post-order loop formulation under @spmd")
    ap.add_argument("--quick", action="store_true", help="a tiny configuration for smoke tests")
    ap.add_argument("--json", default="benchmarks/results/tree_recursion.json")
    add_threads_argument(ap)
    args = ap.parse_args(argv)
    if args.threads < 1:
        ap.error("--threads must be at least 1")
    limit_threads(args.threads)
    if args.quick:
        args.trees, args.hidden, args.embedding, args.repeat, args.batch_sizes = 20, 16, 16, 1, "10"
    if args.data:
        trees, vocab, classes = load_trees(args.data, args.trees)
    else:
        vocab, classes = 2000, 5
        trees = sst_like_trees(args.trees, vocab, classes)
    p = init_params(vocab, args.embedding, args.hidden, classes)
    spmd_vg = sb.value_and_grad(spmd_loss)
    hand_vg = sb.value_and_grad(hand_batched_loss)
    per_vg = sb.value_and_grad(per_example_loss)
    post_vg = sb.value_and_grad(spmd_postorder_loss)
    rows = []
    for bsz in [int(b) for b in args.batch_sizes.split(",")]:
        batches = [trees[i:i + bsz] for i in range(0, len(trees), bsz)]
        plans = [plan_by_height(b) for b in batches]
        # same loss and gradients before timing
        (l1, g1), (l2, g2) = spmd_vg(p, batches[0]), hand_vg(p, plans[0])
        assert np.isclose(l1, l2, rtol=1e-4), (l1, l2)
        for k in g1:
            assert np.allclose(g1[k], g2[k], rtol=1e-3, atol=1e-6), k
        with sb.stats() as st:
            spmd_vg(p, batches[0])
        calls = st.calls_by_function.get("encode", 0)
        times = {"spmd": [], "hand-batched": [], "per-example": [], "post-order": []}
        if args.postorder:
            lp, gp = post_vg(p, batches[0])
            assert np.isclose(lp, l1, rtol=1e-4), (lp, l1)
        for _ in range(args.repeat):
            for name, run in (("spmd", lambda: [spmd_vg(p, b) for b in batches]),
                              ("hand-batched", lambda: [hand_vg(p, pl) for pl in plans])):
                t0 = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t0)
            if args.per_example:
                t0 = time.perf_counter()
                [per_vg(p, b) for b in batches]
                times["per-example"].append(time.perf_counter() - t0)
            if args.postorder:
                t0 = time.perf_counter()
                [post_vg(p, b) for b in batches]
                times["post-order"].append(time.perf_counter() - t0)
        row = {"batch": bsz, "trees": len(trees), "encode_calls_first_batch": calls,
               "max_depth_first_batch": max(depth(t) for t in batches[0])}
        for name, ts in times.items():
            if ts:
                row[f"{name}_trees_per_s"] = len(trees) / min(ts)
        ratios = [h / s for s, h in zip(times["spmd"], times["hand-batched"])]
        row["spmd_over_hand_speed"] = float(np.median(ratios))
        rows.append(row)
    print(f"Tree-LSTM forward+backward, hidden {args.hidden}, embedding {args.embedding}, "
          f"{'SST train' if args.data else 'SST-like random trees'} ({len(trees)} trees), float32\n")
    print("| batch | encode calls (max depth) | spmd trees/s | hand-batched trees/s | spmd/hand speed |"
          + (" per-example trees/s |" if args.per_example else "")
          + (" post-order loop trees/s |" if args.postorder else ""))
    print("|---|---|---|---|---|" + ("---|" if args.per_example else "") + ("---|" if args.postorder else ""))
    for r in rows:
        line = (f"| {r['batch']} | {r['encode_calls_first_batch']} ({r['max_depth_first_batch']}) | "
                f"{r['spmd_trees_per_s']:.0f} | {r['hand-batched_trees_per_s']:.0f} | "
                f"{r['spmd_over_hand_speed']:.2f} |")
        if args.per_example:
            line += f" {r['per-example_trees_per_s']:.0f} |"
        if args.postorder:
            line += f" {r['post-order_trees_per_s']:.0f} |"
        print(line)
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump({"config": vars(args), "rows": rows}, fh, indent=2)
    return rows


if __name__ == "__main__":
    main()
