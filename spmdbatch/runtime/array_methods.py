"""Operators and ndarray-style methods shared by the wrapped value types.

A subclass provides `shape`, `ndim`, `dtype` and `xp` (its array module); everything here
routes through primitives (`runtime/primitives.py`) or the numpy API table (`numpy_api`), so a tracer and
a batched value behave like an ndarray in user code: `x + 1`, `W @ x`, `x.sum(axis=0)`,
`x.T`, `x[i]`, `np.tanh(x)`, `np.concatenate([x, y])`.
"""
from __future__ import annotations

import numpy as np

from . import numpy_api as api
from . import primitives as P
from . import views
from .blame import user_frame
from .dispatch import Primitive, bind
from .numpy_api import FUNCTIONS, unsupported

_NO_PARAMS: dict = {}

_REDUCE_METHODS = {np.add: api.sum, np.maximum: api.amax, np.minimum: api.amin,
                   np.logical_and: np.all, np.logical_or: np.any}


class ArrayMethods:
    """Mixin: numpy protocols, operators and methods in terms of primitives."""

    __slots__ = ()
    _notes_views = False     # (Batched: basic indexing is recorded as a view, runtime/views.py)
    __array_priority__ = 100
    __hash__ = None  # like ndarray: == is elementwise

    # --- numpy protocols ---------------------------------------------------------------
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method == "__call__" and not kwargs:
            impl = FUNCTIONS.get(ufunc)
            if type(impl) is Primitive:
                out = bind(impl, inputs, _NO_PARAMS)
                if getattr(out, "weak", False):   # a numpy function returns a numpy scalar,
                    out = type(out)(out.data)     # even of Python numbers (not weak)
                return out
            if impl is not None:
                return impl(*inputs)
        if method == "at" and ufunc is np.add and not kwargs and len(inputs) == 3:
            return add_at(*inputs)
        if method == "reduce" and ufunc in _REDUCE_METHODS and len(inputs) == 1:
            axis = kwargs.pop("axis", 0)
            keepdims = kwargs.pop("keepdims", False)
            if not kwargs:
                return _REDUCE_METHODS[ufunc](inputs[0], axis=axis, keepdims=keepdims)
        name = ufunc.__name__ if method == "__call__" else f"{ufunc.__name__}.{method}"
        if kwargs:
            name += f"(with {', '.join(sorted(kwargs))}=)"
        raise unsupported(name)

    def __array_function__(self, func, types, args, kwargs):
        impl = FUNCTIONS.get(func)
        if impl is None:
            name = getattr(func, "__name__", str(func))
            module = getattr(func, "__module__", None) or "numpy"
            if module.startswith("numpy."):  # numpy.linalg.inv, not numpy.inv
                name = f"{module[len('numpy.'):]}.{name}"
            raise unsupported(name)
        return impl(*args, **kwargs)

    # --- arithmetic ----------------------------------------------------------------------
    def __add__(self, other): return bind(P.add, (self, other), _NO_PARAMS)
    def __radd__(self, other): return bind(P.add, (other, self), _NO_PARAMS)
    def __sub__(self, other): return bind(P.subtract, (self, other), _NO_PARAMS)
    def __rsub__(self, other): return bind(P.subtract, (other, self), _NO_PARAMS)
    def __mul__(self, other): return bind(P.multiply, (self, other), _NO_PARAMS)
    def __rmul__(self, other): return bind(P.multiply, (other, self), _NO_PARAMS)
    def __truediv__(self, other): return bind(P.divide, (self, other), _NO_PARAMS)
    def __rtruediv__(self, other): return bind(P.divide, (other, self), _NO_PARAMS)
    def __pow__(self, other): return bind(P.power, (self, other), _NO_PARAMS)
    def __rpow__(self, other): return bind(P.power, (other, self), _NO_PARAMS)
    def __matmul__(self, other): return bind(P.matmul, (self, other), _NO_PARAMS)
    def __rmatmul__(self, other): return bind(P.matmul, (other, self), _NO_PARAMS)
    def __floordiv__(self, other): return bind(P.floor_divide, (self, other), _NO_PARAMS)
    def __rfloordiv__(self, other): return bind(P.floor_divide, (other, self), _NO_PARAMS)
    def __mod__(self, other): return bind(P.remainder, (self, other), _NO_PARAMS)
    def __rmod__(self, other): return bind(P.remainder, (other, self), _NO_PARAMS)
    def __neg__(self): return bind(P.negative, (self,), _NO_PARAMS)
    def __pos__(self): return self
    def __abs__(self): return P.absolute(self)

    # --- comparisons and logic (no gradient) ------------------------------------------------
    def __lt__(self, other): return bind(P.less, (self, other), _NO_PARAMS)
    def __le__(self, other): return bind(P.less_equal, (self, other), _NO_PARAMS)
    def __gt__(self, other): return bind(P.greater, (self, other), _NO_PARAMS)
    def __ge__(self, other): return bind(P.greater_equal, (self, other), _NO_PARAMS)
    def __eq__(self, other): return bind(P.equal, (self, other), _NO_PARAMS)  # type: ignore[override]
    def __ne__(self, other): return bind(P.not_equal, (self, other), _NO_PARAMS)  # type: ignore[override]
    def __and__(self, other): return bind(P.bitwise_and, (self, other), _NO_PARAMS)
    def __rand__(self, other): return bind(P.bitwise_and, (other, self), _NO_PARAMS)
    def __or__(self, other): return bind(P.bitwise_or, (self, other), _NO_PARAMS)
    def __ror__(self, other): return bind(P.bitwise_or, (other, self), _NO_PARAMS)
    def __xor__(self, other): return bind(P.bitwise_xor, (self, other), _NO_PARAMS)
    def __rxor__(self, other): return bind(P.bitwise_xor, (other, self), _NO_PARAMS)
    def __invert__(self): return P.invert(self)

    # --- indexing ---------------------------------------------------------------------------
    def __getitem__(self, index):
        template, arrays = P.split_index(index)
        out = P.getitem(self, *arrays, index=template)
        if not arrays and self._notes_views and getattr(type(out), "_notes_views", False) and out.ndim >= 1:
            views.note_view(self, out, index)   # (a view in the loop: see runtime/views.py)
        return out

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of unsized object")
        return self.shape[0]

    def __iter__(self):
        if not self.shape:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self.shape[0]))

    @property
    def at(self):
        """Functional index update: ``x.at[i].set(v)`` and ``x.at[i].add(v)`` return new arrays."""
        return _IndexUpdateRef(self)

    # --- shape ------------------------------------------------------------------------------
    @property
    def size(self):
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def T(self):
        return api.transpose(self)

    def reshape(self, *shape, order="C"):
        if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
            shape = shape[0]
        return api.reshape(self, shape, order=order)

    def transpose(self, *axes):
        if len(axes) == 1 and not isinstance(axes[0], (int, np.integer)):
            axes = axes[0]
        return api.transpose(self, axes or None)

    def ravel(self, order="C"): return api.ravel(self, order)
    def flatten(self, order="C"): return api.ravel(self, order)
    def squeeze(self, axis=None): return api.squeeze(self, axis)
    def swapaxes(self, axis1, axis2): return api.swapaxes(self, axis1, axis2)

    # --- reductions and others -----------------------------------------------------------------
    def sum(self, axis=None, dtype=None, out=None, keepdims=False): return api.sum(self, axis, dtype, out, keepdims)
    def mean(self, axis=None, dtype=None, out=None, keepdims=False): return api.mean(self, axis, dtype, out, keepdims)
    def max(self, axis=None, out=None, keepdims=False): return api.amax(self, axis, None, out, keepdims)
    def min(self, axis=None, out=None, keepdims=False): return api.amin(self, axis, None, out, keepdims)
    def var(self, axis=None, dtype=None, out=None, ddof=0, keepdims=False): return api.var(self, axis, dtype, out, ddof, keepdims)
    def std(self, axis=None, dtype=None, out=None, ddof=0, keepdims=False): return api.std(self, axis, dtype, out, ddof, keepdims)
    def argmax(self, axis=None, out=None, keepdims=False): return api.argmax(self, axis, out, keepdims)
    def argmin(self, axis=None, out=None, keepdims=False): return api.argmin(self, axis, out, keepdims)
    def any(self, axis=None, out=None, keepdims=False): return P.any(self, axis=api.normalize_axis(axis, self.ndim), keepdims=keepdims)
    def all(self, axis=None, out=None, keepdims=False): return P.all(self, axis=api.normalize_axis(axis, self.ndim), keepdims=keepdims)
    def cumsum(self, axis=None, dtype=None, out=None): return api.cumsum(self, axis, dtype, out)
    def argsort(self, axis=-1, kind=None, order=None): return api.argsort(self, axis, kind, order)
    def dot(self, other): return api.dot(self, other)
    def clip(self, min=None, max=None): return api.clip(self, min, max)  # noqa: A002
    def round(self, decimals=0): return P.round(self, decimals=decimals)

    def astype(self, dtype, copy=True):
        dtype = np.dtype(dtype)
        return self if dtype == self.dtype else P.astype(self, dtype=dtype)

    def copy(self):
        return self


