"""Self-recursive calls scheduled by height (frontend/recursion.py, execution/frame.py `recurse`).

A call of a function to itself parks the calling lanes and adds the callee lanes to the
running frame, so a tree encoder runs all leaves (of every depth) in one step and the inner
nodes one height at a time. Every test compares with the per-example oracle (or an exact
value computed independently); the schedule tests read `spmdbatch.stats()`.
"""
from __future__ import annotations

import sys
import types
from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import spmdbatch as sb
from spmdbatch.frontend.transform import program_of
from trees import Tree, depth, random_tree

sys.path.insert(0, __file__.rsplit("/", 2)[0] + "/spmd")
from oracle import check_batched, check_batched_grad  # noqa: E402

H, D, V = 5, 3, 12
THIS_MODULE = sys.modules[__name__]


def params(seed=0):
    rng = np.random.default_rng(seed)
    return {"E": rng.standard_normal((V, D)), "W": rng.standard_normal((H, D)) * 0.5,
            "b": rng.standard_normal(H) * 0.1, "U": rng.standard_normal((H, 2 * H)) * 0.4,
            "c": rng.standard_normal(H) * 0.1, "A": rng.standard_normal((H, H)) * 0.4,
            "h0": rng.standard_normal(H) * 0.3}


def forest(seed, sizes, shape="random"):
    rng = np.random.default_rng(seed)
    return [random_tree(rng, n, V, 3, shape) for n in sizes]


def heights(tree: Tree) -> np.ndarray:
    """Height of every node (leaves 0), for post-order trees."""
    h = np.zeros(len(tree.word), dtype=int)
    for k in range(len(tree.word)):                  # children come before their parent
        if tree.left[k] >= 0:
            h[k] = 1 + max(h[tree.left[k]], h[tree.right[k]])
    return h


def depths(tree: Tree) -> np.ndarray:
    """Depth of every node (the root 1)."""
    d = np.zeros(len(tree.word), dtype=int)
    d[-1] = 1
    for k in range(len(tree.word) - 1, -1, -1):      # parents come after their children
        if tree.left[k] >= 0:
            d[tree.left[k]] = d[tree.right[k]] = d[k] + 1
    return d


# --- a binary tree encoder: helpers counted by stats -----------------------------------------
def hs_leaf(p, x):
    return np.tanh(p["W"] @ x + p["b"])


def hs_node(p, hl, hr):
    return np.tanh(p["U"] @ np.concatenate([hl, hr]) + p["c"])


def hs_encode(p, tree, k):
    if tree.left[k] < 0:
        return hs_leaf(p, p["E"][tree.word[k]])
    hl = hs_encode(p, tree, tree.left[k])
    hr = hs_encode(p, tree, tree.right[k])
    return hs_node(p, hl, hr)


def hs_root(p, tree):
    return hs_encode(p, tree, len(tree.word) - 1)


def hs_loss(p, tree):
    h = hs_root(p, tree)
    return np.sum(h * h) + h[0]


def hs_count(tree, k):
    """(leaves, inner nodes, height) of the subtree at k: a tuple of ints."""
    if tree.left[k] < 0:
        return 1, 0, 0
    a = hs_count(tree, tree.left[k])
    b = hs_count(tree, tree.right[k])
    return a[0] + b[0], a[1] + b[1] + 1, max(a[2], b[2]) + 1


# === 1. the schedule: leaves once, inner nodes once per height ===============================
def _expected_schedule(trees):
    all_h = np.concatenate([heights(t) for t in trees])
    all_d = np.concatenate([depths(t) for t in trees])
    max_depth = int(all_d.max())
    by_depth = [int(np.count_nonzero(all_d == d)) for d in range(1, max_depth + 1)]
    by_height = [int(np.count_nonzero(all_h == h)) for h in range(1, max_depth)]
    return max_depth, by_depth, by_height, int(np.count_nonzero(all_h == 0))


@pytest.mark.parametrize("sizes, shape", [([20, 3, 17, 8, 25, 1, 11, 14], "random"),
                                          ([9, 1, 4, 2], "left"), ([6, 6, 1, 13], "right")])
def test_stats_show_one_leaf_step_and_one_step_per_height(sizes, shape):
    trees = forest(5, sizes, shape)
    nodes = sum(len(t.word) for t in trees)
    max_depth, by_depth, by_height, n_leaves = _expected_schedule(trees)
    assert max_depth == max(depth(t) for t in trees) and max_depth >= 4
    with sb.stats() as s:
        got = sb.spmd(hs_root, in_axes=(None, 0))(params(), trees)
    # the leaf helper runs once, on every leaf of every depth
    assert s.calls_by_function["hs_leaf"] == 1, s
    assert s.lanes["hs_leaf"] == [n_leaves]
    # the inner-node helper runs once per height, on exactly the nodes of that height
    assert s.calls_by_function["hs_node"] == max_depth - 1, s
    assert s.lanes["hs_node"] == by_height
    # the encoder is entered once per depth (the descent), with every node exactly once
    assert s.calls_by_function["hs_encode"] == max_depth, s
    assert s.lanes["hs_encode"] == by_depth
    assert sum(s.lanes["hs_encode"]) == nodes
    assert s.fused_calls == max_depth - 1
    expected = np.stack([hs_root(params(), t) for t in trees])
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_skipped_lanes_are_never_negative():
    """Callee lanes outnumber the frame's own lanes: a helper call on more lanes than the
    frame's batch skips none (ef6b8a8 as committed counted -118 here)."""
    trees = forest(5, [20, 3, 17, 8, 25, 1, 11, 14])
    with sb.stats() as s:
        got = sb.spmd(hs_root, in_axes=(None, 0))(params(), trees)
    assert s.skipped_lanes >= 0, s.skipped_lanes
    np.testing.assert_allclose(got, np.stack([hs_root(params(), t) for t in trees]), rtol=1e-10)


