"""numpy's public API in terms of primitives, for wrapped values (tracers, batched values).

`FUNCTIONS` maps a numpy function or ufunc to what computes it on wrapped values: a
primitive that declared it (``spmdbatch.primitive(..., numpy=np.tanh)``: operands
positional, params keywords), or a function here, written with primitives, `.shape`,
`.ndim` and `.dtype` only, so it works unchanged for raw arrays, tracers and batched values
(where `.shape` is the per-example shape). Wrapped types look it up in their
`__array_ufunc__` / `__array_function__`. A numpy function missing from the table is refused
with an error that names it, never computed without its gradient.
"""
from __future__ import annotations

import builtins
import math

import numpy as np

from ..errors import UnsupportedOperation
from . import primitives as P
from . import views
from .blame import lane_error, user_frame
from .dispatch import PRIMITIVES

FUNCTIONS: dict = {}


def register_numpy(numpy_function, implementation) -> None:
    """Compute `numpy_function` (a function or ufunc) on wrapped values with `implementation`
    (a primitive, or a function of the same signature); one implementation per function."""
    if not callable(numpy_function):
        raise TypeError(f"not a numpy function: {numpy_function!r}")
    known = FUNCTIONS.get(numpy_function)
    if known is not None and known is not implementation:
        name = getattr(numpy_function, "__name__", numpy_function)
        raise ValueError(f"numpy.{name} is already implemented on wrapped values by {known!r}")
    FUNCTIONS[numpy_function] = implementation


def implements(*numpy_functions):
    """Register the decorated function as the implementation of `numpy_functions`."""
    def register(fn):
        for f in numpy_functions:
            register_numpy(f, fn)
        return fn
    return register


def unsupported(name: str, what: str = "traced or batched values") -> UnsupportedOperation:
    filename, lineno = user_frame(3)
    return UnsupportedOperation(
        f"numpy.{name} is not supported on {what} by spmdbatch; it would lose the gradient or "
        f"the batch axis", filename, lineno,
        "Rewrite it with supported functions (see spmdbatch.runtime.numpy_api), or apply "
        "spmdbatch.stop_gradient to its input if no gradient is needed.")


def _no_out(out, name):
    if out is not None:
        raise NotImplementedError(f"numpy.{name}(..., out=...) is not supported on traced or batched "
                                  f"values: arrays in spmdbatch programs are immutable; drop `out=`")


def normalize_axis(axis, ndim: int):
    """None, or a sorted tuple of non-negative axes."""
    if axis is None:
        return None
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for a in axes:
        a = int(a)
        if not -ndim <= a < ndim:
            raise np.exceptions.AxisError(a, ndim)
        out.append(a % ndim if ndim else 0)
    return tuple(sorted(out))


# --- reductions ---------------------------------------------------------------------------
def _reduction(name):
    """numpy.<name>(a, axis, dtype, out, keepdims) as the primitive `name` (P.sum, ...)."""
    def reduce(a, axis=None, dtype=None, out=None, keepdims=False, **unused):
        _no_out(out, name)
        if unused.get("where", True) is not True or unused.get("initial", np._NoValue) is not np._NoValue:
            raise NotImplementedError(f"numpy.{name}(where=/initial=) is not supported on traced values")
        if dtype is not None:
            a = P.astype(a, dtype=np.dtype(dtype))
        return PRIMITIVES[name](a, axis=normalize_axis(axis, np.ndim(a)), keepdims=bool(keepdims))
    reduce.__name__ = name
    return reduce


sum = implements(np.sum)(_reduction("sum"))  # noqa: A001
amax = implements(np.max, np.amax)(_reduction("max"))
amin = implements(np.min, np.amin)(_reduction("min"))
implements(np.any)(_reduction("any"))
implements(np.all)(_reduction("all"))


def _count(a, axis):
    """The number of elements reduced: per example (an integer array) over a ragged axis."""
    shape = a.shape
    axes = range(len(shape)) if axis is None else normalize_axis(axis, len(shape))
    return math.prod(shape[i] for i in axes)


def _per_count(total, count):
    """``total / count``; a count that differs per example (a ragged axis: an integer array)
    is taken in the floating dtype of `total`, as numpy divides by a Python int (a float32
    mean stays float32)."""
    if not isinstance(count, int) and total.dtype.kind in "fc":
        count = count.astype(total.dtype)
    return total / count


