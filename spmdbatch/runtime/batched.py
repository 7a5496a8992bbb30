"""`Batched`: the per-example value of every lane, stacked along a leading batch axis.

Inside an @spmd program a value is either *uniform* (a plain Python object or array, the same
for every example) or *varying* (a `Batched`). A `Batched` behaves like the value of ONE
example: `.shape` is the per-example shape, `len(x)` the per-example length, and numpy code
written for one example works on it, each primitive applying its batching rule
(runtime/batching.py). Its `data` is a raw array or an autodiff tracer of shape
``(lanes,) + shape``.

Python needs one concrete value for `bool(x)`, `int(x)`, `float(x)`, shapes and dict keys; a
`Batched` refuses them with a `VaryingValueError` naming the user's source line.
"""
from __future__ import annotations

import numpy as np

from ..errors import VaryingValueError
from . import primitives as P
from .array_methods import ArrayMethods
from .backend import namespace
from .dispatch import bind
from .blame import lane_error, set_lane_namer, user_frame  # noqa: F401  (also imported from here)


def _concrete_error(what: str, hint: str) -> VaryingValueError:
    filename, lineno = user_frame(3)
    return VaryingValueError(f"{what} of a varying (per-example) value: Python needs one concrete "
                             f"value here, but each example has its own.", filename, lineno, hint)


class Batched(ArrayMethods):
    """Per-example values stacked on axis 0 of `data` (a raw array or a tracer).

    `weak` marks values that are Python numbers in each example (a loop counter, `len` of a
    ragged value, a number assigned on some paths): their data is int64/float64, but like
    Python numbers under numpy's promotion (NEP 50) they take the dtype of the arrays they
    meet (runtime/batching.py), so ``x32 / len(xs)`` stays float32 as in the loop."""

    __slots__ = ("data", "weak")

    def __init__(self, data, weak=False):
        self.data = data
        self.weak = weak

    @property
    def shape(self):
        return self.data.shape[1:]

    @property
    def ndim(self):
        return self.data.ndim - 1

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def lanes(self) -> int:
        """The number of lanes (examples) this value holds."""
        return self.data.shape[0]

    @property
    def xp(self):
        data = self.data
        return namespace(getattr(data, "value", data))

    def _spmd_stop_gradient(self):
        data = self.data
        return Batched(getattr(data, "value", data)) if hasattr(data, "tape") else self

    def _spmd_assign(self, other):
        """Make this value stand for `other` (an in-place update such as numpy.add.at)."""
        if type(other) is not type(self):
            raise _concrete_error(f"an in-place update that turns a {type(self).__name__} into a "
                                  f"{type(other).__name__}",
                                  "Write `out = spmdbatch.index_update(out, idx, values, mode='add')`.")
        self.data = other.data

    def __setitem__(self, index, value):
        raise _concrete_error(
            "item assignment on", "Item assignment `h[i] = v` works on local variables inside @spmd "
            "functions; elsewhere use spmdbatch.index_update(h, i, v).")

    def __bool__(self):
        raise _concrete_error("truth value", "Branch on it with if/while inside the @spmd function "
                              "itself (the transform batches those), or use numpy.where(cond, a, b).")

    def __float__(self):
        raise _concrete_error("float()", "Keep it an array: use x.astype(float) instead of float(x).")

    def __int__(self):
        raise _concrete_error("int()", "Keep it an array: use x.astype(int) instead of int(x).")

    __index__ = __int__

    def __complex__(self):
        raise _concrete_error("complex()", "Keep it an array.")

    def __hash__(self):
        raise _concrete_error("hash (dict key / set member)", "Use a uniform key, or index an array with it.")

    def item(self, *args):
        raise _concrete_error(".item()", "Keep it an array.")

    def tolist(self):
        raise _concrete_error(".tolist()", "Keep it an array.")

    def __array__(self, dtype=None, copy=None):
        raise _concrete_error("numpy.asarray()", "Per-example values cannot become one numpy array "
                              "inside @spmd code; use numpy.stack / numpy.concatenate to combine them.")

    # (operators: the fast path of `_operator` below, set after the class)

    def __repr__(self):
        weak = ", weak" if self.weak else ""
        return f"Batched(lanes={self.data.shape[0]}, shape={self.shape}, dtype={self.dtype}{weak})"