def test_stats_forest_of_single_leaves_has_no_inner_node_step():
    trees = forest(1, [1, 1, 1, 1, 1])
    with sb.stats() as s:
        got = sb.spmd(hs_root, in_axes=(None, 0))(params(), trees)
    assert s.calls_by_function == {"hs_root": 1, "hs_encode": 1, "hs_leaf": 1}, s
    assert s.lanes["hs_leaf"] == [5]
    assert s.fused_calls == 0
    np.testing.assert_allclose(got, np.stack([hs_root(params(), t) for t in trees]), rtol=1e-12)


def test_stats_equal_depth_trees_run_like_hand_batched_code():
    # complete trees of 8 leaves: depth 4, one step per level both ways
    balanced = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        word = list(rng.integers(V, size=8)) + [0] * 7
        left = [-1] * 8 + [0, 2, 4, 6, 8, 10, 12]
        right = [-1] * 8 + [1, 3, 5, 7, 9, 11, 13]
        balanced.append(Tree(np.array(word), np.array(left), np.array(right), np.zeros(15, int)))
    with sb.stats() as s:
        got = sb.spmd(hs_root, in_axes=(None, 0))(params(), balanced)
    assert s.lanes["hs_leaf"] == [24]
    assert s.lanes["hs_node"] == [12, 6, 3]
    assert s.lanes["hs_encode"] == [3, 6, 12, 24]
    np.testing.assert_allclose(got, np.stack([hs_root(params(), t) for t in balanced]), rtol=1e-10)


def test_self_recursive_call_sites_are_found():
    assert program_of(hs_encode).recursion_sites == 1      # one fused pair of calls
    assert program_of(seq_dependent).recursion_sites == 2   # two dependent calls
    assert program_of(fact).recursion_sites == 1
    for fn in (kw_call, default_omitted, is_even_h, varargs_rec, kwonly_rec):
        assert program_of(fn).recursion_sites == 0, fn.__name__


# === 2. one self-recursive call per level: factorial, linked lists =========================
def fact(n):
    if n <= 1:
        return 1
    return n * fact(n - 1)


def list_sum(nxt, val, i):
    """Sum of the linked list starting at i (-1: the empty list)."""
    if i < 0:
        return 0.0
    return val[i] + list_sum(nxt, val, nxt[i])


def list_len_tail(nxt, i, acc):
    """Length of the list, by tail recursion with an accumulator."""
    if i < 0:
        return acc
    return list_len_tail(nxt, nxt[i], acc + 1)


def linked_lists(seed, lengths, size):
    """Per-example arrays (nxt, val, head) holding lists of `lengths` in shuffled slots."""
    rng = np.random.default_rng(seed)
    nxt = np.full((len(lengths), size), -1)
    val = rng.standard_normal((len(lengths), size))
    head = np.full(len(lengths), -1)
    for b, n in enumerate(lengths):
        slots = rng.permutation(size)[:n]
        for a, c in zip(slots[:-1], slots[1:]):
            nxt[b, a] = c
        if n:
            head[b] = slots[0]
    return nxt, val, head


def walk(nxt, i):
    out = []
    while i >= 0:
        out.append(i)
        i = nxt[i]
    return out


def test_factorial_with_per_example_depths():
    n = np.array([0, 1, 2, 5, 10, 0, 3, 20, 1])
    got = check_batched(fact, n)
    np.testing.assert_array_equal(got, [1, 1, 2, 120, 3628800, 1, 6, 2432902008176640000, 1])


def test_factorial_stats_one_call_per_level():
    n = np.array([4, 0, 7, 2])
    with sb.stats() as s:
        sb.spmd(fact)(n)
    # level 0 holds every lane, level j >= 1 the lanes with n > j (n - j + 1 > 1 recursed)
    assert s.lanes["fact"] == [4] + [int(np.sum(n > j)) for j in range(1, 7)] == [4, 3, 2, 2, 1, 1, 1]
    assert s.fused_calls == 0


def test_linked_list_sum_with_empty_lists():
    lengths = [0, 3, 7, 1, 0, 12]
    nxt, val, head = linked_lists(0, lengths, 16)
    got = check_batched(list_sum, nxt, val, head)
    assert [len(walk(nxt[b], head[b])) for b in range(len(lengths))] == lengths
    np.testing.assert_allclose(got, [val[b][walk(nxt[b], head[b])].sum() for b in range(6)],
                               rtol=1e-12)
    assert got[0] == 0.0 and got[4] == 0.0


def test_linked_list_all_empty():
    nxt, val, head = linked_lists(1, [0, 0, 0], 4)
    got = check_batched(list_sum, nxt, val, head)
    np.testing.assert_array_equal(got, [0.0, 0.0, 0.0])