@implements(np.mean)
def mean(a, axis=None, dtype=None, out=None, keepdims=False, **unused):
    total = sum(a, axis=axis, dtype=dtype, out=out, keepdims=keepdims, **unused)
    return _per_count(total, _count(a, axis))


@implements(np.var)
def var(a, axis=None, dtype=None, out=None, ddof=0, keepdims=False, **unused):
    centered = a - mean(a, axis=axis, dtype=dtype, out=out, keepdims=True)
    return _per_count(sum(centered * centered, axis=axis, keepdims=keepdims), _count(a, axis) - ddof)


@implements(np.std)
def std(a, axis=None, dtype=None, out=None, ddof=0, keepdims=False, **unused):
    return _sqrt0(var(a, axis=axis, dtype=dtype, out=out, ddof=ddof, keepdims=keepdims))


def _sqrt0(s):
    """sqrt(s) with gradient 0 (not 0 * inf = NaN upstream) where s == 0: std and norm of constants."""
    nonzero = s != 0
    return P.where(nonzero, P.sqrt(P.where(nonzero, s, 1)), 0)


@implements(np.argmax)
def argmax(a, axis=None, out=None, keepdims=False):
    _no_out(out, "argmax")
    return P.argmax(a, axis=None if axis is None else normalize_axis(axis, np.ndim(a))[0],
                    keepdims=bool(keepdims))


@implements(np.argmin)
def argmin(a, axis=None, out=None, keepdims=False):
    _no_out(out, "argmin")
    return P.argmin(a, axis=None if axis is None else normalize_axis(axis, np.ndim(a))[0],
                    keepdims=bool(keepdims))


@implements(np.cumsum)
def cumsum(a, axis=None, dtype=None, out=None):
    _no_out(out, "cumsum")
    if dtype is not None:
        a = P.astype(a, dtype=np.dtype(dtype))
    if axis is None:
        return P.cumsum(reshape(a, (-1,)), axis=0)
    return P.cumsum(a, axis=normalize_axis(axis, np.ndim(a))[0])


@implements(np.linalg.norm)
def norm(x, ord=None, axis=None, keepdims=False):
    if ord not in (None, 2, "fro") or (ord == 2 and (axis is None and np.ndim(x) != 1)):
        raise NotImplementedError(f"numpy.linalg.norm with ord={ord!r} is not supported on traced "
                                  f"values; only the 2-norm / Frobenius norm is")
    return _sqrt0(sum(x * x, axis=axis, keepdims=keepdims))


# --- linear algebra -----------------------------------------------------------------------
@implements(np.dot)
def dot(a, b, out=None):
    _no_out(out, "dot")
    if np.ndim(a) == 0 or np.ndim(b) == 0:
        return a * b
    if np.ndim(b) <= 2:
        return P.matmul(a, b)
    # numpy.dot contracts a's last axis with b's second-to-last axis.
    return tensordot(a, b, axes=([np.ndim(a) - 1], [np.ndim(b) - 2]))


@implements(np.vdot)
def vdot(a, b):
    return sum(reshape(a, (-1,)) * reshape(b, (-1,)))


@implements(np.inner)
def inner(a, b):
    if np.ndim(a) == 0 or np.ndim(b) == 0:
        return a * b
    return tensordot(a, b, axes=([np.ndim(a) - 1], [np.ndim(b) - 1]))


@implements(np.outer)
def outer(a, b, out=None):
    _no_out(out, "outer")
    return reshape(a, (-1, 1)) * reshape(b, (1, -1))


_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


@implements(np.tensordot)
def tensordot(a, b, axes=2):
    if isinstance(axes, int):
        axes_a, axes_b = list(range(np.ndim(a) - axes, np.ndim(a))), list(range(axes))
    else:
        axes_a, axes_b = axes
        axes_a = [axes_a] if isinstance(axes_a, int) else list(axes_a)
        axes_b = [axes_b] if isinstance(axes_b, int) else list(axes_b)
    la = list(_LETTERS[:np.ndim(a)])
    lb = list(_LETTERS[np.ndim(a):np.ndim(a) + np.ndim(b)])
    for i, j in zip(axes_a, axes_b):
        lb[j % np.ndim(b)] = la[i % np.ndim(a)]
    contracted = {la[i % np.ndim(a)] for i in axes_a}
    out = [c for c in la if c not in contracted] + [c for c in lb if c not in contracted]
    return P.einsum(a, b, spec=f"{''.join(la)},{''.join(lb)}->{''.join(out)}")


