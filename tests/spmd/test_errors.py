"""Clear errors: each names the user's file and line and says what to do."""
from __future__ import annotations

import inspect

import numpy as np
import pytest

import spmdbatch as sb
from oracle import line_of
from spmdbatch.errors import (BatchSizeError, DivergentSideEffect, LaneError, SpmdError,
                              UnsupportedConstruct, VaryingValueError)

X = np.array([-1.0, 2.0, 3.0, -4.0])
THIS_FILE = __file__


def assert_points_at(err, fn, text):
    msg = str(err.value)
    assert f"{THIS_FILE}:{line_of(fn, text)}" in msg, msg


def gen(x):
    yield x


async def coro(x):
    return x


def test_generator_is_refused():
    with pytest.raises(UnsupportedConstruct) as err:
        sb.spmd(gen)(X)
    assert THIS_FILE in str(err.value)


def test_async_is_refused():
    with pytest.raises(UnsupportedConstruct) as err:
        sb.spmd(coro)(X)
    assert THIS_FILE in str(err.value)


def try_with_varying_branch(x):
    try:
        if x > 0:
            return x
        return -x
    except ValueError:
        return 0.0


def try_without_varying_branch(x):
    try:
        y = np.tanh(x) * 2
    finally:
        pass
    return y


def test_try_with_varying_control_flow_is_refused():
    with pytest.raises(UnsupportedConstruct) as err:
        sb.spmd(try_with_varying_branch)(X)
    assert_points_at(err, try_with_varying_branch, "if x > 0")
    assert "try" in str(err.value)


def test_try_with_uniform_control_flow_works():
    np.testing.assert_allclose(sb.spmd(try_without_varying_branch)(X), np.tanh(X) * 2)


COUNTER = 0


def writes_global(x):
    global COUNTER
    if x > 0:
        COUNTER = 1
    return x


class Holder:
    value = 0.0


HOLDER = Holder()


def mutates_attribute(x):
    if x > 0:
        HOLDER.value = x
    return x


def prints_in_branch(x):
    if x > 0:
        print("positive")
    return x


def mutates_list(x, items):
    if x > 0:
        items[0] = 1
    return x


def make_nonlocal_writer():
    total = 0.0

    def add(x):
        nonlocal total
        if x > 0:
            total = x
        return x
    return add


@pytest.mark.parametrize("fn,text,args,in_axes", [
    (writes_global, "COUNTER = 1", (X,), (0,)),
    (mutates_attribute, "HOLDER.value = x", (X,), (0,)),
    (prints_in_branch, "print(", (X,), (0,)),
    (mutates_list, "items[0] = 1", (X, [0]), (0, None)),
])
def test_side_effects_under_varying_condition(fn, text, args, in_axes):
    with pytest.raises(DivergentSideEffect) as err:
        sb.spmd(fn, in_axes=in_axes)(*args)
    assert_points_at(err, fn, text)


def test_nonlocal_write_under_varying_condition():
    with pytest.raises(DivergentSideEffect) as err:
        sb.spmd(make_nonlocal_writer())(X)
    assert "nonlocal" in str(err.value) and THIS_FILE in str(err.value)


def stores_example_in_global(x):
    global COUNTER
    COUNTER = x * 2
    return x


def make_nonlocal_example_writer():
    last = 0.0

    def keep(x):
        nonlocal last
        last = x + 1.0
        return x
    return keep


def test_per_example_value_stored_in_a_global_is_refused():
    # without divergence too: one global cannot hold one value per example (the loop would
    # leave the last example's value there); the global keeps what it held
    with pytest.raises(DivergentSideEffect, match="per-example value to global variable 'COUNTER'") as err:
        sb.spmd(stores_example_in_global)(X)
    assert_points_at(err, stores_example_in_global, "COUNTER = x * 2")
    assert COUNTER == 0


def test_per_example_value_stored_in_a_callers_nonlocal_is_refused():
    keep = make_nonlocal_example_writer()
    with pytest.raises(DivergentSideEffect, match="nonlocal variable 'last'") as err:
        sb.spmd(keep)(X)
    assert THIS_FILE in str(err.value)
    assert keep.__closure__[0].cell_contents == 0.0        # no internal wrapper reached it


def test_nonlocal_of_a_closure_built_in_the_batched_function_holds_per_example_values():
    def f(x):
        total = 0.0

        def add(v):
            nonlocal total
            total = total + v
        add(x)
        add(x * 2)
        return total
    np.testing.assert_allclose(sb.spmd(f)(X), [f(v) for v in X])
    np.testing.assert_allclose(sb.grad(lambda x: sb.spmd(f)(x).sum())(X), np.full(len(X), 3.0))


