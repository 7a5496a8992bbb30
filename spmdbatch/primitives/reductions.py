"""Reductions and operations along one axis: sum, max, min, logsumexp, any, all, argmax,
argmin; softmax, log_softmax, cumsum, sort, argsort.

Their batching rules shift the per-example axes by one (the lane axis comes first); their
ragged rules fill the padding of a ragged axis with the reduction's identity first (zeros
for sums, -inf for maxima, a value that sorts last for sorts), so padding never reaches a
result or a gradient.
"""
from __future__ import annotations

import numpy as np

from ..ad.tracer import is_traced, untraced
from ..runtime import primitives as P
from ..runtime.array_methods import index_update
from ..runtime.backend import namespace
from ..runtime import segments as S
from ..runtime.batched import Batched
from ..runtime.packed import Packed
from ..runtime.ragged import Ragged, _flatten, _masked, _ndim, _plain
from .declare import family, primitive
from .elementwise import safe_mul


# --- implementations ----------------------------------------------------------------------
def _reducer(fn):
    """The implementation of a reduction that is numpy's `fn` over `axis` (keyword form)."""
    def impl(x, axis=None, keepdims=False):
        return fn(x, axis=axis, keepdims=keepdims)
    impl.__name__ = impl.__qualname__ = f"_{fn.__name__}"
    return impl


_sum, _max, _min, _argmax, _argmin, _any, _all = map(
    _reducer, (np.sum, np.max, np.min, np.argmax, np.argmin, np.any, np.all))


def _logsumexp(x, axis=None, keepdims=False):
    xp = namespace(x)
    m = xp.max(x, axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0)
    with np.errstate(divide="ignore"):  # all -inf (fully masked): -inf, like numpy's log(0)
        out = xp.log(xp.sum(xp.exp(x - m), axis=axis, keepdims=True)) + m
    if keepdims:
        return out
    return out.reshape(()) if axis is None else xp.squeeze(out, axis=axis)


def _softmax(x, axis=-1):
    xp = namespace(x)
    e = xp.exp(x - xp.max(x, axis=axis, keepdims=True))
    return e / xp.sum(e, axis=axis, keepdims=True)


def _log_softmax(x, axis=-1):
    xp = namespace(x)
    shifted = x - xp.max(x, axis=axis, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))


def _cumsum(x, axis=None):
    return np.cumsum(x, axis=axis)


def _sort(x, axis=-1):
    return namespace(x).sort(x, axis=axis, kind="stable")


def _argsort(x, axis=-1):
    return namespace(x).argsort(x, axis=axis, kind="stable")



# --- batching rules -----------------------------------------------------------------------
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



def along_axis(prim):
    """Rule for softmax / log_softmax / cumsum: one per-example axis, shifted by one."""
    def rule(args, axis=-1):
        (x,) = args
        data = x.data
        if axis is None:  # cumsum over the flattened example
            return Batched(prim(P.reshape(data, shape=(data.shape[0], -1)), axis=1))
        return Batched(prim(data, axis=int(axis) % x.ndim + 1))
    return rule



# --- ragged rules -------------------------------------------------------------------------
def _ragged_reduction(prim, kind):
    def rule(args, axis=None, keepdims=False):
        (x,) = args
        nd = _ndim(x)
        axes = tuple(range(nd)) if axis is None else tuple(a % nd for a in
                                                            ((axis,) if isinstance(axis, int) else axis))
        if 0 not in axes:
            return Ragged(prim(_plain(x), axis=axis, keepdims=keepdims).data, x.lengths)
        return prim(Batched(_masked(x, kind)), axis=axis, keepdims=keepdims)
    return rule



def _ragged_along_axis(prim, kind):
    def rule(args, axis=-1):
        (x,) = args
        if axis is None:                      # over the flattened example
            x = _flatten(x)
            axis = 0
        if axis % _ndim(x) != 0:
            return Ragged(prim(_plain(x), axis=axis).data, x.lengths)
        return Ragged(prim(Batched(_masked(x, kind)), axis=0).data, x.lengths)
    return rule



# --- VJP helpers --------------------------------------------------------------------------
def _expand_reduced(g, x, axis, keepdims):
    """Broadcast the cotangent of a reduction back over the reduced axes of `x`."""
    if not keepdims and axis is not None:
        g = namespace(g).expand_dims(g, axis)
    return namespace(g).broadcast_to(g, np.shape(x))


def _tie_split(g, ans, x, axis, keepdims):
    """Cotangent of max/min: shared equally between the positions that attain it (the count
    of ties in the cotangent's dtype, so a float32 cotangent stays float32)."""
    hits = x == _expand_reduced(ans, x, axis, keepdims)
    ties = hits.sum(axis=axis, keepdims=True, dtype=g.dtype)
    return namespace(g).where(hits, _expand_reduced(g, x, axis, keepdims), 0) / ties



