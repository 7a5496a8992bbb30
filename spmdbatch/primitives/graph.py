"""The row primitives of graph operations: gather_rows, scatter_add_rows, unpack_rows.

They take a `RowPlan` (runtime/segments.py) as a static parameter and work on the rows of a
flattened lane-major array: the batched gathers, scatters and ragged products of
runtime/segments.py are one of these over all lanes. Their gradients are each other's
(a gather's is a scatter-add of the valid positions).
"""
from __future__ import annotations

import numpy as np

from ..runtime import segments as S
from ..runtime.backend import namespace
from .declare import primitive

_FLAT_ROWS = "it works on the flattened rows of all lanes, which runtime/segments.py builds"


# --- implementations ----------------------------------------------------------------------
def _gather_rows(x, *, plan):
    return x.take(plan.index, axis=0)


def _scatter_add_rows(base, values, *, plan):
    out = base.copy()
    return plan.scatter_add(out, values)


def _unpack_rows(values, *, plan):
    out = namespace(values).zeros((plan.nrows,) + tuple(values.shape[1:]), dtype=values.dtype)
    out[plan.index] = values
    return out


# --- the primitives -------------------------------------------------------------------------
unpack_rows = primitive("unpack_rows", _unpack_rows, ragged=_FLAT_ROWS,
                        vjp=(lambda g, ans, values, *, plan: g.take(plan.index, axis=0),))
"""Zeros of ``plan.nrows`` rows with row ``plan.index[i]`` set to ``values[i]`` (the index
never repeats: the inverse of gathering the valid rows of a padded array)."""
gather_rows = primitive("gather_rows", _gather_rows, ragged=_FLAT_ROWS,
                        vjp=(lambda g, ans, x, *, plan: S.scatter_rows(g, plan, np.shape(x), g.dtype),))
"""``x[plan.index]`` along axis 0 (VJP: a scatter-add of the valid positions)."""
scatter_add_rows = primitive(
    "scatter_add_rows", _scatter_add_rows, ragged=_FLAT_ROWS,
    vjp=(lambda g, ans, base, values, *, plan: g,
         lambda g, ans, base, values, *, plan: S.take_valid_rows(g, plan, values.dtype)))
"""``base`` plus ``values`` added into rows ``plan.index`` (valid positions only)."""
