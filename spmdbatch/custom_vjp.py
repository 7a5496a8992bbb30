"""`custom_vjp`: a function with a hand-written gradient, spelled as in JAX.

    @spmdbatch.custom_vjp
    def clip_gradient(x):
        return x

    def fwd(x):
        return x, None                    # (output, residuals for the backward pass)

    def bwd(residuals, g):
        return (np.clip(g, -1.0, 1.0),)   # one cotangent per positional argument

    clip_gradient.defvjp(fwd, bwd)

`fwd(*args)` returns ``(out, residuals)``: `out` is the function's value (one array) and
`residuals` any pytree of values the backward pass needs; ``bwd(residuals, g)`` returns a
tuple with one cotangent per positional argument (shaped like the argument, a pytree for a
pytree argument; None for an argument without gradient).

The function is one primitive: under `grad` its forward pass is `fwd` and its VJP is `bwd`.
Under `spmd`, with per-example arguments, it runs as `spmd(fwd)` over the examples and its
VJP as `spmd(bwd)` over the examples' residuals and cotangents, so per-example code with
data-dependent control flow works in both, and no batching rule has to be written; a
cotangent of an argument shared by all examples (parameters) is summed over them. Called on
plain values (nothing traced or batched) it is just the function.

`fwd` and `bwd` must not read values being differentiated from an enclosing scope (pass
them as arguments): their gradient would be the custom one, not theirs.
"""
from __future__ import annotations

import functools

import numpy as np

from .errors import SpmdError
from .execution.calls import per_example
from .primitives.declare import primitive
from .runtime import pytree
from .runtime.backend import namespace
from .runtime.batched import Batched
from .runtime.blame import user_frame
from .runtime.dispatch import bind, handler_priority
from .spmd import spmd


class _Residuals:
    """What one call's forward pass leaves for its backward pass (held by its tape entry)."""

    __slots__ = ("value", "g", "cotangents")

    def __init__(self):
        self.value = None
        self.g = None            # the cotangent the cotangents below were computed for
        self.cotangents = None   # one per operand (leaf of the arguments)


class custom_vjp:
    """A function whose VJP is given by `defvjp(fwd, bwd)` (see the module docstring)."""

    _spmd_native = True     # batch programs call it as it is (its primitive does the batching)

    def __init__(self, fn):
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.fwd = self.bwd = None
        self._prim = self._batched = None

    def defvjp(self, fwd, bwd) -> None:
        """Set the forward pass ``fwd(*args) -> (out, residuals)`` and the backward pass
        ``bwd(residuals, g) -> (cotangent of each positional argument, ...)``."""
        if not callable(fwd) or not callable(bwd):
            raise TypeError(f"{self._name()}.defvjp(fwd, bwd) takes two functions")
        self.fwd, self.bwd = fwd, bwd
        name = f"custom_vjp({self._name()})"
        self._prim = primitive(name, self._impl, batch=self._batch_rule, vjp=self._vjp,
                               register_name=False, origin=getattr(self.fn, "__module__", ""))
        self._batched = primitive(name + " over examples", self._batched_impl, vjp=self._batched_vjp,
                                  ragged="its operands are lane-major data", register_name=False,
                                  origin=getattr(self.fn, "__module__", ""))

    def _name(self) -> str:
        return getattr(self.fn, "__qualname__", repr(self.fn))

    def __call__(self, *args, **kwargs):
        if self._prim is None:
            filename, lineno = user_frame()
            raise SpmdError(f"custom_vjp function {self._name()} called before its VJP was defined",
                            filename, lineno, f"Call {self._name()}.defvjp(fwd, bwd) first.")
        if kwargs:
            filename, lineno = user_frame()
            raise SpmdError(f"custom_vjp function {self._name()} called with keyword arguments "
                            f"({', '.join(kwargs)})", filename, lineno,
                            "Pass its arguments by position (bwd returns one cotangent per position).")
        leaves, treedef = pytree.flatten(args)
        for leaf in leaves:
            if handler_priority(leaf):
                return bind(self._prim, tuple(leaves), {"treedef": treedef, "box": _Residuals()})
        return self.fn(*args)        # nothing traced or batched: the function itself

    # --- on one example (raw values and tracers) ------------------------------------------------
    def _impl(self, *leaves, treedef, box):
        out, box.value = self._split(self.fwd(*treedef.unflatten(leaves)))
        return _as_array(out, leaves, self._name())

    def _split(self, result):
        if not (isinstance(result, tuple) and len(result) == 2):
            filename, lineno = user_frame()
            raise SpmdError(f"the forward pass of custom_vjp function {self._name()} returned "
                            f"{type(result).__name__}, not a pair (out, residuals)", filename, lineno,
                            "Return `out, residuals` from fwd.")
        return result

    def _vjp(self, pos, g, ans, *leaves, treedef, box):
        if box.g is not g:
            box.g = g
            box.cotangents = self._per_leaf(self.bwd(box.value, g), leaves, treedef)
        return box.cotangents[pos]

    def _per_leaf(self, cotangents, leaves, treedef):
        """bwd's cotangents (one per positional argument) as one per leaf of the arguments,
        each shaped and typed like its leaf (None: no gradient)."""
        args = treedef.unflatten(list(leaves))
        if not isinstance(cotangents, (tuple, list)) or len(cotangents) != len(args):
            got = len(cotangents) if isinstance(cotangents, (tuple, list)) else type(cotangents).__name__
            filename, lineno = user_frame()
            raise SpmdError(f"the backward pass of custom_vjp function {self._name()} returned {got} "
                            f"cotangents for {len(args)} positional arguments", filename, lineno,
                            "Return a tuple with one cotangent per positional argument (None for "
                            "one without gradient).")
        out = []
        for i, (arg, ct) in enumerate(zip(args, cotangents)):
            arg_leaves = pytree.leaves(arg)
            if ct is None:
                out.extend([None] * len(arg_leaves))
                continue
            ct_leaves = pytree.leaves(ct)
            if len(ct_leaves) != len(arg_leaves):
                filename, lineno = user_frame()
                raise SpmdError(f"custom_vjp function {self._name()}: the cotangent of argument {i} "
                                f"has {len(ct_leaves)} leaves, the argument {len(arg_leaves)}",
                                filename, lineno, "Give the cotangent the argument's structure.")
            out.extend(_like(c, leaf, self._name(), i) for c, leaf in zip(ct_leaves, arg_leaves))
        return out

    # --- over the examples of a batch (the batching rule) ----------------------------------------
    def _batch_rule(self, args, treedef, box):
        axes = tuple(0 if isinstance(a, Batched) else None for a in args)
        data = tuple(a.data if isinstance(a, Batched) else a for a in args)
        return Batched(bind(self._batched, data, {"treedef": treedef, "axes": axes, "box": box}))

    def _batched_impl(self, *data, treedef, axes, box):
        out, box.value = spmd(_forward, in_axes=(None, None, list(axes)))(self, treedef, list(data))
        return _as_array(out, data, self._name())

    def _batched_vjp(self, pos, g, ans, *data, treedef, axes, box):
        if box.g is not g:
            box.g = g
            cts = spmd(_backward, in_axes=(None, 0, 0))(self.bwd, box.value, g)
            lanes = g.shape[0]
            per_leaf = self._per_leaf(cts, _example_shaped(data, axes, lanes), treedef)
            box.cotangents = [c if c is None or axis is not None else c.sum(axis=0)
                              for c, axis in zip(per_leaf, axes)]
        return box.cotangents[pos]