@implements(np.einsum)
def einsum(*operands, out=None, optimize=False, **unused):
    _no_out(out, "einsum")
    spec, *arrays = operands
    if not isinstance(spec, str):
        raise NotImplementedError("numpy.einsum on traced values needs the subscripts-string form")
    if len(arrays) > 2:
        raise NotImplementedError("numpy.einsum on traced values supports one or two operands; "
                                  "split the contraction into pairwise einsums")
    return P.einsum(*arrays, spec=expand_einsum_spec(spec, [np.ndim(x) for x in arrays]))


def expand_einsum_spec(spec: str, ndims) -> str:
    """Make an einsum spec explicit: an output part always, '...' replaced by letters."""
    spec = spec.replace(" ", "")
    if "->" in spec:
        lhs, rhs = spec.split("->")
    else:
        lhs, rhs = spec, None
    inputs = lhs.split(",")
    used = set(spec)
    spare = [c for c in _LETTERS if c not in used]
    ell_rank = builtins.max([nd - (len(s) - 3) for s, nd in zip(inputs, ndims) if "..." in s], default=0)
    ell = "".join(spare[:ell_rank])
    new_inputs = []
    for s, nd in zip(inputs, ndims):
        if "..." in s:
            k = nd - (len(s) - 3)
            s = s.replace("...", ell[ell_rank - k:] if k else "")
        new_inputs.append(s)
    if rhs is None:
        counts = {}
        for s in new_inputs:
            for c in s:
                counts[c] = counts.get(c, 0) + 1
        rhs = ell + "".join(sorted(c for c, n in counts.items() if n == 1 and c not in ell))
    else:
        rhs = rhs.replace("...", ell)
    return ",".join(new_inputs) + "->" + rhs


# --- shapes -------------------------------------------------------------------------------
def _shape_arg(shape):
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    # (a per-example length, as `x.shape[0]` of a ragged value gives, stays as it is)
    return tuple(s if hasattr(s, "lanes") and not isinstance(s, np.integer) else int(s) for s in shape)


