"""Errors name the example and the user's line (issue 15, section 4): out-of-range indices,
recursion that never ends, and lookups with a per-example key behave as the per-example
loop does, the loop's exception becoming a `LaneError` that names the examples raising it."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spmdbatch as sb
from spmdbatch.errors import LaneError
from oracle import check_batched, check_batched_grad, line_of

SETTINGS = settings(max_examples=25, deadline=None)


def loop_raises(f, *examples):
    """Indices of the examples whose call raises IndexError (the loop's behaviour)."""
    bad = []
    for i, args in enumerate(zip(*examples)):
        try:
            f(*args)
        except IndexError:
            bad.append(i)
    return bad


def gather(h, i):
    return h[i] * 2.0


def gather_rows(h, i, j):
    return h[i, j] + h[i].sum()


def gather_in_branch(x, h, i):
    if x > 0:
        return h[i] * x
    return x


def gather_ragged(v, i):
    return v[i] + v[-1]


TABLE = np.arange(12.0).reshape(6, 2)


def gather_table(i):
    return TABLE[i].sum()


def update(h, i):
    h[i] = 5.0
    return h.sum()


INDICES = st.integers(-7, 7)


def check_like_the_loop(f, *args):
    bad = loop_raises(f, *args)
    if not bad:
        check_batched(f, *args)
        return
    with pytest.raises(LaneError) as err:
        sb.spmd(f)(*args)
    assert err.value.lanes == bad
    assert "IndexError" in str(err.value)
    code = f.__code__
    assert f"{code.co_filename}:" in str(err.value)


@SETTINGS
@given(idx=st.lists(INDICES, min_size=1, max_size=6))
def test_out_of_range_gather_names_the_examples(idx):
    h = np.arange(5.0 * len(idx)).reshape(len(idx), 5)
    check_like_the_loop(gather, h, np.array(idx))
    check_like_the_loop(gather_table, np.array(idx))
    check_like_the_loop(update, h, np.array(idx))


@SETTINGS
@given(rows=st.lists(st.tuples(INDICES, INDICES), min_size=1, max_size=6))
def test_out_of_range_in_a_second_axis(rows):
    i, j = (np.array(c) for c in zip(*rows))
    h = np.arange(12.0 * len(rows)).reshape(len(rows), 3, 4)
    check_like_the_loop(gather_rows, h, i, j)


@SETTINGS
@given(data=st.data())
def test_out_of_range_ragged_index_names_the_examples(data):
    n = data.draw(st.integers(1, 6))
    vs = [np.arange(float(k)) + 1 for k in data.draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))]
    idx = np.array(data.draw(st.lists(INDICES, min_size=n, max_size=n)))
    check_like_the_loop(gather_ragged, vs, idx)


def test_out_of_range_gather_reports_the_examples_own_axis():
    h = np.arange(20.0).reshape(4, 5)
    with pytest.raises(LaneError) as err:
        sb.spmd(gather)(h, np.array([1, 7, 2, 0]))
    assert err.value.lanes == [1]
    assert "axis 0 with size 5" in str(err.value)
    assert f"{__file__}:{line_of(gather, 'h[i]')}" in str(err.value)


def test_out_of_range_under_a_branch_names_batch_examples():
    # only examples 1, 2 and 4 take the branch; of them, 2 and 4 index out of range
    x = np.array([-1.0, 1.0, 2.0, -3.0, 4.0])
    h = np.ones((5, 3))
    with pytest.raises(LaneError) as err:
        sb.spmd(gather_in_branch)(x, h, np.array([9, 1, 3, 9, -4]))
    assert err.value.lanes == [2, 4]
    assert f"{__file__}:{line_of(gather_in_branch, 'h[i] * x')}" in str(err.value)


def ragged_in_branch(x, v):
    if x > 0:
        return v[2]
    return x


def test_ragged_index_under_a_branch_names_batch_examples():
    vs = [np.ones(3), np.ones(1), np.ones(4), np.ones(2)]
    with pytest.raises(LaneError) as err:
        sb.spmd(ragged_in_branch)(np.array([1.0, -1.0, 1.0, 1.0]), vs)
    assert err.value.lanes == [3]


# --- recursion that never ends ----------------------------------------------------------------
class Tree(NamedTuple):
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray


def total(t, k):
    if t.left[k] < 0:
        return t.value[k]
    return total(t, t.left[k]) + total(t, t.right[k])


def root_total(t):
    return total(t, len(t.value) - 1)


GOOD = Tree(np.array([-1, -1, 0]), np.array([-1, -1, 1]), np.array([1.0, 2.0, 0.0]))
CYCLIC = Tree(np.array([-1, -1, 2]), np.array([-1, -1, 1]), np.array([1.0, 2.0, 0.0]))  # left[2] = 2


def test_cyclic_tree_raises_a_lane_error_naming_the_example():
    with pytest.raises(LaneError, match="RecursionError") as err:
        sb.spmd(root_total)([GOOD, CYCLIC, GOOD, CYCLIC])
    assert err.value.lanes == [1, 3]
    assert "max_depth" in str(err.value)
    with pytest.raises(RecursionError):           # what the loop does
        root_total(CYCLIC)


def test_recursion_depth_limit_is_settable():
    with pytest.raises(LaneError, match=r"depth \(20 calls\)") as err:
        sb.spmd(root_total, max_depth=20)([CYCLIC, GOOD])
    assert err.value.lanes == [0]
    np.testing.assert_allclose(sb.spmd(root_total, max_depth=1)([GOOD, GOOD]), [3.0, 3.0])
    with pytest.raises(LaneError, match="depth"):   # deeper than allowed, though finite
        sb.spmd(root_total, max_depth=0)([GOOD])


def down(t, k):
    if t.left[k] < 0:
        return t.value[k]
    return through(t, t.left[k])


def through(t, k):
    return down(t, k) + 1.0


def test_mutual_recursion_that_never_ends_names_the_example():
    with pytest.raises(LaneError, match="RecursionError") as err:
        sb.spmd(lambda t: down(t, 2))([GOOD, CYCLIC])
    assert err.value.lanes == [1]


# --- lookups with a per-example key --------------------------------------------------------------
OPS = {"tanh": np.tanh, 0: np.tanh, 1: np.sin, 2: lambda v: v * 3.0}
SCALES = [0.5, 2.0, -1.0]


def apply_op(p, x, mode):
    return OPS[mode](x * p[0]) + SCALES[mode] * p[1]


@SETTINGS
@given(modes=st.lists(st.integers(0, 2), min_size=1, max_size=6))
def test_function_chosen_by_a_per_example_key(modes):
    x = np.linspace(-1.0, 2.0, len(modes))
    p = np.array([0.7, 1.3])
    check_batched(lambda x, m: apply_op(p, x, m), x, np.array(modes))
    check_batched_grad(apply_op, p, x, np.array(modes))


def test_missing_key_names_the_examples():
    with pytest.raises(LaneError, match="KeyError") as err:
        sb.spmd(lambda x, m: OPS[m](x))(np.ones(3), np.array([1, 7, 2]))
    assert err.value.lanes == [1]
