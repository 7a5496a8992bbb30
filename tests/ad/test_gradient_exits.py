"""No silently missing gradients (issue 15, section 7): `grad` with respect to an object that
is not a pytree, and values leaving the tracer (`tolist`, `item`, `float`, ...) under `grad`,
raise a `GradientError` that says what to change instead of giving a zero gradient."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import spmdbatch as sb


class Params:
    """A plain class (not a dataclass, NamedTuple or registered node): its arrays are hidden."""

    def __init__(self):
        self.W = np.ones((2, 2))


def test_grad_of_an_object_that_is_not_a_pytree_is_refused():
    with pytest.raises(sb.GradientError, match=r"Params.*not a pytree.*dataclass") as info:
        sb.grad(lambda p: (p.W * 2).sum())(Params())
    assert info.value.filename == __file__                  # names the user's line
    with pytest.raises(sb.GradientError, match="Params"):
        sb.grad(lambda d: (d["p"].W * 2).sum())({"p": Params(), "b": np.zeros(2)})
    with pytest.raises(sb.GradientError, match="Params"):
        sb.value_and_grad(lambda x, p: (x * p.W).sum(), argnums=(0, 1))(np.ones(2), Params())


def test_data_leaves_are_still_accepted():
    @dataclasses.dataclass
    class P:
        W: np.ndarray
        steps: np.ndarray
        act: object

    g = sb.grad(lambda p, label: (p.act(p.W) * p.steps).sum() + len(label))(
        P(np.ones(2), np.arange(2), np.tanh), "label")
    np.testing.assert_allclose(g.W, (1 - np.tanh(1.0) ** 2) * np.arange(2))
    assert g.steps.shape == (2,)


@pytest.mark.parametrize("exit_", [
    lambda x: np.array(x.tolist()).sum(),
    lambda x: x.sum().item(),
    lambda x: float(x.sum()),
    lambda x: complex(x.sum()).real,
    lambda x: np.asarray(x).sum(),
    lambda x: x[0].item() * x[1],
])
def test_values_leaving_the_tracer_under_grad_are_refused(exit_):
    x = np.array([1.0, 2.0])
    with pytest.raises(sb.GradientError, match="gradient") as info:
        sb.grad(exit_)(x)
    assert info.value.filename == __file__ and "stop_gradient" in str(info.value)


def test_exits_are_allowed_where_no_gradient_is_lost():
    seen = []

    def f(x):
        seen.append(sb.stop_gradient(x).tolist())     # explicitly detached
        n = int(x.argmax())                             # an integer result carries no gradient
        if x.sum() > 0:                                 # truth values of traced values
            return x[n] * 2.0
        return x.sum()

    np.testing.assert_array_equal(sb.grad(f)(np.array([1.0, 3.0])), [0.0, 2.0])
    assert seen == [[1.0, 3.0]]
    out, vjp = sb.vjp(lambda x: x * 2, np.ones(2))
    assert out.tolist() == [2.0, 2.0]                   # results are plain arrays
    y = []
    sb.grad(lambda x: y.append(x) or x.sum())(np.ones(2))
    assert y[0].tolist() == [1.0, 1.0] and float(y[0][0]) == 1.0  # finished tape: a constant


def test_exits_under_spmd_and_grad_are_refused():
    def per_example(p, x):
        return p * float(np.tanh(x))                    # the example's value leaves the tracer

    with pytest.raises(sb.SpmdError):
        sb.grad(lambda p: sb.spmd(per_example, in_axes=(None, 0))(p, np.ones(3)).sum())(2.0)
    with pytest.raises(sb.GradientError):
        sb.grad(lambda p: sb.spmd(lambda p, x: x * float(p), in_axes=(None, 0))(p, np.ones(3)).sum())(
            np.float64(2.0))
