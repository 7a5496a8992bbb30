"""Lane operations of the execution runtime: take_lanes (compaction), gather_lanes and
rows_of_sources (returns of recursive calls gathered from several groups).

They apply to lane-major data (axis 0 is the lane axis of a group's values), where the
execution runtime calls them on raw arrays or tracers; their gradients are row-sparse
(`SparseRows`: the lanes a group took back). Applied to per-example values (in code being
batched), each example's array is indexed as the same numpy code would index it, by the
per-example loop.
"""
from __future__ import annotations

import numpy as np

from ..ad.sparse import SparseRows
from ..runtime.backend import namespace
from .declare import primitive

_LANE_MAJOR = "it indexes lane-major data of the execution runtime, never a ragged value"


# --- implementations ----------------------------------------------------------------------
def _take_lanes(x, lanes):
    return x[lanes]


def _gather_lanes(*sources, parts):
    """Rows of several lane-major sources: ``out[pos] = sources[i][rows]`` for each
    ``parts[i] = (pos, rows)`` (positions cover the output exactly once)."""
    first = sources[0]
    dtype = first.dtype
    for src in sources[1:]:
        if src.dtype != dtype:
            dtype = namespace(first).result_type(*[s.dtype for s in sources])
            break
    size = 0
    for pos, _ in parts:
        size += len(pos)
    out = namespace(first).empty((size,) + tuple(first.shape[1:]), dtype=dtype)
    for src, (pos, rows) in zip(sources, parts):
        out[pos] = src.take(rows, axis=0)
    return out


def _rows_of_sources(*sources, source_of, rows, buffer=None, ids=None):
    """``out[i] = sources[source_of[i]][rows[i]]``. When `buffer` is given, its rows `ids`
    already hold exactly those values (every lane's returned rows, stored as they returned:
    execution/return_rows.py) and the result is one take from it."""
    if buffer is not None:
        return buffer.take(ids, axis=0)
    parts = []
    for i in range(len(sources)):
        pos = (source_of == i).nonzero()[0]
        parts.append((pos, rows[pos]))
    return _gather_lanes(*sources, parts=tuple(parts))


# --- VJP rules ----------------------------------------------------------------------------
def _take_lanes_vjp(g, ans, x, lanes):
    # lane indices never repeat: the parts scatter with a plain (fast) add
    return SparseRows.rows(np.shape(x), lanes, g, unique=True)


def _gather_lanes_vjp(pos, g, ans, *sources, parts):
    x = sources[pos]
    out_pos, rows = parts[pos]
    values = g[out_pos]
    if values.dtype != x.dtype:
        values = values.astype(x.dtype)
    return SparseRows.rows(np.shape(x), rows, values, unique=True)


def _rows_of_sources_vjp(pos, g, ans, *sources, source_of, rows, buffer=None, ids=None):
    x = sources[pos]
    out_pos = (source_of == pos).nonzero()[0]
    values = g[out_pos]
    if values.dtype != x.dtype:
        values = values.astype(x.dtype)
    return SparseRows.rows(np.shape(x), rows[out_pos], values, unique=True)


# --- the primitives -------------------------------------------------------------------------
take_lanes = primitive("take_lanes", _take_lanes, ragged=_LANE_MAJOR, vjp=(_take_lanes_vjp,))
"""``x[lanes]`` along the batch axis, for lane indices without repeats (compaction, merges)."""
gather_lanes = primitive("gather_lanes", _gather_lanes, ragged=_LANE_MAJOR, vjp=_gather_lanes_vjp)
"""Lanes gathered from several lane-major arrays at once (returns of recursive calls)."""
rows_of_sources = primitive("rows_of_sources", _rows_of_sources, ragged=_LANE_MAJOR,
                            vjp=_rows_of_sources_vjp)
"""Rows of several lane-major arrays, each output row naming its source and row."""
