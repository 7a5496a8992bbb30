"""ReturnRows: the returned rows of a recursion stored by lane id, read back per parked group.

Reads are compared with the rows the groups returned (the oracle is the groups themselves);
values that do not fit the first group's structure are refused, and the recursion then
gathers group by group (checked end to end against the per-example loop).
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spmdbatch as sb
from spmdbatch.execution import return_rows
from spmdbatch.execution.return_rows import ReturnRows
from spmdbatch.runtime.batched import Batched
from trees import random_tree

sys.path.insert(0, __file__.rsplit("/", 2)[0] + "/spmd")
from oracle import check_batched, check_batched_grad  # noqa: E402


def group(rng, n, width=3, dtype=np.float64):
    return (Batched(rng.standard_normal((n, width)).astype(dtype)), Batched(np.arange(n) * 1.0), None)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=6), st.integers(0, 2 ** 32 - 1))
def test_reads_give_each_lane_the_rows_it_returned(sizes, seed):
    rng = np.random.default_rng(seed)
    total = sum(sizes)
    lane_ids = rng.permutation(total)          # groups return lanes in any order
    store, where, groups, start = None, {}, [], 0
    capacity = 1                               # (grows as lanes with higher ids return)
    for g, n in enumerate(sizes):
        value = group(rng, n)
        lanes = lane_ids[start:start + n]
        start += n
        capacity = max([capacity] + [int(i) + 1 for i in lanes])
        store = store or ReturnRows.of(value)
        assert store.add(value, lanes, n, capacity)
        groups.append(value)
        for row, lane in enumerate(lanes):
            where[int(lane)] = (g, row)
    ids = rng.permutation(total)[:rng.integers(0, total + 1)]
    which = np.array([where[int(i)][0] for i in ids], dtype=np.intp)
    rows = np.array([where[int(i)][1] for i in ids], dtype=np.intp)
    h, c, none = store.read(ids, which, rows, [(g, len(g[1].data)) for g in groups])
    assert none is None
    for i, lane in enumerate(ids):
        g, row = where[int(lane)]
        np.testing.assert_array_equal(h.data[i], groups[g][0].data[row])
        np.testing.assert_array_equal(c.data[i], groups[g][1].data[row])


@pytest.mark.parametrize("other", [
    "another uniform object", "a different dtype", "a different row shape", "a shorter tuple",
    "a list instead of a tuple", "an int where an array was"])
def test_values_of_another_structure_are_refused(other):
    rng = np.random.default_rng(0)
    store = ReturnRows.of(group(rng, 2))
    assert store.add(group(rng, 2), np.array([0, 1]), 2, 8)
    value = {"another uniform object": lambda: group(rng, 2)[:2] + (0,),
             "a different dtype": lambda: group(rng, 2, dtype=np.float32),
             "a different row shape": lambda: group(rng, 2, width=4),
             "a shorter tuple": lambda: group(rng, 2)[:2],
             "a list instead of a tuple": lambda: list(group(rng, 2)),
             "an int where an array was": lambda: (1,) + group(rng, 2)[1:]}[other]()
    assert not store.add(value, np.array([2, 3]), 2, 8)


def test_values_holding_per_lane_objects_other_than_arrays_are_not_stored():
    from spmdbatch.runtime.mapped import LaneMapped
    mapped = LaneMapped(np.zeros((3, 10)), np.array([0, 2]))
    assert ReturnRows.of((Batched(np.zeros((2, 3))), mapped)) is None
    assert ReturnRows.of({"h": Batched(np.zeros((2, 3)))}) is None


def count_stored(monkeypatch):
    """A list that gets, for every returning group, whether the store took its rows."""
    stored = []
    add, of = ReturnRows.add, ReturnRows.of.__func__

    def start(cls, value):
        store = of(cls, value)
        if store is None:
            stored.append(False)
        return store
    monkeypatch.setattr(return_rows.ReturnRows, "add",
                        lambda self, *a: stored.append(add(self, *a)) or stored[-1])
    monkeypatch.setattr(return_rows.ReturnRows, "of", classmethod(start))
    return stored


def encode(params, tree, k):
    if tree.left[k] < 0:
        return np.tanh(params["E"][tree.word[k]]), 1.0 * k
    hl, _ = encode(params, tree, tree.left[k])
    hr, _ = encode(params, tree, tree.right[k])
    return np.tanh(params["W"] @ np.concatenate([hl, hr])), 1.0 * k


def tree_loss(params, tree):
    h, k = encode(params, tree, len(tree.word) - 1)
    return (h ** 2).sum() + k


def forest(seed, sizes):
    rng = np.random.default_rng(seed)
    return [random_tree(rng, n) for n in sizes]


def test_a_tree_encoder_reads_every_result_from_the_store(monkeypatch):
    stored = count_stored(monkeypatch)
    rng = np.random.default_rng(1)
    params = {"E": rng.standard_normal((20, 3)), "W": rng.standard_normal((3, 6)) * 0.5}
    trees = forest(2, [5, 9, 1, 13])
    check_batched(tree_loss, params, trees, in_axes=(None, 0))
    check_batched_grad(tree_loss, params, trees)
    assert stored and all(stored)


def height(tree, k):
    """Leaves return the number 0 (uniform), inner nodes a per-lane height: the store gives up
    at the first inner group and the parents gather group by group."""
    if tree.left[k] < 0:
        return 0
    return max(height(tree, tree.left[k]), height(tree, tree.right[k])) + 1


def widen(tree, k):
    """Leaves return float32 rows, inner nodes float64: the store takes the leaves' group and
    gives up at the first inner one."""
    if tree.left[k] < 0:
        return (np.ones(2) * tree.word[k]).astype(np.float32)
    return np.zeros(2) + widen(tree, tree.left[k]) * 0.5 + widen(tree, tree.right[k])


@pytest.mark.parametrize("fn,first_stored", [(height, False), (widen, True)])
def test_results_that_change_structure_fall_back_to_gathering_by_group(monkeypatch, fn, first_stored):
    stored = count_stored(monkeypatch)
    trees = forest(3, [4, 1, 7, 2, 6])
    check_batched(lambda t: fn(t, len(t.word) - 1), trees)
    assert stored[0] is first_stored and False in stored


def two_shapes(tree, k):
    if tree.left[k] < 0:
        return 1.0
    return np.zeros(2) + two_shapes(tree, tree.left[k]) + two_shapes(tree, tree.right[k])


def test_results_of_different_shapes_are_a_clear_error():
    from spmdbatch.errors import VaryingValueError
    with pytest.raises(VaryingValueError, match="different shapes in different examples"):
        sb.spmd(lambda t: np.zeros(2) + two_shapes(t, len(t.word) - 1))(forest(4, [3, 1, 5]))
