"""Backends (numpy always, CuPy optional) and the primitive registry / dispatch."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import spmdbatch as sb
from spmdbatch.runtime import backend
from spmdbatch.runtime.dispatch import PRIMITIVES, Primitive, bind, handler_priority

ROOT = Path(__file__).resolve().parents[2]


def test_namespace_of_numpy_values_is_numpy():
    assert sb.namespace(np.ones(3)) is np
    assert sb.namespace(np.float32(1.0), 2.0, [1, 2]) is np
    assert sb.namespace() is np


def test_get_backend_numpy_and_unknown_name():
    assert sb.get_backend("numpy") is np
    with pytest.raises(ValueError, match="unknown backend 'jax'"):
        sb.get_backend("jax")


def test_get_backend_cupy_raises_a_clear_error_without_cupy(monkeypatch):
    # simulate an environment without CuPy even where it is installed
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_cupy_tried", False)
    with pytest.raises(RuntimeError, match="CuPy") as info:
        sb.get_backend("cupy")
    assert "numpy" in str(info.value)  # says what to use instead
    assert backend.cupy_module() is None


def test_package_imports_and_differentiates_without_importing_cupy():
    code = (
        "import sys, numpy as np\n"
        "import spmdbatch as sb\n"
        "assert 'cupy' not in sys.modules, 'importing spmdbatch imported cupy'\n"
        "g = sb.grad(lambda x: (np.tanh(x) * x).sum())(np.ones(3))\n"
        "assert g.shape == (3,)\n"
        "sb.check_gradients(lambda x: sb.softmax(x) * x, np.array([0.1, 0.2]))\n"
        "assert sb.namespace(np.ones(2)) is np\n"
        "assert 'cupy' not in sys.modules, 'differentiating imported cupy'\n"
        "print('ok')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_to_numpy_and_raw_array_helpers():
    a = np.ones(2)
    assert backend.to_numpy(a) is a
    assert backend.is_raw_array(a) and backend.is_raw_array(np.float64(1.0))
    assert not backend.is_raw_array(1.0) and not backend.is_raw_array([1.0])
    assert backend.is_floating(1.0) and backend.is_floating(np.ones(1, np.float32))
    assert not backend.is_floating(1) and not backend.is_floating(np.arange(2))
    assert not backend.is_floating(np.array([True]))


def test_default_float_is_float32():
    assert sb.DEFAULT_FLOAT is np.float32


# --- the registry and dispatch -----------------------------------------------------------------
def test_registry_names_are_unique_and_consistent():
    for name, prim in PRIMITIVES.items():
        assert isinstance(prim, Primitive) and prim.name == name
        assert callable(prim.impl)
    with pytest.raises(ValueError, match="already registered"):
        sb.primitive("add", np.add, differentiable=False)


def test_bind_on_raw_values_runs_the_implementation():
    add = PRIMITIVES["add"]
    np.testing.assert_array_equal(add(np.ones(2), 2.0), [3.0, 3.0])
    np.testing.assert_array_equal(bind(PRIMITIVES["sum"], (np.ones((2, 3)),), {"axis": (1,)}), [3.0, 3.0])
    assert handler_priority(np.ones(2)) == 0 and handler_priority(1.0) == 0
    assert handler_priority(sb.Tracer(np.ones(1), None, 0)) >= 1


def test_primitive_forward_implementations_match_numpy():
    P = PRIMITIVES
    x = np.array([[1.0, -2.0, 3.0], [0.5, 4.0, -1.0]])
    np.testing.assert_allclose(P["logsumexp"](x, axis=1), np.log(np.exp(x).sum(axis=1)))
    np.testing.assert_allclose(P["logsumexp"](x), np.log(np.exp(x).sum()))
    np.testing.assert_allclose(P["logsumexp"](x, axis=0, keepdims=True),
                               np.log(np.exp(x).sum(axis=0, keepdims=True)))
    np.testing.assert_allclose(P["softmax"](x, axis=0), np.exp(x) / np.exp(x).sum(axis=0))
    np.testing.assert_allclose(P["log_softmax"](x), x - np.log(np.exp(x).sum(axis=-1, keepdims=True)))
    np.testing.assert_allclose(P["sigmoid"](x), 1 / (1 + np.exp(-x)))
    # numerically stable at extremes
    assert np.all(np.isfinite(P["logsumexp"](np.array([1000.0, 1000.0]))))
    assert P["logsumexp"](np.array([1000.0, 1000.0])) == pytest.approx(1000 + np.log(2))
    assert P["logsumexp"](np.array([-np.inf, -np.inf])) == -np.inf
    with np.errstate(over="raise"):
        np.testing.assert_allclose(P["sigmoid"](np.array([-800.0, 800.0])), [0.0, 1.0])
        np.testing.assert_allclose(P["softmax"](np.array([1000.0, 0.0])), [1.0, 0.0])
    np.testing.assert_allclose(P["einsum"](x, x, spec="ij,ij->i"), (x * x).sum(1))
    np.testing.assert_array_equal(P["getitem"](x, np.array([1, 1]), index=(P_slot(), slice(None))),
                                  x[[1, 1]])


def P_slot():
    from spmdbatch.runtime.primitives import ARRAY_SLOT
    return ARRAY_SLOT


def test_public_softmax_family_on_raw_arrays():
    x = np.array([0.5, 1.5, -2.0])
    assert sb.softmax(x).sum() == pytest.approx(1.0)
    np.testing.assert_allclose(np.exp(sb.log_softmax(x)), sb.softmax(x))
    assert sb.logsumexp(x) == pytest.approx(np.log(np.exp(x).sum()))
    assert sb.sigmoid(0.0) == 0.5


def test_index_update_on_raw_arrays_does_not_mutate():
    x = np.zeros(4)
    y = sb.index_update(x, np.array([1, 1, 3]), 1.0, mode="add")
    np.testing.assert_array_equal(y, [0, 2, 0, 1])
    np.testing.assert_array_equal(x, np.zeros(4))
    np.testing.assert_array_equal(sb.at(x)[1:3].set(5.0), [0, 5, 5, 0])
    np.testing.assert_array_equal(sb.at(x)[np.array([True, False, False, True])].add(2.0), [2, 0, 0, 2])
