"""Batched calls and recursion: results, gradients and the schedule (one call per depth)."""
from __future__ import annotations

import sys

import numpy as np
import pytest

import spmdbatch as sb
from trees import Tree, depth, random_tree

sys.path.insert(0, __file__.rsplit("/", 2)[0] + "/spmd")
from oracle import check_batched, check_batched_grad  # noqa: E402

H, D, V, C = 6, 4, 20, 5


def params(seed=0):
    rng = np.random.default_rng(seed)
    return {"E": rng.standard_normal((V, D)), "W": rng.standard_normal((3 * H, D)) * 0.3,
            "U": rng.standard_normal((5 * H, 2 * H)) * 0.3, "b": rng.standard_normal(5 * H) * 0.1,
            "S": rng.standard_normal((C, H)) * 0.3}


def leaf_cell(p, x):
    i, o, u = np.split(p["W"] @ x + p["b"][:3 * H], 3)
    c = sb.sigmoid(i) * np.tanh(u)
    return sb.sigmoid(o) * np.tanh(c), c


def node_cell(p, hl, cl, hr, cr):
    i, fl, fr, o, u = np.split(p["U"] @ np.concatenate([hl, hr]) + p["b"], 5)
    c = sb.sigmoid(i) * np.tanh(u) + sb.sigmoid(fl) * cl + sb.sigmoid(fr) * cr
    return sb.sigmoid(o) * np.tanh(c), c


def node_loss(p, h, label):
    return -sb.log_softmax(p["S"] @ h)[label]


def encode(p, tree, k):
    """The natural per-example recursive Tree-LSTM (loss summed over nodes)."""
    if tree.left[k] < 0:
        h, c = leaf_cell(p, p["E"][tree.word[k]])
        return h, c, node_loss(p, h, tree.label[k])
    hl, cl, ll = encode(p, tree, tree.left[k])
    hr, cr, lr = encode(p, tree, tree.right[k])
    h, c = node_cell(p, hl, cl, hr, cr)
    return h, c, ll + lr + node_loss(p, h, tree.label[k])


def tree_loss(p, tree):
    h, c, loss = encode(p, tree, len(tree.word) - 1)
    return loss


def tree_root(p, tree):
    return encode(p, tree, len(tree.word) - 1)[0]


def tree_loss_postorder(p, tree):
    """The same model as a loop over nodes in post-order (children come first)."""
    n = len(tree.word)
    hs = np.zeros((n, H))
    cs = np.zeros((n, H))
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


def is_even(n):
    return True if n == 0 else is_odd(n - 1)


def is_odd(n):
    return False if n == 0 else is_even(n - 1)


def forest(seed, sizes, shape="random"):
    rng = np.random.default_rng(seed)
    return [random_tree(rng, n, V, C, shape) for n in sizes]


SIZES = [1, 5, 9, 3, 12, 2, 7]


@pytest.mark.parametrize("f", [tree_loss, tree_root, tree_loss_postorder])
def test_recursive_and_postorder_models_match_loop(f):
    check_batched(f, params(), forest(1, SIZES), in_axes=(None, 0), rtol=1e-9)


def test_gradients_equal_sum_of_per_example():
    check_batched_grad(tree_loss, params(), forest(2, SIZES), rtol=1e-8)


def test_postorder_gradients_equal_recursive_per_example_gradients():
    # (the unbatched post-order code writes traced values into a numpy array, which plain
    # autodiff cannot follow; the recursive formulation is the same model)
    trees = forest(2, SIZES)
    got = sb.grad(lambda p: sb.spmd(tree_loss_postorder, in_axes=(None, 0))(p, trees).sum())(params())
    expected = None
    for t in trees:
        g = sb.grad(lambda p: tree_loss(p, t))(params())
        expected = g if expected is None else {k: expected[k] + g[k] for k in g}
    for k in expected:
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-8, atol=1e-12)


def test_single_node_trees_and_batch_of_one():
    check_batched(tree_loss, params(), forest(3, [1, 1, 1]), in_axes=(None, 0))
    check_batched(tree_loss, params(), forest(3, [6]), in_axes=(None, 0))


