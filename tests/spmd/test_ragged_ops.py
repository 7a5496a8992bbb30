"""Operations on ragged per-example sequences (issue 15, section 5): values and gradients
equal the per-example loop, for batches whose lengths include 0 and 1 where the loop allows
them. Each function is written for ONE example, as a user writes it; `p` is a parameter the
gradient is taken with respect to."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spmdbatch as sb
from oracle import check_batched, check_batched_grad

SETTINGS = settings(max_examples=15, deadline=None)
P = np.array([1.5, -0.5])


@st.composite
def sequences(draw, min_len=0, max_len=6, trailing=()):
    """A list of per-example float arrays of shape (T,) + trailing, T drawn per example (so
    batches mix lengths, 0 and 1 included); values distinct within an example (no ties)."""
    batch = draw(st.integers(1, 5))
    lengths = draw(st.lists(st.integers(min_len, max_len), min_size=batch, max_size=batch))
    out = []
    for n in lengths:
        size = n * int(np.prod(trailing))
        values = draw(st.lists(st.integers(-40, 40), min_size=size, max_size=size, unique=True))
        out.append(np.array(values, dtype=np.float64).reshape((n,) + trailing) / 8 + 0.01)
    return out


def weights(s):
    """Position-dependent weights, so an order or position error changes the result."""
    return (s * (1.0 + np.arange(len(s)))).sum() + len(s)


def enumerate_loop(p, x):
    t = 0.0
    for i, v in enumerate(x * p[0]):
        t = t + i * v + v * v
    return t


def enumerate_from(p, x):
    t = 0.0
    for i, v in enumerate(x, 2):
        t = t + i * v * p[1]
    return t


def zip_pairs(p, x):
    t = 0.0
    for a, b in zip(x * p[0], x[1:]):
        t = t + a * b
    return t


def zip_three(p, x):
    t = 0.0
    for i, (a, b) in enumerate(zip(x[::-1] * p[1], x)):
        t = t + i * a - b
    return t


def builtin_sum(p, x):
    return sum(x * p[0]) + sum(x, 1.0)


def builtin_min(p, x):
    return min(x * p[0]) + 2 * max(x * p[1])


def builtin_min_default(p, x):
    return min(x * p[0], default=0.25) + max(x, default=-1.0)


def arange_len(p, x):
    return (np.arange(len(x)) * x * p[0]).sum() + np.arange(1, len(x) + 1, 2).sum()


def take_ends(p, x):
    return np.take(x * p[0], [0, -1]).sum() + np.take(x, 0)


def cumsum_weighted(p, x):
    return weights(np.cumsum(x * p[0]))


def flip_weighted(p, x):
    return weights(np.flip(x * p[1]))


def stack_columns(p, x):
    return np.stack([x, x * p[0]], axis=1).sum(0) + np.stack([x, x], axis=-1)[:, 1].sum()


def split_parts(p, x):
    a, b = np.split(x * p[0], [1])
    c, d = np.array_split(x, 2)
    return weights(a) + 2 * weights(b) + 3 * c.sum() - d.sum()


def einsum_dot(p, x):
    return np.einsum("i,i->", x, x * p[0]) + np.einsum("i->", x)


def sort_weighted(p, x):
    return weights(np.sort(x * p[0])) + (np.argsort(x) * np.arange(len(x))).sum()


def pad_weighted(p, x):
    return weights(np.pad(x * p[0], (1, 2), constant_values=0.5)) + weights(np.pad(x, 1))


def roll_weighted(p, x):
    return weights(np.roll(x * p[0], 1)) + weights(np.roll(x, -3))


def concat_weighted(p, x):
    return weights(np.concatenate([x[1:] * p[0], x[:2], x]))


SEQUENCE_OPS = [enumerate_loop, enumerate_from, zip_pairs, zip_three, builtin_sum,
                builtin_min_default, arange_len, cumsum_weighted, flip_weighted, stack_columns,
                split_parts, einsum_dot, sort_weighted, pad_weighted, roll_weighted, concat_weighted]
NONEMPTY_OPS = [builtin_min, take_ends]


@pytest.mark.parametrize("f", SEQUENCE_OPS + NONEMPTY_OPS, ids=lambda f: f.__name__)
@SETTINGS
@given(data=st.data())
def test_sequence_op_matches_the_loop(f, data):
    xs = data.draw(sequences(min_len=1 if f in NONEMPTY_OPS else 0))
    check_batched(lambda x: f(P, x), xs)
    check_batched_grad(f, P, xs)


@pytest.mark.parametrize("sl", [slice(None, -1), slice(None, None, -1), slice(1, None, 2),
                                slice(-2, None), slice(None, None, -2), slice(-1, 0, -1),
                                slice(1, -1), slice(-100, 100), slice(3, 1)], ids=str)
@SETTINGS
@given(xs=sequences())
def test_negative_and_stepped_slices(sl, xs):
    f = lambda p, x: weights((x * p[0])[sl])  # noqa: E731
    check_batched(lambda x: f(P, x), xs)
    check_batched_grad(f, P, xs)


@SETTINGS
@given(xs=sequences(trailing=(3,)), data=st.data())
def test_slices_and_masks_of_rows(xs, data):
    sl = data.draw(st.sampled_from([slice(None, -1), slice(None, None, -1), slice(-2, None)]))

    def f(p, x):
        rows = x[sl] * p[0]
        picked = x[x[:, 0] > 0] * p[1]
        return weights(rows.sum(1)) + weights(picked[:, ::-1].sum(1)) + (x[1:] @ np.ones(3)).sum()
    check_batched(lambda x: f(P, x), xs)
    check_batched_grad(f, P, xs)


@SETTINGS
@given(xs=sequences(), k=st.integers(0, 3))
def test_slices_with_per_example_bounds(xs, k):
    def f(p, x):
        n = len(x)
        return weights((x * p[0])[:n - k]) + weights(x[k:n]) + weights(x[n // 2:])
    check_batched(lambda x: f(P, x), xs)
    check_batched_grad(f, P, xs)


@SETTINGS
@given(xs=sequences())
def test_boolean_mask_with_a_varying_mask(xs):
    def f(p, x):
        kept = (x * p[0])[x > 0.1]
        return weights(kept) + len(kept) + weights(x[np.abs(x) < 2])
    check_batched(lambda x: f(P, x), xs)
    check_batched_grad(f, P, xs)


@SETTINGS
@given(xs=sequences(), data=st.data())
def test_boolean_mask_given_as_a_ragged_input(xs, data):
    masks = [np.array(data.draw(st.lists(st.booleans(), min_size=len(x), max_size=len(x))), dtype=bool)
             for x in xs]
    f = lambda p, x, m: weights((x * p[0])[m])  # noqa: E731
    check_batched(lambda x, m: f(P, x, m), xs, masks)
    check_batched_grad(f, P, xs, masks)


def test_ragged_mask_of_lengths_2_1_3():
    xs = [np.array([1.0, 2.0]), np.array([3.0]), np.array([4.0, 5.0, 6.0])]
    ms = [np.array([True, False]), np.array([True]), np.array([False, True, True])]
    got = sb.spmd(lambda x, m: x[m].sum())(xs, ms)
    np.testing.assert_allclose(got, [1.0, 3.0, 11.0])


@SETTINGS
@given(xs=sequences())
def test_vector_times_ragged_matrix(xs):
    def f(p, x):
        rows = np.stack([x, x * x, np.ones(len(x))], axis=1) * p[0]   # (T, 3)
        return (x @ rows) + np.einsum("t,td->d", x, rows) + (x * p[1]) @ x
    check_batched(lambda x: f(P, x), xs)
    check_batched_grad(f, P, xs)


@SETTINGS
@given(xs=sequences(trailing=(2,)))
def test_sort_and_cumsum_along_the_ragged_axis_of_rows(xs):
    def f(p, x):
        s = np.sort(x * p[0], axis=0)
        return weights(s[:, 0]) + weights(np.cumsum(x, axis=0)[:, 1]) + np.sort(x, axis=None).sum()
    check_batched(lambda x: f(P, x), xs)
    check_batched_grad(f, P, xs)


def test_builtin_min_of_an_empty_example_names_it():
    xs = [np.array([1.0, 2.0]), np.array([]), np.array([4.0])]
    with pytest.raises(sb.LaneError, match="empty") as err:
        sb.spmd(lambda x: min(x))(xs)
    assert err.value.lanes == [1]
    assert f"{__file__}:" in str(err.value)


def test_split_into_unequal_parts_names_the_examples():
    xs = [np.arange(4.0), np.arange(3.0), np.arange(6.0)]
    with pytest.raises(sb.LaneError, match="equal division") as err:
        sb.spmd(lambda x: np.split(x, 2)[0].sum())(xs)
    assert err.value.lanes == [1]


def test_what_remains_unsupported_is_refused_with_the_line():
    xs = [np.ones((2, 3)), np.ones((1, 3))]
    with pytest.raises(sb.UnsupportedConstruct) as err:
        sb.spmd(lambda x: np.stack([x, x]).sum())(xs)
    assert f"{__file__}:" in str(err.value) and "axis" in str(err.value)
    with pytest.raises(sb.UnsupportedConstruct, match="numpy.tile") as err:
        sb.spmd(lambda x: np.tile(x, 2).sum())(xs)
    assert f"{__file__}:" in str(err.value)
    with pytest.raises(sb.UnsupportedConstruct, match="transposed ragged") as err:
        sb.spmd(lambda x: (x.T + np.ones((3, 1))).sum())(xs)
    assert f"{__file__}:" in str(err.value)


@SETTINGS
@given(ks=sequences(trailing=(3,)))
def test_products_with_a_transposed_ragged_matrix(ks):
    q = np.array([0.5, -1.0, 2.0])
    w = np.arange(6.0).reshape(2, 3) / 4

    def f(p, k):
        scores = (q * p[0]) @ k.T                       # (d,) @ (d, T)
        att = np.exp(scores - 1.0)
        mixed = k.T @ att                               # (d, T) @ (T,)
        proj = (w * p[1]) @ k.T                         # (h, d) @ (d, T)
        return weights(scores) + mixed.sum() + proj.sum(0).sum() + (proj * 2.0).T[:, 1].sum()
    check_batched(lambda k: f(P, k), ks)
    check_batched_grad(f, P, ks)


@SETTINGS
@given(xs=sequences())
def test_stack_of_sequences_along_the_first_axis(xs):
    def f(p, x):
        s = np.stack([x * p[0], x, x * x])              # (3, T)
        return s.sum(1) + weights(s[1]) + weights(s.sum(0)) + s[2, :].sum()
    check_batched(lambda x: f(P, x), xs)
    check_batched_grad(f, P, xs)
