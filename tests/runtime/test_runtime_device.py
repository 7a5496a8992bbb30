"""to_device: moving pytrees and modules between backends."""
from __future__ import annotations

import numpy as np
import pytest

import spmdbatch as sb
from spmdbatch import nn
from spmdbatch.runtime.backend import cupy_module


def test_to_numpy_keeps_structure_and_values():
    tree = {"w": np.ones((2, 3), np.float32), "meta": ("name", 3), "layers": [np.arange(3)]}
    out = sb.to_device(tree, "numpy")
    assert out["meta"] == ("name", 3)
    np.testing.assert_array_equal(out["w"], tree["w"])
    assert out["w"].dtype == np.float32


def test_modules_move_as_modules():
    layer = nn.Linear(3, 2, rng=0)
    moved = sb.to_device(layer, "numpy")
    assert type(moved) is nn.Linear
    np.testing.assert_array_equal(moved.W, layer.W)


@pytest.mark.skipif(cupy_module() is not None, reason="CuPy is present: the error path cannot be shown")
def test_cupy_without_gpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="CuPy"):
        sb.to_device({"w": np.ones(2)}, "cupy")


def test_unknown_device_is_refused():
    with pytest.raises(ValueError, match="numpy"):
        sb.to_device({"w": np.ones(2)}, "tpu")
