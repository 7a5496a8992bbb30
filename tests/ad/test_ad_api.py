"""grad / value_and_grad / vjp / stop_gradient / check_gradients on pytrees; dtypes; memory."""
from __future__ import annotations

import dataclasses
import gc
import re
import tracemalloc
import weakref
from typing import NamedTuple

import numpy as np
import pytest

import spmdbatch as sb
from spmdbatch.ad.tracer import STATE, Tracer


class Layer(NamedTuple):
    W: np.ndarray
    b: np.ndarray


@dataclasses.dataclass
class Model:
    layers: list
    scale: float
    steps: np.ndarray                                    # integer leaf: data, not a parameter
    name: str = dataclasses.field(default="m", metadata={"static": True})


def make_model():
    rng = np.random.default_rng(0)
    return Model(layers=[Layer(rng.standard_normal((3, 2)), rng.standard_normal(3)),
                         Layer(rng.standard_normal((1, 3)), np.zeros(1))],
                 scale=0.5, steps=np.arange(3))


def model_loss(model, x):
    h = x
    for layer in model.layers:
        h = np.tanh(layer.W @ h + layer.b)
    return model.scale * (h * h).sum() + 0.0 * model.steps.sum()


def test_gradient_has_the_structure_and_types_of_the_argument():
    model = make_model()
    x = np.array([0.3, -0.7])
    g = sb.grad(model_loss)(model, x)
    assert type(g) is Model and g.name == "m"
    assert type(g.layers) is list and len(g.layers) == 2
    for gl, l in zip(g.layers, model.layers):
        assert type(gl) is Layer
        assert gl.W.shape == l.W.shape and gl.W.dtype == np.float64
        assert gl.b.shape == l.b.shape
    assert type(g.scale) is float
    assert g.scale == pytest.approx(model_loss(model, x) / model.scale)
    assert_zero_int_gradient(g.steps, model.steps)
    sb.check_gradients(model_loss, model, x)


def assert_zero_int_gradient(g, leaf):
    assert isinstance(g, np.ndarray) and g.shape == np.shape(leaf)
    assert np.all(g == 0)


def test_nested_dict_list_tuple_arguments():
    params = {"a": [np.array([1.0, 2.0]), (3.0, np.array(4.0))], "n": 7, "mask": np.array([True, False]),
              "none": None}

    def f(p):
        a0, (a1, a2) = p["a"]
        return (a0 * a0).sum() * a1 + a2 * p["n"] + (a0 * p["mask"]).sum()
    g = sb.grad(f)(params)
    assert set(g) == {"a", "n", "mask", "none"} and g["none"] is None
    assert type(g["a"]) is list and type(g["a"][1]) is tuple
    np.testing.assert_allclose(g["a"][0], 2 * params["a"][0] * 3.0 + params["mask"])
    assert type(g["a"][1][0]) is float and g["a"][1][0] == pytest.approx(5.0)
    assert isinstance(g["a"][1][1], np.ndarray) and g["a"][1][1].shape == () and g["a"][1][1] == 7.0
    assert_zero_int_gradient(g["n"], 7)
    assert_zero_int_gradient(g["mask"], params["mask"])


def test_argnums_int_and_tuple():
    def f(a, b, c):
        return (a * b).sum() + c
    a, b = np.array([1.0, 2.0]), np.array([3.0, 5.0])
    np.testing.assert_allclose(sb.grad(f)(a, b, 1.0), b)
    np.testing.assert_allclose(sb.grad(f, argnums=1)(a, b, 1.0), a)
    ga, gc_ = sb.grad(f, argnums=(0, 2))(a, b, 1.0)
    np.testing.assert_allclose(ga, b)
    assert gc_ == 1.0
    (single,) = sb.grad(f, argnums=(1,))(a, b, 1.0)
    np.testing.assert_allclose(single, a)
    value, (gb, ga) = sb.value_and_grad(f, argnums=(1, 0))(a, b, 1.0)
    assert value == 14.0
    np.testing.assert_allclose(gb, a)
    np.testing.assert_allclose(ga, b)


def test_keyword_arguments_are_not_differentiated():
    g = sb.grad(lambda x, scale=1.0: (x * scale).sum())(np.ones(2), scale=np.array(3.0))
    np.testing.assert_allclose(g, [3.0, 3.0])


def test_has_aux():
    def f(x):
        y = x * x
        return y.sum(), {"y": y, "n": 2}
    x = np.array([1.0, 2.0])
    g, aux = sb.grad(f, has_aux=True)(x)
    np.testing.assert_allclose(g, 2 * x)
    assert type(aux["y"]) is np.ndarray and not isinstance(aux["y"], Tracer)
    np.testing.assert_allclose(aux["y"], x * x)
    (value, aux2), g2 = sb.value_and_grad(f, has_aux=True)(x)
    assert value == 5.0 and not isinstance(value, Tracer)
    np.testing.assert_allclose(aux2["y"], x * x)
    np.testing.assert_allclose(g2, g)


