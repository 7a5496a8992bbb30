"""Whole training states in one file: any pytree of arrays (a model, an optimiser state, ...)
plus JSON metadata, written atomically and read back into a template with checked shapes.

    save_tree("state.npz", {"model": model, "opt": opt_state}, meta={"epoch": 3})
    tree, meta = load_tree("state.npz", {"model": model, "opt": opt.init(model)})

Leaves are stored under their dotted names (`named_leaves`: ``model.cell.W``,
``opt.slots.sum_sq.cell.W``, ``opt.step``); loading takes the structure, the shapes and the
dtypes from the template, so what comes back equals, bit for bit, what was saved. One file
means the pieces of a state always belong together: it is replaced as a whole
(`spmdbatch.files.atomic_write`) or not at all. Python numbers among the leaves (an optimiser's
step count) come back as the template's type.
"""
from __future__ import annotations

import numpy as np

from .. import files
from ..runtime import pytree
from ..ad.tracer import untraced
from ..runtime.backend import to_numpy
from .module import named_leaves

_META = "__meta__"
_MAX_META_BYTES = 64 * 2**20


def _host(leaf):
    return np.asarray(to_numpy(untraced(leaf)))


def save_tree(path, tree, meta=None):
    """Write the leaves of `tree` and `meta` (a JSON value: no NaN or infinities) to the
    ``.npz`` at `path`, atomically. Returns the path written (``.npz`` appended if missing)."""
    arrays = {}
    for name, leaf in named_leaves(tree):
        if name == _META or name in arrays:
            raise ValueError(f"save_tree: a leaf is named {name!r} twice or as the metadata")
        arrays[name] = _host(leaf)
    arrays[_META] = files.encode_json(meta)
    return files.save_npz(path, arrays)


def load_tree(path, like):
    """``(tree, meta)`` from a file written by `save_tree`: the tree has the structure of
    `like`, its leaves the saved values cast to the dtypes of `like`'s leaves.

    Every leaf of `like` must be in the file with its shape, and nothing else may be (checked
    from the headers before reading: `spmdbatch.files.read_npz`); otherwise
    `spmdbatch.files.CheckpointError` names the file and what differs."""
    named = named_leaves(like)
    expected = {name: np.shape(_host(leaf)) for name, leaf in named}
    expected[_META] = None
    arrays = files.read_npz(path, expected, max_member_bytes=_MAX_META_BYTES)
    meta = files.decode_json(arrays.pop(_META), f"{path}: metadata")
    leaves = []
    for name, leaf in named:
        value = arrays[name]
        if isinstance(leaf, (bool, int, float)):
            leaves.append(type(leaf)(value.item()))
        else:
            leaves.append(value.astype(_host(leaf).dtype, copy=False))
    return pytree.flatten(like)[1].unflatten(leaves), meta
