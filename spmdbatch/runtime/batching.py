"""Batching rules: how each primitive runs on `Batched` (varying) operands.

A rule receives the operands (each `Batched` or uniform) and the static params, and computes
the result for every lane at once by binding primitives on the underlying `data` arrays
(which may be autodiff tracers: the tape then records whole-batch operations). The batch
axis is always axis 0 of `data`; an operand that is not `Batched` is uniform (shared by all
lanes), like a batch axis of `None` in JAX.

`defbatch(prim, rule)` registers a rule; `elementwise`, `reduction` and the rest below are
the rule families. A primitive without a rule raises `NotImplementedError` naming it.
"""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedOperation
from . import primitives as P
from .blame import user_frame
from .batched import WEAK_KEEPING, Batched, lane_error
from .dispatch import bind, register_value_type

_ARANGE_CACHE: dict = {}


def defbatch(prim, rule):
    """Register `rule(args, **params)` as the batching rule of `prim`."""
    prim.batch = rule


def batched_apply(prim, args, params):
    """Dispatch handler for operands of type `Batched`."""
    rule = prim.batch
    if rule is None:
        raise UnsupportedOperation(f"primitive {prim.name!r} has no batching rule", *user_frame(),
                                   hint="Add one in spmdbatch/runtime/batching.py.")
    return rule(args, **params)


register_value_type(Batched, 2, batched_apply)


# --- helpers ------------------------------------------------------------------------------
def _ndim(value) -> int:
    """Per-example rank: of the example for Batched, of the value itself otherwise."""
    kind = type(value)
    if kind is Batched:
        return value.data.ndim - 1
    if kind is int or kind is float or kind is bool:
        return 0
    nd = getattr(value, "ndim", None)
    return np.ndim(value) if nd is None else nd


def _lanes(args) -> int:
    for a in args:
        if type(a) is Batched:
            return a.data.shape[0]
    raise AssertionError("batching rule called without a batched operand")


def _with_rank(data, rank: int):
    """Insert size-1 axes after the batch axis so `data` has per-example rank `rank`."""
    missing = rank - (data.ndim - 1)
    if missing <= 0:
        return data
    shape = data.shape
    return P.reshape(data, shape=(shape[0],) + (1,) * missing + tuple(shape[1:]))


def _as_lanes(value, lanes: int):
    """The batch-axis data of `value`: its `data` if batched, else broadcast to every lane."""
    if type(value) is Batched:
        return value.data
    shape = tuple(np.shape(value)) if not hasattr(value, "shape") else tuple(value.shape)
    return P.broadcast_to(value, shape=(lanes,) + shape)


def lane_arange(lanes: int, xp=np):
    """0..lanes-1 as an int array (cached for numpy)."""
    if xp is not np:
        return xp.arange(lanes)
    out = _ARANGE_CACHE.get(lanes)
    if out is None:
        out = np.arange(lanes)
        out.flags.writeable = False
        _ARANGE_CACHE[lanes] = out
    return out


# --- elementwise ----------------------------------------------------------------------------
_PYTHON_NUMBERS = (int, float, bool, complex)
_WEAK_KEEPING = WEAK_KEEPING    # (see runtime/batched.py)
_WEAK_EXAMPLE = {"b": False, "i": 0, "u": 0, "f": 0.0, "c": 0j}


def _weak_operands(prim, args, params, plain):
    """An elementwise primitive with a weak operand (`Batched.weak`: Python numbers per
    example). Among weak operands and Python numbers only, the result is weak (for Python
    operators, `_WEAK_KEEPING`); otherwise the weak operands take numpy's promotion with the
    other operands' dtypes (NEP 50), as each example's Python number would."""
    strong = [a for a in args if not (type(a) is Batched and a.weak) and type(a) not in _PYTHON_NUMBERS]
    if not strong:
        out = plain(args, params)
        return Batched(out.data, weak=True) if prim in _WEAK_KEEPING else out
    weak = [_WEAK_EXAMPLE.get(a.dtype.kind, 0.0) for a in args if type(a) is Batched and a.weak]
    try:
        dtype = np.result_type(*[a.dtype if hasattr(a, "dtype") else np.asarray(a).dtype for a in strong],
                               *weak)
    except TypeError:
        dtype = None
    cast = []
    for a in args:
        if type(a) is Batched and a.weak:
            a = Batched(a.data if dtype is None or a.dtype == dtype else P.astype(a.data, dtype=dtype))
        cast.append(a)
    return plain(tuple(cast), params)


