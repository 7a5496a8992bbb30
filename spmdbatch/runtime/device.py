"""Moving pytrees (parameters, modules, data) between numpy and CuPy."""
from __future__ import annotations

import numpy as np

from . import pytree
from .backend import _is_cupy_array, get_backend


def to_device(tree, device: str):
    """A copy of `tree` whose array leaves live on `device` ('numpy' or 'cupy').

    Works on any pytree: dicts, lists of trees, NamedTuples, dataclasses and `nn.Module`s.
    Non-array leaves (ints, strings) are kept. Raises RuntimeError for 'cupy' without a GPU.
    """
    xp = get_backend(device)

    def move(leaf):
        if hasattr(leaf, "tape"):
            raise TypeError("to_device on a traced value: move parameters before differentiating")
        if device == "numpy":
            return leaf.get() if _is_cupy_array(leaf) else leaf
        if isinstance(leaf, np.ndarray):
            return xp.asarray(leaf)
        return leaf

    return pytree.tree_map(move, tree)
