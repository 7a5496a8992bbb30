"""Public autodiff API: grad, value_and_grad, vjp, stop_gradient.

Differentiable arguments are pytrees (runtime/pytree.py). Floating leaves (float arrays and
Python floats) are differentiated; integer and boolean leaves are data, and their gradient
is a zero array of their shape. The gradient has the structure of the argument.
"""
from __future__ import annotations

import functools
import inspect
import types
from typing import Callable

import numpy as np

from ..errors import GradientError
from ..runtime import pytree
from ..runtime.blame import user_frame
from ..runtime.backend import is_floating, namespace
from .sparse import SparseRows, densify
from .tape import Tape
from .tracer import STATE, Tracer


class _Activate:
    """Make `tape` the active tape for the duration of a with-block."""

    def __init__(self, tape):
        self.tape = tape

    def __enter__(self):
        if STATE.tape is not None:
            raise NotImplementedError(
                "nested differentiation (grad inside a function being differentiated) is not "
                "supported by spmdbatch; compute the inner gradient outside the outer grad")
        STATE.tape = self.tape

    def __exit__(self, *exc):
        STATE.tape = None


def _hides_arrays(leaf) -> bool:
    """True for a leaf that is an object with attributes (an instance of a class that is not a
    pytree): arrays it holds would get no gradient. Functions, classes, modules and other
    callables are data."""
    if type(leaf) in _DATA_LEAF_TYPES or isinstance(leaf, (np.ndarray, np.generic)):
        return False
    if callable(leaf) and (inspect.isroutine(leaf) or isinstance(leaf, (type, functools.partial, np.ufunc))):
        return False
    return hasattr(leaf, "__dict__") and not isinstance(leaf, types.ModuleType)


_DATA_LEAF_TYPES = frozenset([int, float, bool, complex, str, bytes, Tracer])


def _trace_leaves(tape, tree, fname="f", argnum=0):
    """Replace the floating leaves of `tree` by tracers; returns (traced tree, leaves, nodes).

    A leaf that is an object of a class that is not a pytree is refused (GradientError): its
    arrays would silently get no gradient."""
    leaves, treedef = pytree.flatten(tree)
    traced, nodes = [], []
    for leaf in leaves:
        if _hides_arrays(leaf):
            paths = pytree.leaf_paths(tree)
            where = paths[next(i for i, x in enumerate(leaves) if x is leaf)]
            cls = type(leaf).__qualname__
            filename, lineno = user_frame()
            raise GradientError(
                f"differentiating {fname} with respect to argument {argnum}: "
                f"{'the argument' if not where else 'its part ' + where} is a {cls} object, which "
                f"is not a pytree, so the arrays it holds cannot get a gradient", filename, lineno,
                f"Make {cls} a dataclass, a NamedTuple or a spmdbatch.nn.Module, or register it "
                f"with spmdbatch.runtime.pytree.register_node; or pass its arrays instead.")
        if type(leaf) is Tracer:
            leaf = leaf.value
        if is_floating(leaf):
            value = np.asarray(leaf, dtype=np.float64) if isinstance(leaf, float) else leaf
            node = tape.new_leaf()
            traced.append(Tracer(value, tape, node))
            nodes.append(node)
        else:
            traced.append(leaf)
            nodes.append(None)
    return treedef.unflatten(traced), leaves, nodes, treedef


def _gradient_tree(leaves, nodes, treedef, leaf_grads, sparse=False):
    """Assemble the gradient pytree, zeros where no gradient flowed (row-sparse gradients
    stay `SparseRows` when `sparse`)."""
    out = []
    for leaf, node in zip(leaves, nodes):
        g = leaf_grads.get(node) if node is not None else None
        if type(g) is SparseRows and sparse and not isinstance(leaf, float):
            out.append(g)
            continue
        g = densify(g)
        if isinstance(leaf, float):
            out.append(0.0 if g is None else float(g))
            continue
        shape = np.shape(leaf)
        xp = namespace(leaf)
        dtype = leaf.dtype if is_floating(leaf) else np.float64
        if g is None:
            out.append(xp.zeros(shape, dtype=dtype))
        else:
            g = xp.asarray(g)
            if g.shape != shape:
                g = xp.broadcast_to(g, shape)
            # asarray, not ascontiguousarray (which turns 0-d into 1-d); copies broadcast views
            g = xp.asarray(g, dtype=dtype, order="C")
            if isinstance(g, np.ndarray) and not g.flags.writeable:  # a size-1 broadcast view
                g = g.copy()
            out.append(g)
    return treedef.unflatten(out)