def test_value_and_grad_returns_raw_value():
    value, g = sb.value_and_grad(lambda x: (x ** 3).sum())(np.array([2.0]))
    assert not isinstance(value, Tracer) and value == 8.0
    np.testing.assert_allclose(g, [12.0])


def test_output_not_depending_on_the_argument_gives_zero_gradient():
    g = sb.grad(lambda x, y: (y * 2).sum(), argnums=0)(np.ones(3), np.ones(2))
    assert_exact = np.testing.assert_array_equal
    assert_exact(g, np.zeros(3))
    assert sb.grad(lambda x: 3.0)(1.5) == 0.0


def test_non_scalar_output_is_refused():
    with pytest.raises(TypeError, match="scalar output"):
        sb.grad(lambda x: x * 2)(np.ones(3))


def test_vjp_with_pytree_output():
    def f(x, y):
        return {"s": (x * y).sum(), "v": [x * 2, np.sin(y)], "c": np.ones(2)}
    x, y = np.array([1.0, 2.0]), np.array([0.5, -1.0])
    out, vjp_fn = sb.vjp(f, x, y)
    assert set(out) == {"s", "v", "c"} and not isinstance(out["v"][0], Tracer)
    np.testing.assert_allclose(out["v"][1], np.sin(y))
    cot = {"s": 1.0, "v": [np.array([1.0, 10.0]), np.array([2.0, 3.0])], "c": np.ones(2)}
    gx, gy = vjp_fn(cot)
    np.testing.assert_allclose(gx, y + 2 * np.array([1.0, 10.0]))
    np.testing.assert_allclose(gy, x + np.cos(y) * np.array([2.0, 3.0]))
    # the vjp function can be applied again, with another cotangent
    gx2, _ = vjp_fn({"s": 0.0, "v": [np.ones(2), np.zeros(2)], "c": np.zeros(2)})
    np.testing.assert_allclose(gx2, [2.0, 2.0])
    with pytest.raises(ValueError, match="structure"):
        vjp_fn({"s": 1.0})
    with pytest.raises(ValueError, match="shape"):
        vjp_fn({"s": 1.0, "v": [np.ones(3), np.ones(2)], "c": np.ones(2)})


def test_vjp_with_pytree_arguments():
    params = {"w": np.array([1.0, -1.0]), "k": 3}
    out, vjp_fn = sb.vjp(lambda p, x: p["w"] * x * p["k"], params, np.array([2.0, 4.0]))
    gp, gx = vjp_fn(np.array([1.0, 1.0]))
    np.testing.assert_allclose(gp["w"], [6.0, 12.0])
    assert np.all(gp["k"] == 0)
    np.testing.assert_allclose(gx, [3.0, -3.0])


def test_stop_gradient():
    x = np.array([1.0, 2.0])
    np.testing.assert_allclose(sb.grad(lambda x: (x * sb.stop_gradient(x)).sum())(x), x)
    tree = sb.grad(lambda p: (p["a"] * sb.stop_gradient(p)["a"] + sb.stop_gradient(p["b"])).sum())(
        {"a": x, "b": x})
    np.testing.assert_allclose(tree["a"], x)
    np.testing.assert_array_equal(tree["b"], [0.0, 0.0])
    # outside differentiation it is the identity
    assert sb.stop_gradient(x) is x
    assert sb.stop_gradient({"a": 1.0})["a"] == 1.0


def test_check_gradients_returns_none_on_success():
    assert sb.check_gradients(lambda x, p: np.tanh(p["w"] @ x).sum(), np.array([0.5, -1.0]),
                              {"w": np.ones((3, 2))}) is None


def test_check_gradients_names_argument_index_and_values_on_a_wrong_gradient():
    # the forward uses a stop_gradient'ed copy: reverse mode sees x * c (gradient c = x), finite
    # differences see x * x (gradient 2x)
    def f(x, p):
        return (p["w"] * p["w"] * sb.stop_gradient(p["w"])).sum() + x.sum()
    p = {"b": np.ones(2), "w": np.array([[1.0, 2.0], [3.0, 4.0]])}
    with pytest.raises(AssertionError) as info:
        sb.check_gradients(f, np.ones(2), p)
    msg = str(info.value)
    assert "argument 1['w']" in msg
    assert "index (0, 0)" in msg
    assert "reverse-mode 2.0" in msg
    numeric = float(re.search(r"finite differences (\S+)", msg).group(1))
    assert numeric == pytest.approx(3.0, rel=1e-6)


def test_check_gradients_on_non_scalar_output_and_float32_input():
    x = np.array([0.5, -0.25, 1.0], dtype=np.float32)
    assert sb.check_gradients(lambda x: np.exp(x) * x, x) is None
    with pytest.raises(AssertionError, match="argument 0 at index"):
        sb.check_gradients(lambda x: np.exp(x) * sb.stop_gradient(x), x)


