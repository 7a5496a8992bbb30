"""Indexing: getitem (``x[index]``) and index_update (``x.at[index].set(v)`` / ``.add(v)``,
``x[i] = v``, ``numpy.add.at``).

An index is split into a static template and its array operands (runtime/primitives.py), so
dispatch sees indices that are traced or per example. Batched, an `_IndexPlan` maps a
per-example index onto the lane-major data (a lane arange joins the advanced indices, or a
leading full slice) and puts the result's axes where numpy puts them for one example; the
common gathers (``x[i]``, ``h[k]``, ``E[word]``) skip the plan. Ragged, indices along the
ragged axis are checked against each example's own length, slices and boolean masks give
each example a result of its own length (one gather per lane), and the graph gathers and
scatters (``h[src]``, ``add.at(agg, dst, msg)``) run as one operation over all lanes
(runtime/segments.py). An index out of range in some examples raises a `LaneError` naming
them.
"""
from __future__ import annotations

import numpy as np

from ..ad.sparse import SparseRows
from ..ad.tape import unbroadcast
from ..ad.tracer import is_traced, untraced
from ..errors import UnsupportedOperation
from ..runtime import primitives as P
from ..runtime import packed, segments
from ..runtime.packed import Packed
from ..runtime.backend import namespace
from ..runtime.batched import Batched
from ..runtime.blame import lane_error
from ..runtime.batching import _as_lanes, _lanes, _ndim, _with_rank, lane_arange
from ..runtime.blame import user_frame
from ..runtime.primitives import fill_index, is_advanced_index
from ..runtime.ragged import (Ragged, _flatten, _positions, _raw, _refusal, _rows, _slice_rows,
                              as_ragged)
from .declare import primitive


# --- implementations ----------------------------------------------------------------------
def _getitem_impl(x, *arrays, index):
    return x[fill_index(index, arrays)]


def _index_update_impl(x, value, *arrays, index, mode):
    out = x.copy()
    full = fill_index(index, arrays)
    if mode == "set":
        out[full] = value
    elif is_advanced_index(index):
        namespace(out).add.at(out, full, value)
    else:
        out[full] += value
    return out


