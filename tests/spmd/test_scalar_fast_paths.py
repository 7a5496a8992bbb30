"""The fast paths of cheap scalar loops (issue 17, item 3) give what the general paths give.

- `Batched` operators run the ufunc on lane vectors directly (runtime/batched.py): values
  and dtypes as the per-example loop, with weak (Python number) and strong operands mixed;
- a branch whose two sides only pass values on to one join (`x = 0 if c else 1`) selects
  them lane by lane instead of splitting the group (execution/frame.py `select_env`); any
  value it cannot select falls back to the split;
- lane-vector takes and merges, ragged get/set with one position per lane and lane-mapped
  ``x[t, k]`` gathers; their out-of-range cases still raise a `LaneError` naming the examples.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spmdbatch as sb
from spmdbatch.errors import LaneError
from oracle import check_batched, check_batched_grad

SETTINGS = settings(max_examples=30, deadline=None)
INTS = st.lists(st.integers(-20, 20), min_size=1, max_size=9)


def _loop_dtype(f, *columns):
    """The dtype numpy gives the stack of the loop's results."""
    return np.asarray([f(*args) for args in zip(*columns)]).dtype


# --- conditional expressions: selected, not split ----------------------------------------------
def pick_numbers(x, k):
    a = 0 if k > 2 else 1                     # int / int
    b = 0.5 if x > 0 else -1.5                # float / float
    c = 2 if k % 2 else 0.25                  # int / float (per-example Python types differ)
    d = x if x > 1 else 3                     # float64 lanes / int
    e = k if k < 0 else 7                     # int64 lanes / int
    f = x if x < 0.5 else k                   # float64 / int64 lanes: no select, a split
    g = True if k > 0 else False
    return a + b + c + d + e + f + g


def pick_in_loop(x, k):
    total = 0
    n = 0
    while n < k:
        step = 1 if (n + k) % 3 == 0 else 2
        total += step * x if x > 0 else step   # (a side with work: split as before)
        n += step
    return total


@SETTINGS
@given(INTS, st.data())
def test_conditional_expressions_match_the_loop(ks, data):
    xs = np.array(data.draw(st.lists(st.floats(-3, 3), min_size=len(ks), max_size=len(ks))))
    ks = np.array(ks, dtype=np.int64)
    got = check_batched(pick_numbers, xs, ks)
    assert got.dtype == _loop_dtype(pick_numbers, xs, ks)
    got = check_batched(pick_in_loop, xs, ks)
    assert got.dtype == _loop_dtype(pick_in_loop, xs, ks)


def test_conditional_expression_of_float32_lanes_keeps_float32():
    def f(x):
        y = x if x > 0 else 0.0
        return y * 2
    xs = np.array([-1.0, 2.0, 0.5, -0.25], dtype=np.float32)
    got = check_batched(f, xs)
    # a join of a Python number with float32 lanes takes float32, as the general merge does
    # (docs/DESIGN.md "Values"; the loop's stack of mixed results would be float64)
    assert got.dtype == np.float32


def test_select_is_emitted_only_for_sides_without_statements():
    def f(x):
        a = 1 if x > 0 else 2
        b = np.log(x) if x > 0 else 0.0        # a side that computes: split
        return a + b
    assert sb.show(f).count("select_env(") == 1
    check_batched(f, np.array([-1.0, 2.0, 0.0, 3.0]))   # no warning from log of inactive lanes


def test_selected_values_are_differentiable():
    def f(w, x):
        y = w * x if x > 0 else w           # sides with work: split
        z = y if x > 1 else 0.0             # select, or split for traced lanes
        return z + y
    check_batched_grad(f, np.array(1.5), np.array([-1.0, 0.5, 2.0, 3.0]))


# --- operators on lane vectors -----------------------------------------------------------------
def arithmetic(x, k, n):
    a = k * 2 + 1 - n // 3 + n % 4            # ints, weak and strong
    b = x * n + k / 2 - x ** 2                # float lanes with ints
    c = (k < n) + (x >= 0.5) + (n != k) + (k == 3)
    d = -k + -x + (k & 3) + (k | 1) + (k ^ 2)
    e = 1 + x, 2 - k, 3 * n, 4 / (abs(k) + 1), 5 // (abs(k) + 1), 7 % (abs(k) + 1), 2 ** abs(k % 4)
    return a, b, c, d, e