def test_tail_recursion_with_accumulator():
    lengths = [5, 0, 2, 9]
    nxt, _, head = linked_lists(2, lengths, 10)
    got = check_batched(list_len_tail, nxt, head, np.zeros(4, dtype=int))
    np.testing.assert_array_equal(got, lengths)
    # the accumulator may also be uniform at the top-level call
    got = check_batched(list_len_tail, nxt, head, 100, in_axes=(0, 0, None))
    np.testing.assert_array_equal(got, np.array(lengths) + 100)


def test_chain_of_3000_does_not_hit_the_python_recursion_limit():
    lengths = [3000, 5, 0, 1200]
    assert sys.getrecursionlimit() < 3000        # a Python frame per level would fail
    nxt, val, head = linked_lists(3, lengths, 3000)
    expected = [val[b][walk(nxt[b], head[b])].sum() for b in range(len(lengths))]
    with sb.stats() as s:     # (the depth limit defaults to Python's, as the loop's; raised here)
        got = sb.spmd(list_sum, max_depth=3001)(nxt, val, head)
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    assert s.calls_by_function["list_sum"] == 3001
    assert sum(s.lanes["list_sum"]) == 4 + sum(lengths)
    got = sb.spmd(list_len_tail, max_depth=3001)(nxt, head, np.zeros(4, dtype=int))
    np.testing.assert_array_equal(got, lengths)
    with pytest.raises(sb.LaneError, match="recursion depth") as err:   # the default limit
        sb.spmd(list_len_tail)(nxt, head, np.zeros(4, dtype=int))
    assert err.value.lanes == [0, 3]


# === 3. dependent calls, fused calls, loops, branches, result types =========================
def seq_dependent(x):
    if x <= 0:
        return 1
    a = seq_dependent(x - 1)
    b = seq_dependent((a + x) % x)      # depends on a; smaller than x
    return a + 2 * b + 1


def fib(n):
    if n < 2:
        return n
    return fib(n - 1) + fib(n - 2)


def fib_pair(n):
    """(fib(n), number of calls), through two fused calls returning tuples."""
    if n < 2:
        return n, 1
    a, ca = fib_pair(n - 1)
    b, cb = fib_pair(n - 2)
    return a + b, ca + cb + 1


def test_sequentially_dependent_recursive_calls():
    x = np.array([0, 1, 3, 5, 6, 2, 7])
    check_batched(seq_dependent, x)


def test_fibonacci_fused_calls():
    n = np.array([0, 1, 2, 7, 12, 3, 0, 15])
    got = check_batched(fib, n)
    np.testing.assert_array_equal(got, [0, 1, 1, 13, 144, 2, 0, 610])
    with sb.stats() as s:
        sb.spmd(fib)(n)
    assert s.calls_by_function["fib"] == 15     # one entry per depth: depth of fib(15) is 15
    got = check_batched(fib_pair, n)
    np.testing.assert_array_equal(got[0], [0, 1, 1, 13, 144, 2, 0, 610])


class KTree(NamedTuple):
    """A k-ary tree in pre-order (root 0): the children of k are kids[start[k]:end[k]]."""
    word: np.ndarray
    start: np.ndarray
    end: np.ndarray
    kids: np.ndarray


def random_ktree(rng, n):
    parent = [-1] + [int(rng.integers(0, i)) for i in range(1, n)]
    children = [[] for _ in range(n)]
    for c in range(1, n):
        children[parent[c]].append(c)
    # renumber in pre-order so the root is 0 and subtrees are contiguous
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
    return KTree(rng.integers(V, size=n), np.array(start), np.array(end),
                 np.array(kids if kids else [0]))


def kforest(seed, sizes):
    rng = np.random.default_rng(seed)
    return [random_ktree(rng, n) for n in sizes]


def kary_encode(p, t, k):
    """Encode the subtree at k: children summed by a for loop around the recursive call."""
    h = p["E"][t.word[k]] @ p["W"].T
    for j in range(t.start[k], t.end[k]):
        h = h + p["A"] @ kary_encode(p, t, t.kids[j])
    return np.tanh(h)


def kary_size_while(t, k):
    """Subtree size, children visited by a while loop."""
    total = 1
    j = t.start[k]
    while j < t.end[k]:
        total = total + kary_size_while(t, t.kids[j])
        j = j + 1
    return total


def kary_find(t, k, target):
    """Depth of the first node (pre-order) with word == target under k, or -1: an early
    return from inside the loop around the recursive call."""
    if t.word[k] == target:
        return 0
    for j in range(t.start[k], t.end[k]):
        d = kary_find(t, t.kids[j], target)
        if d >= 0:
            return d + 1
    return -1


def kary_first_leaf_depth(t, k):
    """A `break` after the recursive call inside the loop."""
    d = 0
    for j in range(t.start[k], t.end[k]):
        d = kary_first_leaf_depth(t, t.kids[j]) + 1
        break
    return d


def test_kary_tree_encoder_loops_over_children():
    trees = kforest(0, [1, 6, 15, 3, 22, 1, 9])
    p = params()
    check_batched(kary_encode, p, trees, 0, in_axes=(None, 0, None), rtol=1e-10)
    sizes = check_batched(kary_size_while, trees, 0, in_axes=(0, None))
    np.testing.assert_array_equal(sizes, [1, 6, 15, 3, 22, 1, 9])


def test_kary_tree_gradient():
    trees = kforest(1, [1, 7, 4, 12])
    check_batched_grad(kary_encode, params(), trees, 0, in_axes=(0, None), rtol=1e-8)


