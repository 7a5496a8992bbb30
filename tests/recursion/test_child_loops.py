"""Recursive calls inside a loop over a node's children (frontend/child_loops.py): the loop's
iterations run side by side, so the recursion stays by height (one batched call per depth),
and every form equals the per-example loop, values and gradients (and finite differences
for the child-sum Tree-LSTM). Loops whose iterations are not independent run as written."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

import spmdbatch as sb
from spmdbatch.errors import LaneError
from spmdbatch.frontend.transform import program_of

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "spmd"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from oracle import check_batched, check_batched_grad  # noqa: E402

import childsum_tree as cs  # noqa: E402

H, V = 4, 15


class KTree(NamedTuple):
    """An n-ary tree in pre-order (root 0): the children of k are kids[start[k]:end[k]]."""
    word: np.ndarray
    start: np.ndarray
    end: np.ndarray
    kids: np.ndarray
    label: np.ndarray


def ktrees(seed, sizes, window=3):
    rng = np.random.default_rng(seed)
    return [KTree(*cs.random_ktree(rng, n, V, 3, window)) for n in sizes]


def params(seed=0):
    rng = np.random.default_rng(seed)
    p = {k: rng.standard_normal((H, H)) * 0.4 for k in ("A", "B", "U")}
    p["E"] = rng.standard_normal((V, H))
    p["v"] = rng.standard_normal(H) * 0.3
    return p


def height(t, k=0):
    return 1 + max([height(t, t.kids[j]) for j in range(t.start[k], t.end[k])], default=0)


def _root(fn):
    def f(p, t):
        out = fn(p, t, 0)
        if type(out) is tuple:
            return out[0].sum() + out[1]
        return np.sum(out)
    f.__name__ = f"root_{fn.__name__}"
    return f


def _check(fn, trees, p=None, parallel=1):
    p = params() if p is None else p
    assert program_of(fn).parallel_loops == parallel
    with sb.stats() as s:
        check_batched(_root(fn), p, trees, in_axes=(None, 0))
    check_batched_grad(_root(fn), p, trees, in_axes=(0,))
    return s


# --- the child-sum Tree-LSTM ----------------------------------------------------------------

def childsum_params():
    p = cs.init_params(V, 5, H, 3, seed=1, dtype=np.float64)
    return {k: v * 4 for k, v in p.items()}


def test_childsum_treelstm_runs_by_height_and_equals_the_loop():
    trees = ktrees(0, [1, 6, 14, 3, 22, 9])
    p = childsum_params()
    assert program_of(cs.encode).parallel_loops == 1
    with sb.stats() as s:
        check_batched(cs.tree_loss, p, trees, in_axes=(None, 0))
    assert s.calls_by_function["encode"] == max(height(t) for t in trees)
    check_batched_grad(cs.tree_loss, p, trees, in_axes=(0,))


def test_childsum_treelstm_gradient_equals_finite_differences():
    trees = ktrees(1, [5, 1, 8])
    sb.check_gradients(lambda q: cs.spmd_loss(q, trees), childsum_params())


def test_childsum_treelstm_equals_the_hand_batched_version():
    trees = ktrees(2, [3, 12, 7, 1, 16])
    p = childsum_params()
    (l1, g1) = sb.value_and_grad(cs.spmd_loss)(p, trees)
    (l2, g2) = sb.value_and_grad(cs.hand_loss)(p, cs.plan_by_height(trees))
    np.testing.assert_allclose(l1, l2, rtol=1e-10)
    for k in g1:
        np.testing.assert_allclose(g1[k], g2[k], rtol=1e-9, atol=1e-12)


# --- loop forms --------------------------------------------------------------------------------

def ragged_items(p, t, k):                     # iterating a per-example slice of the kids
    h = p["E"][t.word[k]]
    for c in t.kids[t.start[k]:t.end[k]]:
        h = h + np.tanh(p["A"] @ ragged_items(p, t, c))
    return np.tanh(h)


def augmented(p, t, k):                        # `+=` onto a number, two accumulators
    s = 0.0
    n = 0
    for j in range(t.start[k], t.end[k]):
        hc = augmented(p, t, t.kids[j])
        s += np.tanh(p["A"] @ hc)
        n += 1
    return np.tanh(p["E"][t.word[k]] + s / max(n, 1))


def temporaries(p, t, k):                      # a temporary, `t + s`, a branch adding on one side
    s = 0.0
    total = np.zeros(H)
    for j in range(t.start[k], t.end[k]):
        hc = temporaries(p, t, t.kids[j])
        part = p["A"] @ hc
        total = part + total
        if hc[0] > 0:
            s = s + hc.sum()
    return np.tanh(p["E"][t.word[k]] + total + s)


def accumulator_dead_after_loop(p, t, k):      # an accumulator the exit never reads
    count = 0
    h = p["E"][t.word[k]]
    for j in range(t.start[k], t.end[k]):
        count = count + 1
        h = h + p["B"] @ accumulator_dead_after_loop(p, t, t.kids[j])
    return np.tanh(h)


def with_sum_over_recursion(p, t, k):          # the loss a sum over the recursion, too
    h = p["E"][t.word[k]]
    loss = 0.0
    for j in range(t.start[k], t.end[k]):
        hc, lc = with_sum_over_recursion(p, t, t.kids[j])
        h = h + p["A"] @ hc
        loss = loss + lc
    h = np.tanh(h)
    return h, loss + (p["v"] @ h) ** 2


def uniform_range(p, t, k):                    # a loop over a uniform range (a binary tree)
    h = p["E"][t.word[k]]
    if t.start[k] + 1 < t.end[k]:
        for j in range(2):
            h = h + p["A"] @ uniform_range(p, t, t.kids[t.start[k] + j])
    return np.tanh(h)


@pytest.mark.parametrize("fn", [ragged_items, augmented, temporaries, accumulator_dead_after_loop,
                                with_sum_over_recursion, uniform_range], ids=lambda f: f.__name__)
def test_loop_forms_run_by_height(fn):
    trees = ktrees(3, [1, 7, 13, 4, 18])
    s = _check(fn, trees)
    assert s.calls_by_function[fn.__name__] == max(height(t) for t in trees) or fn is uniform_range
    if fn is uniform_range:                    # (only nodes with two or more children recurse)
        assert s.calls_by_function[fn.__name__] <= max(height(t) for t in trees)


def test_sum_over_recursion_in_a_child_loop_is_recognised():
    assert program_of(with_sum_over_recursion).sum_positions == (1,)


# --- loops that run as written ------------------------------------------------------------------

def running_max(p, t, k):                      # a carried value that is not a sum
    m = p["E"][t.word[k]]
    for j in range(t.start[k], t.end[k]):
        m = np.maximum(m, running_max(p, t, t.kids[j]))
    return m * 0.9


def previous_child(p, t, k):                   # the next call reads the previous result
    h = p["E"][t.word[k]]
    prev = np.zeros(H)
    for j in range(t.start[k], t.end[k]):
        hc = previous_child(p, t, t.kids[j])
        h = h + p["A"] @ (hc * np.tanh(prev))
        prev = hc
    return np.tanh(h)


def loop_variable_after_loop(p, t, k):
    h = p["E"][t.word[k]]
    j = t.start[k]
    for j in range(t.start[k], t.end[k]):
        h = h + loop_variable_after_loop(p, t, t.kids[j])
    return np.tanh(h) * (j - t.start[k] + 1)


def with_break(p, t, k):
    h = p["E"][t.word[k]]
    for j in range(t.start[k], t.end[k]):
        h = h + with_break(p, t, t.kids[j])
        if h[0] > 1.0:
            break
    return np.tanh(h)


def used_twice(p, t, k):                       # the accumulator read besides its `+`
    h = p["E"][t.word[k]]
    for j in range(t.start[k], t.end[k]):
        h = h + np.tanh(h) * used_twice(p, t, t.kids[j])
    return np.tanh(h)


def changes_an_array(p, t, k):                 # an item assignment: iterations could interleave
    h = np.zeros(H)
    for j in range(t.start[k], t.end[k]):
        h = h + changes_an_array(p, t, t.kids[j])
    h[0] = 1.0
    return np.tanh(h + p["E"][t.word[k]])


@pytest.mark.parametrize("fn", [running_max, previous_child, loop_variable_after_loop, with_break,
                                used_twice, changes_an_array], ids=lambda f: f.__name__)
def test_dependent_loops_run_as_written(fn):
    trees = ktrees(4, [1, 6, 11, 3])
    p = params()
    assert program_of(fn).parallel_loops == 0
    check_batched(_root(fn), p, trees, in_axes=(None, 0))
    if fn not in (running_max, changes_an_array):
        check_batched_grad(_root(fn), p, trees, in_axes=(0,))


def over_a_built_list(p, t, k):                # an iterable the runtime does not split
    h = p["E"][t.word[k]]
    kids = list(t.kids[t.start[k]:t.end[k]])
    for c in kids:
        h = h + np.tanh(p["A"] @ over_a_built_list(p, t, c))
    return np.tanh(h)


def test_an_iterable_that_cannot_be_split_runs_as_written():
    trees = ktrees(5, [1, 6, 9])
    check_batched(_root(over_a_built_list), params(), trees, in_axes=(None, 0))


def bad_child(p, t, k):
    h = p["E"][t.word[k]]
    for j in range(t.start[k], t.end[k]):
        h = h + bad_child(p, t, t.kids[j] + 100 * (t.word[k] == 7))
    return np.tanh(h)


def test_an_error_in_some_iterations_names_those_examples():
    trees = ktrees(6, [6, 9, 4, 12])
    bad = [i for i, t in enumerate(trees)
           if any(t.word[k] == 7 and t.end[k] > t.start[k] for k in range(len(t.word)))]
    good = [i for i in range(len(trees)) if i not in bad]
    assert bad and good
    with pytest.raises(LaneError) as err:
        sb.spmd(_root(bad_child), in_axes=(None, 0))(params(), trees)
    assert err.value.lanes == bad