def elementwise(prim):
    """Rule for elementwise primitives: align per-example ranks, then apply to the data."""
    def rule(args, **params):
        for a in args:
            if type(a) is Batched and a.weak:
                return _weak_operands(prim, args, params, plain)
        return plain(args, params)

    def plain(args, params):
        if len(args) == 2:                      # the common binary case, without generators
            a, b = args
            if type(a) is Batched:
                if type(b) is Batched:
                    da, db = a.data, b.data
                    if da.ndim == db.ndim:
                        return Batched(bind(prim, (da, db), params))
                elif _ndim(b) < a.data.ndim:
                    return Batched(bind(prim, (a.data, b), params))
            elif _ndim(a) < b.data.ndim:
                return Batched(bind(prim, (a, b.data), params))
        elif len(args) == 1:
            return Batched(bind(prim, (args[0].data,), params))
        rank = max(_ndim(a) for a in args)
        return Batched(bind(prim, tuple(_with_rank(a.data, rank) if type(a) is Batched else a
                                        for a in args), params))
    return rule


for _prim in P.ELEMENTWISE | {P.sigmoid, P.where, P.round}:
    defbatch(_prim, elementwise(_prim))


# --- reductions and axis ops ---------------------------------------------------------------------
def _shift_axes(axis, nd):
    if axis is None:
        return tuple(range(1, nd + 1))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else axis
    return tuple(int(a) % nd + 1 for a in axes) if nd else ()


def reduction(prim):
    """Rule for (axis=None|tuple, keepdims) reductions: reduce the per-example axes."""
    def rule(args, axis=None, keepdims=False):
        (x,) = args
        return Batched(prim(x.data, axis=_shift_axes(axis, x.ndim), keepdims=keepdims))
    return rule


for _prim in (P.sum, P.max, P.min, P.logsumexp, P.any, P.all):
    defbatch(_prim, reduction(_prim))


def arg_reduction(prim):
    """Rule for argmax/argmin: axis=None means over the flattened example."""
    def rule(args, axis=None, keepdims=False):
        (x,) = args
        data, nd = x.data, x.ndim
        if axis is None:
            flat = P.reshape(data, shape=(data.shape[0], -1))
            out = prim(flat, axis=1, keepdims=False)
            return Batched(P.reshape(out, shape=(data.shape[0],) + (1,) * nd) if keepdims else out)
        return Batched(prim(data, axis=int(axis) % nd + 1, keepdims=keepdims))
    return rule


defbatch(P.argmax, arg_reduction(P.argmax))
defbatch(P.argmin, arg_reduction(P.argmin))


def along_axis(prim):
    """Rule for softmax / log_softmax / cumsum: one per-example axis, shifted by one."""
    def rule(args, axis=-1):
        (x,) = args
        data = x.data
        if axis is None:  # cumsum over the flattened example
            return Batched(prim(P.reshape(data, shape=(data.shape[0], -1)), axis=1))
        return Batched(prim(data, axis=int(axis) % x.ndim + 1))
    return rule


for _prim in (P.softmax, P.log_softmax, P.cumsum, P.sort, P.argsort):
    defbatch(_prim, along_axis(_prim))


def _roll_rule(args, shift, axis=None):
    (x,) = args
    data = x.data
    if axis is None:      # over the flattened example
        flat = P.roll(P.reshape(data, shape=(data.shape[0], -1)), shift=shift, axis=1)
        return Batched(P.reshape(flat, shape=data.shape))
    axes = tuple(int(a) % x.ndim + 1 for a in axis) if isinstance(axis, tuple) else int(axis) % x.ndim + 1
    return Batched(P.roll(data, shift=shift, axis=axes))


defbatch(P.roll, _roll_rule)
defbatch(P.pad, lambda args, pad_width, constant=0: Batched(
    P.pad(args[0].data, pad_width=((0, 0),) + tuple(pad_width), constant=constant)))


# --- linear algebra -------------------------------------------------------------------------
def _squeeze_at(data, axis):
    shape = list(data.shape)
    del shape[axis]
    return P.reshape(data, shape=tuple(shape))