_NDARRAY = np.ndarray
_NO_PARAMS: dict = {}


def _operator(prim, reflected: bool, keeps_weak: bool):
    """`Batched`'s binary operator for `prim`: when both operands are numpy lane data of one
    rank, or the other is a Python int or float, the ufunc runs on the data at once (what the
    elementwise batching rule would do after its checks, runtime/batching.py; `keeps_weak`:
    Python numbers' operators give Python numbers, so weak operands give a weak result; a
    weak operand meeting a strong one of its own dtype needs no cast). Every other case
    (tracers, ragged or lane-mapped operands, other dtype promotions of weak values) goes
    through `bind`."""
    ufunc = prim.impl

    def op(self, other):
        data = self.data
        if type(data) is _NDARRAY and type(self) is Batched:      # (not a Ragged)
            kind = type(other)
            if kind is int or kind is float:
                out = ufunc(other, data) if reflected else ufunc(data, other)
                return Batched(out, self.weak and keeps_weak)
            if kind is Batched:
                od = other.data
                if type(od) is _NDARRAY and od.ndim == data.ndim:
                    if other.weak == self.weak:
                        out = ufunc(od, data) if reflected else ufunc(data, od)
                        return Batched(out, self.weak and keeps_weak)
                    if od.dtype == data.dtype:
                        # a Python number per example meets an array of its own dtype: NEP 50
                        # promotion casts nothing and the result is the array's (not weak)
                        return Batched(ufunc(od, data) if reflected else ufunc(data, od))
        return bind(prim, (other, self) if reflected else (self, other), _NO_PARAMS)
    op.__name__ = f"__{'r' if reflected else ''}{prim.name}__"
    return op


WEAK_KEEPING = frozenset([P.add, P.subtract, P.multiply, P.divide, P.power, P.remainder,
                          P.floor_divide, P.negative, P.absolute,
                          P.less, P.less_equal, P.greater, P.greater_equal, P.equal, P.not_equal])
"""Primitives that Python numbers' operators (and builtin abs) map to: on Python numbers they
give Python numbers, so on weak values a weak value. The same primitives called as numpy
functions (`np.add`, `np.abs`) give numpy scalars: ArrayMethods.__array_ufunc__ drops the
mark. (Builtin min/max of weak values give strong values: a known approximation.)"""


def _negative(self):
    data = self.data
    if type(data) is _NDARRAY and type(self) is Batched:
        return Batched(-data, self.weak)
    return bind(P.negative, (self,), _NO_PARAMS)


def _install_operators():
    binary = {"add": P.add, "sub": P.subtract, "mul": P.multiply, "truediv": P.divide,
              "pow": P.power, "floordiv": P.floor_divide, "mod": P.remainder,
              "and": P.bitwise_and, "or": P.bitwise_or, "xor": P.bitwise_xor}
    for name, prim in binary.items():
        setattr(Batched, f"__{name}__", _operator(prim, False, prim in WEAK_KEEPING))
        setattr(Batched, f"__r{name}__", _operator(prim, True, prim in WEAK_KEEPING))
    compare = {"lt": P.less, "le": P.less_equal, "gt": P.greater, "ge": P.greater_equal,
               "eq": P.equal, "ne": P.not_equal}
    for name, prim in compare.items():
        setattr(Batched, f"__{name}__", _operator(prim, False, prim in WEAK_KEEPING))
    Batched.__neg__ = _negative


_install_operators()

from .pytree import register_leaf_type  # noqa: E402

register_leaf_type(Batched)