@implements(np.reshape)
def reshape(a, shape=None, order="C", *, newshape=None, copy=None):
    if order != "C":
        raise NotImplementedError("numpy.reshape with order other than 'C' is not supported on traced values")
    target = _shape_arg(shape if shape is not None else newshape)
    if not all(isinstance(s, (int, np.integer)) for s in a.shape):
        return P.reshape(a, shape=target)  # a varying (ragged) shape: the primitive decides
    if -1 in target:
        known = math.prod(s for s in target if s != -1)
        total = math.prod(a.shape)
        target = tuple((total // known if known else 0) if s == -1 else s for s in target)
    if target == tuple(a.shape):
        return a
    return _view(a, P.reshape(a, shape=target))


def _view(a, out):
    """`out`, noted as a view of the per-example array `a` (a reshape or transpose is one in
    the loop: an in-place update of either is seen by the other, runtime/views.py)."""
    if getattr(type(a), "_notes_views", False) and getattr(type(out), "_notes_views", False):
        views.note_view(a, out)
    return out


@implements(np.ravel)
def ravel(a, order="C"):
    return reshape(a, (-1,), order=order)


@implements(np.transpose)
def transpose(a, axes=None):
    nd = np.ndim(a)
    if axes is None:
        axes = tuple(range(nd - 1, -1, -1))
    else:
        axes = tuple(int(ax) % nd for ax in axes)
    if axes == tuple(range(nd)):
        return a
    return _view(a, P.transpose(a, axes=axes))


@implements(np.swapaxes)
def swapaxes(a, axis1, axis2):
    axes = list(range(np.ndim(a)))
    axes[axis1], axes[axis2] = axes[axis2], axes[axis1]
    return transpose(a, axes)


@implements(np.moveaxis)
def moveaxis(a, source, destination):
    nd = np.ndim(a)
    src = normalize_axis(source, nd) if not isinstance(source, int) else (source % nd,)
    dst = [d % nd for d in ((destination,) if isinstance(destination, int) else destination)]
    src = [s % nd for s in ((source,) if isinstance(source, int) else source)]
    order = [n for n in range(nd) if n not in src]
    for d, s in sorted(zip(dst, src)):
        order.insert(d, s)
    return transpose(a, order)


@implements(np.expand_dims)
def expand_dims(a, axis):
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    nd = np.ndim(a) + len(axes)
    axes = {ax % nd for ax in axes}
    it = iter(a.shape)
    return reshape(a, tuple(1 if i in axes else next(it) for i in range(nd)))


@implements(np.squeeze)
def squeeze(a, axis=None):
    shape = a.shape
    if axis is None:
        axes = {i for i, s in enumerate(shape) if s == 1}
    else:
        axes = set(normalize_axis(axis, len(shape)))
        for i in axes:
            if shape[i] != 1:
                raise ValueError("cannot select an axis to squeeze out which has size not equal to one")
    return reshape(a, tuple(s for i, s in enumerate(shape) if i not in axes))


@implements(np.atleast_1d)
def atleast_1d(*arys):
    out = [reshape(a, (1,)) if np.ndim(a) == 0 else a for a in arys]
    return out[0] if len(out) == 1 else out


@implements(np.atleast_2d)
def atleast_2d(*arys):
    out = []
    for a in arys:
        nd = np.ndim(a)
        out.append(reshape(a, (1, 1)) if nd == 0 else reshape(a, (1,) + tuple(a.shape)) if nd == 1 else a)
    return out[0] if len(out) == 1 else out


@implements(np.broadcast_to)
def broadcast_to(array, shape, subok=False):
    shape = _shape_arg(shape)
    if tuple(np.shape(array)) == shape:
        return array
    return P.broadcast_to(array, shape=shape)


def _operands(arrays):
    """A list of operands; constants given as (nested) lists or Python numbers become arrays."""
    return [np.asarray(a) if isinstance(a, (list, tuple, int, float, bool)) else a for a in arrays]


@implements(np.concatenate)
def concatenate(arrays, axis=0, out=None, dtype=None, casting=None):
    _no_out(out, "concatenate")
    arrays = _operands(arrays)
    if axis is None:
        return P.concatenate(*[reshape(a, (-1,)) for a in arrays], axis=0)
    return P.concatenate(*arrays, axis=normalize_axis(axis, np.ndim(arrays[0]))[0])


@implements(np.stack)
def stack(arrays, axis=0, out=None, dtype=None, casting=None):
    _no_out(out, "stack")
    arrays = _operands(arrays)
    if not arrays:
        raise ValueError("need at least one array to stack")
    nd = np.ndim(arrays[0]) + 1
    return P.concatenate(*[expand_dims(a, axis) for a in arrays], axis=axis % nd)


@implements(np.hstack)
def hstack(tup, dtype=None, casting=None):
    arrays = [atleast_1d(a) for a in tup]
    return concatenate(arrays, axis=0 if np.ndim(arrays[0]) == 1 else 1)


@implements(np.vstack)
def vstack(tup, dtype=None, casting=None):
    return concatenate([atleast_2d(a) for a in tup], axis=0)


@implements(np.array_split)
def array_split(ary, indices_or_sections, axis=0):
    nd = np.ndim(ary)
    axis = axis % nd
    n = ary.shape[axis]
    if isinstance(indices_or_sections, (int, np.integer)):
        sections = int(indices_or_sections)
        if sections <= 0:
            raise ValueError("number sections must be larger than 0.")
        base, extra = n // sections, n % sections      # (n may be a per-example length)
        bounds = [base * i + P.minimum(extra, i) if not isinstance(n, int) else
                  base * i + builtins.min(extra, i) for i in range(sections + 1)]
    else:
        bounds = [0] + [int(i) for i in indices_or_sections] + [n]
    lead = (slice(None),) * axis
    return [P.getitem(ary, index=lead + (slice(start, stop),))
            for start, stop in zip(bounds[:-1], bounds[1:])]


@implements(np.split)
def split(ary, indices_or_sections, axis=0):
    if isinstance(indices_or_sections, (int, np.integer)):
        n = ary.shape[axis % np.ndim(ary)]
        uneven = n % int(indices_or_sections) if indices_or_sections else 1
        if isinstance(uneven, int):
            if uneven:
                raise ValueError("array split does not result in an equal division")
        else:
            bad = np.flatnonzero(np.asarray(getattr(uneven.data, "value", uneven.data)) != 0)
            if bad.size:
                raise lane_error(ValueError("array split does not result in an equal division"), bad)
    return array_split(ary, indices_or_sections, axis)


@implements(np.flip)
def flip(m, axis=None):
    nd = np.ndim(m)
    axes = range(nd) if axis is None else normalize_axis(axis, nd)
    index = [slice(None)] * nd
    for a in axes:
        index[a] = slice(None, None, -1)
    return m[tuple(index)]


@implements(np.sort)
def sort(a, axis=-1, kind=None, order=None, stable=None):
    if order is not None:
        raise NotImplementedError("numpy.sort(order=...) is not supported on traced or batched values")
    if axis is None:
        return P.sort(reshape(a, (-1,)), axis=0)
    return P.sort(a, axis=normalize_axis(axis, np.ndim(a))[0])


@implements(np.argsort)
def argsort(a, axis=-1, kind=None, order=None, stable=None):
    """Ties are ordered by position (as kind='stable'; numpy's default kind leaves their order
    unspecified)."""
    if order is not None:
        raise NotImplementedError("numpy.argsort(order=...) is not supported on traced or batched values")
    if axis is None:
        return P.argsort(reshape(a, (-1,)), axis=0)
    return P.argsort(a, axis=normalize_axis(axis, np.ndim(a))[0])


@implements(np.roll)
def roll(a, shift, axis=None):
    if axis is None:
        return P.roll(a, shift=int(shift), axis=None)
    if isinstance(axis, (int, np.integer)):
        return P.roll(a, shift=int(shift), axis=normalize_axis(axis, np.ndim(a))[0])
    axes = tuple(int(ax) % np.ndim(a) for ax in axis)
    shifts = np.broadcast_to(np.asarray(shift), (len(axes),))
    for ax, sh in zip(axes, shifts):
        a = P.roll(a, shift=int(sh), axis=ax)
    return a


@implements(np.pad)
def pad(array, pad_width, mode="constant", **kwargs):
    if mode != "constant" or set(kwargs) - {"constant_values"}:
        raise NotImplementedError(f"numpy.pad(mode={mode!r}, {', '.join(kwargs)}) is not supported on "
                                  f"traced or batched values; only constant padding is")
    constant = kwargs.get("constant_values", 0)
    if np.ndim(constant) != 0:
        raise NotImplementedError("numpy.pad with per-axis constant_values is not supported on "
                                  "traced or batched values; give one number")
    nd = np.ndim(array)
    if nd == 0:
        return array
    widths = np.broadcast_to(np.asarray(pad_width, dtype=np.intp), (nd, 2))
    return P.pad(array, pad_width=tuple((int(b), int(e)) for b, e in widths),
                 constant=constant.item() if hasattr(constant, "item") else constant)


@implements(np.take)
def take(a, indices, axis=None, out=None, mode=None):
    _no_out(out, "take")
    if axis is None:
        return reshape(a, (-1,))[indices]
    index = [slice(None)] * np.ndim(a)
    index[axis] = indices
    return a[tuple(index)]


@implements(np.where)
def where(condition, x=None, y=None):
    if x is None and y is None:
        raise NotImplementedError("numpy.where(condition) with one argument (nonzero) gives a "
                                  "data-dependent shape and is not supported on traced values")
    return P.where(condition, x, y)


@implements(np.clip)
def clip(a, a_min=None, a_max=None, out=None, **kwargs):
    _no_out(out, "clip")
    a_min = kwargs.get("min", a_min)
    a_max = kwargs.get("max", a_max)
    if a_min is not None:
        a = P.maximum(a, a_min)
    if a_max is not None:
        a = P.minimum(a, a_max)
    return a


@implements(np.copy)
def copy(a, order="K", subok=False):
    return a.copy()


# --- values without gradient --------------------------------------------------------------
@implements(np.shape)
def shape(a):
    return tuple(a.shape)


@implements(np.ndim)
def ndim(a):
    return len(a.shape)


@implements(np.size)
def size(a, axis=None):
    return math.prod(a.shape) if axis is None else a.shape[axis]


def _like(fill):
    def like(a, dtype=None, order="K", subok=True, shape=None, **kwargs):
        value = kwargs.get("fill_value") if fill == "full" else fill
        return P.full_like(a, fill_value=value, dtype=dtype, shape=shape)
    return like


implements(np.zeros_like)(_like(0))
implements(np.ones_like)(_like(1))
implements(np.empty_like)(_like(0))


@implements(np.full_like)
def full_like(a, fill_value, dtype=None, order="K", subok=True, shape=None):
    return P.full_like(a, fill_value=fill_value, dtype=dtype, shape=shape)


@implements(np.round, np.around)
def round_(a, decimals=0, out=None):
    _no_out(out, "round")
    return P.round(a, decimals=decimals)


@implements(np.isclose)
def isclose(a, b, rtol=1e-05, atol=1e-08, equal_nan=False):
    return P.absolute(a - b) <= atol + rtol * P.absolute(b)