@SETTINGS
@given(INTS, st.data())
def test_operators_match_the_loop(ks, data):
    B = len(ks)
    xs = np.array(data.draw(st.lists(st.floats(-3, 3), min_size=B, max_size=B)), dtype=np.float32)
    ks = np.array(ks, dtype=np.int64)
    ns = np.array(data.draw(st.lists(st.integers(0, 9), min_size=B, max_size=B)), dtype=np.int32)
    got = check_batched(arithmetic, xs, ks, ns, rtol=1e-6, atol=1e-6)
    loop = [arithmetic(*args) for args in zip(xs, ks, ns)]
    for i in range(4):
        assert got[i].dtype == np.asarray([r[i] for r in loop]).dtype, i
    for j in range(7):
        assert got[4][j].dtype == np.asarray([r[4][j] for r in loop]).dtype, j


def weak_counter(x):
    i = 0
    out = x
    while i < len(x):                 # i: a Python int per example; len(x) per example
        out = out + x[i] * i / len(x)
        i += 1
    return out.sum() + i


def test_weak_counters_take_the_arrays_dtype():
    xs = [np.arange(n, dtype=np.float32) + 1 for n in (1, 4, 2, 3)]
    got = sb.spmd(weak_counter)(xs)
    want = np.array([weak_counter(x) for x in xs])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got.dtype == want.dtype == np.float32


# --- ragged and lane-mapped positions -----------------------------------------------------------
def running_min(a, j):
    best = np.zeros(len(a), dtype=np.int64)
    best[0] = a[0]
    for i in range(1, len(a)):
        best[i] = min(best[i - 1], a[i])
    return best[j]


def test_ragged_positions_match_the_loop_and_name_bad_examples():
    a = [np.array([5, 3, 4]), np.array([2]), np.array([9, 1, 7, 0])]
    got = sb.spmd(running_min)(a, np.array([2, 0, -1]))
    np.testing.assert_array_equal(got, [running_min(x, j) for x, j in zip(a, [2, 0, -1])])
    with pytest.raises(LaneError) as info:
        sb.spmd(running_min)(a, np.array([2, 1, 3]))       # example 1 has one element
    assert info.value.lanes == [1]


def store_at(a, j, v):
    out = np.zeros(len(a))
    out[j] = v
    return out.sum()


def test_ragged_store_out_of_range_names_the_example():
    a = [np.ones(3), np.ones(2)]
    np.testing.assert_allclose(sb.spmd(store_at)(a, np.array([2, 1]), np.array([1.5, 2.5])), [1.5, 2.5])
    with pytest.raises(LaneError) as info:
        sb.spmd(store_at)(a, np.array([0, 2]), np.array([1.5, 2.5]))
    assert info.value.lanes == [1]


def table_lookup(table, ids):
    total = 0.0
    for t in range(table.shape[0]):
        total += table[t, ids[t]]
    return total


def test_lane_mapped_pair_gather_matches_the_loop_and_names_bad_examples():
    rng = np.random.default_rng(0)
    tables = [rng.normal(size=(n, 4)) for n in (3, 1, 5)]
    ids = [rng.integers(0, 4, n) for n in (3, 1, 5)]
    got = sb.spmd(table_lookup)(tables, ids)
    np.testing.assert_allclose(got, [table_lookup(t, i) for t, i in zip(tables, ids)])
    ids[2] = ids[2].copy()
    ids[2][4] = 7                                            # past the table's 4 columns
    with pytest.raises(LaneError) as info:
        sb.spmd(table_lookup)(tables, ids)
    assert info.value.lanes == [2]


def uniform_pick_while_lanes_wait(x):
    if x > 0:
        x = x * 2                      # a side with work: the other side's group waits
        t = 1 if 0.5 > 1.0 else 2      # a uniform condition with another group waiting
    else:
        x = x - 1
        t = 3 if x < 0.5 else 4.5
    return x + t


def test_uniform_condition_of_a_selectable_branch_while_other_lanes_wait():
    # (found by the program fuzzer: the select must leave uniform conditions to `branch`)
    check_batched(uniform_pick_while_lanes_wait, np.array([-1.0, 2.0, 0.25, -0.5, 3.0]))