def test_recursion_with_early_return_and_break_inside_loop():
    trees = kforest(2, [1, 6, 15, 3, 22, 1, 9, 30])
    targets = np.array([int(t.word[-1]) for t in trees])
    targets[0] = V + 1          # never found
    got = check_batched(kary_find, trees, 0, targets, in_axes=(0, None, 0))
    assert got[0] == -1 and (got[1:] >= 0).all()
    check_batched(kary_first_leaf_depth, trees, 0, in_axes=(0, None))


def while_rec(n):
    total = 0
    k = n
    while k > 0:
        total = total + while_rec(k // 2) + k
        k = k - 3
    return total


def loop_first(n):
    """The recursive call is the first statement of the loop body and of the function."""
    while n > 0:
        n = loop_first(n // 3) + n - 2
    return n


def cond_in_arg(n):
    """The argument expression has its own branch (the call is not in the load's block)."""
    if n <= 0:
        return 0
    return n + cond_in_arg(n - 1 if n % 2 else n - 2)


def discard(n):
    if n <= 0:
        return 0
    discard(n - 1)
    return n


def test_recursion_inside_while_loops():
    n = np.array([0, 1, 5, 9, 12, 17])
    check_batched(while_rec, n)
    check_batched(loop_first, n)


def test_argument_with_its_own_branch_and_discarded_result():
    n = np.array([0, 1, 4, 7, 10])
    check_batched(cond_in_arg, n)
    np.testing.assert_array_equal(check_batched(discard, n), n)


def collatz_steps(x):
    """The recursive call is in one branch of a varying if only."""
    if x == 1:
        return 0
    if x % 2 == 0:
        return 1 + collatz_steps(x // 2)
    return 1 + collatz_steps(3 * x + 1)


def halve_while_even(x):
    if x % 2 == 0 and x > 0:
        return halve_while_even(x // 2) + 1
    return x * 1000


def test_recursive_call_in_one_branch_of_a_varying_if():
    x = np.array([1, 2, 3, 6, 7, 27, 16])
    got = check_batched(collatz_steps, x)
    np.testing.assert_array_equal(got, [0, 1, 7, 8, 16, 111, 4])
    check_batched(halve_while_even, np.array([1, 2, 3, 4, 8, 24, 20, 7, 64, 0]))


def rec_tuple(n):
    if n <= 0:
        return 0, 1.0
    a, b = rec_tuple(n - 1)
    return a + n, b * 0.5


def rec_dict(n, v):
    if n <= 0:
        return {"count": 0, "v": v}
    d = rec_dict(n - 1, v * 2.0)
    return {"count": d["count"] + 1, "v": d["v"] + np.arange(3.0) * n}


def rec_int_then_float(n):
    if n <= 0:
        return 0                      # an int leaf; inner nodes return floats
    return rec_int_then_float(n - 1) * 0.5 + n


def rec_array(n, v):
    if n <= 0:
        return v
    return np.tanh(rec_array(n - 1, v * 1.5) + n)


def rec_uniform_result(n):
    if n <= 0:
        return 7
    return rec_uniform_result(n - 1)


def rec_uniform_zero_array(n):
    if n <= 0:
        return np.zeros(3)
    return rec_uniform_zero_array(n - 1) + n


def test_results_tuples_dicts_ints_floats_arrays():
    n = np.array([0, 1, 3, 5, 2])
    v = np.random.default_rng(0).standard_normal((5, 3))
    np.testing.assert_array_equal(check_batched(rec_tuple, n)[0], [0, 1, 6, 15, 3])
    got = check_batched(rec_dict, n, v)
    np.testing.assert_array_equal(got["count"], n)
    check_batched(rec_int_then_float, n)
    check_batched(rec_array, n, v)
    np.testing.assert_array_equal(check_batched(rec_uniform_result, n), [7] * 5)
    check_batched(rec_uniform_zero_array, n)
    got = check_batched(hs_count, forest(3, [1, 4, 9, 2]), [0, 6, 16, 2])
    np.testing.assert_array_equal(got[0], [1, 4, 9, 2])


def preorder_encode(p, t, k):
    """Pre-order binary encoder (root 0: the top-level index is uniform)."""
    h = p["E"][t.word[k]] @ p["W"].T
    if t.end[k] - t.start[k] == 0:
        return np.tanh(h)
    hl = preorder_encode(p, t, t.kids[t.start[k]])
    hr = preorder_encode(p, t, t.kids[t.end[k] - 1])
    return np.tanh(h + p["U"] @ np.concatenate([hl, hr]))


def test_uniform_root_index_merges_with_varying_indices():
    trees = kforest(4, [1, 5, 11, 3, 8])
    check_batched(preorder_encode, params(), trees, 0, in_axes=(None, 0, None), rtol=1e-10)
    check_batched_grad(preorder_encode, params(), trees, 0, in_axes=(0, None), rtol=1e-8)


def uniform_side_call(n, k):
    """A second self call with only uniform arguments (a native call before the feature)."""
    if n <= 0:
        return k
    return uniform_side_call(n - 1, k) + uniform_side_call(0, 2)


def test_self_call_with_uniform_arguments_only():
    got = check_batched(uniform_side_call, np.array([0, 1, 4, 2]), 5, in_axes=(0, None))
    np.testing.assert_array_equal(got, [5, 7, 13, 9])


def test_batch_of_zero_examples():
    got = sb.spmd(fact)(np.array([], dtype=np.int64))
    assert np.shape(got) == (0,)


def ternary(n):
    """Three fused self calls."""
    if n < 3:
        return n + 1
    return ternary(n - 1) + 2 * ternary(n - 2) + 3 * ternary(n - 3)


def _ternary_calls(n):
    return 1 if n < 3 else 1 + _ternary_calls(n - 1) + _ternary_calls(n - 2) + _ternary_calls(n - 3)


def mixed_sites(n):
    """One height-scheduled site and one nested call (a keyword argument) in one function."""
    if n <= 0:
        return 1
    return mixed_sites(n - 1) + 2 * mixed_sites(n=n - 2)


def while_cond(n):
    """The recursive call is in the loop condition."""
    k = n
    while (while_cond(k - 3) > 0) if k > 0 else False:
        k = k - 2
    return k


def test_three_fused_calls_mixed_sites_and_call_in_loop_condition():
    n = np.array([0, 2, 3, 6, 9, 4])
    check_batched(ternary, n)
    with sb.stats() as s:
        sb.spmd(ternary)(n)
    # one entry per level of the deepest path 9 -> 8 -> ... -> 2; every call exactly once
    assert s.calls_by_function["ternary"] == 8
    assert s.fused_calls == 7
    assert sum(s.lanes["ternary"]) == sum(_ternary_calls(int(k)) for k in n)
    check_batched(mixed_sites, np.array([0, 1, 2, 5, 9]))
    check_batched(while_cond, np.array([0, 1, 2, 5, 9, 12]))


def test_keyword_arguments_at_the_top_level_call():
    lengths = [5, 0, 2, 9]
    nxt, _, head = linked_lists(2, lengths, 10)
    got = sb.spmd(list_len_tail)(nxt, head, acc=np.arange(4))
    np.testing.assert_array_equal(got, np.array(lengths) + np.arange(4))


# --- known failures of the height schedule (minimal reproductions) --------------------------
def sum_after_call(v, n):
    """`v` is passed unchanged to the call and read after it returns."""
    if n <= 0:
        return 0.0
    r = sum_after_call(v, n - 1)
    return r + v[n]


def test_argument_passed_unchanged_and_read_after_the_call():
    v = np.arange(8.0).reshape(2, 4) ** 2
    np.testing.assert_array_equal(check_batched(sum_after_call, v, np.array([3, 3])),
                                  [1 + 4 + 9, 25 + 36 + 49])


def test_argument_read_after_the_call_when_lanes_split():
    # the same function works when the lanes recursing at a level are never the whole group
    # (each level's environment then holds a new object)
    v = np.arange(16.0).reshape(4, 4)
    check_batched(sum_after_call, v, np.array([3, 1, 0, 2]))


def uniform_range_loop(n):
    if n <= 0:
        return 1
    total = 0
    for j in range(2):                     # a uniform (native) iterator
        total = total + uniform_range_loop(n - 1) * (j + 1)
    return total


def children_loop(tree, k):
    """for over a tuple of (varying) children: a LaneSequenceIterator."""
    if tree.left[k] < 0:
        return 1
    total = 1
    for child in (tree.left[k], tree.right[k]):
        total = total + children_loop(tree, child)
    return total


def test_recursion_in_for_loop_over_uniform_range():
    np.testing.assert_array_equal(check_batched(uniform_range_loop, np.array([0, 1, 2, 3])),
                                  [1, 3, 9, 27])


def test_recursion_in_for_loop_over_tuple_of_children():
    trees = forest(13, [1, 4, 7, 2])
    np.testing.assert_array_equal(
        check_batched(children_loop, trees, [len(t.word) - 1 for t in trees]),
        [len(t.word) for t in trees])


def maybe_bound(n):
    if n > 2:
        y = 10
    if n > 2:
        return y + maybe_bound(n - 1)
    return 0


def with_comprehension(n):
    if n <= 0:
        return 1
    w = sum([i * i for i in range(3)])
    return with_comprehension(n - 1) + w


def test_local_possibly_unbound_at_entry():
    np.testing.assert_array_equal(check_batched(maybe_bound, np.array([0, 1, 3, 5])), [0, 0, 10, 30])


def test_list_comprehension_in_recursive_function():
    np.testing.assert_array_equal(check_batched(with_comprehension, np.array([0, 1, 2, 5])),
                                  [1, 6, 11, 26])


# === 4. gradients ============================================================================
def chain_encode(p, nxt, i):
    if i < 0:
        return p["h0"]
    return np.tanh(p["A"] @ chain_encode(p, nxt, nxt[i]) + p["E"][i % V] @ p["W"].T)


def test_gradient_through_recursive_tree_encoder():
    trees = forest(7, [1, 6, 1, 11, 3, 1, 8])      # lanes 0, 2, 5 are leaves at the root
    check_batched_grad(hs_root, params(), trees, rtol=1e-8)
    check_batched_grad(hs_loss, params(), trees, rtol=1e-8)


def test_gradient_when_every_root_is_a_leaf():
    check_batched_grad(hs_loss, params(), forest(8, [1, 1, 1]), rtol=1e-8)


def test_gradient_through_linked_list_chains():
    nxt, _, head = linked_lists(4, [0, 4, 9, 1], 12)
    check_batched_grad(chain_encode, params(), nxt, head, rtol=1e-8)


def test_value_and_grad_through_recursive_loss():
    trees = forest(9, [4, 1, 10])
    value, g = sb.value_and_grad(lambda p: sb.spmd(hs_loss, in_axes=(None, 0))(p, trees).sum())(params())
    assert np.isclose(value, sum(hs_loss(params(), t) for t in trees), rtol=1e-10)
    assert set(g) == set(params())


# === 5. recursion that is not scheduled by height still works ===============================
def closure_sum(n):
    def go(k):
        if k <= 0:
            return 0
        return k + go(k - 1)
    return go(n)


def kw_call(n):
    if n <= 0:
        return 0
    return n * 2 + kw_call(n=n - 1)


def default_omitted(n, acc=10):
    if n <= 0:
        return acc
    return n + default_omitted(n - 1)


def default_passed(n, acc=10):
    if n <= 0:
        return acc
    return default_passed(n - 1, acc + n)


def is_even_h(n):
    if n == 0:
        return True
    return is_odd_h(n - 1)


def is_odd_h(n):
    if n == 0:
        return False
    return is_even_h(n - 1)


def varargs_rec(n, *rest):
    if n <= 0:
        return len(rest)
    return varargs_rec(n - 1) + 1


def kwonly_rec(n, *, step=1):
    if n <= 0:
        return 0
    return kwonly_rec(n - step) + n


def rebound(n):
    if n <= 0:
        return 1
    return rebound(n - 1) * 3


def not_rebound(n):
    return n + 1000


def test_recursion_through_a_closure():
    check_batched(closure_sum, np.array([0, 1, 4, 9]))


def test_recursion_with_keyword_argument_at_the_call():
    check_batched(kw_call, np.array([0, 1, 4, 9]))


def test_recursion_with_default_parameter_omitted_and_passed():
    check_batched(default_omitted, np.array([0, 1, 4, 9]))
    np.testing.assert_array_equal(check_batched(default_passed, np.array([0, 1, 4, 9])),
                                  [10, 11, 20, 55])


def test_mutual_recursion():
    np.testing.assert_array_equal(check_batched(is_even_h, np.array([0, 1, 4, 7, 10, 3])),
                                  [True, False, True, False, True, False])


def test_varargs_and_keyword_only_functions_are_not_eligible():
    check_batched(varargs_rec, np.array([0, 1, 4, 9]))
    check_batched(kwonly_rec, np.array([0, 1, 4, 9]))


def test_global_name_rebound_to_another_function(monkeypatch):
    original = rebound
    n = np.array([0, 1, 3, 5])
    np.testing.assert_array_equal(check_batched(original, n), [1, 3, 27, 243])
    # the program was compiled with a recursion site; the run-time check sees another callee
    monkeypatch.setattr(THIS_MODULE, "rebound", not_rebound)
    got = check_batched(original, n)
    np.testing.assert_array_equal(got, [1, 3000, 3006, 3012])


def gl_rec(n):
    if n <= 0:
        return gl_base(n)
    return gl_rec(n - 1) + 1


def gl_base(n):
    return n * 0


def alt_base(n):
    return n * 0 + 100


def test_function_reading_a_global_helper():
    np.testing.assert_array_equal(check_batched(gl_rec, np.array([0, 1, 3])), [0, 1, 3])


def test_same_code_with_other_globals_calls_the_original_function():
    # `clone` shares gl_rec's code but reads other globals; its self call loads the global
    # `gl_rec`, which is the original function (reading the original globals)
    clone = types.FunctionType(gl_rec.__code__, {**gl_rec.__globals__, "gl_base": alt_base},
                               "gl_rec")
    np.testing.assert_array_equal(check_batched(clone, np.array([0, 1, 3])), [100, 1, 3])


# === 6. errors ===============================================================================
def fails_at_zero(n):
    if n == 0:
        raise ValueError("reached zero")
    if n < 0:
        return 0
    return fails_at_zero(n - 1) + 1


def fib_fails(n):
    """Raises in every leaf fib_fails(0): several failing lanes per example."""
    if n < 2:
        if n == 0:
            raise ValueError("zero leaf")
        return 1
    return fib_fails(n - 1) + fib_fails(n - 2)


def tree_fails_at_word(tree, k, bad):
    if tree.left[k] < 0:
        if tree.word[k] == bad:
            raise KeyError("bad word")
        return 1
    return tree_fails_at_word(tree, tree.left[k], bad) + tree_fails_at_word(tree, tree.right[k], bad)


def fails_on_the_way_up(n, limit):
    """Raises after its recursive call returned (in the continuation, at height limit)."""
    if n <= 0:
        return 0
    r = fails_on_the_way_up(n - 1, limit) + 1
    if r == limit:
        raise OverflowError("height reached the limit")
    return r


def checked_helper(x):
    total = 0
    for i in range(x):                  # (a loop: the helper runs as its own frame)
        total = total + i
    if x == 3:
        raise ArithmeticError("three")
    return total


def helper_fails_deep(n):
    if n <= 0:
        return 0
    return helper_fails_deep(n - 1) + checked_helper(n)   # the helper runs by height


def straight_helper_raises(x):
    assert x != 2, "two"
    return x


def straight_fails_deep(n):
    if n <= 0:
        return 0
    return straight_fails_deep(n - 1) + straight_helper_raises(n)


def _lane_error(fn, *args, in_axes=0):
    with pytest.raises(sb.LaneError) as err:
        sb.spmd(fn, in_axes=in_axes)(*args)
    return err.value


def _per_example_failures(fn, examples, exc_type):
    failing = []
    for i, ex in enumerate(examples):
        try:
            fn(*ex)
        except exc_type:
            failing.append(i)
    return failing


def test_exception_deep_in_some_examples_names_exactly_those():
    n = np.array([3, -1, 5, -2, 0, 7])
    expected = _per_example_failures(fails_at_zero, [(int(k),) for k in n], ValueError)
    assert expected == [0, 2, 4, 5]
    err = _lane_error(fails_at_zero, n)
    assert sorted(set(err.lanes)) == expected
    assert "reached zero" in str(err) and isinstance(err.__cause__, ValueError)


def test_exception_in_several_leaves_per_example():
    n = np.array([3, 1, 4, -1, 2])
    expected = _per_example_failures(fib_fails, [(int(k),) for k in n], ValueError)
    assert expected == [0, 2, 4]
    assert sorted(set(_lane_error(fib_fails, n).lanes)) == expected


def test_exception_in_leaves_of_some_trees_names_those_trees():
    trees = forest(11, [6, 9, 1, 12, 4])
    bad = int(trees[1].word[trees[1].left < 0][0])
    expected = _per_example_failures(
        tree_fails_at_word, [(t, len(t.word) - 1, bad) for t in trees], KeyError)
    assert 1 in expected and len(expected) < len(trees)
    err = _lane_error(tree_fails_at_word, trees, [len(t.word) - 1 for t in trees], bad,
                      in_axes=(0, 0, None))
    assert sorted(set(err.lanes)) == expected


def test_exception_in_the_continuation_at_one_height():
    n = np.array([5, 2, 3, 9, 1, 3])
    expected = _per_example_failures(fails_on_the_way_up, [(int(k), 3) for k in n], OverflowError)
    assert expected == [0, 2, 3, 5]
    err = _lane_error(fails_on_the_way_up, n, 3, in_axes=(0, None))
    assert sorted(set(err.lanes)) == expected
    assert "height reached the limit" in str(err)


def test_exception_in_helpers_called_deep_in_recursion():
    n = np.array([1, 5, 2, 3, 0, 4])
    expected = _per_example_failures(helper_fails_deep, [(int(k),) for k in n], ArithmeticError)
    assert expected == [1, 3, 5]
    assert sorted(set(_lane_error(helper_fails_deep, n).lanes)) == expected
    expected = _per_example_failures(straight_fails_deep, [(int(k),) for k in n], AssertionError)
    assert expected == [1, 2, 3, 5]
    assert sorted(set(_lane_error(straight_fails_deep, n).lanes)) == expected


def caller_of_failing(x, n):
    if x > 0:
        return fails_at_zero(n) * 2
    return -1


def test_exception_in_recursion_called_under_a_varying_condition():
    x = np.array([1, -1, 1, 1, -1, 1])
    n = np.array([2, 0, -3, 0, 5, 4])
    expected = _per_example_failures(caller_of_failing, list(zip(x, n)), ValueError)
    assert expected == [0, 3, 5]
    err = _lane_error(caller_of_failing, x, n)
    assert sorted(set(err.lanes)) == expected


def test_exception_in_every_example_propagates():
    with pytest.raises((ValueError, sb.LaneError)) as err:
        sb.spmd(fails_at_zero)(np.array([3, 0, 6]))
    exc = err.value
    cause = exc if isinstance(exc, ValueError) else exc.__cause__
    assert isinstance(cause, ValueError) and "reached zero" in str(cause)
    if isinstance(exc, sb.LaneError):
        assert sorted(set(exc.lanes)) == [0, 1, 2]


def test_exception_in_every_example_at_the_top_level_is_raised_as_is():
    # (raised before any recursive call started: the frame runs all its lanes)
    with pytest.raises(ValueError, match="reached zero"):
        sb.spmd(fails_at_zero)(np.array([0, 0, 0]))


def test_exception_in_every_example_is_raised_as_is():
    with pytest.raises(ValueError, match="reached zero"):
        sb.spmd(fails_at_zero)(np.array([3, 3, 3]))


def test_lane_error_lists_failing_examples_sorted():
    n = np.array([3, -1, 5, -2, 0, 7])
    assert _lane_error(fails_at_zero, n).lanes == [0, 2, 4, 5]


def test_lane_error_names_each_failing_example_once():
    lanes = _lane_error(fib_fails, np.array([3, 1, 4, -1, 2])).lanes
    assert len(lanes) == len(set(lanes))


# === 7. mixed nesting ========================================================================
def fact_if_positive(x, n):
    if x > 0:
        return fact(n) + x
    return x - 1


def two_calls(a, b):
    return fact(a) - fact(b)


def two_dependent_calls(a):
    x = fact(a)
    return fact(x % 6) + x


def outer_rec(n):
    """Recursion that calls another recursive function at every level."""
    if n <= 0:
        return 0
    return fib(n) + outer_rec(n - 1)


def loop_calls_rec(n):
    total = 0
    for i in range(n):
        total = total + fib(i)
    return total


def test_recursive_function_called_under_a_varying_condition():
    x = np.array([1, -2, 3, -1, 0, 5])
    n = np.array([4, 9, 0, 2, 6, 7])
    got = check_batched(fact_if_positive, x, n)
    np.testing.assert_array_equal(got, [25, -3, 4, -2, -1, 5045])
    with sb.stats() as s:
        sb.spmd(fact_if_positive)(x, n)
    assert s.lanes["fact"][0] == 3         # only the lanes with x > 0 enter


def test_recursive_function_called_twice_from_one_caller():
    a = np.array([0, 3, 5, 1, 7])
    b = np.array([4, 0, 5, 2, 1])
    np.testing.assert_array_equal(check_batched(two_calls, a, b), [-23, 5, 0, -1, 5039])
    check_batched(two_dependent_calls, a)


def two_failing_calls(a, b):
    return fails_at_zero(a) + fails_at_zero(b)


def test_exception_in_recursive_function_called_twice_names_the_examples():
    a = np.array([-1, -1, -1, 2])
    b = np.array([-1, 3, -1, -1])
    assert _per_example_failures(two_failing_calls, list(zip(a, b)), ValueError) == [1, 3]
    assert sorted(set(_lane_error(two_failing_calls, a, b).lanes)) == [1, 3]


def test_recursion_nested_in_recursion_and_in_loops():
    n = np.array([0, 1, 5, 8, 3])
    check_batched(outer_rec, n)
    check_batched(loop_calls_rec, n)


def test_tree_encoder_and_linked_list_in_one_batch_program():
    trees = forest(12, [3, 1, 8, 5])
    nxt, val, head = linked_lists(5, [2, 0, 6, 4], 8)

    def both(p, tree, nxt, val, i):
        h = hs_root(p, tree)
        if i >= 0:
            return h * list_sum(nxt, val, i)
        return h

    check_batched(both, params(), trees, nxt, val, head, in_axes=(None, 0, 0, 0, 0), rtol=1e-10)


# === 8. random forests (hypothesis) ==========================================================
@st.composite
def forests(draw):
    batch = draw(st.integers(1, 8))
    sizes = draw(st.lists(st.integers(1, 40), min_size=batch, max_size=batch))
    shapes = draw(st.lists(st.sampled_from(["random", "left", "right"]), min_size=batch,
                           max_size=batch))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    return [random_tree(rng, n, V, 3, shape) for n, shape in zip(sizes, shapes)]


@settings(max_examples=25, deadline=None)
@given(trees=forests())
def test_random_forests_match_per_example_and_schedule_by_height(trees):
    max_depth, by_depth, by_height, n_leaves = _expected_schedule(trees)
    with sb.stats() as s:
        got = sb.spmd(hs_root, in_axes=(None, 0))(params(), trees)
    np.testing.assert_allclose(got, np.stack([hs_root(params(), t) for t in trees]),
                               rtol=1e-10, atol=1e-12)
    assert s.lanes["hs_leaf"] == [n_leaves]
    assert s.lanes["hs_node"] == by_height if max_depth > 1 else "hs_node" not in s.lanes
    assert s.lanes["hs_encode"] == by_depth
    check_batched(hs_count, trees, [len(t.word) - 1 for t in trees])


@settings(max_examples=10, deadline=None)
@given(trees=forests())
def test_random_forests_gradient(trees):
    check_batched_grad(hs_loss, params(), trees, rtol=1e-7)


@settings(max_examples=15, deadline=None)
@given(sizes=st.lists(st.integers(1, 25), min_size=1, max_size=8), seed=st.integers(0, 10 ** 6))
@example(sizes=[3], seed=0)
def test_random_kary_forests(sizes, seed):
    trees = kforest(seed, sizes)
    check_batched(kary_encode, params(), trees, 0, in_axes=(None, 0, None), rtol=1e-10)
    np.testing.assert_array_equal(check_batched(kary_size_while, trees, 0, in_axes=(0, None)),
                                  sizes)


def _generator_loop(n):
    if n <= 0:
        return 0
    total = 0
    for j in (i for i in range(2)):
        total = total + _generator_loop(n - 1)        # the line the error names
    return total


def test_recursion_inside_a_loop_over_a_generator_is_refused_with_its_line():
    with pytest.raises(sb.SpmdError) as info:
        sb.spmd(_generator_loop)(np.array([1, 2, 0]))
    assert "loop over a generator" in str(info.value)
    assert info.value.lineno == _generator_loop.__code__.co_firstlineno + 5
    assert info.value.filename == __file__


def test_record_fields_keep_one_lane_map_through_fused_calls_and_branches():
    """The fields of a ragged per-example record share one lane map, so moving the record
    is one index operation: repeating it for the calls of a fused site and taking lanes at
    a branch both keep the sharing (a lost sharing was correct but slow)."""
    from spmdbatch.execution.lanes import merge, repeat_lanes, take
    from spmdbatch.runtime.mapped import LaneMapped
    from spmdbatch.runtime.ragged import Ragged

    class Rec(NamedTuple):
        a: object
        b: object

    lengths = np.array([2, 3, 1])
    rec = Rec(Ragged(np.arange(9).reshape(3, 3), lengths), Ragged(np.arange(9, 18).reshape(3, 3), lengths))
    for repeated in (repeat_lanes(rec, 2, 3), merge([rec, rec], [3, 3], disjoint=False)):
        assert all(type(f) is LaneMapped for f in repeated)
        assert repeated.a.index is repeated.b.index
        np.testing.assert_array_equal(repeated.a.index, [0, 1, 2, 0, 1, 2])
        taken = take(repeated, np.array([1, 4, 5]), {})
        assert taken.a.index is taken.b.index
        np.testing.assert_array_equal(taken.b.materialize().data, np.arange(9, 18).reshape(3, 3)[[1, 1, 2]])
