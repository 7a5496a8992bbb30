"""Sums over a recursion (frontend/reduction.py): recognised where the definition holds,
left alone elsewhere, and always equal to the per-example loop (values and gradients)."""
from __future__ import annotations

import sys

import numpy as np
import pytest

import spmdbatch as sb
from spmdbatch.frontend.transform import program_of
from trees import random_tree

sys.path.insert(0, __file__.rsplit("/", 2)[0] + "/spmd")
from oracle import check_batched, check_batched_grad  # noqa: E402

H, V = 4, 20


def params(seed=0):
    rng = np.random.default_rng(seed)
    return {"E": rng.standard_normal((V, H)), "U": rng.standard_normal((H, 2 * H)) * 0.5,
            "S": rng.standard_normal((3, H)) * 0.5}


def forest(seed, sizes, shape="random"):
    rng = np.random.default_rng(seed)
    return [random_tree(rng, n, vocab=V, classes=3, shape=shape) for n in sizes]


def term(p, h, label):
    return -sb.log_softmax(p["S"] @ h)[label]


def encode(p, tree, k):
    if tree.left[k] < 0:
        h = np.tanh(p["E"][tree.word[k]])
        return h, term(p, h, tree.label[k])
    hl, ll = encode(p, tree, tree.left[k])
    hr, lr = encode(p, tree, tree.right[k])
    h = np.tanh(p["U"] @ np.concatenate([hl, hr]))
    return h, ll + lr + term(p, h, tree.label[k])


def tree_loss(p, tree):
    return encode(p, tree, len(tree.word) - 1)[1]


def counts(tree, k):
    """(nodes, leaves, depth-weighted sum, vector sum) of the subtree: four kinds of sums."""
    if tree.left[k] < 0:
        return 1, 1, 0.5, np.ones(2) * tree.word[k]
    n1, l1, w1, v1 = counts(tree, tree.left[k])
    n2, l2, w2, v2 = counts(tree, tree.right[k])
    return n1 + n2 + 1, l1 + l2, w1 + 0.25 + w2, v1 + v2 + np.array([0.0, 1.0]) * k


def tree_counts(tree):
    return counts(tree, len(tree.word) - 1)


def test_recognised_positions():
    assert program_of(encode).sum_positions == (1,)
    assert program_of(counts).sum_positions == (0, 1, 2, 3)


def test_term_calls_are_deferred_into_one_batched_call():
    trees = forest(0, [7, 1, 12, 4, 9])
    with sb.stats() as s:
        check_batched(tree_loss, params(), trees, in_axes=(None, 0))
    # one batched call of `term` over every node of every tree
    assert s.lanes["term"] == [sum(len(t.word) for t in trees)]


def test_gradients_through_deferred_terms():
    check_batched_grad(tree_loss, params(), forest(1, [5, 1, 8, 3]), in_axes=(0,))


@pytest.mark.parametrize("shape", ["random", "left", "right"])
def test_int_float_and_vector_sums(shape):
    trees = forest(2, [1, 6, 11, 3], shape)
    got = check_batched(tree_counts, trees)
    assert got[0].dtype == np.int64 and got[2].dtype == np.float64


def test_float32_terms_keep_their_type():
    p = {k: v.astype(np.float32) for k, v in params().items()}
    got = sb.spmd(tree_loss, in_axes=(None, 0))(p, forest(3, [4, 9]))
    assert got.dtype == np.float32
    expected = [tree_loss(p, t) for t in forest(3, [4, 9])]
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def used_elsewhere(tree, k):
    if tree.left[k] < 0:
        return 1.0
    a = used_elsewhere(tree, tree.left[k])
    b = used_elsewhere(tree, tree.right[k])
    if a > b:                          # a child's total steers control flow: not a sum
        return a + b + 1.0
    return a + b + 2.0


def not_a_tuple(tree, k):
    if tree.left[k] < 0:
        return [1.0, 2.0]
    a = not_a_tuple(tree, tree.left[k])
    b = not_a_tuple(tree, tree.right[k])
    return [a[0] + b[0], a[1] * b[1]]


def product(tree, k):
    if tree.left[k] < 0:
        return 1, 2.0
    n1, x1 = product(tree, tree.left[k])
    n2, x2 = product(tree, tree.right[k])
    return n1 + n2, x1 * x2 * 0.5        # position 0 is a sum, position 1 is not


