"""Every construct @spmd batches, checked against the per-example loop (and gradients)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pytest

import spmdbatch as sb
from spmdbatch import nn
from spmdbatch.errors import DivergentSideEffect
from oracle import check_batched, check_batched_grad

rng = np.random.default_rng(0)
X = np.array([-2.0, 3.0, -0.5, 1.0, 0.0, 7.5, -9.0])
N = np.array([0, 1, 5, 2, 3, 0, 4])
V = rng.standard_normal((7, 3))
M = rng.standard_normal((7, 4, 3))


def tozero(x):
    if x < 0:
        x += 1
    else:
        x -= 1
    return x


def elif_chain(x):
    if x < -1:
        y = -x
    elif x < 1:
        y = x * x
    elif x < 5:
        y = 2 * x
    else:
        y = 10.0
    return y


def nested_if(x, v):
    if x > 0:
        if v[0] > 0:
            r = x + v[0]
        else:
            r = x - v[0]
    else:
        r = v.sum()
        if r > 0:
            r = -r
    return r


def short_circuit(x, v):
    a = x > 0 and v[1] > 0
    b = x < -1 or v[2] > 0.5
    c = not (x > 2)
    if a or (b and c):
        return x * 2
    return x + 1


def chained(x):
    if -1 < x < 2:
        return 1.0
    return 0.0 if x <= -1 else 2.0


def cond_expr(x, v):
    y = x if x > 0 else -x
    z = v * (1.0 if v[0] > 0 else -1.0)
    return y + z.sum()


def tuples(x, v):
    a, b = x, v[0]
    if a > b:
        a, b = b, a
    (c, d), e = (a + 1, b - 1), v
    return a * b + c - d + e[2]


def while_loop(x):
    k = 0
    while abs(x) > 1:
        x = x / 2
        k += 1
    return x + k


def for_range_varying(x, n):
    acc = 0.0
    for i in range(n):
        acc = acc + x * i
    return acc


def for_range_start_stop(n):
    s = 0
    for i in range(1, n + 1, 2):
        s += i
    return s


def for_uniform_with_break(x):
    total = 0.0
    for i in range(6):
        if total > x:
            break
        if i % 2 == 1:
            continue
        total += i
    return total


def for_over_vector(v):
    s = 0.0
    for e in v:
        if e > 0:
            s += e
    return s


def nested_loops(n):
    count = 0
    for i in range(n):
        j = 0
        while j < i:
            if (i + j) % 3 == 0:
                break
            count += 1
            j += 1
    return count


def early_returns(x, n):
    for i in range(n):
        if x > 5:
            return x
        x = x * 2 + 1
        if x < -10:
            return -1.0
    return x


def helper(y):
    return y * y if y > 0 else -y


def calls_helper(x):
    return helper(x) + helper(x - 1)


def closure_maker(scale):
    def inner(x):
        if x > 0:
            return x * scale
        return x
    return inner


scaled = closure_maker(3.0)
OFFSET = 0.5


def calls_closure_and_lambda(x):
    g = lambda t: t + OFFSET if t > 1 else t - OFFSET  # noqa: E731
    return scaled(x) + g(x)


class Scaler:
    def __init__(self, k):
        self.k = k

    def apply(self, x):
        if x > 0:
            return x * self.k
        return x / self.k


SCALER = Scaler(4.0)


def calls_method(x):
    return SCALER.apply(x) + 1


def gather_varying(v, n):
    i = n % 3
    return v[i] + v[(i + 1) % 3]


def item_assignment(v, n):
    h = np.zeros(3)
    for i in range(3):
        if v[i] > 0:
            h[i] = v[i]
        else:
            h[i] += 2 * v[i]
    h[n % 3] = 10.0
    return h


def list_append_uniform(v):
    out = []
    for i in range(3):
        out.append(v[i] * i)
    return out[0] + out[1] + out[2]


def int_and_bool(n):
    even = n % 2 == 0
    k = 0
    while n > 1:
        n = n // 2 if n % 2 == 0 else n - 1
        k += 1
    return k, even


def numpy_functions(v, m):
    h = np.tanh(m @ v)
    if h.sum() > 0:
        h = np.maximum(h, 0.0)
    return np.concatenate([h, v]).mean(), np.exp(-np.abs(v))


def log_under_branch(x):
    if x > 0:
        y = np.log(x)
    else:
        y = x
    return y


def sqrt_in_loop(x):
    while x > 1.5:
        x = np.sqrt(x)
    return x


def uniform_control_only(x, k):
    # k is uniform (in_axes None): its branches run natively
    if k > 1:
        return x * k
    return x


def returns_uniform(x):
    return 3.0


CASES = [
    (tozero, (X,)), (elif_chain, (X,)), (nested_if, (X, V)), (short_circuit, (X, V)),
    (chained, (X,)), (cond_expr, (X, V)), (tuples, (X, V)), (while_loop, (X,)),
    (for_range_varying, (X, N)), (for_range_start_stop, (N,)), (for_uniform_with_break, (X,)),
    (for_over_vector, (V,)), (nested_loops, (N,)), (early_returns, (X, N)),
    (calls_helper, (X,)), (calls_closure_and_lambda, (X,)), (calls_method, (X,)),
    (gather_varying, (V, N)), (item_assignment, (V, N)), (list_append_uniform, (V,)),
    (int_and_bool, (N,)), (numpy_functions, (V, M)), (log_under_branch, (X,)),
    (sqrt_in_loop, (np.abs(X) * 10,)), (returns_uniform, (X,)),
]


@pytest.mark.parametrize("f,args", CASES, ids=[c[0].__name__ for c in CASES])
def test_matches_loop(f, args):
    check_batched(f, *args)


@pytest.mark.parametrize("f,args", CASES, ids=[c[0].__name__ for c in CASES])
@pytest.mark.parametrize("batch", [0, 1])
def test_small_batches(f, args, batch):
    check_batched(f, *[a[:batch] for a in args])


def test_large_batch():
    big = np.random.default_rng(1).standard_normal(2000) * 10
    check_batched(while_loop, big)
    check_batched(early_returns, big, np.random.default_rng(2).integers(0, 6, 2000))


def test_uniform_argument():
    check_batched(uniform_control_only, X, 3, in_axes=(0, None))
    check_batched(uniform_control_only, X, 0, in_axes=(0, None))


# --- gradients ------------------------------------------------------------------------------------
def model(p, x, n):
    h = np.tanh(p["W"] @ x + p["b"])
    k = 0
    while k < n:
        if h.sum() > 0:
            h = np.tanh(p["W"] @ h)
        else:
            h = h * 0.5 + p["b"]
        k += 1
    if x[0] > 0:
        return np.log(np.sum(h * h) + 1.0)
    return h @ p["b"]


def test_gradients_match_per_example_sum():
    p = {"W": rng.standard_normal((3, 3)) * 0.5, "b": rng.standard_normal(3)}
    check_batched_grad(model, p, V, N)


def test_check_gradients_through_spmd():
    p = {"W": rng.standard_normal((3, 3)) * 0.5, "b": rng.standard_normal(3)}
    sb.check_gradients(lambda q: sb.spmd(model, in_axes=(None, 0, 0))(q, V, N).sum(), p)


def test_no_nan_gradient_from_inactive_lanes():
    xs = np.array([-1.0, 0.0, 2.0, 4.0])
    g = sb.grad(lambda a: sb.spmd(log_under_branch)(a).sum())(xs)
    np.testing.assert_array_equal(g, [1.0, 1.0, 0.5, 0.25])


# --- pytrees and lists of examples --------------------------------------------------------------
class Pair(NamedTuple):
    a: np.ndarray
    b: np.ndarray


@dataclass
class Box:
    value: np.ndarray
    count: np.ndarray


def pytree_in_out(pair, box):
    if pair.a > box.value:
        out = Pair(pair.a - box.value, pair.b * 2)
    else:
        out = Pair(box.value, pair.b + box.count)
    return out, {"n": box.count + 1}


def test_pytree_arguments_and_results():
    pair = Pair(X, V)
    box = Box(np.linspace(-1, 1, 7), N)
    got = check_batched(pytree_in_out, pair, box)
    assert isinstance(got[0], Pair) and set(got[1]) == {"n"}


def test_in_axes_pytree_prefix():
    def f(p, x):
        return p["scale"] * x if x > 0 else p["shift"] + x
    p = {"scale": 2.0, "shift": np.ones(7)}
    check_batched(f, p, X, in_axes=({"scale": None, "shift": 0}, 0))


def test_python_list_of_examples():
    examples = [np.array([1.0, -2.0]), np.array([3.0, 4.0]), np.array([-5.0, 0.5])]
    check_batched(for_over_vector, examples)


def test_transform_is_cached():
    f = sb.spmd(tozero)
    f(X)
    from spmdbatch.frontend.transform import program_of
    prog = program_of(tozero)
    f(X[:3])
    assert program_of(tozero) is prog


def test_show_mentions_varying_branch():
    text = sb.show(sb.spmd(tozero))
    assert "VARYING branch" in text and "x" in text.split("varying values:")[1].splitlines()[0]
    assert "def tozero" in text


def test_math_module_on_uniform_values():
    def f(x):
        return x * math.pi if x > 0 else x
    check_batched(f, X)


# --- closures over varying values -----------------------------------------------------------
def lambda_over_varying(x):
    g = lambda t: t + x  # noqa: E731
    if x > 0:
        y = g(1.0)
    else:
        y = g(-1.0) * 2
    return y


def inner_def_in_loop(x, n):
    def step(v):
        return v * x if v < 5 else v + 1
    k = 0
    acc = 1.0
    while k < n:
        acc = step(acc)
        k += 1
    return acc


def inner_reads_enclosing(x):
    y = x * 2

    def inner(z):
        if z > y:
            return z - y
        return z + y
    return inner(x + 1)


@pytest.mark.parametrize("f,args", [(lambda_over_varying, (X,)), (inner_def_in_loop, (X, N)),
                                    (inner_reads_enclosing, (X,))],
                         ids=["lambda", "inner_def_in_loop", "inner_reads_enclosing"])
def test_closures(f, args):
    check_batched(f, *args)


# --- ragged lists of examples ------------------------------------------------------------------
SEQS = [np.array([1.0, -2.0, 3.0]), np.array([4.0]), np.array([-1.0, 5.0, 2.0, 0.5, -3.0]),
        np.array([0.25, 0.5])]


def ragged_reductions(v):
    s = 0.0
    for e in v:
        if e > 0:
            s += e
    return (s, len(v), v.max(), v.min(), v.mean(), v.std(), v.shape[0],
            np.log(np.abs(v) + 1).sum(), v[-1], v[0], v[1:].sum(), v[:2].sum(), sb.logsumexp(v))


def ragged_index_loop(v):
    acc = 0.0
    for i in range(len(v)):
        acc = acc + v[i] * i
    k = 0
    while k < v.shape[0] and v[k] < 3:
        k += 1
    return acc, k


def ragged_matrix(m, w):
    h = np.tanh(m @ w)
    return h.sum() + sb.softmax(h[:, 0]).max()


def test_ragged_lists():
    check_batched(ragged_reductions, SEQS)
    check_batched(ragged_index_loop, SEQS)


def test_ragged_matrices_and_gradient():
    seqm = [rng.standard_normal((n, 3)) for n in (2, 5, 1)]
    w = rng.standard_normal((3, 2))
    check_batched(ragged_matrix, seqm, w, in_axes=(0, None))
    g = sb.grad(lambda w_: sb.spmd(ragged_matrix, in_axes=(0, None))(seqm, w_).sum())(w)
    expected = sum(sb.grad(lambda w_: ragged_matrix(m, w_))(w) for m in seqm)
    np.testing.assert_allclose(g, expected, rtol=1e-10)


def test_ragged_results_are_lists():
    out = sb.spmd(lambda v: sb.softmax(v))(SEQS)
    assert isinstance(out, list) and [len(o) for o in out] == [3, 1, 5, 2]
    for o, s in zip(out, SEQS):
        np.testing.assert_allclose(o, np.exp(s) / np.exp(s).sum())


class Seq(NamedTuple):
    values: object
    weight: object


def weighted_sum(rec):
    return (rec.values * rec.weight).sum() + len(rec.values)


def listed_weights(rec):
    return (rec.values * rec.weight[0]).sum() + rec.weight[1]


def tuple_sum(rec):
    return (rec[0] * rec[1]).sum() + len(rec[0])


@pytest.mark.parametrize("make,f", [
    (lambda v, i: Seq(v, np.float64(i) + 0.5 + np.zeros(len(v))), weighted_sum),  # arrays
    (lambda v, i: (v, np.full(len(v), i + 0.5)), tuple_sum),           # a plain tuple of arrays
    (lambda v, i: Seq(v, i + 0.5), weighted_sum),                      # a Python number field
    (lambda v, i: Seq(v, [i + 0.5, float(i)]), listed_weights),        # a list field
], ids=["namedtuple", "tuple", "number field", "list field"])
def test_lists_of_records_stack_like_the_loop(make, f):
    check_batched(f, [make(v, i) for i, v in enumerate(SEQS)])


def test_lists_of_records_of_different_structure_are_refused():
    with pytest.raises(sb.BatchSizeError, match="example 1 has structure"):
        sb.spmd(weighted_sum)([Seq(SEQS[0], 1.0), (SEQS[1], 1.0)])


def test_ragged_index_out_of_range_names_lanes():
    with pytest.raises(sb.LaneError) as err:
        sb.spmd(lambda v: v[2])(SEQS)
    assert err.value.lanes == [1, 3]


def test_ragged_reshape_keeping_the_ragged_axis_first():
    check_batched(lambda v: (v.reshape(-1, 1) * np.arange(2.0)).sum(0), SEQS)


def test_ragged_unsupported_op_is_named():
    with pytest.raises(sb.UnsupportedConstruct, match="reshape") as err:
        sb.spmd(lambda v: v.reshape(-1, 2).sum())(SEQS)
    assert f"{__file__}:" in str(err.value)


def inplace_on_shared_uniform_array(x, v):
    w = np.zeros(3)
    acc = [0.0]
    if x > 0:
        w += v          # only these lanes' w changes
    else:
        w -= 1.0
    w *= 2
    acc += [1.0]        # list augmented assignment under uniform control stays in place
    return w, len(acc)


def test_augmented_assignment_never_leaks_between_lane_groups():
    check_batched(inplace_on_shared_uniform_array, X, V)


def swap_between_calls(x, v):
    z = np.tanh(x)
    x, y = x * 0.5, x
    u = np.tanh(v - x)
    return z + u.sum() + y


def test_fusion_keeps_argument_values():
    check_batched(swap_between_calls, X, V)
    check_batched_grad(lambda p, x, v: swap_between_calls(x * p, v), 1.5, X, V)


class Doubler:
    def __call__(self, x):
        return x * 2 if x > 0 else -x


DOUBLER = Doubler()


def test_callable_objects_are_batched():
    check_batched(lambda x: DOUBLER(x), X)


def test_traced_ragged_lists_and_ragged_index_gathers():
    g = sb.grad(lambda L: sb.spmd(lambda v: (v * v).sum())(L).sum())([np.ones(3), np.full(2, 2.0)])
    np.testing.assert_allclose(g[0], 2 * np.ones(3))
    np.testing.assert_allclose(g[1], 4 * np.ones(2))
    table = np.arange(20.0).reshape(10, 2)
    check_batched(lambda ids: table[ids].sum(0), [np.array([1, 2]), np.array([3]), np.array([0, 9, 9])])


def test_full_with_varying_length_keeps_numpy_dtype():
    out = sb.spmd(lambda n: np.full(n, 7))(np.array([2, 3]))
    assert [o.dtype.kind for o in out] == ["i", "i"] and [len(o) for o in out] == [2, 3]


def test_float_of_a_traced_value_is_refused():
    def f(x):
        a = np.zeros(3)
        a[0] = x[0] * 2       # would silently drop the gradient
        return a.sum()
    with pytest.raises((TypeError, ValueError)) as err:
        sb.grad(f)(np.ones(2))
    assert "gradient" in str(err.value) + str(err.value.__cause__)


def shared_list_after_join(x):
    log = []
    holder = [log]           # a second reference to the same list
    if x > 0:
        y = x * 2
    else:
        y = -x
    log.append(1.0)          # uniform control: appends to the one shared list
    return y + len(holder[0])


def test_uniform_list_keeps_its_identity_across_joins():
    check_batched(shared_list_after_join, X)


class _Holder(nn.Module):
    w: object

    def __init__(self, w):
        self.w = w

    def scaled(self):
        if self.w > 1.0:
            return self.w * 2
        return self.w


def _reassigns_attribute(w, x):
    m = _Holder(w)            # an object this function constructs
    a = m.scaled()            # uniform receiver (its uniformity is remembered during the call)
    m.w = x                   # now it holds a per-example value
    b = m.scaled()
    setattr(m, "w", x + 1)
    return a + b + m.scaled()


def test_object_made_varying_by_attribute_assignment_is_seen_as_varying():
    xs = np.array([0.5, 3.0, 1.5])
    got = sb.spmd(_reassigns_attribute, in_axes=(None, 0))(2.0, xs)
    np.testing.assert_allclose(got, [_reassigns_attribute(2.0, x) for x in xs])


def _stores_into_the_callers_object(m, x):
    a = m.scaled()
    m.w = x                   # the caller's object would keep a per-lane wrapper
    return a + m.scaled()


def test_a_per_example_value_stored_in_the_callers_object_is_refused():
    holder = _Holder(2.0)
    with pytest.raises(DivergentSideEffect, match="attribute .w of a _Holder made outside") as err:
        sb.spmd(_stores_into_the_callers_object, in_axes=(None, 0))(holder, np.array([0.5, 3.0]))
    assert err.value.lineno == _stores_into_the_callers_object.__code__.co_firstlineno + 2
    assert holder.w == 2.0
