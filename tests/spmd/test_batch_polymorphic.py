"""`batch_polymorphic` functions run natively on the stacked lanes: the result must still equal
the per-example loop, gradients the per-example sum, and the general path must take over
whenever the native call would be wrong (uniform arrays, ragged values, a per-example self,
the `when` predicate false)."""
from __future__ import annotations

import sys
from typing import NamedTuple

import numpy as np
import pytest

import spmdbatch as sb
from spmdbatch import nn

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from oracle import check_batched, check_batched_grad  # noqa: E402

F64 = np.float64
rng = np.random.default_rng(3)
X = rng.standard_normal((7, 4))
Y = rng.standard_normal((7, 4))
NATIVE_RUNS: list = []


@sb.batch_polymorphic
def mix(a, pair, scale=1.0):
    """Written for a leading batch axis: axis=-1 and elementwise operations only."""
    NATIVE_RUNS.append((type(a).__name__, np.shape(a)))
    b, c = pair
    return np.tanh(a * scale + b) * c, np.concatenate([a, b], axis=-1).sum(axis=-1)


def call_mix(a, b, c):
    return mix(a, (b, c), scale=2.0)


def test_runs_once_natively_and_matches_the_loop():
    NATIVE_RUNS.clear()
    got = check_batched(call_mix, X, Y, X * Y)
    # one native run over all 7 lanes (after the oracle's own 7 unbatched runs)
    assert NATIVE_RUNS[-1] == ("ndarray", (7, 4)) and NATIVE_RUNS.count(("ndarray", (7, 4))) == 1
    assert got[0].shape == (7, 4) and got[1].shape == (7,)


@pytest.mark.parametrize("width", [4, 12])
def test_under_a_varying_branch_it_runs_on_the_branch_lanes_only(width):
    # rows of 12 elements are lane-mapped by the branch (runtime/mapped.py), not copied: the
    # native call gathers them once
    a, b = rng.standard_normal((7, width)), rng.standard_normal((7, width))

    def f(a, b):
        if a.sum() > 0:
            out, _ = mix(a, (b, a))
            return out
        return a * 0.5
    NATIVE_RUNS.clear()
    check_batched(f, a, b)
    positive = int(np.count_nonzero(a.sum(axis=1) > 0))
    assert 0 < positive < len(a)
    assert NATIVE_RUNS[-1] == ("ndarray", (positive, width))


def test_gradients_equal_the_per_example_sum():
    def loss(w, a, b):
        out, s = mix(a * w, (b, a))
        return out.sum() + s
    check_batched_grad(loss, np.linspace(0.5, 1.5, 4), X, Y)


def test_a_uniform_array_argument_takes_the_general_path():
    # the native call would concatenate a (7, 4) batch with a (4,) vector and fail
    def f(a):
        out, _ = mix(a, (np.ones(4), np.arange(4.0)))
        return out
    NATIVE_RUNS.clear()
    check_batched(f, X)
    assert ("ndarray", (7, 4)) not in NATIVE_RUNS and ("Batched", (4,)) in NATIVE_RUNS


def test_ragged_arguments_take_the_general_path():
    @sb.batch_polymorphic
    def total(v):
        NATIVE_RUNS.append(type(v).__name__)
        return v.sum()
    NATIVE_RUNS.clear()
    seqs = [np.arange(n, dtype=F64) for n in (3, 1, 4)]
    got = sb.spmd(total)(seqs)
    np.testing.assert_allclose(got, [3.0, 0.0, 6.0])
    assert NATIVE_RUNS == ["Ragged"]            # the batch program ran, on the ragged value


class Scaled(nn.Module):
    w: object

    @sb.batch_polymorphic(when=lambda self, x: x.shape[-1] == 4)
    def __call__(self, x):
        NATIVE_RUNS.append(type(x).__name__)
        return x * self.w


def test_modules_use_it_and_the_predicate_can_refuse():
    layer = Scaled(w=np.arange(4.0))
    NATIVE_RUNS.clear()
    check_batched(lambda m, a: m(a), layer, X, in_axes=(None, 0))
    assert NATIVE_RUNS == ["ndarray"] * (len(X) + 1)     # the loop's runs, then one batched
    NATIVE_RUNS.clear()
    narrow = rng.standard_normal((5, 2, 3))              # predicate false: last axis is 3
    check_batched(lambda m, a: m(a), Scaled(w=np.arange(3.0)), narrow, in_axes=(None, 0))
    assert NATIVE_RUNS == ["ndarray"] * len(narrow) + ["Batched"]


def test_a_per_example_module_takes_the_general_path():
    per_example = Scaled(w=rng.standard_normal((6, 4)))
    xs = rng.standard_normal((6, 4))
    NATIVE_RUNS.clear()
    check_batched(lambda m, a: m(a), per_example, xs, in_axes=(0, 0))
    assert NATIVE_RUNS == ["ndarray"] * len(xs) + ["Batched"]


def test_an_output_without_the_batch_axis_is_a_clear_error():
    @sb.batch_polymorphic
    def bad(a):
        return a.sum()          # sums the whole batch: not batch-polymorphic
    with pytest.raises(sb.SpmdError, match="bad is marked batch_polymorphic"):
        sb.spmd(lambda a: bad(a) * 2.0)(X)
    with pytest.raises(sb.SpmdError, match="bad is marked batch_polymorphic"):
        sb.spmd(bad)(X)                      # called directly by spmd, too


class Pair(NamedTuple):
    h: np.ndarray
    c: np.ndarray


def test_tree_lstm_cell_runs_natively_per_level():
    cell = nn.BinaryTreeLSTMCell(3, 4, rng=0, dtype=F64)
    x = rng.standard_normal((5, 3))

    def step(cell, x):
        left = cell(x)
        right = cell(x * 0.5)
        return cell(left, right)
    with sb.stats() as s:
        check_batched(step, cell, x, in_axes=(None, 0))
    assert s.lanes["BinaryTreeLSTMCell.__call__"] == [5, 5, 5]
    check_batched_grad(lambda c, x: step(c, x)[0].sum(), cell, x)