def test_nested_differentiation_works_and_state_is_restored():
    # d/dx sum(2x) = 2 (tests/ad/test_compose.py checks second order in depth)
    np.testing.assert_allclose(
        sb.grad(lambda x: sb.grad(lambda y: (y * y).sum())(x).sum())(np.ones(2)), [2.0, 2.0])
    assert STATE.tape is None
    with pytest.raises(ZeroDivisionError):
        sb.grad(lambda x: sb.grad(lambda y: 1 / 0)(x).sum())(np.ones(2))
    assert STATE.tape is None
    with pytest.raises(ZeroDivisionError):
        sb.grad(lambda x: 1 / 0)(np.ones(2))
    assert STATE.tape is None
    np.testing.assert_allclose(sb.grad(lambda x: (x * x).sum())(np.ones(2)), [2.0, 2.0])


def test_tracers_of_a_finished_tape_are_constants():
    leaked = []

    def f(x):
        leaked.append(x * 2)
        return (x * x).sum()
    sb.grad(f)(np.ones(2))
    np.testing.assert_allclose(sb.grad(lambda y: (y * leaked[0]).sum())(np.ones(2)), [2.0, 2.0])


# --- dtypes -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradient_dtype_follows_the_input(dtype):
    x = np.array([0.5, -1.0, 2.0], dtype=dtype)
    W = np.ones((2, 3), dtype=dtype)

    def f(W, x):
        return sb.logsumexp(np.tanh(W @ x) * dtype(2)) + np.linalg.norm(x)
    value, (gW, gx) = sb.value_and_grad(f, argnums=(0, 1))(W, x)
    assert np.asarray(value).dtype == dtype
    assert gW.dtype == dtype and gx.dtype == dtype
    sb.check_gradients(f, W, x, rtol=1e-6)


def test_float32_model_checks_in_float64():
    x = np.array([0.3, 0.7], dtype=np.float32)
    sb.check_gradients(lambda x: np.sin(x) * np.exp(x), x, rtol=1e-6, atol=1e-7)


def test_astype_gradient_dtypes():
    g32 = sb.grad(lambda x: x.astype(np.float64).sum())(np.ones(2, dtype=np.float32))
    assert g32.dtype == np.float32
    g64 = sb.grad(lambda x: (x.astype(np.float32) * np.float32(2)).sum())(np.ones(2))
    assert g64.dtype == np.float64
    np.testing.assert_array_equal(g64, [2.0, 2.0])


# --- memory -----------------------------------------------------------------------------------
def test_tape_is_released_after_the_call():
    refs = []

    def f(x):
        refs.append(weakref.ref(STATE.tape))
        t = np.tanh(x)
        refs.append(weakref.ref(t.value))  # an intermediate result held by the tape
        return (t * x).sum()
    sb.value_and_grad(f)(np.ones(3))
    assert refs[0]() is None, "the tape outlives value_and_grad"
    assert refs[1]() is None, "an intermediate outlives value_and_grad"
    refs.clear()
    sb.grad(f)(np.ones(3))
    assert refs[0]() is None
    refs.clear()
    out, vjp_fn = sb.vjp(lambda x: f(x) * 2, np.ones(3))
    assert refs[0]() is not None  # vjp_fn keeps the tape for its backward passes
    vjp_fn(1.0)
    del vjp_fn
    assert refs[0]() is None


def test_repeated_value_and_grad_does_not_grow_memory():
    rng = np.random.default_rng(0)
    params = {"W": rng.standard_normal((4, 3)), "b": np.zeros(4)}
    x = rng.standard_normal(3)

    def loss(p, x):
        h = np.tanh(p["W"] @ x + p["b"])
        return (h * h).sum()
    vg = sb.value_and_grad(loss)
    gc.collect()
    tracemalloc.start()
    try:
        for _ in range(200):  # warm-up: caches, free lists
            vg(params, x)
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(10_000):
            value, grads = vg(params, x)
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 1_000_000, f"memory grew by {after - before} bytes"
    assert peak - before < 1_000_000, f"peak memory {peak - before} bytes above the start"
    assert np.isfinite(value) and grads["W"].shape == (4, 3)


def _live_tapes():
    import gc
    from spmdbatch.ad.tape import Tape
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is Tape)


def test_finished_differentiation_keeps_no_tape_alive():
    # module calls inside and outside @spmd must not keep the traced model (and with it the
    # whole tape) reachable after value_and_grad returns
    from spmdbatch import nn
    model = nn.Chain([nn.Linear(3, 4, rng=0), np.tanh, nn.Linear(4, 2, rng=1)])
    x = np.random.default_rng(0).standard_normal((5, 3))

    def outside(m):
        return np.sum(m(x))

    def inside(m):
        return sb.spmd(lambda m, row: m(row), in_axes=(None, 0))(m, x).sum()

    before = _live_tapes()
    for loss in (outside, inside, outside):
        for _ in range(3):
            sb.value_and_grad(loss)(model)
    assert _live_tapes() == before
