"""Parameter initialisers, seeded with a `numpy.random.Generator`.

Each initialiser is ``init(rng, shape, dtype=DEFAULT_FLOAT, **options) -> ndarray``; weight
shapes are ``(fan_out, fan_in)`` (layers compute ``x @ W.T``). Layers take an initialiser
as a name (``'glorot_uniform'``) or a callable; use ``functools.partial(uniform, a=0.05)``
to fix options. `as_rng` turns ``None`` (fresh entropy), an int seed or a Generator into a
Generator.
"""
from __future__ import annotations

import math

import numpy as np

from ..runtime.backend import DEFAULT_FLOAT


def as_rng(rng) -> np.random.Generator:
    """A Generator from None (unseeded), an int seed, or a Generator (returned as is)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy.random.Generator, an int seed or None, not {type(rng).__name__}")


def _fans(shape):
    shape = tuple(shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive   # (fan_in, fan_out)


def _check(rng, shape, dtype):
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    return as_rng(rng), shape, np.dtype(DEFAULT_FLOAT if dtype is None else dtype)


def zeros(rng, shape, dtype=None):
    """All zeros (`rng` is ignored)."""
    _, shape, dtype = _check(rng, shape, dtype)
    return np.zeros(shape, dtype)


def constant(rng, shape, dtype=None, value=0.0):
    """All `value`."""
    _, shape, dtype = _check(rng, shape, dtype)
    return np.full(shape, value, dtype)


def uniform(rng, shape, dtype=None, a=0.1):
    """Uniform on [-a, a)."""
    rng, shape, dtype = _check(rng, shape, dtype)
    return rng.uniform(-a, a, shape).astype(dtype)


def normal(rng, shape, dtype=None, std=0.01):
    """Normal with mean 0 and standard deviation `std`."""
    rng, shape, dtype = _check(rng, shape, dtype)
    return (rng.standard_normal(shape) * std).astype(dtype)


def glorot_uniform(rng, shape, dtype=None, gain=1.0):
    """Glorot/Xavier uniform: U(-b, b) with b = gain * sqrt(6 / (fan_in + fan_out))."""
    rng, shape, dtype = _check(rng, shape, dtype)
    fan_in, fan_out = _fans(shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-bound, bound, shape).astype(dtype)


def glorot_normal(rng, shape, dtype=None, gain=1.0):
    """Glorot/Xavier normal: N(0, gain^2 * 2 / (fan_in + fan_out))."""
    rng, shape, dtype = _check(rng, shape, dtype)
    fan_in, fan_out = _fans(shape)
    return (rng.standard_normal(shape) * gain * math.sqrt(2.0 / (fan_in + fan_out))).astype(dtype)


def he_normal(rng, shape, dtype=None, gain=math.sqrt(2.0)):
    """He/Kaiming normal for ReLU layers: N(0, gain^2 / fan_in)."""
    rng, shape, dtype = _check(rng, shape, dtype)
    fan_in, _ = _fans(shape)
    return (rng.standard_normal(shape) * gain / math.sqrt(fan_in)).astype(dtype)


def he_uniform(rng, shape, dtype=None, gain=math.sqrt(2.0)):
    """He/Kaiming uniform: U(-b, b) with b = gain * sqrt(3 / fan_in)."""
    rng, shape, dtype = _check(rng, shape, dtype)
    fan_in, _ = _fans(shape)
    bound = gain * math.sqrt(3.0 / fan_in)
    return rng.uniform(-bound, bound, shape).astype(dtype)


def orthogonal(rng, shape, dtype=None, gain=1.0):
    """A (semi-)orthogonal matrix times `gain`: orthonormal rows or columns, whichever fit.

    For stacked recurrent weights of shape ``(k * H, H)`` use `orthogonal_blocks`.
    """
    rng, shape, dtype = _check(rng, shape, dtype)
    if len(shape) < 2:
        raise ValueError(f"orthogonal initialisation needs at least 2 dimensions, got shape {shape}")
    rows, cols = shape[0], math.prod(shape[1:])
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q = q * np.sign(np.diag(r))          # a uniformly (Haar) distributed orthogonal matrix
    if rows < cols:
        q = q.T
    return (gain * q).reshape(shape).astype(dtype)


def orthogonal_blocks(rng, shape, dtype=None, gain=1.0):
    """Recurrent weights ``(k * H, H)``: k stacked orthogonal ``H x H`` blocks (one per gate)."""
    rng, shape, dtype = _check(rng, shape, dtype)
    rows, cols = shape
    if rows % cols:
        raise ValueError(f"orthogonal_blocks needs rows to be a multiple of columns, got {shape}")
    return np.concatenate([orthogonal(rng, (cols, cols), dtype, gain) for _ in range(rows // cols)])


xavier_uniform = glorot_uniform
xavier_normal = glorot_normal
kaiming_normal = he_normal
kaiming_uniform = he_uniform

INITIALISERS = {name: fn for name, fn in {
    "zeros": zeros, "uniform": uniform, "normal": normal, "glorot_uniform": glorot_uniform,
    "xavier_uniform": glorot_uniform, "glorot_normal": glorot_normal, "xavier_normal": glorot_normal,
    "he_normal": he_normal, "kaiming_normal": he_normal, "he_uniform": he_uniform,
    "kaiming_uniform": he_uniform, "orthogonal": orthogonal, "orthogonal_blocks": orthogonal_blocks,
}.items()}


def get(init):
    """An initialiser from a name or a callable ``(rng, shape, dtype) -> array``."""
    if callable(init):
        return init
    if isinstance(init, str) and init.lower() in INITIALISERS:
        return INITIALISERS[init.lower()]
    raise ValueError(f"unknown initialiser {init!r}; known: {sorted(INITIALISERS)}, or pass a "
                     f"callable (rng, shape, dtype) -> array")