def _matmul_rule(args):
    a, b = args
    ra, rb = _ndim(a), _ndim(b)
    if type(a) is Batched and type(b) is Batched:
        if ra == 1 and rb == 1:
            return Batched(P.sum(P.multiply(a.data, b.data), axis=(1,), keepdims=False))
        if rb == 1:        # (..., m, n) @ (n,)
            bd = _with_rank(P.reshape(b.data, shape=b.data.shape + (1,)), ra)
            return Batched(_squeeze_at(P.matmul(a.data, bd), -1))
        if ra == 1:        # (n,) @ (..., n, k)
            ad = _with_rank(P.reshape(a.data, shape=(a.data.shape[0], 1) + a.shape), rb)
            return Batched(_squeeze_at(P.matmul(ad, b.data), -2))
        rank = max(ra, rb)
        return Batched(P.matmul(_with_rank(a.data, rank), _with_rank(b.data, rank)))
    if type(a) is Batched:  # a varies, b uniform
        ad = a.data
        if rb == 1 or (ra == 1 and rb == 2):
            return Batched(P.matmul(ad, b))
        if ra == 1:        # (n,) @ (..., n, k)
            ad = _with_rank(P.reshape(ad, shape=(ad.shape[0], 1) + a.shape), rb)
            return Batched(_squeeze_at(P.matmul(ad, b), -2))
        if rb == 2:        # fold lanes and leading axes into one matrix product
            flat = P.matmul(P.reshape(ad, shape=(-1, ad.shape[-1])), b)
            return Batched(P.reshape(flat, shape=ad.shape[:-1] + (b.shape[-1],)))
        return Batched(P.matmul(_with_rank(ad, max(ra, rb)), b))
    bd = b.data             # a uniform, b varies
    if ra == 1 and rb == 1:
        return Batched(P.matmul(bd, a))
    if ra == 1:
        return Batched(P.matmul(a, bd))
    if rb == 1:            # (..., m, n) @ (n,): x @ W.T for the common W @ x
        if ra == 2:
            return Batched(P.matmul_t(bd, a))
        col = _with_rank(P.reshape(bd, shape=bd.shape + (1,)), ra)
        return Batched(_squeeze_at(P.matmul(a, col), -1))
    return Batched(P.matmul(a, _with_rank(bd, max(ra, rb))))


defbatch(P.matmul, _matmul_rule)
defbatch(P.matmul_t, lambda args: P.matmul(args[0], np.swapaxes(args[1], -1, -2)))


def _einsum_rule(args, spec):
    inputs, out = spec.split("->")
    letter = next(c for c in "ZYXWVUTSRQPONMLKJIHGFEDCBAzyxwvutsrqponmlkjihgfedcba" if c not in spec)
    subs = [letter + s if type(a) is Batched else s for a, s in zip(args, inputs.split(","))]
    data = [a.data if type(a) is Batched else a for a in args]
    return Batched(P.einsum(*data, spec=",".join(subs) + "->" + letter + out))


defbatch(P.einsum, _einsum_rule)


# --- shapes ---------------------------------------------------------------------------------
defbatch(P.reshape, lambda args, shape: Batched(
    P.reshape(args[0].data, shape=(args[0].data.shape[0],) + tuple(shape))))
defbatch(P.transpose, lambda args, axes=None: Batched(P.transpose(
    args[0].data, axes=(0,) + tuple(int(a) % args[0].ndim + 1 for a in
                                    (axes if axes is not None else range(args[0].ndim - 1, -1, -1)))
    if args[0].ndim else (0,))))
defbatch(P.astype, lambda args, dtype: Batched(P.astype(args[0].data, dtype=dtype)))


def _broadcast_to_rule(args, shape):
    (x,) = args
    data = _with_rank(x.data, len(shape))
    return Batched(P.broadcast_to(data, shape=(data.shape[0],) + tuple(shape)))


defbatch(P.broadcast_to, _broadcast_to_rule)


def _concatenate_rule(args, axis=0):
    lanes = _lanes(args)
    nd = _ndim(args[0])
    return Batched(P.concatenate(*[_as_lanes(a, lanes) for a in args], axis=int(axis) % nd + 1))


defbatch(P.concatenate, _concatenate_rule)


def _full_like_rule(args, fill_value, dtype=None, shape=None):
    (a,) = args
    # Every lane gets the same constant: the result is uniform.
    return a.xp.full(a.shape if shape is None else shape, fill_value, dtype=dtype or a.dtype)


defbatch(P.full_like, _full_like_rule)


# --- indexing -------------------------------------------------------------------------------
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
        from .ragged import as_ragged
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


defbatch(P.getitem, _getitem_rule)

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
            from . import segments
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
            from . import segments
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


defbatch(P.index_update, _index_update_rule)