def _scalar_output(out, fname):
    if type(out) is Tracer:
        if out.value.size != 1:
            raise TypeError(f"grad of {fname} needs a scalar output, got shape {out.shape}; "
                            f"reduce it (e.g. .sum()) or use spmdbatch.vjp")
        return out
    if np.size(out) != 1:
        raise TypeError(f"grad of {fname} needs a scalar output, got shape {np.shape(out)}")
    return None  # the output does not depend on the arguments


def value_and_grad(f: Callable, argnums=0, has_aux: bool = False, sparse: bool = False) -> Callable:
    """A function returning ``(f(*args), gradient of f w.r.t. args[argnums])``.

    With `argnums` a tuple, the gradient is a tuple. With `has_aux`, `f` returns
    ``(value, aux)`` and the result is ``((value, aux), gradient)``. With `sparse`, the
    gradient of a leaf that is only read by row gathers (an embedding table) is a
    `SparseRows` (rows and values; ``.dense()`` gives the array), which `nn` optimisers
    apply to those rows only.
    """
    fname = getattr(f, "__name__", repr(f))

    @functools.wraps(f)
    def value_and_grad_f(*args, **kwargs):
        nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
        args = list(args)
        tape = Tape()
        with _Activate(tape):
            records = {}
            for n in nums:
                args[n], leaves, nodes, treedef = _trace_leaves(tape, args[n], fname, n)
                records[n] = (leaves, nodes, treedef)
            out = f(*args, **kwargs)
        aux = None
        if has_aux:
            out, aux = out
        traced_out = _scalar_output(out, fname)
        if traced_out is not None:
            seed = namespace(traced_out.value).ones_like(traced_out.value)
            leaf_grads = tape.backward({traced_out.node: seed})
            value = traced_out.value
        else:
            leaf_grads, value = {}, out
        del tape
        grads = tuple(_gradient_tree(*records[n], leaf_grads, sparse) for n in nums)
        grads = grads[0] if isinstance(argnums, int) else grads
        value = _strip(value)
        return ((value, _strip(aux)) if has_aux else value), grads

    return value_and_grad_f


def grad(f: Callable, argnums=0, has_aux: bool = False) -> Callable:
    """A function returning the gradient of scalar-valued `f` w.r.t. ``args[argnums]``."""
    vg = value_and_grad(f, argnums, has_aux)

    @functools.wraps(f)
    def grad_f(*args, **kwargs):
        (value, g) = vg(*args, **kwargs)
        return (g, value[1]) if has_aux else g

    return grad_f


def vjp(f: Callable, *args):
    """``(f(*args), vjp_fn)``: `vjp_fn(cotangent)` returns one gradient per argument.

    `f` may return any pytree of arrays; the cotangent has the same structure.
    """
    tape = Tape()
    with _Activate(tape):
        records = []
        traced_args = []
        for i, a in enumerate(args):
            traced, leaves, nodes, treedef = _trace_leaves(tape, a, getattr(f, "__name__", "f"), i)
            traced_args.append(traced)
            records.append((leaves, nodes, treedef))
        out = f(*traced_args)
    out_leaves, out_def = pytree.flatten(out)

    def vjp_fn(cotangent):
        cot_leaves, cot_def = pytree.flatten(cotangent)
        if cot_def != out_def:
            raise ValueError(f"cotangent structure {cot_def} does not match the output structure {out_def}")
        seeds = {}
        for o, c in zip(out_leaves, cot_leaves):
            if type(o) is Tracer and o.tape is tape:
                c = namespace(o.value).asarray(c, dtype=o.value.dtype)
                if c.shape != o.shape:
                    raise ValueError(f"cotangent of shape {c.shape} for an output of shape {o.shape}")
                seeds[o.node] = seeds[o.node] + c if o.node in seeds else c
        leaf_grads = tape.backward(seeds)
        return tuple(_gradient_tree(*rec, leaf_grads) for rec in records)

    return pytree.tree_map(_strip, out), vjp_fn


def _strip(value):
    return pytree.tree_map(lambda x: x.value if type(x) is Tracer else x, value)


def stop_gradient(x):
    """`x` with no gradient flowing back through it (works on pytrees and batched values)."""
    def strip(leaf):
        if type(leaf) is Tracer:
            return leaf.value
        hook = getattr(leaf, "_spmd_stop_gradient", None)
        return hook() if hook is not None else leaf
    return pytree.tree_map(strip, x)