@per_example
def _forward(f, treedef, leaves):
    """One example's forward pass (run by spmd over the examples)."""
    return f._split(f.fwd(*treedef.unflatten(leaves)))


@per_example
def _backward(bwd, residuals, g):
    """One example's backward pass (run by spmd over the examples)."""
    return bwd(residuals, g)


class _Leaf:
    """A stand-in with the shape (lanes, *shape) and dtype of a shared operand, so that the
    per-example cotangents of a shared operand (which have a lane axis) pass the check in
    `_per_leaf` before they are summed."""

    __slots__ = ("shape", "dtype")

    def __init__(self, shape, dtype):
        self.shape = shape
        self.dtype = dtype


def _example_shaped(data, axes, lanes):
    out = []
    for d, axis in zip(data, axes):
        if axis is None and (hasattr(d, "shape") or isinstance(d, (int, float, complex))):
            out.append(_Leaf((lanes,) + tuple(np.shape(d)), getattr(d, "dtype", None)))
        else:
            out.append(d)
    return out


pytree.register_leaf_type(_Leaf)


def _as_array(out, operands, name):
    if isinstance(out, (tuple, list, dict)):
        filename, lineno = user_frame()
        raise SpmdError(f"custom_vjp function {name} returned a {type(out).__name__}; it may return "
                        f"one array", filename, lineno, "Return one array (or write one custom_vjp "
                        "function per output).")
    if hasattr(out, "dtype") and hasattr(out, "shape"):
        return out
    for a in operands:
        if hasattr(a, "shape"):
            return namespace(getattr(a, "value", a)).asarray(out)
    return np.asarray(out)


def _like(c, leaf, name, i):
    """Cotangent `c` checked against (and cast to the floating dtype of) its argument leaf."""
    shape = tuple(np.shape(leaf)) if not hasattr(leaf, "shape") else tuple(leaf.shape)
    c = c if hasattr(c, "shape") else np.asarray(c)
    if tuple(c.shape) != shape:
        filename, lineno = user_frame()
        raise SpmdError(f"custom_vjp function {name}: the cotangent of argument {i} has shape "
                        f"{tuple(c.shape)}, its value {shape}", filename, lineno,
                        "Return a cotangent of the argument's shape.")
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None and np.issubdtype(dtype, np.inexact) and c.dtype != dtype:
        c = c.astype(dtype)
    return c