def intermediate_reused(tree, k):
    if tree.left[k] < 0:
        return (1.0,)
    (a,) = intermediate_reused(tree, tree.left[k])
    (b,) = intermediate_reused(tree, tree.right[k])
    s = a + b
    return (s + s * 0.1,)


@pytest.mark.parametrize("fn, positions", [(used_elsewhere, ()), (not_a_tuple, ()),
                                           (product, (0,)), (intermediate_reused, ())])
def test_not_recognised_where_the_definition_fails(fn, positions):
    assert program_of(fn).sum_positions == positions
    trees = forest(4, [1, 5, 9, 2])
    check_batched(lambda t: fn(t, len(t.word) - 1), trees)


def rebinding_target(tree, k):
    if tree.left[k] < 0:
        return 1, 1.0
    a, x = rebinding_target(tree, tree.left[k])
    b, y = rebinding_target(tree, tree.right[k])
    return a + b + 1, x + y


def test_a_rebound_global_runs_as_an_ordinary_call_and_its_sums_still_count():
    trees = forest(5, [3, 6, 1])
    expected = [rebinding_target(t, len(t.word) - 1) for t in trees]
    original = rebinding_target

    def stand_in(tree, k):                  # same results, but not the recursive function
        return original(tree, k)

    globals()["rebinding_target"] = stand_in
    try:
        got = sb.spmd(lambda t: original(t, len(t.word) - 1))(trees)
    finally:
        globals()["rebinding_target"] = original
    np.testing.assert_array_equal(got[0], [e[0] for e in expected])
    np.testing.assert_allclose(got[1], [e[1] for e in expected])


def failing_term(x):
    if x > 3:
        raise ValueError("bad node")
    return x * 1.0


def with_failing_terms(tree, k):
    if tree.left[k] < 0:
        return (failing_term(tree.word[k]),)
    (a,) = with_failing_terms(tree, tree.left[k])
    (b,) = with_failing_terms(tree, tree.right[k])
    return (a + b,)


def test_an_error_in_a_deferred_term_names_the_examples():
    small = {"word": np.array([1, 2, 0]), "left": np.array([-1, -1, 0]), "right": np.array([-1, -1, 1])}
    big = {"word": np.array([1, 7, 0]), "left": np.array([-1, -1, 0]), "right": np.array([-1, -1, 1])}

    from trees import Tree
    trees = [Tree(np.array(t["word"]), t["left"], t["right"], np.zeros(3, dtype=int))
             for t in (small, big, small, big)]
    with pytest.raises(sb.LaneError) as info:
        sb.spmd(lambda t: with_failing_terms(t, 2))(trees)
    assert info.value.lanes == [1, 3]
    assert "bad node" in str(info.value)


def pure_term(x):
    return np.tanh(x) * 2.0


def term_with_side_effect(x):
    scratch = np.zeros(2)
    scratch[0] = np.tanh(x) * 2.0            # an item assignment: the call is not deferred
    return scratch[0]


def walk_pure(tree, k):
    if tree.left[k] < 0:
        return (pure_term(tree.word[k] * 0.1),)
    (a,) = walk_pure(tree, tree.left[k])
    (b,) = walk_pure(tree, tree.right[k])
    return (a + b + pure_term(k * 0.01),)


def walk_side_effect(tree, k):
    if tree.left[k] < 0:
        return (term_with_side_effect(tree.word[k] * 0.1),)
    (a,) = walk_side_effect(tree, tree.left[k])
    (b,) = walk_side_effect(tree, tree.right[k])
    return (a + b + term_with_side_effect(k * 0.01),)


def test_only_calls_without_side_effects_are_deferred():
    from spmdbatch.frontend.reduction import may_defer
    assert may_defer(pure_term) and not may_defer(term_with_side_effect)
    assert not may_defer(np.tanh) and not may_defer([].append)
    trees = forest(6, [5, 1, 9, 3])
    nodes = sum(len(t.word) for t in trees)
    with sb.stats() as s:
        check_batched(lambda t: walk_pure(t, len(t.word) - 1), trees)
    assert s.lanes["pure_term"] == [nodes]                   # one batched call, every node
    with sb.stats() as s:
        check_batched(lambda t: walk_side_effect(t, len(t.word) - 1), trees)
    assert len(s.lanes["term_with_side_effect"]) > 2          # called where written, per step
    assert sum(s.lanes["term_with_side_effect"]) == nodes