@pytest.mark.parametrize("shape", ["left", "right"])
def test_unbalanced_deep_trees_do_not_hit_the_recursion_limit(shape):
    trees = forest(4, [45, 3, 30], shape)   # depth 45: deeper than any SST tree
    assert max(depth(t) for t in trees) == 45
    check_batched(tree_loss, params(), trees, in_axes=(None, 0), rtol=1e-9)


def test_mutual_recursion():
    check_batched(is_even, np.array([0, 1, 4, 7, 10]))


def test_one_batched_encode_call_per_depth_level():
    trees = forest(5, [20, 3, 17, 8, 25, 1, 11, 14])
    nodes = sum(len(t.word) for t in trees)
    max_depth = max(depth(t) for t in trees)
    with sb.stats() as s:
        sb.spmd(tree_loss, in_axes=(None, 0))(params(), trees)
    assert s.calls_by_function["encode"] == max_depth, s
    assert sum(s.lanes["encode"]) == nodes          # every node handled exactly once
    assert s.calls_by_function["leaf_cell"] <= max_depth and s.calls_by_function["node_cell"] < max_depth
    assert s.fused_calls == max_depth - 1
    assert nodes > 4 * max_depth                   # proportional to depth, not to node count


def test_call_under_partial_mask_runs_on_active_lanes_only():
    def rare(x):
        return x * 2 if x > 100 else x

    def f(x):
        return rare(x) + 1
    xs = np.arange(50.0)
    xs[7] = 500.0
    with sb.stats() as s:
        check_batched(f, xs)

    def g(x):
        if x > 100:
            return expensive(x)
        return x

    with sb.stats() as s:
        check_batched(g, xs)
    assert s.lanes["expensive"] == [1]             # compaction: one lane, not 50
    assert s.skipped_lanes >= 49


def expensive(x):
    return np.tanh(x) * 3


def test_tree_arrays_follow_lanes_by_index_map():
    # the per-lane tree arrays reach deep levels as index maps into the original batch
    from spmdbatch.runtime.mapped import LaneMapped
    seen = []

    @sb.native
    def record(name):        # (a probe: appending to a shared list in batched code is refused)
        seen.append(name)

    def probe(tree, k):
        if tree.left[k] < 0:
            return 0
        record(type(tree.word).__name__)
        return probe(tree, tree.left[k]) + probe(tree, tree.right[k]) + 1

    check_batched(probe, forest(6, [10, 4, 1, 7]), [9 * 2 - 2, 3 * 2 - 2, 0, 6 * 2 - 2])
    assert LaneMapped.__name__ in seen


SHARED_MAPS: list = []


@sb.native
def _record_shared(flag):
    """A probe (appending to a shared list in the batched code itself is refused)."""
    SHARED_MAPS.append(flag)


def fields_share_a_map(tree, k):
    """(module level: a closure would be called as an ordinary batched call, not by height)"""
    if tree.left[k] < 0:
        return 0
    total = fields_share_a_map(tree, tree.left[k]) + fields_share_a_map(tree, tree.right[k]) + 1
    if type(tree.word).__name__ == "LaneMapped":      # (the batched run, not the oracle)
        index = tree.word.index
        _record_shared(tree.left.index is index and tree.right.index is index
                       and tree.label.index is index)
    return total


def test_tree_fields_share_one_lane_map_after_the_recursive_calls():
    # the parked groups of every depth (the first holds the caller's ragged arrays, the others
    # index maps) merge into one group whose record fields still move with one index array
    SHARED_MAPS.clear()

    def root(tree):
        return fields_share_a_map(tree, len(tree.word) - 1)

    check_batched(root, forest(8, [10, 4, 7, 12]))
    assert SHARED_MAPS and all(SHARED_MAPS)


def test_ragged_tree_arrays_are_not_copied_by_fused_calls(monkeypatch):
    from spmdbatch.runtime import ragged
    copies = []
    original = ragged.Ragged._spmd_merge_lanes
    monkeypatch.setattr(ragged.Ragged, "_spmd_merge_lanes",
                        lambda self, others, counts: copies.append(1) or original(self, others, counts))

    def count(tree, k):
        if tree.left[k] < 0:
            return 1
        return count(tree, tree.left[k]) + count(tree, tree.right[k])
    trees = forest(7, [12, 15, 20])
    check_batched(count, trees, [len(t.word) - 1 for t in trees])
    assert copies == []
