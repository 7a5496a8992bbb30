"""Array backends: numpy always, CuPy when installed (imported lazily).

`namespace(*values)` returns the array module that owns the given values: CuPy as soon as
one of them is a CuPy array, numpy otherwise. Library code calls `xp = namespace(x)` and
then `xp.zeros(...)`, so a CuPy input keeps the whole computation on the GPU.
"""
from __future__ import annotations

import sys

import numpy as np

DEFAULT_FLOAT = np.float32
"""The dtype of parameters the library creates (initialisers, layers). float64 works too."""

_cupy = None
_cupy_tried = False


def cupy_module():
    """The `cupy` module, or None when it cannot be imported (no package, no GPU)."""
    global _cupy, _cupy_tried
    if not _cupy_tried:
        _cupy_tried = True
        try:
            import cupy  # noqa: PLC0415  (lazy on purpose)
            cupy.zeros(1)  # fails early when the driver or the device is missing
            _cupy = cupy
        except Exception:  # ImportError, CUDA driver errors
            _cupy = None
    return _cupy


def _is_cupy_array(value) -> bool:
    return type(value).__module__.startswith("cupy")


def namespace(*values):
    """The array module (numpy or cupy) of the given raw values."""
    if "cupy" not in sys.modules:       # CuPy never imported: every array is numpy's
        return np
    for value in values:
        if _is_cupy_array(value):
            return cupy_module()
    return np


def get_backend(name: str):
    """Array module by name: 'numpy' or 'cupy' (raises if CuPy is unavailable)."""
    if name == "numpy":
        return np
    if name == "cupy":
        cp = cupy_module()
        if cp is None:
            raise RuntimeError("backend 'cupy' requested but CuPy (with a working GPU) is not available; "
                               "install spmdbatch[gpu-cuda12] (or [gpu-cuda13]) on a machine with a CUDA GPU, or use backend 'numpy'")
        return cp
    raise ValueError(f"unknown backend {name!r}: use 'numpy' or 'cupy'")


def to_numpy(value):
    """A host (numpy) copy of a raw array; numpy arrays and scalars pass through."""
    if _is_cupy_array(value):
        return value.get()
    return value


def is_raw_array(value) -> bool:
    """True for numpy / CuPy arrays and numpy scalars (not for traced or batched values)."""
    return isinstance(value, (np.ndarray, np.generic)) or _is_cupy_array(value)


def is_floating(value) -> bool:
    """True for float arrays and Python floats: the leaves autodiff differentiates."""
    if isinstance(value, float):
        return True
    dtype = getattr(value, "dtype", None)
    return dtype is not None and is_float_dtype(dtype)


_EXTENSION_FLOATS: dict = {}


def is_float_dtype(dtype) -> bool:
    """True for numpy's floating dtypes and for float types that register with numpy as
    extension dtypes (ml_dtypes' bfloat16, float8_*: kind 'V', with `numpy.finfo`)."""
    dtype = np.dtype(dtype)
    kind = dtype.kind
    if kind == "f":
        return True
    if kind != "V" or dtype.names is not None:
        return False
    known = _EXTENSION_FLOATS.get(dtype)
    if known is None:
        try:
            np.finfo(dtype)
            known = True
        except (ValueError, TypeError):
            known = False
        _EXTENSION_FLOATS[dtype] = known
    return known
