"""Lists and dicts built inside a per-example function are per example (issue 15, sections
1 and 2): every program here is compared with the per-example loop, or must be refused with
an SpmdError naming the user's line."""
from __future__ import annotations


import numpy as np
import pytest

import spmdbatch as sb
from spmdbatch.errors import DivergentSideEffect, LaneError, SpmdError

from oracle import check_batched, check_batched_grad, line_of

THIS_FILE = __file__


def _plain(value):
    """Nested lists/tuples of numbers and arrays as nested lists of numpy arrays."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return np.asarray(value)


def assert_equal_nested(got, expected, where="result"):
    got, expected = _plain(got), _plain(expected)
    if isinstance(expected, list):
        assert isinstance(got, list), f"{where}: got {type(got).__name__}, expected a list"
        assert len(got) == len(expected), f"{where}: length {len(got)} != {len(expected)}"
        for i, (g, e) in enumerate(zip(got, expected)):
            assert_equal_nested(g, e, f"{where}[{i}]")
        return
    assert np.shape(got) == np.shape(expected), f"{where}: shape {np.shape(got)} != {np.shape(expected)}"
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12, err_msg=where)


def check_per_example(f, *args, in_axes=None):
    """spmd(f) equals the per-example loop, where the result is one value per example (lists
    of different lengths, ragged arrays)."""
    in_axes = in_axes or (0,) * len(args)
    batch = next(len(a) for a, s in zip(args, in_axes) if s == 0)
    expected = [f(*[a[i] if s == 0 else a for a, s in zip(args, in_axes)]) for i in range(batch)]
    got = sb.spmd(f, in_axes=in_axes)(*args)
    assert_equal_nested(list(got), expected)
    return got


# --- section 1: the reproducers ------------------------------------------------------------
def appended_count(n):
    out = []
    for k in range(n):
        out.append(k)
    return len(out)


def test_length_of_a_list_appended_in_a_varying_loop():
    check_batched(appended_count, np.array([1, 0]))
    check_batched(appended_count, np.array([3, 0, 5, 1, 1]))


def explicit_stack(n):
    stack = [n]
    visited = 0
    while stack:
        k = stack.pop()
        visited += 1
        if k > 0:
            stack.append(k - 1)
    return visited


def test_explicit_stack_as_work_list():
    check_batched(explicit_stack, np.array([0, 3, 1]))


def append_under_branch_in_loop(n):
    out = []
    for k in range(n):
        if k % 3 != 1:
            out.append(k * 0.5)
    total = 0.0
    for v in out:
        total = total + v
    return total + len(out)


def test_append_under_a_varying_if_inside_a_loop():
    check_batched(append_under_branch_in_loop, np.array([4, 0, 2, 7, 1]))


def stacked_rows(x, n):
    rows = []
    for k in range(n):
        rows.append(x * k)
    return np.stack(rows)


def test_stack_of_a_list_of_per_example_length_is_ragged():
    x = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    got = check_per_example(stacked_rows, x, np.array([3, 1, 2]))
    assert [g.shape for g in got] == [(3, 2), (1, 2), (2, 2)]


def stacked_then_reduced(x, n):
    rows = []
    for k in range(n):
        rows.append(np.tanh(x * (k + 1)))
    return np.stack(rows).sum(axis=0)


def test_ragged_stack_feeds_reductions():
    x = np.array([[1.0, -2.0], [0.3, 0.4], [0.5, -0.6]])
    check_batched(stacked_then_reduced, x, np.array([3, 1, 2]))


def bfs_distances(src, dst, n):
    dist = np.full(n, -1)
    dist[0] = 0
    queue = [0]
    while queue:
        k = queue.pop(0)
        for e in range(len(src)):
            if src[e] == k and dist[dst[e]] < 0:
                dist[dst[e]] = dist[k] + 1
                queue.append(dst[e])
    return dist.sum() * 10 + dist.max()


def _graphs(rng, count):
    srcs, dsts, ns = [], [], []
    for _ in range(count):
        n = int(rng.integers(1, 7))
        m = int(rng.integers(1, 10))
        srcs.append(rng.integers(0, n, size=m))
        dsts.append(rng.integers(0, n, size=m))
        ns.append(n)
    return srcs, dsts, np.array(ns)


def test_bfs_queue_over_per_example_graphs():
    rng = np.random.default_rng(0)
    srcs, dsts, ns = _graphs(rng, 8)
    expected = [bfs_distances(s, d, n) for s, d, n in zip(srcs, dsts, ns)]
    got = sb.spmd(bfs_distances)(srcs, dsts, ns)
    np.testing.assert_array_equal(got, expected)


# --- every list operation under divergence --------------------------------------------------------
def pops_and_inserts(n):
    xs = [10, 20]
    for k in range(n):
        xs.insert(k % 2, k)
        if k % 3 == 2:
            xs.pop(0)
    if n > 2:
        xs.insert(-1, 7)
    first = xs[0]
    last = xs[-1]
    xs.extend([n, n + 1])
    if len(xs) > 4:
        xs.pop()
    return first * 100 + last * 10 + len(xs) + xs[len(xs) - 1]


def test_insert_pop_extend_index_under_divergence():
    check_batched(pops_and_inserts, np.array([0, 1, 2, 3, 5, 6]))


def varying_index(n, i):
    xs = []
    for k in range(n):
        xs.append(k * k)
    xs[i] = -1
    return xs[i] + xs[0] + xs.pop(i) * 2


def test_varying_positions():
    check_batched(varying_index, np.array([3, 5, 2]), np.array([1, 4, 0]))


def returns_the_list(n):
    out = []
    for k in range(n):
        out.append(k * 2)
    return out


def test_returned_list_of_per_example_length():
    check_per_example(returns_the_list, np.array([2, 0, 3]))


def test_returned_list_of_one_length_is_a_list_of_batched_items():
    got = sb.spmd(returns_the_list)(np.array([2, 2]))
    assert type(got) is list and [np.asarray(g).tolist() for g in got] == [[0, 0], [2, 2]]


def nested_lists(n):
    rows = []
    for i in range(n):
        row = []
        for j in range(i + 1):
            row.append(i * 10 + j)
        rows.append(row)
    total = 0
    for row in rows:
        for v in row:
            total = total + v
    return total + len(rows) * 1000


def test_list_of_lists():
    check_batched(nested_lists, np.array([0, 3, 1, 4]))


def sliced(n):
    xs = []
    for k in range(n):
        xs.append(k + 1)
    total = 0
    for v in xs[1:]:
        total = total + v
    for v in xs[::-1]:
        total = total * 2 + v
    return total + len(xs[:-1])


def test_slices_of_a_list_of_per_example_length():
    check_batched(sliced, np.array([0, 1, 4, 2]))


def concatenated(x, n):
    parts = []
    for k in range(n):
        parts.append(x * k)
    return np.concatenate(parts)


def test_concatenate_of_a_list_of_per_example_length():
    x = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    check_per_example(concatenated, x, np.array([2, 1, 3]))


def truth_and_not(n):
    xs = []
    if n > 1:
        xs.append(n)
    a = 1 if xs else 2
    b = 3 if not xs else 4
    return a * 10 + b + sum(xs)


def test_truth_value_and_sum():
    check_batched(truth_and_not, np.array([0, 2, 5, 1]))


def pop_from_empty(n):
    xs = []
    for k in range(n):
        xs.append(k)
    return xs.pop()


def test_pop_from_an_empty_list_in_some_examples_names_them():
    with pytest.raises(LaneError) as err:
        sb.spmd(pop_from_empty)(np.array([2, 0, 1, 0]))
    assert err.value.lanes == [1, 3]
    assert f"{THIS_FILE}:{line_of(pop_from_empty, 'xs.pop()')}" in str(err.value)


def local_dict(x):
    d = {"a": x, "b": 0.0}
    if x > 0:
        d["b"] = x * 2
    else:
        d["a"] = -x
    return d["a"] + d["b"]


def test_local_dict_item_assignment_under_divergence():
    check_batched(local_dict, np.array([-1.0, 2.0, 0.5, -3.0]))


def aliased(x):
    log = []
    holder = [log]
    if x > 0:
        log.append(x)
    return len(holder[0]) + x


def test_two_names_of_one_list_stay_one_list():
    check_batched(aliased, np.array([-1.0, 2.0, 3.0]))


def uniform_length(x):
    hs = []
    h = x
    for k in range(3):
        h = np.tanh(h * 0.5 + k)
        hs.append(h)
    return np.stack(hs).sum()


def test_uniform_length_list_stays_a_plain_list_of_batched_items():
    check_batched(uniform_length, np.array([0.1, -0.2]))


# --- gradients through values stored in lists -----------------------------------------------------
def rnn_over_list(p, x, n):
    hs = []
    h = x
    for k in range(n):
        h = np.tanh(p["W"] @ h + p["b"])
        if k % 2 == 0:
            hs.append(h)
    total = 0.0
    while hs:
        total = total + np.sum(hs.pop() * p["v"])
    return total


def test_gradients_through_a_list_of_per_example_length():
    rng = np.random.default_rng(1)
    p = {"W": rng.normal(size=(3, 3)) * 0.5, "b": rng.normal(size=3) * 0.1, "v": rng.normal(size=3)}
    x = rng.normal(size=(4, 3))
    n = np.array([3, 0, 5, 1])
    check_batched_grad(rnn_over_list, p, x, n)


def stacked_loss(p, x, n):
    hs = []
    h = x
    for k in range(n):
        h = np.tanh(p["W"] @ h)
        hs.append(h)
    hs.append(x)
    return np.sum(np.stack(hs) * p["v"])


def test_gradients_through_a_ragged_stack():
    rng = np.random.default_rng(2)
    p = {"W": rng.normal(size=(3, 3)) * 0.5, "v": rng.normal(size=3)}
    check_batched_grad(stacked_loss, p, rng.normal(size=(3, 3)), np.array([2, 0, 4]))


# --- section 2: shared state ------------------------------------------------------------------------
LOG: list = []


def appends_to_global(x):
    if x > 0:
        LOG.append(x)
    return x


def appends_varying_to_global(x):
    LOG.append(x * 2)
    return x


def test_global_list_append_under_a_varying_condition_is_refused():
    LOG.clear()
    with pytest.raises(DivergentSideEffect) as err:
        sb.spmd(appends_to_global)(np.array([-1.0, 2.0]))
    assert f"{THIS_FILE}:{line_of(appends_to_global, 'LOG.append')}" in str(err.value)
    assert LOG == []


def test_varying_value_never_reaches_a_global_list():
    LOG.clear()
    with pytest.raises(DivergentSideEffect) as err:
        sb.spmd(appends_varying_to_global)(np.array([-1.0, 2.0]))
    assert f"{THIS_FILE}:{line_of(appends_varying_to_global, 'LOG.append')}" in str(err.value)
    assert LOG == []


def test_closure_list_append_under_a_varying_condition_is_refused():
    seen = []

    def f(x):
        if x > 0:
            seen.append(x)
        return x

    with pytest.raises(DivergentSideEffect) as err:
        sb.spmd(f)(np.array([-1.0, 2.0]))
    assert f"{THIS_FILE}:{line_of(f, 'seen.append')}" in str(err.value)
    assert seen == []


def appends_to_argument(log, x):
    if x > 0:
        log.append(1)
    return x


def test_list_passed_with_in_axes_none_is_not_mutated_under_divergence():
    log = []
    with pytest.raises(DivergentSideEffect) as err:
        sb.spmd(appends_to_argument, in_axes=(None, 0))(log, np.array([-1.0, 2.0]))
    assert f"{THIS_FILE}:{line_of(appends_to_argument, 'log.append')}" in str(err.value)
    assert log == []


def stores_in_shared_dict(d, x):
    if x > 0:
        d["k"] = 1.0
    return x


def stores_varying_in_shared_dict(d, x):
    d["k"] = x
    return x


def test_shared_dict_item_assignment_is_refused():
    d = {}
    with pytest.raises(DivergentSideEffect) as err:
        sb.spmd(stores_in_shared_dict, in_axes=(None, 0))(d, np.array([-1.0, 2.0]))
    assert f"{THIS_FILE}:{line_of(stores_in_shared_dict, 'd[')}" in str(err.value)
    with pytest.raises(DivergentSideEffect) as err:
        sb.spmd(stores_varying_in_shared_dict, in_axes=(None, 0))(d, np.array([-1.0, 2.0]))
    assert f"{THIS_FILE}:{line_of(stores_varying_in_shared_dict, 'd[')}" in str(err.value)
    assert d == {}


def raises_with_value(x):
    if x > 1:
        raise ValueError(f"too big: {x}")
    return x


def test_formatted_varying_value_in_an_error_shows_the_example_value():
    with pytest.raises(LaneError) as err:
        sb.spmd(raises_with_value)(np.array([0.5, 3.0, 2.5]))
    msg = str(err.value)
    assert "too big: 3.0" in msg and "Batched" not in msg
    assert err.value.lanes == [1, 2]


def all_raise(x):
    raise ValueError(f"value {x} and {str(x * 2)}")


def test_error_raised_by_every_example_shows_the_first_example_value():
    with pytest.raises(ValueError) as err:
        sb.spmd(all_raise)(np.array([0.5, 3.0]))
    assert str(err.value) == "value 0.5 and 1.0"


def method_loaded_before_a_branch(x, n):
    xs = []
    for k in range(n):
        xs.append(x + k)
    xs.insert(len(xs), 0.5 if not xs else -0.5)      # `xs.insert` is loaded, then lanes split
    ys = [x]
    ys.append(0.5 if x > 0.25 else 1.5)
    return len(xs) + xs[-1] + len(ys) * 10 + ys[-1]


def test_a_bound_method_follows_its_list_through_a_split():
    check_batched(method_loaded_before_a_branch, np.array([0.1, 0.2, 0.3, 0.4]), np.array([2, 0, 5, 1]))


# --- lists passed to functions ------------------------------------------------------------------------
def push(s, v):
    s.append(v)


def push_if(s, v):
    if v > 0:
        s.append(v)


def total_of(s):
    t = 0.0
    for v in s:
        if v > 0:
            t = t + v
    return t


def passes_list_to_helpers(x):
    out = []
    push(out, x)                 # a helper without branches changes the caller's list
    if x > 0:
        push(out, x * 2)
    return len(out) + total_of(out)


def test_helper_changes_and_reads_the_callers_list():
    check_batched(passes_list_to_helpers, np.array([-1.0, 0.5, 2.0]))


def changes_list_after_split_in_helper(x):
    out = []
    push_if(out, x)
    return len(out)


def collect(k, out):
    out.append(k)
    if k > 0:
        collect(k - 1, out)


def collects_recursively(n):
    out = []
    collect(n, out)
    return len(out)


def test_change_of_a_passed_list_that_would_be_lost_is_refused():
    with pytest.raises(DivergentSideEffect) as err:
        sb.spmd(changes_list_after_split_in_helper)(np.array([-1.0, 0.5, 2.0]))
    assert f"{THIS_FILE}:{line_of(push_if, 's.append')}" in str(err.value)
    with pytest.raises(DivergentSideEffect) as err:
        sb.spmd(collects_recursively)(np.array([0, 3, 1]))
    assert f"{THIS_FILE}:{line_of(collect, 'out.append')}" in str(err.value)


def concatenates_lists(x, n):
    xs = []
    for k in range(n):
        xs.append(x + k)
    a = [x]
    a.extend(xs[-2:][:2])        # a list of one length extended by a list of per-example length
    b = [1.0] + xs
    c = [2.0]
    c += xs[::-1]
    return len(a) + a[-1] + len(b) * 10 + b[-1] + c[-1] * 100 + len(c) * 1000


def test_extend_add_and_iadd_with_a_list_of_per_example_length():
    check_batched(concatenates_lists, np.array([0.1, 0.2, 0.3, 0.4]), np.array([2, 0, 5, 1]))


def dict_with_keys_set_under_a_branch(x):
    d = {}
    if x > 0:
        d["a"] = x
    d["b"] = 1.0
    s = 0.0
    for key in d:
        s = s + d[key]
    return len(d) + s + ("a" in d)


def returns_dict_of_per_example_keys(x):
    d = {"a": x}
    if x > 0:
        d["b"] = x
    return d


def test_dict_keys_that_differ_between_examples():
    check_batched(dict_with_keys_set_under_a_branch, np.array([-1.0, 0.5, 2.0]))
    with pytest.raises(SpmdError) as err:
        sb.spmd(returns_dict_of_per_example_keys)(np.array([-1.0, 0.5, 2.0]))
    lines = range(line_of(returns_dict_of_per_example_keys, "d = {"),
                  line_of(returns_dict_of_per_example_keys, "return d") + 1)
    assert any(f"{THIS_FILE}:{n}:" in str(err.value) for n in lines), str(err.value)


def varying_index_into_a_list_of_constants(i):
    xs = [1.0, 2.0, 5.0]
    xs[i % 2] = 7.0
    return xs[i] + xs.pop(i) * 10 + len(xs)


def test_varying_index_into_a_list_of_uniform_items():
    check_batched(varying_index_into_a_list_of_constants, np.array([0, 2, 1]))
    with pytest.raises(LaneError) as err:
        sb.spmd(varying_index_into_a_list_of_constants)(np.array([0, 3, 1]))
    assert err.value.lanes == [1]


def stacks_uniform_and_varying_items(x, n, v):
    vs = []
    for k in range(n):
        vs.append(np.tanh(v * k) if k % 2 else v)      # `v` is uniform (in_axes=None)
    return (np.stack(vs).sum() * 0.1 if vs else 0.0) + x


def test_gradient_through_a_ragged_stack_of_uniform_traced_items():
    xs, ns, v = np.array([0.5, 1.0, 2.0]), np.array([2, 0, 3]), np.array([0.1, 0.2, 0.3])
    batched = sb.spmd(stacks_uniform_and_varying_items, in_axes=(0, 0, None))
    gx, gv = sb.grad(lambda a, c: batched(a, ns, c).sum(), argnums=(0, 1))(xs, v)
    per = [sb.grad(stacks_uniform_and_varying_items, argnums=(0, 2))(a, m, v) for a, m in zip(xs, ns)]
    np.testing.assert_allclose(gx, [p[0] for p in per])
    np.testing.assert_allclose(gv, sum(p[1] for p in per))