def test_side_effects_under_uniform_control_are_fine():
    def f(x):
        HOLDER.value = 3.0
        return x
    sb.spmd(f)(X)
    assert HOLDER.value == 3.0


def needs_int(x):
    return int(x)


def needs_shape(n):
    return np.eye(n)


def needs_key(x):
    return {1.0: 2.0}[x]


def needs_bool(x):
    return bool(x > 0)


@pytest.mark.parametrize("fn,text,arg", [
    (needs_int, "return int(x)", X), (needs_shape, "np.eye(n)", np.array([1, 2])),
    (needs_bool, "return bool(", X),
])
def test_varying_value_where_python_needs_one(fn, text, arg):
    with pytest.raises(VaryingValueError) as err:
        sb.spmd(fn)(arg)
    assert_points_at(err, fn, text)


def test_missing_per_example_key_names_the_examples():
    # {1.0: 2.0}[x] is looked up per example: the loop's KeyError, in the examples that raise it
    with pytest.raises(LaneError, match="KeyError") as err:
        sb.spmd(needs_key)(np.array([1.0, 3.0, 1.0, -4.0]))
    assert err.value.lanes == [1, 3]
    assert_points_at(err, needs_key, "[x]")
    np.testing.assert_array_equal(sb.spmd(needs_key)(np.array([1.0, 1.0])), [2.0, 2.0])


def test_batch_sizes_must_agree():
    with pytest.raises(BatchSizeError) as err:
        sb.spmd(lambda a, b: a + b)(np.ones(3), np.ones(4))
    assert "3" in str(err.value) and "4" in str(err.value)


def test_ragged_list_rank_and_dtype_mismatch():
    with pytest.raises(BatchSizeError, match="rank"):
        sb.spmd(lambda v: v.sum())([np.ones(2), np.ones((2, 2))])
    with pytest.raises(BatchSizeError, match="dtype"):
        sb.spmd(lambda v: v.sum())([np.ones(2), np.array(["a", "b"])])


def checks_sign(x):
    if x < 0:
        raise ValueError("negative input")
    return x


def helper_asserts(y):
    assert y < 2.5, "too large"
    return y


def calls_asserting_helper(x):
    if x > 0:
        return helper_asserts(x)
    return x


def test_exception_in_some_lanes_names_them():
    with pytest.raises(LaneError) as err:
        sb.spmd(checks_sign)(X)
    assert err.value.lanes == [0, 3]
    assert "negative input" in str(err.value)
    assert_points_at(err, checks_sign, "raise ValueError")


def test_exception_in_nested_call_names_outer_batch_indices():
    with pytest.raises(LaneError) as err:
        sb.spmd(calls_asserting_helper)(X)
    assert err.value.lanes == [2]
    assert "too large" in str(err.value)


def test_exception_in_every_lane_is_raised_as_is():
    with pytest.raises(ValueError, match="negative"):
        sb.spmd(checks_sign)(-X[X > 0])


def test_all_errors_are_spmd_errors():
    for cls in (BatchSizeError, DivergentSideEffect, LaneError, UnsupportedConstruct, VaryingValueError):
        assert issubclass(cls, SpmdError)


def returns_two_shapes(x):
    if x > 0:
        return 1.0
    return np.zeros(2) + x


def joins_two_shapes(x):
    if x > 0:
        y = 1.0
    else:
        y = np.zeros(2) + x
    return np.zeros(2) + y


def test_return_value_of_different_shapes_names_the_function():
    with pytest.raises(VaryingValueError) as err:
        sb.spmd(returns_two_shapes)(np.array([1.0, -1.0, 2.0]))
    msg = str(err.value)
    assert "different shapes" in msg and "(), (2,)" in msg and "one shape on every path" in msg
    lines, start = inspect.getsourcelines(returns_two_shapes)
    assert any(f"{THIS_FILE}:{start + i}:" in msg for i in range(len(lines))), msg


def test_variable_of_different_shapes_at_a_join_runs_the_groups_apart():
    # (numbers and arrays mix freely afterwards: each group runs the rest on its own)
    xs = np.array([1.0, -1.0, 2.0, -3.0])
    got = sb.spmd(joins_two_shapes)(xs)
    np.testing.assert_array_equal(got, np.stack([joins_two_shapes(x) for x in xs]))


def test_print_of_per_example_values_shows_each_examples_own_value(capsys):
    def f(x, v):
        print("x is", x, "sum", v.sum())
        return x
    sb.spmd(f)(np.array([1.0, 2.5]), np.ones((2, 3)))
    assert capsys.readouterr().out == "x is 1.0 sum 3.0\nx is 2.5 sum 3.0\n"