# --- batching rules -----------------------------------------------------------------------
class _IndexPlan:
    """How a per-example index maps onto the batched data, and where the result's axes go.

    numpy places the axes of integer-array (advanced) indices at the position of the first
    advanced index when the advanced indices are adjacent, else first. Adding the batch
    axis (a lane arange, or a leading full slice) can change that placement; `perm` is the
    transpose that restores ``(lanes, *per-example result axes)``.
    """

    def __init__(self, x, arrays, template):
        lanes = _lanes((x,) + tuple(arrays))
        nd = _ndim(x)
        items = _expand_ellipsis(template, arrays, nd)
        batched_index = any(type(a) is Batched for a in arrays)
        array_iter = iter(arrays)
        shapes = []
        conv_items, conv_arrays = [], []
        for item in items:
            if item is P.ARRAY_SLOT:
                a = next(array_iter)
                if type(a) is Batched:
                    if a.dtype == np.bool_:
                        raise UnsupportedOperation(
                            "a per-example boolean mask after other indices (only x[mask], over "
                            "the first axis, is supported)", *user_frame(),
                            hint="Mask the first axis (transpose first), or use numpy.where(mask, x, 0).")
                    shapes.append(tuple(a.shape))
                    conv_arrays.append(a)
                else:
                    shapes.append((int(np.count_nonzero(a)),) if getattr(a, "dtype", None) == np.bool_
                                  else tuple(np.shape(a)))
                    conv_arrays.append(a)
            conv_items.append(item)
        has_arrays = bool(shapes)
        advanced = [i for i, it in enumerate(conv_items)
                    if it is P.ARRAY_SLOT or (has_arrays and isinstance(it, (int, np.integer)))]
        s_rank = len(np.broadcast_shapes(*shapes)) if shapes else 0
        pe_adjacent = not advanced or advanced == list(range(advanced[0], advanced[-1] + 1))
        p = _dims_before(conv_items, advanced[0]) if advanced and pe_adjacent else 0

        if not batched_index and type(x) is Batched:
            # Leading full slice for the lanes: advanced placement is unchanged unless the
            # per-example advanced indices are split, in which case numpy puts them first.
            self.template = (slice(None),) + tuple(conv_items)
            self.arrays = tuple(conv_arrays)
            q = 1 + p if pe_adjacent else None
        else:
            full_arrays = [_with_rank(a.data, s_rank) if type(a) is Batched else a for a in conv_arrays]
            if type(x) is Batched:
                xp = x.xp
                lane = lane_arange(lanes, xp).reshape((lanes,) + (1,) * s_rank)
                self.template = (P.ARRAY_SLOT,) + tuple(conv_items)
                self.arrays = (lane,) + tuple(full_arrays)
                q = 0 if (not advanced or (pe_adjacent and advanced[0] == 0)) else None
            else:
                self.template = tuple(conv_items)
                self.arrays = tuple(full_arrays)
                q = p if pe_adjacent else 0
            s_rank += 1  # the lane axis joins the advanced block
        self.lanes = lanes
        self._layout = (q, p, s_rank, batched_index or type(x) is not Batched)

    def perm(self, out_ndim: int):
        """Transpose from numpy's result layout to ``(lanes, *per-example layout)``."""
        q, p, s_rank, lane_in_block = self._layout
        if not lane_in_block:
            if q is not None:          # slice path, adjacent: lanes first already
                return None
            # slice path, split advanced indices: numpy gives (S, lanes, rest); want (lanes, S, rest)
            return (s_rank,) + tuple(range(s_rank)) + tuple(range(s_rank + 1, out_ndim))
        # lane axis is the first axis of the advanced block (lanes, *S) of rank s_rank
        q = 0 if q is None else q
        nbasic = out_ndim - s_rank
        out_labels = ([("b", i) for i in range(q)] + [("B",)] + [("s", j) for j in range(s_rank - 1)]
                      + [("b", i) for i in range(q, nbasic)])
        want = ([("B",)] + [("b", i) for i in range(p)] + [("s", j) for j in range(s_rank - 1)]
                + [("b", i) for i in range(p, nbasic)])
        perm = tuple(out_labels.index(label) for label in want)
        return None if perm == tuple(range(out_ndim)) else perm


def _expand_ellipsis(template, arrays, nd):
    """Replace Ellipsis by full slices (per-example rank `nd`)."""
    if Ellipsis not in template:
        return list(template)
    consumed = 0
    it = iter(arrays)
    for item in template:
        if item is P.ARRAY_SLOT:
            a = next(it)
            consumed += _ndim(a) if getattr(a, "dtype", None) == np.bool_ else 1
        elif item is not None and item is not Ellipsis:
            consumed += 1
    pos = template.index(Ellipsis)
    return list(template[:pos]) + [slice(None)] * (nd - consumed) + list(template[pos + 1:])


def _dims_before(items, stop):
    """Result axes produced by the basic index items before position `stop`."""
    return sum(1 for it in items[:stop] if isinstance(it, slice) or it is None)


def _getitem_rule(args, index):
    x, *arrays = args
    if _needs_ragged_rule(x, arrays, index):       # a varying mask or slice bound: ragged result
        return P.getitem(as_ragged(x), *arrays, index=index)
    try:
        return _getitem_lanes(x, arrays, index)
    except IndexError as exc:
        raise _index_error(x, arrays, index, exc) from None


def _needs_ragged_rule(x, arrays, index) -> bool:
    """True for x[mask] with a varying boolean mask and x[i:j] with a varying bound: each
    example's result has its own length."""
    if type(x) is not Batched or not index:
        return False
    first = index[0]
    if type(first) is slice:
        return type(first.start) is Batched or type(first.stop) is Batched
    return first is P.ARRAY_SLOT and type(arrays[0]) is Batched and arrays[0].dtype == np.bool_


def _index_error(x, arrays, index, exc):
    """The out-of-range index of some examples as a `LaneError` naming them (numpy's message of
    the first, with the example's own axis numbers)."""
    data = x.data if type(x) is Batched else x
    lanes = data.shape[0] if type(x) is Batched else _lanes(arrays)
    raw = [getattr(a.data if type(a) is Batched else a, "value", a.data if type(a) is Batched else a)
           for a in arrays]
    base = getattr(data, "value", data)
    bad, first = [], None
    for lane in range(lanes):
        item = base[lane] if type(x) is Batched else base
        try:
            item[P.fill_index(index, [r[lane] if type(a) is Batched else r for a, r in zip(arrays, raw)])]
        except IndexError as lane_exc:
            bad.append(lane)
            first = first or lane_exc
    if not bad:
        return exc
    return lane_error(first, bad, depth=4)


