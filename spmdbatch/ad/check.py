"""`check_gradients`: reverse-mode gradients against central finite differences."""
from __future__ import annotations

import numpy as np

from ..runtime import pytree
from ..runtime.backend import is_floating, namespace, to_numpy
from .api import grad


def _to_dtype(tree, dtype):
    def cast(leaf):
        if isinstance(leaf, float):
            return leaf
        if is_floating(leaf):
            return namespace(leaf).asarray(leaf, dtype=dtype)
        return leaf
    return pytree.tree_map(cast, tree)


def _scalarize(f, args, seed):
    """f itself if it returns a scalar, else f projected on a fixed random direction."""
    out = f(*args)
    if np.size(out) == 1:
        return f
    direction = np.random.default_rng(seed).standard_normal(np.shape(out))

    def projected(*a):
        return (f(*a) * namespace(out).asarray(direction)).sum()
    return projected


def check_gradients(f, *args, eps: float = 1e-6, rtol: float = 1e-5, atol: float = 1e-6,
                    dtype=np.float64, seed: int = 0) -> None:
    """Compare reverse-mode gradients of `f` with central finite differences.

    Every element of every floating leaf of every argument is perturbed by ±eps. Float
    leaves are cast to `dtype` first (float64 by default, so float32 models check
    accurately; pass None to keep them). A non-scalar output is projected on a fixed random
    direction. Raises AssertionError naming the argument, leaf, index and both values on
    the first mismatch; returns None when all agree within ``atol + rtol * |numeric|``.
    """
    if dtype is not None:
        args = tuple(_to_dtype(a, dtype) for a in args)
    fs = _scalarize(f, args, seed)
    analytic = grad(fs, argnums=tuple(range(len(args))))(*args)

    for argnum, arg in enumerate(args):
        leaves, treedef = pytree.flatten(arg)
        grad_leaves = pytree.flatten(analytic[argnum])[0]
        paths = pytree.leaf_paths(arg)
        for li, leaf in enumerate(leaves):
            if not is_floating(leaf):
                continue
            base = np.array(to_numpy(leaf), dtype=np.float64 if dtype is None else dtype, ndmin=0)
            g_leaf = np.asarray(to_numpy(grad_leaves[li]), dtype=np.float64).reshape(base.shape)
            for index in np.ndindex(base.shape):
                values = []
                for delta in (eps, -eps):
                    bumped = base.copy()
                    bumped[index] += delta
                    new_leaf = float(bumped) if isinstance(leaf, float) else \
                        namespace(leaf).asarray(bumped, dtype=leaf.dtype)
                    new_leaves = list(leaves)
                    new_leaves[li] = new_leaf
                    new_args = list(args)
                    new_args[argnum] = treedef.unflatten(new_leaves)
                    values.append(_as_float(fs(*new_args)))
                numeric = (values[0] - values[1]) / (2 * eps)
                reverse = float(g_leaf[index])
                if not abs(reverse - numeric) <= atol + rtol * abs(numeric):
                    raise AssertionError(
                        f"gradient mismatch in argument {argnum}{paths[li]} at index {index}: "
                        f"reverse-mode {reverse!r}, finite differences {numeric!r} "
                        f"(eps={eps}, rtol={rtol}, atol={atol})")
    return None


def _as_float(value) -> float:
    value = getattr(value, "value", value)
    return float(np.asarray(to_numpy(value)).reshape(()))  # size-1 outputs of any rank
