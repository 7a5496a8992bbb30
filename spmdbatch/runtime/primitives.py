"""Where runtime, autodiff and execution code find the primitives: ``P.add``, ``P.getitem``.

The primitives are declared, each with its implementation and rules, in the family modules
of `spmdbatch.primitives` (elementwise, reductions, linalg, shapes, indexing, lanes, graph),
which sit above runtime and autodiff in the layering; importing spmdbatch registers them in
`dispatch.PRIMITIVES`, and an attribute of this module is the registered primitive of that
name (looked up on first use, then kept as a module attribute). Code below the primitives
may therefore use ``P.name`` when it runs, not while it is being imported.

The index templates that `getitem` and `index_update` share with the batching rules live
here too: an index is split into a static template (ints, slices, None, Ellipsis) and its
array operands, so that dispatch sees the arrays (which may be traced or batched).
"""
from __future__ import annotations

import numpy as np

from .dispatch import PRIMITIVES


def __getattr__(name: str):
    prim = PRIMITIVES.get(name)
    if prim is None:
        raise AttributeError(
            f"no primitive {name!r} is registered (primitives are declared in spmdbatch.primitives "
            f"and registered when spmdbatch is imported; runtime code may use them only when it runs)")
    globals()[name] = prim
    return prim


# --- index templates ------------------------------------------------------------------------
class _ArraySlot:
    """Placeholder in an index template for an array operand (gather indices)."""

    __slots__ = ()

    def __repr__(self):
        return "<array>"


ARRAY_SLOT = _ArraySlot()
_STATIC_INDEX_TYPES = (int, np.integer, slice, type(None), type(Ellipsis), bool, np.bool_)


def split_index(index):
    """Split an index into a static template and its array operands.

    Integers, slices, None and Ellipsis stay in the template; arrays, lists and wrapped
    values (which may be traced or batched) become operands, so dispatch sees them.
    """
    if not isinstance(index, tuple):
        index = (index,)
    arrays = []
    template = []
    for item in index:
        if isinstance(item, _STATIC_INDEX_TYPES):
            template.append(item)
        else:
            template.append(ARRAY_SLOT)
            arrays.append(np.asarray(item) if isinstance(item, list) else item)
    return tuple(template), tuple(arrays)


def fill_index(template, arrays):
    """The inverse of `split_index`."""
    if not arrays:
        return template
    it = iter(arrays)
    return tuple(next(it) if item is ARRAY_SLOT else item for item in template)


def is_advanced_index(template) -> bool:
    """True when the index gathers with integer or boolean arrays."""
    return ARRAY_SLOT in template
