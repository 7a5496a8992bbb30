"""Child-sum Tree-LSTM on n-ary trees: @spmd (the recursive call inside a loop over a node's
children) against the same model hand-batched by height in numpy.

The per-example model is written as a user would (Tai et al. 2015, child-sum variant): a
node sums its children's states in a `for` loop around the recursive call, with a forget
gate per child, and a classifier reads the root. The hand-batched version plans the
minibatch's nodes by height (all leaves in one step, then one step per height, the
children's states gathered by index and summed per parent with one scatter-add). Both use
numpy and spmdbatch's autodiff; the forward pass of the hand-batched code runs on plain
numpy arrays.

Reported per batch size: batched `encode` calls per minibatch (stats(); equal to the
tallest tree's height when the loop's iterations run side by side,
frontend/child_loops.py) and the time of a forward pass and of forward+backward
(value_and_grad), median of interleaved repetitions, with the paired ratio hand / spmd
(above 1: @spmd is faster).

    python benchmarks/childsum_tree.py
    python benchmarks/childsum_tree.py --batch-sizes 25,100 --repeat 5
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import (environment, interleaved, markdown_table, paired_ratio,  # noqa: E402
                           parse_args, summary, write_json)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import spmdbatch as sb  # noqa: E402


class KTree(NamedTuple):
    """An n-ary tree in pre-order (root 0): the children of k are kids[start[k]:end[k]]."""
    word: np.ndarray
    start: np.ndarray
    end: np.ndarray
    kids: np.ndarray
    label: np.ndarray


def random_ktree(rng, n, vocab, classes, window=4):
    """A random tree of `n` nodes: node i's parent is one of the `window` nodes before it
    (dependency-parse-like shapes: 1-4 children, height about n / 3)."""
    parent = [-1] + [int(rng.integers(max(0, i - window), i)) for i in range(1, n)]
    children = [[] for _ in range(n)]
    for c in range(1, n):
        children[parent[c]].append(c)
    order, stack = [], [0]
    while stack:
        k = stack.pop()
        order.append(k)
        stack.extend(reversed(children[k]))
    new = {old: i for i, old in enumerate(order)}
    start, end, kids = [], [], []
    for old in order:
        start.append(len(kids))
        kids.extend(new[c] for c in children[old])
        end.append(len(kids))
    return KTree(rng.integers(vocab, size=n), np.array(start), np.array(end),
                 np.array(kids if kids else [0]), rng.integers(classes, size=1))


def heights(t):
    h = np.ones(len(t.word), dtype=np.int64)
    for k in range(len(t.word) - 1, -1, -1):         # (children come after their parent)
        for j in range(t.start[k], t.end[k]):
            h[k] = max(h[k], h[t.kids[j]] + 1)
    return h


# --- the per-example model ----------------------------------------------------------------------
def init_params(vocab, emb, hidden, classes, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    u = lambda *shape: rng.uniform(-0.1, 0.1, size=shape).astype(dtype)  # noqa: E731
    return {"E": u(vocab, emb), "W": u(3 * hidden, emb), "U": u(3 * hidden, hidden),
            "b": np.zeros(3 * hidden, dtype), "Wf": u(hidden, emb), "Uf": u(hidden, hidden),
            "bf": np.ones(hidden, dtype), "S": u(classes, hidden), "bs": np.zeros(classes, dtype)}


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def encode(p, t, k):
    x = p["E"][t.word[k]]
    h_sum = np.zeros(p["U"].shape[1], dtype=x.dtype)
    fc = np.zeros(p["U"].shape[1], dtype=x.dtype)
    for j in range(t.start[k], t.end[k]):
        hc, cc = encode(p, t, t.kids[j])
        h_sum = h_sum + hc
        f = sigmoid(p["Wf"] @ x + p["Uf"] @ hc + p["bf"])
        fc = fc + f * cc
    i, o, u = np.split(p["W"] @ x + p["U"] @ h_sum + p["b"], 3)
    c = sigmoid(i) * np.tanh(u) + fc
    return sigmoid(o) * np.tanh(c), c


def tree_loss(p, t):
    h, c = encode(p, t, 0)
    return -sb.log_softmax(p["S"] @ h + p["bs"])[t.label[0]]


def spmd_loss(p, trees):
    return sb.spmd(tree_loss, in_axes=(None, 0))(p, trees).sum()


# --- hand-batched by height ------------------------------------------------------------------------
class Plan(NamedTuple):
    leaf_words: np.ndarray
    levels: list         # per height >= 2: (words, child positions, owner of each child)
    roots: np.ndarray    # positions of the roots in state order
    labels: np.ndarray


def plan_by_height(trees) -> Plan:
    hs = [heights(t) for t in trees]
    offsets = np.cumsum([0] + [len(t.word) for t in trees[:-1]])
    height = np.concatenate(hs)
    words = np.concatenate([t.word for t in trees])
    order = np.argsort(height, kind="stable")
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order))
    child_of, parent_of = [], []
    for t, o in zip(trees, offsets):
        for k in range(len(t.word)):
            for j in range(t.start[k], t.end[k]):
                child_of.append(o + t.kids[j])
                parent_of.append(o + k)
    child_of, parent_of = np.array(child_of, dtype=np.int64), np.array(parent_of, dtype=np.int64)
    levels = []
    for level in range(2, int(height.max()) + 1):
        nodes = order[height[order] == level]
        rank = np.full(len(order), -1)
        rank[nodes] = np.arange(len(nodes))
        mine = rank[parent_of] >= 0
        by_owner = np.argsort(rank[parent_of[mine]], kind="stable")
        levels.append((words[nodes], position[child_of[mine][by_owner]],
                       rank[parent_of[mine]][by_owner]))
    return Plan(words[order[height[order] == 1]], levels, position[offsets],
                np.array([t.label[0] for t in trees]))


def _segment_sum(rows, owner, n):
    if isinstance(rows, np.ndarray):
        out = np.zeros((n,) + rows.shape[1:], dtype=rows.dtype)
        np.add.at(out, owner, rows)
        return out
    return sb.index_update(np.zeros((n,) + rows.shape[1:], dtype=rows.dtype), owner, rows, mode="add")


def hand_loss(p, plan):
    x = p["E"][plan.leaf_words]
    i, o, u = np.split(x @ p["W"].T + p["b"], 3, axis=1)
    c = sigmoid(i) * np.tanh(u)
    hs, cs = [sigmoid(o) * np.tanh(c)], [c]
    for words, child, owner in plan.levels:
        all_h = np.concatenate(hs) if len(hs) > 1 else hs[0]
        all_c = np.concatenate(cs) if len(cs) > 1 else cs[0]
        x = p["E"][words]
        hc, cc = all_h[child], all_c[child]
        f = sigmoid((x @ p["Wf"].T + p["bf"])[owner] + hc @ p["Uf"].T)
        h_sum = _segment_sum(hc, owner, len(words))
        fc = _segment_sum(f * cc, owner, len(words))
        i, o, u = np.split(x @ p["W"].T + h_sum @ p["U"].T + p["b"], 3, axis=1)
        c = sigmoid(i) * np.tanh(u) + fc
        hs.append(sigmoid(o) * np.tanh(c))
        cs.append(c)
    all_h = np.concatenate(hs) if len(hs) > 1 else hs[0]
    logp = sb.log_softmax(all_h[plan.roots] @ p["S"].T + p["bs"], axis=1)
    return -logp[np.arange(len(plan.labels)), plan.labels].sum()


# --- benchmark ----------------------------------------------------------------------------------------
def main(argv=None):
    def options(ap):
        ap.add_argument("--trees", type=int, default=200, help="trees per pass")
        ap.add_argument("--batch-sizes", default="25,100")
        ap.add_argument("--hidden", type=int, default=150)
        ap.add_argument("--embedding", type=int, default=300)
        ap.add_argument("--nodes", type=int, default=20, help="mean nodes per tree")
    args = parse_args("childsum_tree", __doc__.split("\n\n")[0], 5, 1, options, argv)
    if args.quick:
        args.trees, args.hidden, args.embedding, args.batch_sizes = 12, 8, 8, "6"
    vocab, classes = 2000, 5
    rng = np.random.default_rng(0)
    sizes = np.clip(rng.gamma(3.0, args.nodes / 3.0, size=args.trees).astype(int), 1, 60)
    trees = [random_ktree(rng, int(n), vocab, classes) for n in sizes]
    p = init_params(vocab, args.embedding, args.hidden, classes)
    spmd_vg, hand_vg = sb.value_and_grad(spmd_loss), sb.value_and_grad(hand_loss)
    results, rows = [], []
    for bsz in [int(b) for b in args.batch_sizes.split(",")]:
        batches = [trees[i:i + bsz] for i in range(0, len(trees), bsz)]
        plans = [plan_by_height(b) for b in batches]
        (l1, g1), (l2, g2) = spmd_vg(p, batches[0]), hand_vg(p, plans[0])
        error = abs(float(l1) - float(l2)) / max(1.0, abs(float(l2)))
        for k in g1:
            scale = max(1e-3, float(np.abs(g2[k]).max()))
            error = max(error, float(np.abs(np.asarray(g1[k]) - np.asarray(g2[k])).max()) / scale)
        assert error < 1e-3, error
        with sb.stats() as st:
            spmd_loss(p, batches[0])
        calls = st.calls_by_function.get("encode", 0)
        tallest = max(int(heights(t)[0]) for t in batches[0])
        timed = interleaved({
            "spmd_fwd": lambda: [spmd_loss(p, b) for b in batches],
            "hand_fwd": lambda: [hand_loss(p, pl) for pl in plans],
            "spmd_train": lambda: [spmd_vg(p, b) for b in batches],
            "hand_train": lambda: [hand_vg(p, pl) for pl in plans],
        }, args.repeat, 0.05 if args.quick else 1.0, warmup=1)
        per_tree = 1e3 / len(trees)
        entry = {"batch": bsz, "trees": len(trees), "encode_calls_first_batch": calls,
                 "tallest_tree_first_batch": tallest, "max_relative_error": error}
        for name, t in timed.items():
            entry[f"{name}_ms_per_tree"] = summary(t["times"], per_tree)
        for mode in ("fwd", "train"):
            entry[f"hand_over_spmd_{mode}"] = paired_ratio(timed[f"hand_{mode}"]["times"],
                                                           timed[f"spmd_{mode}"]["times"])
        results.append(entry)
        rows.append([bsz, f"{calls} ({tallest})",
                     f"{entry['spmd_fwd_ms_per_tree']['median']:.3f}",
                     f"{entry['hand_fwd_ms_per_tree']['median']:.3f}",
                     f"{entry['hand_over_spmd_fwd']['median']:.2f}",
                     f"{entry['spmd_train_ms_per_tree']['median']:.3f}",
                     f"{entry['hand_train_ms_per_tree']['median']:.3f}",
                     f"{entry['hand_over_spmd_train']['median']:.2f}"])
    print(f"Child-sum Tree-LSTM, hidden {args.hidden}, embedding {args.embedding}, {len(trees)} "
          f"random n-ary trees (mean {np.mean(sizes):.1f} nodes), float32, ms per tree\n")
    print(markdown_table(["batch", "encode calls (tallest tree)", "spmd fwd", "hand fwd",
                          "hand/spmd fwd", "spmd train", "hand train", "hand/spmd train"], rows))
    write_json(args.json, {"benchmark": "childsum_tree", "config": vars(args) | {"json": str(args.json)},
                           "environment": environment(), "results": results})
    return results


if __name__ == "__main__":
    main()
