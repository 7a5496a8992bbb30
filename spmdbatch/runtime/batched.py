"""`Batched`: the per-example value of every lane, stacked along a leading batch axis; and
`Ragged`, the same for examples whose first axis differs in length (its rules are in
runtime/ragged.py).

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

from ..errors import UnsupportedOperation, VaryingValueError
from . import primitives as P
from .array_methods import ArrayMethods
from .backend import namespace
from .blame import user_frame
from .dispatch import bind


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

    __slots__ = ("data", "weak", "__weakref__")   # (weak references: runtime/views.py)
    _notes_views = True      # basic indexing of a per-example array is a view in the loop

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
        if not hasattr(data, "tape"):
            hook = getattr(data, "_spmd_stop_gradient", None)   # a value of a staged region
            return Batched(hook(), self.weak) if hook is not None else self
        while hasattr(data, "tape"):      # (every tape's tracer: grad of grad)
            data = data.value
        return Batched(data)

    def copy(self):
        """A new value (not a view: runtime/views.py) sharing the data, which is never
        written in place."""
        return Batched(self.data, self.weak)

    def _spmd_assign(self, other):
        """Make this value stand for `other` (an in-place update such as numpy.add.at)."""
        refuse = getattr(self.data, "_spmd_refuse_assign", None)   # a region being staged
        if refuse is not None:
            refuse()
        if type(other) is not type(self):
            raise _concrete_error(f"an in-place update that turns a {type(self).__name__} into a "
                                  f"{type(other).__name__}",
                                  "Write `out = spmdbatch.index_update(out, idx, values, mode='add')`.")
        if self.data.ndim >= 2:
            from . import views
            views.note_update(self, rebound=False)   # (its views keep the old values)
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



class Ragged(Batched):
    """Per-example arrays of different lengths along their first axis (examples whose first
    axis differs in length): `data` padded with zeros to the longest example, plus `lengths`
    (one int per lane). Each example sees its own length (`x.shape[0]`, `len(x)` are varying);
    the rules of runtime/ragged.py keep the padding out of results and gradients."""

    __slots__ = ("lengths",)

    def __init__(self, data, lengths):
        self.data = data
        self.lengths = lengths
        self.weak = False

    @property
    def shape(self):
        return (Batched(self.lengths, weak=True),) + tuple(self.data.shape[2:])   # Python ints

    @property
    def padded_length(self) -> int:
        return self.data.shape[1]

    def mask(self):
        """Boolean data (lanes, padded length, 1, ...) that is True inside each example."""
        data = self.data
        valid = np.arange(data.shape[1])[None, :] < np.asarray(self.lengths)[:, None]
        return valid.reshape(valid.shape + (1,) * (data.ndim - 2))

    def _spmd_take_lanes(self, idx):
        # (execution.lanes.take maps raw per-lane data instead: runtime/mapped.py)
        return Ragged(P.take_lanes(self.data, idx), self.lengths[idx])

    def _spmd_merge_lanes(self, others, counts):
        group = [self] + list(others)
        if not all(type(g) is Ragged for g in group):
            if all(type(g) in (Ragged, Batched) and g.data.ndim >= 2 for g in group):
                group = [as_ragged(g) for g in group]     # (a regular array: every length full)
            else:
                filename, lineno = user_frame(2)
                raise UnsupportedOperation(
                    "a variable holds a ragged value on some paths and another kind of value on "
                    "others where control flow joins", filename, lineno,
                    "Pad the examples to one length before batching, or index, reduce or iterate "
                    "over the ragged axis instead.")
        width = max(g.padded_length for g in group)
        return Ragged(P.concatenate(*[_pad_to(g.data, width) for g in group], axis=0),
                      np.concatenate([g.lengths for g in group]))

    def _spmd_assign(self, other):
        if hasattr(other, "to_ragged"):         # a Packed result (numpy.add.at into np.zeros)
            other = other.to_ragged()
        Batched._spmd_assign(self, other)
        self.lengths = other.lengths

    def _spmd_stop_gradient(self):
        return Ragged(getattr(self.data, "value", self.data), self.lengths)

    def __len__(self):
        filename, lineno = user_frame()
        raise VaryingValueError("len() of a ragged value as a Python int", filename, lineno,
                                "Inside @spmd code len(x) works (it is varying); elsewhere use x.shape[0].")

    def __repr__(self):
        return f"Ragged(lanes={self.data.shape[0]}, padded shape={self.data.shape[1:]}, dtype={self.dtype})"


def as_ragged(x):
    """`x` as a `Ragged` (a regular varying array: every example's full length)."""
    if type(x) is Ragged:
        return x
    data = x.data
    return Ragged(data, np.full(data.shape[0], data.shape[1], dtype=np.intp))



def _pad_to(data, width):
    missing = width - data.shape[1]
    if missing == 0:
        return data
    raw = getattr(data, "value", data)
    zeros = np.zeros((data.shape[0], missing) + tuple(data.shape[2:]), dtype=raw.dtype)
    return P.concatenate(data, zeros, axis=1)


_NDARRAY = np.ndarray
_NO_PARAMS: dict = {}


def _operator(prim, reflected: bool, keeps_weak: bool):
    """`Batched`'s binary operator for `prim`: when both operands are numpy lane vectors (a
    number per example), or one is and the other is a Python int or float, the ufunc runs on
    the data at once (what the elementwise batching rule would do after its checks,
    runtime/batching.py; `keeps_weak`:
    Python numbers' operators give Python numbers, so weak operands give a weak result; a
    weak operand meeting a strong one of its own dtype needs no cast). Every other case
    (tracers, ragged or lane-mapped operands, other dtype promotions of weak values) goes
    through `bind`."""
    ufunc = prim.impl

    def op(self, other):
        data = self.data
        if type(data) is _NDARRAY and data.ndim == 1 and type(self) is Batched:   # (not a Ragged)
            kind = type(other)
            if kind is int or kind is float:
                out = ufunc(other, data) if reflected else ufunc(data, other)
                return Batched(out, self.weak and keeps_weak)
            if kind is Batched:
                od = other.data
                if type(od) is _NDARRAY and od.ndim == 1:
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


WEAK_KEEPING = frozenset(["add", "subtract", "multiply", "divide", "power", "remainder",
                          "floor_divide", "negative", "absolute",
                          "less", "less_equal", "greater", "greater_equal", "equal", "not_equal"])
"""Names of the primitives that Python numbers' operators (and builtin abs) map to: on Python
numbers they give Python numbers, so on weak values a weak value. The same primitives called
as numpy functions (`np.add`, `np.abs`) give numpy scalars: ArrayMethods.__array_ufunc__ drops
the mark. (Builtin min/max of weak values give strong values: a known approximation.)"""


def _negative(self):
    data = self.data
    if type(data) is _NDARRAY and data.ndim == 1 and type(self) is Batched:
        return Batched(-data, self.weak)
    return bind(P.negative, (self,), _NO_PARAMS)


def install_operators():
    """Give `Batched` the operators above (until then it has ArrayMethods' operators, which
    go through `bind`): called once the primitives are registered (spmdbatch/primitives)."""
    # (not /, //, % and **: where Python and numpy differ on numbers, such as a division by
    # zero or a negative integer power, the batching rule decides)
    binary = {"add": P.add, "sub": P.subtract, "mul": P.multiply,
              "and": P.bitwise_and, "or": P.bitwise_or, "xor": P.bitwise_xor}
    for name, prim in binary.items():
        setattr(Batched, f"__{name}__", _operator(prim, False, prim.name in WEAK_KEEPING))
        setattr(Batched, f"__r{name}__", _operator(prim, True, prim.name in WEAK_KEEPING))
    compare = {"lt": P.less, "le": P.less_equal, "gt": P.greater, "ge": P.greater_equal,
               "eq": P.equal, "ne": P.not_equal}
    for name, prim in compare.items():
        setattr(Batched, f"__{name}__", _operator(prim, False, prim.name in WEAK_KEEPING))
    Batched.__neg__ = _negative


from .pytree import register_leaf_type  # noqa: E402

register_leaf_type(Batched)
