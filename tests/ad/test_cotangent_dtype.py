"""A cotangent has the dtype of its (floating) value: a float32 program's backward pass stays
float32 even where a VJP rule mixes in a wider constant (``g / n`` with a Python int n)."""
from __future__ import annotations

import numpy as np

import spmdbatch as sb

SEEN = []
probe = sb.primitive("test_cotangent_dtype_probe", lambda x: x * 1,
                     vjp=(lambda g, ans, x: (SEEN.append(np.asarray(g).dtype), g)[1],))


def test_float32_cotangents_stay_float32():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    SEEN.clear()
    g = sb.grad(lambda x: (probe(x) * probe(x)).mean())(x)      # mean: a division by a Python int
    assert g.dtype == np.float32
    assert SEEN and all(d == np.float32 for d in SEEN), SEEN
    np.testing.assert_allclose(g, 2 * x / x.size, rtol=1e-6)


def test_per_example_float32_cotangents_stay_float32():
    xs = np.arange(12, dtype=np.float32).reshape(4, 3)
    SEEN.clear()
    g = sb.grad(lambda w: sb.spmd(lambda x: (probe(x * w) ** 2).sum() / 3)(xs).sum())(np.float32(0.5))
    assert SEEN and all(d == np.float32 for d in SEEN), SEEN
    np.testing.assert_allclose(g, (2 * 0.5 * xs * xs).sum() / 3, rtol=1e-5)


def test_float64_values_keep_float64_cotangents():
    x = np.linspace(0, 1, 5)
    SEEN.clear()
    sb.grad(lambda x: probe(x.astype(np.float32)).astype(np.float64).sum())(x)
    assert SEEN == [np.float32]
