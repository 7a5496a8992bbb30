"""Batched operands: the dispatch handler of `Batched`, and what batching rules share.

A batching rule (`Primitive.batch`, declared with the primitive in spmdbatch/primitives/)
receives the operands (each `Batched` or uniform) and the static params, and computes the
result for every lane at once by binding primitives on the underlying `data` arrays (which
may be autodiff tracers: the tape then records whole-batch operations). The batch axis is
always axis 0 of `data`; an operand that is not `Batched` is uniform (shared by all lanes),
like a batch axis of `None` in JAX.

Here: the handler, the helpers rules use (`_ndim`: per-example rank, `_lanes`, `_with_rank`,
`_as_lanes`, `lane_arange`), and the rule of elementwise primitives (`elementwise`: align
per-example ranks, then one operation on the data; weak Python-number operands promote as
numpy promotes Python numbers). The rule of a primitive that declares none is the
per-example loop (runtime/derived.py).
"""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedOperation
from . import primitives as P
from . import views
from .blame import user_frame
from .batched import WEAK_KEEPING, Batched
from .dispatch import bind, register_value_type

_ARANGE_CACHE: dict = {}


def batched_apply(prim, args, params):
    """Dispatch handler for operands of type `Batched`."""
    if views.RECORDS.stale:
        views.check(args)          # (a value an in-place update left out of date)
    rule = prim.batch
    if rule is None:
        raise UnsupportedOperation(f"primitive {prim.name!r} has no batching rule", *user_frame(),
                                   hint="Declare the primitive with spmdbatch.primitive, which "
                                        "gives it one.")
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
        return Batched(out.data, weak=True) if prim.name in _WEAK_KEEPING else out
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