def _sort_vjp(g, ans, x, axis=-1):
    xp = namespace(g)
    if axis is None:
        return _sort_vjp(g, ans.reshape(-1), x.reshape(-1), 0).reshape(np.shape(x))
    order = xp.argsort(x, axis=axis, kind="stable")
    if is_traced(g):     # a traced cotangent (grad of grad): a differentiable scatter
        grids = list(np.indices(np.shape(order), sparse=True))
        grids[axis] = untraced(order)
        return index_update(np.zeros(np.shape(x), dtype=g.dtype), tuple(grids), g, mode="add")
    out = xp.zeros(np.shape(x), dtype=g.dtype)
    xp.put_along_axis(out, order, g, axis=axis)
    return out



def _sum_packed(args, axis=None, keepdims=False):
    """Packed rule of sum: over trailing axes a Packed of the row sums; over the ragged axis
    one segment sum per example (its rows in order, as the loop adds them)."""
    x = args[0]
    if type(x) is not Packed:
        return None
    nd = x.rows.ndim
    axes = tuple(range(nd)) if axis is None else tuple(
        int(a) % nd for a in ((axis,) if isinstance(axis, (int, np.integer)) else axis))
    if 0 not in axes:
        return Packed(P.sum(x.rows, axis=axes, keepdims=keepdims), x.layout)
    rows = x.rows
    inner = tuple(a for a in axes if a != 0)
    lay = x.layout
    if inner:
        rows = P.sum(rows, axis=inner, keepdims=True)
        rest = tuple(rows.shape[1:])
        padded = P.reshape(S.unpack_rows(rows, plan=lay.valid), shape=(lay.lanes, max(lay.width, 0)) + rest)
    else:       # the padded rows of `x` itself, made once per value (a sum and a mean share them)
        rest = tuple(rows.shape[1:])
        padded = x.to_ragged().data
    total = P.sum(padded, axis=(1,), keepdims=True)      # each lane's rows in order (the loop's sum)
    if not keepdims:
        total = P.reshape(total, shape=(lay.lanes,) + tuple(d for i, d in enumerate(rest, 1) if i not in axes))
    return Batched(total)


# --- the primitives -------------------------------------------------------------------------
sum = primitive("sum", _sum, batch=family(reduction), ragged=family(_ragged_reduction, "zero"),  # noqa: A001
                packed=_sum_packed,
                vjp=(lambda g, ans, x, axis=None, keepdims=False: _expand_reduced(g, x, axis, keepdims),))
max = primitive("max", _max, batch=family(reduction), ragged=family(_ragged_reduction, "low"),  # noqa: A001
                vjp=(lambda g, ans, x, axis=None, keepdims=False: _tie_split(g, ans, x, axis, keepdims),))
min = primitive("min", _min, batch=family(reduction), ragged=family(_ragged_reduction, "high"),  # noqa: A001
                vjp=(lambda g, ans, x, axis=None, keepdims=False: _tie_split(g, ans, x, axis, keepdims),))
logsumexp = primitive(
    "logsumexp", _logsumexp, batch=family(reduction), ragged=family(_ragged_reduction, "low"),
    vjp=(lambda g, ans, x, axis=None, keepdims=False:
         safe_mul(_expand_reduced(g, x, axis, keepdims),
                  np.exp(x - _expand_reduced(ans, x, axis, keepdims))),))
"""log(sum(exp(x))) over `axis`, without overflow; -inf where every term is -inf."""
any = primitive("any", _any, batch=family(reduction), ragged=family(_ragged_reduction, "false"),  # noqa: A001
                differentiable=False)
all = primitive("all", _all, batch=family(reduction), ragged=family(_ragged_reduction, "true"),  # noqa: A001
                differentiable=False)
argmax = primitive("argmax", _argmax, batch=family(arg_reduction),
                   ragged=family(_ragged_reduction, "low"), differentiable=False)
argmin = primitive("argmin", _argmin, batch=family(arg_reduction),
                   ragged=family(_ragged_reduction, "high"), differentiable=False)

softmax = primitive("softmax", _softmax, batch=family(along_axis), ragged=family(_ragged_along_axis, "low"),
                    vjp=(lambda g, ans, x, axis=-1: ans * (g - (g * ans).sum(axis=axis, keepdims=True)),))
"""exp(x) / sum(exp(x)) along `axis`, shifted by the maximum."""
log_softmax = primitive(
    "log_softmax", _log_softmax, batch=family(along_axis), ragged=family(_ragged_along_axis, "low"),
    vjp=(lambda g, ans, x, axis=-1: g - np.exp(ans) * g.sum(axis=axis, keepdims=True),))
"""x - logsumexp(x) along `axis`."""
cumsum = primitive("cumsum", _cumsum, batch=family(along_axis), ragged=family(_ragged_along_axis, "zero"),
                   vjp=(lambda g, ans, x, axis=None:
                        np.flip(np.cumsum(np.flip(g, axis), axis=axis), axis),))
# sorting: padding sorts after every element of the example (NaN after the largest value and
# after the example's own NaNs, since the sort is stable)
sort = primitive("sort", _sort, batch=family(along_axis), ragged=family(_ragged_along_axis, "last"),
                 vjp=(_sort_vjp,))
argsort = primitive("argsort", _argsort, batch=family(along_axis),
                    ragged=family(_ragged_along_axis, "last"), differentiable=False)
"""Sorting along one axis (None: the flattened array); ties keep their order (stable)."""
