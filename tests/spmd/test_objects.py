"""Objects and attributes under @spmd (issue 15, section 2): a per-example value never reaches
an object the caller can see; objects the batch program constructs may hold per-example
values; calls that change objects are not merged into one batched call; an object holding
per-example values where examples take different paths is refused (it cannot follow them).
Each program is compared with the per-example loop, or refused with the user's line."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import spmdbatch as sb
from spmdbatch.errors import DivergentSideEffect, UnsupportedConstruct

from oracle import check_batched

THIS_FILE = __file__
XS = np.array([1.0, -2.0, 0.5, 3.0])


class Box:
    pass


class Acc:
    def __init__(self):
        self.total = 0.0
        self.calls = 0

    def add(self, x):
        self.total = self.total + x
        self.calls = self.calls + 1


SHARED = Box()
SHARED_ACC = Acc()


def _lineno(fn, text):
    import inspect
    lines, start = inspect.getsourcelines(fn)
    return start + next(i for i, line in enumerate(lines) if text in line)


def stores_in_global_object(x):
    SHARED.v = x * 2
    return x


def stores_through_setattr(x, obj):
    setattr(obj, "v", x)
    return x


def method_stores_in_self(x):
    SHARED_ACC.add(x)
    return x


@pytest.mark.parametrize("fn, args, in_axes, text", [
    (stores_in_global_object, (XS,), (0,), "SHARED.v = x * 2"),
    (stores_through_setattr, (XS, Box()), (0, None), 'setattr(obj, "v", x)'),
    (method_stores_in_self, (XS,), (0,), "self.total = self.total + x"),
])
def test_per_example_value_into_a_callers_object_is_refused(fn, args, in_axes, text):
    before = {k: v for k, v in vars(SHARED).items()}
    with pytest.raises(DivergentSideEffect, match="made outside the batched call") as err:
        sb.spmd(fn, in_axes=in_axes)(*args)
    assert err.value.filename == THIS_FILE
    where = Acc.add if "self" in text else fn
    assert err.value.lineno == _lineno(where, text)
    assert vars(SHARED) == before and SHARED_ACC.total == 0.0    # no wrapper left behind


def uniform_store(x, obj):
    obj.scale = 3.0               # the same value in every example: as the loop does
    return x * obj.scale


def test_uniform_value_into_a_callers_object_is_kept():
    obj = Box()
    np.testing.assert_array_equal(sb.spmd(uniform_store, in_axes=(0, None))(XS, obj), XS * 3.0)
    assert obj.scale == 3.0


def accumulate_in_own_object(x):
    a = Acc()
    a.add(x)
    a.add(x * 3)          # (not fused with the first call: both change `a`)
    a.add(1.0)
    return a.total, a.calls


def own_box_read_in_branches(x):
    b = Box()
    b.v = x * 2
    y = b.v + 1 if x > 0 else b.v - 1
    return y


def test_objects_the_program_constructs_hold_per_example_values():
    check_batched(accumulate_in_own_object, XS)
    check_batched(_own_box_straight, XS)


def _own_box_straight(x):
    b = Box()
    b.v = x * 2
    b.w = b.v * b.v
    return b.w - b.v


def test_own_object_with_per_example_values_across_a_split_is_refused():
    with pytest.raises(UnsupportedConstruct, match="Box object holding per-example values") as err:
        sb.spmd(own_box_read_in_branches)(XS)
    assert err.value.filename == THIS_FILE


@dataclass
class Cell:
    v: object = 0.0


def dataclass_read_in_branches(x):
    c = Cell()
    c.v = x * 2
    if x > 0:
        y = c.v + 1
    else:
        y = c.v - 1
    return y


def test_dataclass_fields_follow_each_example():
    check_batched(dataclass_read_in_branches, XS)


COUNTER = Acc()


def counts_calls(x):
    COUNTER.calls = COUNTER.calls + 1       # uniform: once per call, as in the loop
    return x * 2


def calls_counter_twice(x):
    a = counts_calls(x)
    b = counts_calls(x + 1)
    return a + b


def test_independent_calls_that_change_state_are_not_fused():
    COUNTER.calls = 0
    got = sb.spmd(calls_counter_twice)(XS)
    np.testing.assert_array_equal(got, 4 * XS + 2)
    assert COUNTER.calls == 2      # once per call of the batch program (fused: once in all)


class Pair:
    def __init__(self):
        self.a = 0.0

    def put(self, v):
        self.a = v
        return v


def reads_between_changing_calls_of_a_function(x):
    u = put_global(x * 0.0)
    w = put_global(PAIR.a + 1.0)  # reads PAIR.a between the calls (moved: refused at run time)
    return u + w


PAIR = Pair()


def put_global(v):
    PAIR.a = 5.0
    return v


def test_changing_calls_with_reads_between_them_are_refused_or_match():
    check_batched(lambda x: _own_pair(x), XS)
    with pytest.raises(UnsupportedConstruct, match="reads of attributes") as err:
        sb.spmd(reads_between_changing_calls_of_a_function)(XS)
    assert err.value.filename == THIS_FILE


def _own_pair(x):
    p = Pair()
    u = p.put(x * 0.0)
    w = p.put(p.a + 1.0)          # reads p.a between two calls of p's method: not fused
    return u + w


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["add_x", "add_2x", "add_1", "read"]), min_size=1, max_size=6),
       st.lists(st.floats(-3, 3), min_size=1, max_size=5))
def test_random_method_sequences_on_own_objects_match_the_loop(ops, values):
    src = ["def f(x):", "    a = Acc()", "    r = 0.0"]
    for op in ops:
        src.append({"add_x": "    a.add(x)", "add_2x": "    a.add(x * 2)", "add_1": "    a.add(1.0)",
                    "read": "    r = r + a.total"}[op])
    src.append("    return a.total + r, a.calls")
    namespace = {"Acc": Acc}
    exec(compile("\n".join(src), THIS_FILE, "exec"), namespace)
    check_batched(namespace["f"], np.array(values))
