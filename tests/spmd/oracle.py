"""The oracle of @spmd: the batched result equals the per-example loop, gradients the sum."""
from __future__ import annotations

import inspect
import warnings

import numpy as np

import spmdbatch as sb
from spmdbatch.runtime import pytree


def _example(arg, spec, i):
    """Example i of an argument batched per the in_axes entry `spec` (a pytree prefix)."""
    if spec is None:
        return arg
    if isinstance(spec, dict):
        return {k: _example(arg[k], spec[k], i) for k in arg}
    if isinstance(spec, (tuple, list)):
        return type(arg)(_example(a, s, i) for a, s in zip(arg, spec))
    if type(arg) is list:
        return arg[i]
    return pytree.tree_map(lambda leaf: leaf[i], arg)


def _batch_size(args, in_axes):
    for a, s in zip(args, in_axes):
        if s is None:
            continue
        if isinstance(s, dict):
            n = _batch_size([a[k] for k in s], [s[k] for k in s])
        elif isinstance(s, (tuple, list)):
            n = _batch_size(list(a), list(s))
        elif type(a) is list:
            n = len(a)
        else:
            n = pytree.leaves(a)[0].shape[0]
        if n is not None:
            return n
    return None


def loop_oracle(f, args, in_axes, batch):
    """``stack([f(*example_args(i)) for i in range(batch)])`` leaf-wise."""
    outs = [f(*[_example(a, s, i) for a, s in zip(args, in_axes)]) for i in range(batch)]
    if batch == 0:
        return None
    flat = [pytree.flatten(o) for o in outs]
    return flat[0][1].unflatten([np.stack([np.asarray(f_[0][j]) for f_ in flat])
                                 for j in range(len(flat[0][0]))])


def check_batched(f, *args, in_axes=None, rtol=1e-10, atol=1e-12):
    """Assert spmd(f) equals the per-example loop; numpy warnings fail the check."""
    in_axes = tuple(in_axes) if in_axes is not None else (0,) * len(args)
    batch = _batch_size(args, in_axes)
    expected = loop_oracle(f, args, in_axes, batch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = sb.spmd(f, in_axes=in_axes)(*args)
    if expected is None:
        return got
    e_leaves, e_def = pytree.flatten(expected)
    g_leaves, g_def = pytree.flatten(got)
    assert e_def == g_def, f"structure {g_def} != expected {e_def}"
    for e, g in zip(e_leaves, g_leaves):
        g = np.asarray(g)
        assert g.shape == e.shape, f"shape {g.shape} != expected {e.shape}"
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)
    return got


def check_batched_grad(f, params, *args, in_axes=None, rtol=1e-8, atol=1e-10):
    """grad of sum(spmd(f)(params, *args)) equals the sum of per-example gradients."""
    in_axes = (None,) + (tuple(in_axes) if in_axes is not None else (0,) * len(args))
    batch = _batch_size(args, in_axes[1:])

    def batched_loss(p):
        return sb.spmd(f, in_axes=in_axes)(p, *args).sum()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = sb.grad(batched_loss)(params)
    total = None
    for i in range(batch):
        ex = [_example(a, s, i) for a, s in zip(args, in_axes[1:])]
        g = sb.grad(lambda p: np.sum(f(p, *ex)))(params)
        total = g if total is None else pytree.tree_map(lambda a, b: a + b, total, g)
    for e, gv in zip(pytree.leaves(total), pytree.leaves(got)):
        assert np.all(np.isfinite(gv)), "non-finite gradient"
        np.testing.assert_allclose(gv, e, rtol=rtol, atol=atol)
    return got


def line_of(fn, text):
    """Line number (in its file) of the first source line of `fn` containing `text`."""
    lines, start = inspect.getsourcelines(fn)
    for i, line in enumerate(lines):
        if text in line:
            return start + i
    raise AssertionError(f"{text!r} not in {fn.__name__}")