class _IndexUpdateRef:
    """The object behind ``x.at``: indexing it gives an `_IndexUpdate`."""

    __slots__ = ("target",)

    def __init__(self, target):
        self.target = target

    def __getitem__(self, index):
        return _IndexUpdate(self.target, index)


class _IndexUpdate:
    __slots__ = ("target", "index")

    def __init__(self, target, index):
        self.target = target
        self.index = index

    def set(self, value):
        return index_update(self.target, self.index, value, mode="set")

    def add(self, value):
        return index_update(self.target, self.index, value, mode="add")


def index_update(x, index, value, mode="set"):
    """A copy of `x` with ``x[index]`` set to (mode='set') or increased by (mode='add') `value`.

    Works on raw arrays, traced and batched values; differentiable in `x` and `value`.
    With mode='add', repeated integer indices accumulate (like ``numpy.add.at``).
    """
    if mode not in ("set", "add"):
        raise ValueError(f"index_update mode must be 'set' or 'add', not {mode!r}")
    template, arrays = P.split_index(index)
    return P.index_update(x, value, *arrays, index=template, mode=mode)


def add_at(target, indices, values):
    """``numpy.add.at(target, indices, values)`` on wrapped values: the functional
    ``index_update(..., mode="add")``, after which `target` (a tracer or a per-example
    value) stands for the updated array, as numpy's in-place update would leave it."""
    updated = index_update(target, indices, values, mode="add")
    assign = getattr(target, "_spmd_assign", None)
    if assign is None:
        from ..errors import VaryingValueError
        filename, lineno = user_frame()
        raise VaryingValueError(
            f"numpy.add.at into a {type(target).__name__} that cannot take per-example (or traced) "
            f"values in place", filename, lineno,
            "Create the array from per-example shapes (np.zeros(h.shape)), or write "
            "`out = spmdbatch.index_update(out, idx, values, mode='add')`.")
    assign(updated)


def at(x):
    """``at(x)[i].set(v)`` / ``.add(v)``: functional index update for any array value."""
    return _IndexUpdateRef(x)