def _getitem_lanes(x, arrays, index):
    fast = _getitem_fast(x, arrays, index)
    if fast is not None:
        return fast
    plan = _IndexPlan(x, arrays, index)
    data = x.data if type(x) is Batched else x
    out = P.getitem(data, *plan.arrays, index=plan.template)
    perm = plan.perm(out.ndim)
    return Batched(out if perm is None else P.transpose(out, axes=perm))



_BASIC = (int, np.integer, slice)


def _getitem_fast(x, arrays, index):
    """The common gathers without building an index plan (None when not applicable)."""
    if not arrays:                                   # x[i], x[a:b], x[i, :] on a batched x
        if type(x) is Batched and all(isinstance(i, _BASIC) for i in index):
            return Batched(P.getitem(x.data, index=(slice(None),) + index))
        return None
    if len(index) != 1 or len(arrays) != 1:
        return None
    k = arrays[0]
    if type(k) is not Batched or k.data.dtype.kind not in "iu":
        return None
    if type(x) is Batched:
        if k.data.ndim >= 2 and x.data.ndim >= 2:   # h[src]: rows by a per-example index
            return segments.gather(x, k)
        if k.data.ndim != 1:
            return None
        lanes = lane_arange(k.data.shape[0], x.xp)   # h[k]: one position per lane
        return Batched(P.getitem(x.data, lanes, k.data, index=(P.ARRAY_SLOT, P.ARRAY_SLOT)))
    return Batched(P.getitem(x, k.data, index=(P.ARRAY_SLOT,)))   # E[word]: rows of a uniform table


def _index_update_rule(args, index, mode):
    x, value, *arrays = args
    if mode == "set" and index == (P.ARRAY_SLOT,) and type(x) is Batched:
        out = _set_lane_positions(x.data, value, arrays[0])
        if out is not None:
            return Batched(out)
    if mode == "add" and index == (P.ARRAY_SLOT,) and type(arrays[0]) is Batched:
        data = _as_lanes(x, _lanes(args))
        if data.ndim >= 2:
            if segments.applies(arrays[0]):
                return segments.scatter_add(Batched(data), arrays[0], value)   # add.at(agg, dst, msg)
    try:
        return _index_update_lanes(x, value, arrays, index, mode)
    except IndexError as exc:
        if type(x) is not Batched:
            x = Batched(_as_lanes(x, _lanes(args)))
        raise _index_error(x, arrays, index, exc) from None


def _set_lane_positions(data, value, k):
    """``h[k] = v`` with one position `k` per lane on raw (lanes, n) data and a per-lane number
    or a uniform Python number `v`: one copy and one assignment (what `_index_update_lanes`
    computes, without its index plan). None when it does not apply, or an index is out of
    range (the general path then names the examples)."""
    if type(data) is not np.ndarray or data.ndim != 2 or type(k) is not Batched:
        return None
    kd = k.data
    if type(kd) is not np.ndarray or kd.ndim != 1 or kd.dtype.kind not in "iu":
        return None
    kind = type(value)
    if kind is Batched:
        value = value.data
        if type(value) is not np.ndarray or value.ndim != 1:
            return None
    elif kind is not int and kind is not float:
        return None
    out = data.copy()
    try:
        out[lane_arange(len(kd)), kd] = value
    except IndexError:
        return None
    return out


def _index_update_lanes(x, value, arrays, index, mode):
    data = _as_lanes(x, _lanes((x, value) + tuple(arrays)))
    plan = _IndexPlan(Batched(data), arrays, index)
    # The value, laid out like the per-example selection with lanes first ...
    sel_ndim = _selection_ndim(data, plan)
    if type(value) is Batched:
        v = _with_rank(value.data, sel_ndim - 1)
    elif _ndim(value) < sel_ndim:
        v = P.reshape(value, shape=(1,) * (sel_ndim - _ndim(value)) + tuple(np.shape(value)))
    else:
        v = value
    # ... then moved into numpy's layout of data[template] (the inverse of plan.perm).
    perm = plan.perm(sel_ndim)
    if perm is not None:
        v = P.transpose(v, axes=tuple(int(i) for i in np.argsort(perm)))
    return Batched(P.index_update(data, v, *plan.arrays, index=plan.template, mode=mode))


