"""spmdbatch's caches of batch programs do not keep user functions (or their closures) alive.

Closures made in a loop are a common way to build models (one per configuration, one per
hyper-parameter); each may capture large arrays. After the last user reference goes, a
garbage collection must free them, however they went through ``spmd``.
"""
from __future__ import annotations

import gc
import weakref

import numpy as np

import spmdbatch as sb
from spmdbatch.frontend.transform import batched_version

X = np.array([-1.0, 2.0, 3.0, -4.0])


class Table(np.ndarray):
    """An ndarray subclass, so the captured array can be weakly referenced."""


def _closure(i):
    """A per-example function over a captured array, with a varying branch, a nested
    helper closure called on varying values and a recursive nested function."""
    table = np.full(64, float(i)).view(Table)

    def helper(y):
        if y > 1:
            return y * table[1]
        return y

    def countdown(k, acc):
        if k <= 0:
            return acc
        return countdown(k - 1, acc + table[2])

    def f(x):
        if x > 0:
            x = helper(x) + table[0]
        else:
            x = x - 1.0
        return countdown(2, x)

    return f, table


def test_two_hundred_closures_through_spmd_leave_none_alive():
    refs = []
    for i in range(200):
        f, table = _closure(i)
        out = sb.spmd(f)(X)
        expected = np.array([f(x) for x in X])
        np.testing.assert_allclose(out, expected)
        refs.append((weakref.ref(f), weakref.ref(table)))
        del f, table
    gc.collect()
    alive = [i for i, (r, _) in enumerate(refs) if r() is not None]
    assert alive == [], f"{len(alive)} of 200 functions kept alive by spmdbatch"
    assert all(t() is None for _, t in refs), "captured arrays kept alive"


def test_lambdas_and_methods_leave_none_alive():
    class Scale:
        def __init__(self, w):
            self.w = w

        def __call__(self, x):
            if x > 0:
                return x * self.w[0]
            return x

    refs = []
    for i in range(20):
        obj = Scale(np.full(8, float(i)))
        g = lambda x, obj=obj: obj(x) + 1.0          # noqa: E731
        np.testing.assert_allclose(sb.spmd(g)(X), [g(x) for x in X])
        refs.append((weakref.ref(g), weakref.ref(obj)))
        del g, obj
    gc.collect()
    assert [r() for pair in refs for r in pair if r() is not None] == []


def test_batch_program_is_cached_per_function():
    f, _ = _closure(0)
    assert batched_version(f) is batched_version(f)
    g, _ = _closure(1)                 # same code, another closure: its own instance
    assert batched_version(g) is not batched_version(f)


def test_a_wrapper_that_copied_the_cache_gets_its_own_program():
    import functools

    def base(x):
        return x + 1.0

    batched_version(base)              # cached on base's __dict__

    @functools.wraps(base)             # copies base.__dict__ (and so the cache entry)
    def wrapper(x):
        return base(x) * 2.0

    np.testing.assert_allclose(sb.spmd(wrapper)(X), (X + 1.0) * 2.0)
