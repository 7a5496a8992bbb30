"""Per-example random numbers from per-example keys, reproducible and batchable.

A *key* is an integer (a Python int, a numpy integer, or an integer array of one element,
as returned by `fold_in` / `split`). The numbers are a counter-based hash (splitmix64) of
(key, position), computed with numpy integer operations, so inside ``@spmd`` code a
varying key gives every example its own numbers, equal to those the example would get on
its own:

    keys = np.arange(batch) + 1000 * epoch           # one key per example
    spmd(lambda x, k: dropout(x, key=k))(xs, keys)

The same key always gives the same numbers; derive independent keys for several uses with
``fold_in(key, i)``.
"""
from __future__ import annotations

import math

import numpy as np

from ..execution.calls import native

_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_U64 = np.uint64


@native
def _mix(z):
    """The splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    z = np.bitwise_xor(z, np.right_shift(z, _U64(30)))
    z = np.multiply(z, _U64(_M1))
    z = np.bitwise_xor(z, np.right_shift(z, _U64(27)))
    z = np.multiply(z, _U64(_M2))
    return np.bitwise_xor(z, np.right_shift(z, _U64(31)))


@native
def as_key(key):
    """A key as a uint64 array of shape (1,)."""
    if key is None:
        raise ValueError("a random key is needed here (an int, e.g. the example's index plus a seed)")
    dtype = getattr(key, "dtype", None)
    if dtype is None and not isinstance(key, (int, np.integer)):
        raise TypeError(f"a random key must be an integer, not {type(key).__name__}")
    if dtype is not None and not np.issubdtype(dtype, np.integer):
        raise TypeError(f"a random key must be an integer, not an array of {dtype}")
    k = np.reshape(key, (1,)) if np.ndim(key) == 0 else key
    if tuple(np.shape(k)) != (1,):
        raise ValueError(f"a random key has one element, got shape {np.shape(key)}")
    return k.astype(np.uint64) if hasattr(k, "astype") else np.asarray(k).astype(np.uint64)


@native
def fold_in(key, data: int):
    """A new key derived from `key` and the integer `data` (independent streams per `data`)."""
    k = as_key(key)
    return _mix(np.bitwise_xor(_mix(k), _mix(np.full(1, data, dtype=np.uint64) + _U64(_GOLDEN))))


@native
def split(key, n: int = 2):
    """`n` new keys from `key`, as a uint64 array of shape (n, 1) (index it to get one)."""
    return np.stack([fold_in(key, i) for i in range(n)])


@native
def _bits(key, n):
    counter = np.arange(1, n + 1, dtype=np.uint64)
    return _mix(np.multiply(counter, _U64(_GOLDEN)) + _mix(as_key(key)))


@native
def uniform(key, shape=(), dtype=np.float64):
    """Uniform numbers in [0, 1) of the given (per-example) shape."""
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    bits = _bits(key, math.prod(shape))
    u = np.right_shift(bits, _U64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)
    return np.reshape(u, shape).astype(dtype)


@native
def normal(key, shape=(), dtype=np.float64):
    """Standard normal numbers (Box-Muller on two uniform streams)."""
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    u1 = uniform(fold_in(key, 1), shape)
    u2 = uniform(fold_in(key, 2), shape)
    r = np.sqrt(-2.0 * np.log1p(-u1))          # 1 - u1 is in (0, 1]: no log(0)
    return (r * np.cos(2 * np.pi * u2)).astype(dtype)


@native
def bernoulli(key, p, shape=()):
    """Booleans that are True with probability `p`."""
    return uniform(key, shape) < p


@native
def keep_mask(key, shape, rate):
    """``uniform(key, shape) >= rate`` (a dropout mask). With a varying key inside @spmd it is
    computed for all examples at once in plain numpy (the same numbers, one step)."""
    from ..runtime.batched import Batched
    if type(key) is Batched and type(key.data) is np.ndarray:
        return Batched(uniform_many(key.data, shape) >= rate)
    return uniform(key, shape) >= rate


@native
def uniform_many(keys, shape=(), dtype=np.float64):
    """``np.stack([uniform(k, shape) for k in keys])`` in one vectorized step.

    For hand-batched code that needs the same numbers per-example code draws with
    `uniform` (one key per row).
    """
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    keys = np.asarray(keys).astype(np.uint64).reshape(-1, 1)
    counter = np.arange(1, math.prod(shape) + 1, dtype=np.uint64)[None, :]
    bits = _mix(np.multiply(counter, _U64(_GOLDEN)) + _mix(keys))
    u = np.right_shift(bits, _U64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)
    return u.reshape((keys.shape[0],) + shape).astype(dtype)