def _selection_ndim(data, plan) -> int:
    """Rank of ``data[plan.template]``, computed from shapes alone."""
    it = iter(plan.arrays)
    adv_shapes, basic, consumed = [], 0, 0
    for item in plan.template:
        if item is P.ARRAY_SLOT:
            a = next(it)
            if getattr(a, "dtype", None) == np.bool_:
                adv_shapes.append((0,))
                consumed += np.ndim(a)
            else:
                adv_shapes.append(tuple(np.shape(a)))
                consumed += 1
        elif isinstance(item, slice):
            basic += 1
            consumed += 1
        elif item is None:
            basic += 1
        else:
            consumed += 1
    basic += data.ndim - consumed
    return basic + (len(np.broadcast_shapes(*adv_shapes)) if adv_shapes else 0)


# --- ragged rules -------------------------------------------------------------------------
_INTP, _UINTP = np.dtype(np.intp), np.dtype(np.uintp)
try:
    from numpy._core._multiarray_umath import count_nonzero as _count_nonzero
except ImportError:     # pragma: no cover  (numpy < 2)
    _count_nonzero = np.count_nonzero


def _check_in_range(x, index_data):
    """Each lane's indices along the ragged axis, negative ones counted from the lane's end;
    an index past the example raises a LaneError naming the examples."""
    lengths = np.asarray(x.lengths)
    idx = np.asarray(getattr(index_data, "value", index_data))
    if idx.ndim == 1 and idx.dtype == _INTP and lengths.dtype == _INTP and \
            _count_nonzero(idx.view(_UINTP) < lengths.view(_UINTP)) == len(idx):
        return idx            # (one position per lane, all in range: 0 <= idx < length)
    n = lengths.reshape((-1,) + (1,) * (idx.ndim - 1))
    idx = np.where(idx < 0, idx + n, idx)
    bad_at = (idx >= n) | (idx < 0)
    bad = np.flatnonzero(np.any(bad_at, axis=tuple(range(1, idx.ndim))) if idx.ndim > 1 else bad_at)
    if bad.size:
        raise lane_error(IndexError("index out of range for the ragged axis"), bad, depth=4)
    return idx


def _select(x, mask):
    """``x[mask]`` with a per-example boolean mask over the first axis (or over every axis of
    a regular x): each example keeps its selected elements, in order (a Ragged)."""
    regular = type(x) is not Ragged
    x = as_ragged(x)
    lanes = x.data.shape[0]
    m = _raw(mask) if isinstance(mask, Batched) else np.broadcast_to(np.asarray(mask), (lanes,) + np.shape(mask))
    m_lengths = np.asarray(mask.lengths) if type(mask) is Ragged else np.full(lanes, m.shape[1] if m.ndim > 1 else 0)
    if m.ndim > 2 and regular and type(mask) is not Ragged and m.shape == tuple(x.data.shape):
        x, m = _flatten(x), m.reshape(lanes, -1)           # (a mask over the whole example)
        m_lengths = np.full(lanes, m.shape[1])
    elif m.ndim != 2:
        raise _refusal("this per-example boolean mask (one boolean per row, or one per element of "
                       "a regular array, is supported)", "Use numpy.where(mask, x, 0).", 4)
    bad = np.flatnonzero(m_lengths != np.asarray(x.lengths))
    if bad.size:
        raise lane_error(IndexError("boolean index did not match the indexed array along axis 0 "
                                    "(the mask and the array have different lengths)"), bad, depth=4)
    valid = m & (np.arange(m.shape[1]) < m_lengths[:, None])
    counts = np.count_nonzero(valid, axis=1).astype(np.intp)
    order = np.argsort(~valid, axis=1, kind="stable")[:, :int(counts.max()) if lanes else 0]
    return Ragged(_rows(x, np.where(np.arange(order.shape[1]) < counts[:, None], order, 0)), counts)


def _getitem_ragged(args, index):
    x, *arrays = args
    if index == (P.ARRAY_SLOT,) and isinstance(x, Batched) and x.data.ndim >= 2 \
            and segments.applies(arrays[0], rank=None):
        return segments.gather(x, arrays[0])      # h[src]: rows by a per-example index
    if type(x) is not Ragged:
        # a regular array gathered with a ragged index (table[ids]): the result is ragged
        if index == (P.ARRAY_SLOT,) and type(arrays[0]) is Ragged:
            ids = arrays[0]
            if ids.dtype == np.bool_:
                return _select(x, ids)
            out = P.getitem(x, Batched(ids.data), index=index)
            return Ragged(out.data, ids.lengths)
        raise _refusal("indexing with a ragged index array is supported only as table[ids] "
                       "(one index array)")
    first = index[0] if index else slice(None)
    rest = index[1:]
    if first is Ellipsis:
        consumed = sum(1 for i in rest if i is not None)
        if Ellipsis in rest or consumed > _ndim(x):
            raise _refusal("this Ellipsis index of a ragged value is not supported")
        index = (slice(None),) * (_ndim(x) - consumed) + tuple(rest)
        if not index:
            return x
        first, rest = index[0], index[1:]
    if first is None:
        raise _refusal("a new axis before the ragged axis (x[None]) would move the ragged axis",
                       "Keep the ragged axis first: x[:, None].")
    lanes = x.data.shape[0]
    if first is P.ARRAY_SLOT and getattr(arrays[0], "dtype", None) == np.bool_:
        if rest:
            raise _refusal("a boolean mask followed by more indices on a ragged value",
                           "Apply the mask first, then index the result.")
        return _select(x, arrays[0])
    if isinstance(first, (int, np.integer)) or first is P.ARRAY_SLOT:
        if first is P.ARRAY_SLOT:
            idx = arrays[0]
            arrays = arrays[1:]
            idx_data = idx.data if isinstance(idx, Batched) else np.broadcast_to(idx, (lanes,) + np.shape(idx))
        else:
            idx_data = np.full(lanes, int(first))
        idx_data = _check_in_range(x, idx_data)
        return P.getitem(Batched(x.data), Batched(idx_data), *arrays, index=(P.ARRAY_SLOT,) + tuple(rest))
    if isinstance(first, slice):
        if any(item is P.ARRAY_SLOT for item in rest):
            raise _refusal("array indices after a slice of a ragged value are not supported",
                           "Index the rows first, then the columns.")
        start, stop, step = first.start, first.stop, first.step
        if step in (None, 1) and type(start) is not Batched and type(stop) is not Batched and \
                (start is None or start >= 0) and (stop is None or stop >= 0):
            start = start or 0          # (the common x[a:b]: one slice of the padded data)
            lengths = np.asarray(x.lengths)
            if stop is not None:
                lengths = np.minimum(lengths, stop)
            lengths = np.maximum(lengths - start, 0)
            out = P.getitem(Batched(x.data), *arrays, index=(slice(start, stop),) + tuple(rest))
            return Ragged(out.data, lengths)
        first_row, step, count = _slice_rows(first, x.lengths)
        out = Ragged(_rows(x, _positions(first_row, step, count)), count)
        return P.getitem(out, *arrays, index=(slice(None),) + tuple(rest)) if rest else out
    raise _refusal(f"index {first!r} on a ragged value is not supported")



def _index_update_ragged(args, index, mode):
    x, value, *arrays = args
    if mode == "add" and index == (P.ARRAY_SLOT,) and np.ndim(x) >= 1 and segments.applies(arrays[0]):
        if not isinstance(x, Batched):                      # a uniform array: one copy per lane
            lanes = arrays[0].data.shape[0]
            x = Batched(P.broadcast_to(x, shape=(lanes,) + tuple(np.shape(x))))
        return segments.scatter_add(x, arrays[0], value)   # add.at(agg, dst, msg)
    if type(x) is not Ragged or type(value) is Ragged or any(type(a) is Ragged for a in arrays):
        raise _refusal("index update with a ragged value or index is not supported; only "
                       "updating positions of a ragged array is")
    first = index[0] if index else slice(None)
    lanes = x.data.shape[0]
    if first is P.ARRAY_SLOT:
        idx = arrays[0]
        idx_data = idx.data if isinstance(idx, Batched) else np.broadcast_to(idx, (lanes,) + np.shape(idx))
        if getattr(idx_data, "dtype", None) == np.bool_:
            raise _refusal("an update through a boolean mask of a ragged array",
                           "Use numpy.where(mask, value, x).")
        arrays = [Batched(_check_in_range(x, idx_data))] + list(arrays[1:])
    elif isinstance(first, (int, np.integer)):
        position = _check_in_range(x, np.full(lanes, int(first)))
        index = (P.ARRAY_SLOT,) + tuple(index[1:])
        arrays = [Batched(position)] + list(arrays)
    elif first != slice(None):
        raise _refusal("slices of a ragged axis in an index update are not supported",
                       "Update positions one index array at a time.")
    out = P.index_update(Batched(x.data), value, *arrays, index=index, mode=mode)
    return Ragged(out.data, x.lengths)


# --- VJP rules ----------------------------------------------------------------------------
def _getitem_vjp(g, ans, x, *arrays, index):
    if index == (P.ARRAY_SLOT,) and arrays[0].dtype.kind in "iu" and np.ndim(x) >= 1:
        # a row gather (E[word]): a sparse cotangent, densified once where needed
        idx = arrays[0]
        return SparseRows.rows(np.shape(x), idx.reshape(-1), g.reshape((-1,) + np.shape(x)[1:]),
                               unique=False)
    xp = namespace(g)
    if is_traced(g):     # a traced cotangent (grad of grad): a differentiable scatter-add
        return P.index_update(np.zeros(np.shape(x), dtype=g.dtype), g,
                              *[untraced(a) for a in arrays], index=index, mode="add")
    out = xp.zeros(np.shape(x), dtype=g.dtype)
    full = P.fill_index(index, arrays)
    if P.is_advanced_index(index):
        xp.add.at(out, full, g)
    else:
        out[full] = g
    return out



def _index_update_vjp_x(g, ans, x, value, *arrays, index, mode):
    if mode == "add":
        return g
    out = g.copy()
    out[P.fill_index(index, arrays)] = 0
    return out


def _index_update_vjp_value(g, ans, x, value, *arrays, index, mode):
    full = P.fill_index(index, arrays)
    c = g[full]
    if mode == "set" and P.is_advanced_index(index):
        # A position written several times keeps only its last write: replay the writes
        # with the write order as values to find which element of `value` survived.
        xp = namespace(g)
        order = xp.arange(c.size).reshape(c.shape)
        owner = xp.full(np.shape(g), -1, dtype=order.dtype)
        owner[full] = order
        c = xp.where(owner[full] == order, c, 0)
    return unbroadcast(c, value)



def _getitem_packed(args, index):
    """Packed rule of getitem: ``h[idx]`` of a Packed `h` by a ragged integer index (E,) is one
    take over the packed rows (runtime/packed.py `gather`)."""
    if type(args[0]) is Packed and index == (P.ARRAY_SLOT,):
        return packed.gather(args[0], args[1])
    return None


def _index_update_packed(args, index, mode):
    """Packed rule of index_update: ``index_update(agg, dst, msg, mode="add")`` by a ragged
    integer index (E,) is one scatter over the packed rows (runtime/packed.py `scatter_add`)."""
    if mode == "add" and index == (P.ARRAY_SLOT,):
        return packed.scatter_add(args[0], args[2], args[1])
    return None


# --- the primitives -------------------------------------------------------------------------
getitem = primitive("getitem", _getitem_impl, batch=_getitem_rule, ragged=_getitem_ragged,
                    packed=_getitem_packed,
                    vjp=(_getitem_vjp,))
"""``x[index]``: ``getitem(x, *arrays, index=template)`` (see `P.split_index`)."""
index_update = primitive("index_update", _index_update_impl, batch=_index_update_rule,
                         ragged=_index_update_ragged, packed=_index_update_packed,
                         vjp=(_index_update_vjp_x, _index_update_vjp_value))
"""A copy of `x` with ``x[index]`` set to (mode="set") or increased by (mode="add") `value`:
``index_update(x, value, *arrays, index=template, mode=mode)``."""
