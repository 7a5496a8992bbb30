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

from ..errors import GradientError, UnsupportedConstruct
from ..runtime import levels
from ..runtime import primitives as P
from ..runtime import pytree
from ..runtime.backend import is_float_dtype, is_floating, namespace
from ..runtime.batched import Batched, Ragged
from ..runtime.blame import user_frame
from ..runtime.mapped import LaneMapped
from .sparse import SparseRows, densify
from .tape import Tape
from .tracer import STATE, Tracer, live


class _Activate:
    """Make `tape` the innermost transform level for the duration of a with-block.

    A tape started while another records is one level deeper (`grad` of `grad`): its tracers
    hold the outer tape's tracers, and its backward pass is recorded by the outer tape."""

    def __init__(self, tape):
        self.tape = tape
        self.saved = None

    def __enter__(self):
        nested = any(type(level) is Tape for level in levels.LEVELS.stack)
        self.saved = STATE.fast
        STATE.fast = None if nested else self.tape
        levels.push(self.tape)

    def __exit__(self, *exc):
        levels.pop(self.tape)
        STATE.fast = self.saved


def _hides_arrays(leaf) -> bool:
    """True for a leaf that is an object with attributes (an instance of a class that is not a
    pytree): arrays it holds would get no gradient. Functions, classes, modules and other
    callables are data."""
    if type(leaf) in _DATA_LEAF_TYPES or isinstance(leaf, (np.ndarray, np.generic)):
        return False
    if callable(leaf) and (inspect.isroutine(leaf) or isinstance(leaf, (type, functools.partial, np.ufunc))):
        return False
    return hasattr(leaf, "__dict__") and not isinstance(leaf, types.ModuleType)


_DATA_LEAF_TYPES = frozenset([int, float, bool, complex, str, bytes, Tracer, Batched, Ragged, LaneMapped])


def _constant(leaf):
    """`leaf` without the tracers of finished tapes (constants)."""
    while type(leaf) is Tracer and not live(leaf.tape):
        leaf = leaf.value
    return leaf


def _varying(leaf) -> bool:
    return isinstance(leaf, Batched) or type(leaf) is LaneMapped


def _lane_count(args, kwargs):
    """Inside a running batch program (`grad` inside `spmd`), the lanes of the running group;
    else None. The arguments' per-example values tell it; without any (uniform arguments,
    per-example values in `f`'s closure), the batch level does. Outside every batch level
    there are no per-example values (they live in the running batch program, in its thread),
    so the arguments are not walked then."""
    level = levels.innermost(levels.BatchLevel)
    if level is None:
        return None
    for leaf in pytree.flatten((args, kwargs))[0]:
        if isinstance(leaf, Batched):
            return leaf.data.shape[0]
        if type(leaf) is LaneMapped:
            return len(leaf.index)
    return level.lanes()


def _trace_leaves(tape, tree, fname="f", argnum=0, lanes=None):
    """Replace the floating leaves of `tree` by tracers of `tape`; returns (traced tree,
    leaves, records, treedef), one record per leaf: None for data, else ``(kind, node,
    info)``.

    With `lanes` (inside a batch program), every differentiated leaf gets one tape leaf per
    lane: a per-example value traces its data (shape ``(lanes,) + shape``), a uniform one is
    broadcast to the lanes first. Lanes never mix, so the gradient of the sum of the lanes'
    outputs with respect to those data is the per-example gradient, lane by lane.

    A leaf that is an object of a class that is not a pytree is refused (GradientError): its
    arrays would silently get no gradient."""
    leaves, treedef = pytree.flatten(tree)
    traced, records = [], []
    for i, leaf in enumerate(leaves):
        if _hides_arrays(leaf):
            paths = pytree.leaf_paths(tree)
            where = paths[i]
            cls = type(leaf).__qualname__
            filename, lineno = user_frame()
            raise GradientError(
                f"differentiating {fname} with respect to argument {argnum}: "
                f"{'the argument' if not where else 'its part ' + where} is a {cls} object, which "
                f"is not a pytree, so the arrays it holds cannot get a gradient", filename, lineno,
                f"Make {cls} a dataclass, a NamedTuple or a spmdbatch.nn.Module, or register it "
                f"with spmdbatch.runtime.pytree.register_node; or pass its arrays instead.")
        leaf = _constant(leaf)
        if type(leaf) is LaneMapped:
            leaf = leaf.materialize()
        if isinstance(leaf, Batched):
            kind = type(leaf)
            if kind is not Batched and kind is not Ragged:
                filename, lineno = user_frame()
                raise UnsupportedConstruct(
                    f"differentiating {fname} inside spmd with respect to a {kind.__name__} "
                    f"(argument {argnum})", filename, lineno,
                    "Differentiate with respect to arrays of per-example fixed shape or ragged "
                    "arrays with the ragged axis first.")
            data = _constant(leaf.data)
            if not is_float_dtype(data.dtype):
                traced.append(leaf)
                records.append(None)
                continue
            node = tape.new_leaf()
            t = Tracer(data, tape, node)
            traced.append(Ragged(t, leaf.lengths) if kind is Ragged else Batched(t, leaf.weak))
            records.append(("ragged" if kind is Ragged else "lanes", node, leaf))
        elif is_floating(leaf):
            value = np.asarray(leaf, dtype=np.float64) if isinstance(leaf, float) else leaf
            if lanes is None:
                node = tape.new_leaf()
                traced.append(Tracer(value, tape, node))
                records.append(("plain", node, None))
            else:
                data = P.broadcast_to(value, shape=(lanes,) + tuple(np.shape(value)))
                node = tape.new_leaf()
                traced.append(Batched(Tracer(data, tape, node), isinstance(leaf, float)))
                records.append(("lanes", node, None))
        else:
            traced.append(leaf)
            records.append(None)
    return treedef.unflatten(traced), leaves, records, treedef


def _fit(g, shape, dtype):
    """Cotangent `g` as an array of `shape` and `dtype` (a traced cotangent, in `grad` of
    `grad`, stays traced: the outer tape differentiates it)."""
    if isinstance(g, np.ndarray) or not hasattr(g, "shape"):
        xp = namespace(g)
        g = xp.asarray(g)
        if g.shape != shape:
            g = xp.broadcast_to(g, shape)
        # asarray, not ascontiguousarray (which turns 0-d into 1-d); copies broadcast views
        g = xp.asarray(g, dtype=dtype, order="C")
        if isinstance(g, np.ndarray) and not g.flags.writeable:  # a size-1 broadcast view
            g = g.copy()
        return g
    if tuple(g.shape) != shape:
        g = P.broadcast_to(g, shape=shape)
    if g.dtype != dtype:
        g = P.astype(g, dtype=dtype)
    return g


def _gradient_tree(leaves, records, treedef, leaf_grads, sparse=False, lanes=None):
    """Assemble the gradient pytree, zeros where no gradient flowed (row-sparse gradients
    stay `SparseRows` when `sparse`); per-lane leaves give per-example gradients."""
    out = []
    for leaf, record in zip(leaves, records):
        kind = None if record is None else record[0]
        g = None if record is None else leaf_grads.get(record[1])
        if kind == "plain" and type(g) is SparseRows and sparse and not isinstance(leaf, float):
            out.append(g)
            continue
        g = densify(g)
        if kind == "lanes" or kind == "ragged":
            source = record[2]
            if source is None:              # a uniform leaf, traced per lane
                base = np.asarray(leaf) if isinstance(leaf, float) else _constant(leaf)
                shape = (lanes,) + tuple(np.shape(base))
                dtype = base.dtype if is_floating(base) else np.float64
            else:
                shape, dtype = tuple(source.data.shape), source.data.dtype
            data = namespace(g).zeros(shape, dtype=dtype) if g is None else _fit(g, shape, dtype)
            if kind == "ragged":
                out.append(Ragged(data, source.lengths))
            else:
                out.append(Batched(data))
            continue
        if record is not None and isinstance(leaf, float):
            if g is None:
                out.append(0.0)
            else:
                out.append(float(g) if isinstance(g, (np.ndarray, np.generic, float)) else g)
            continue
        if isinstance(leaf, Batched):   # per-example data that is not differentiated
            out.append(Batched(namespace(leaf.data).zeros(leaf.data.shape, dtype=np.float64)))
            continue
        base = _constant(leaf)
        shape = tuple(base.shape) if hasattr(base, "tape") else tuple(np.shape(base))
        dtype = base.dtype if is_floating(base) else np.float64
        if g is None:
            out.append(namespace(base).zeros(shape, dtype=dtype))
        else:
            out.append(_fit(g, shape, dtype))
    return treedef.unflatten(out)


def _scalar_output(out, fname, tape):
    """The traced output of `tape` to seed (None when the output does not depend on the
    arguments); refuses an output that is not one number (per example, inside spmd)."""
    if type(out) is Tracer and out.tape is tape:
        if out.value.size != 1:
            raise TypeError(f"grad of {fname} needs a scalar output, got shape {out.shape}; "
                            f"reduce it (e.g. .sum()) or use spmdbatch.vjp")
        return out
    if isinstance(out, Batched):
        if int(np.prod(out.data.shape[1:])) != 1:
            raise TypeError(f"grad of {fname} needs a scalar output per example, got shape "
                            f"{tuple(out.data.shape[1:])}; reduce it (e.g. .sum()) or use spmdbatch.vjp")
        data = out.data
        return data if type(data) is Tracer and data.tape is tape else None
    size = out.size if hasattr(out, "tape") else np.size(out)
    if size != 1:
        raise TypeError(f"grad of {fname} needs a scalar output, got shape {np.shape(out)}")
    return None  # the output does not depend on the arguments


def _ones_like(t):
    """Ones of the shape and dtype of tracer `t`'s value (a raw array)."""
    raw = t.value
    while hasattr(raw, "tape"):
        raw = raw.value
    return namespace(raw).ones(t.shape, dtype=t.dtype)


def _call(f, args, kwargs, lanes):
    """``f(*args, **kwargs)``; inside a batch program (`lanes`), as a call of that program,
    so that `f` runs as a batch program itself (with its own control flow per example)."""
    level = None if lanes is None else levels.innermost(levels.BatchLevel)
    if level is None:
        return f(*args, **kwargs)
    return level.call(f, *args, **kwargs)


def value_and_grad(f: Callable, argnums=0, has_aux: bool = False, sparse: bool = False) -> Callable:
    """A function returning ``(f(*args), gradient of f w.r.t. args[argnums])``.

    With `argnums` a tuple, the gradient is a tuple. With `has_aux`, `f` returns
    ``(value, aux)`` and the result is ``((value, aux), gradient)``. With `sparse`, the
    gradient of a leaf that is only read by row gathers (an embedding table) is a
    `SparseRows` (rows and values; ``.dense()`` gives the array), which `nn` optimisers
    apply to those rows only.

    It composes with the other transforms: inside `spmd` it gives per-example values and
    gradients (``spmd(grad(f), in_axes=(None, 0))``), inside `grad` a differentiable gradient
    (``grad(grad(f))``).
    """
    fname = getattr(f, "__name__", repr(f))

    @functools.wraps(f)
    def value_and_grad_f(*args, **kwargs):
        nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
        args = list(args)
        lanes = _lane_count(args, kwargs)
        tape = Tape()
        with _Activate(tape):
            records = {}
            for n in nums:
                args[n], leaves, recs, treedef = _trace_leaves(tape, args[n], fname, n, lanes)
                records[n] = (leaves, recs, treedef)
            out = _call(f, args, kwargs, lanes)
        aux = None
        if has_aux:
            out, aux = out
        traced_out = _scalar_output(out, fname, tape)
        if traced_out is not None:
            leaf_grads = tape.backward({traced_out.node: _ones_like(traced_out)})
        else:
            leaf_grads = {}
        del tape, traced_out
        grads = tuple(_gradient_tree(*records[n], leaf_grads, sparse, lanes) for n in nums)
        grads = grads[0] if isinstance(argnums, int) else grads
        value = _strip(out)
        return ((value, _strip(aux)) if has_aux else value), grads

    value_and_grad_f._spmd_native = True     # library code: never rewritten by spmd
    return value_and_grad_f


def grad(f: Callable, argnums=0, has_aux: bool = False) -> Callable:
    """A function returning the gradient of scalar-valued `f` w.r.t. ``args[argnums]``."""
    vg = value_and_grad(f, argnums, has_aux)

    @functools.wraps(f)
    def grad_f(*args, **kwargs):
        (value, g) = vg(*args, **kwargs)
        return (g, value[1]) if has_aux else g

    grad_f._spmd_native = True
    return grad_f


def vjp(f: Callable, *args):
    """``(f(*args), vjp_fn)``: `vjp_fn(cotangent)` returns one gradient per argument.

    `f` may return any pytree of arrays; the cotangent has the same structure. Inside `spmd`
    the cotangent is per example (or uniform); inside `grad`, `vjp_fn` is differentiable.
    """
    lanes = _lane_count(args, {})
    fname = getattr(f, "__name__", "f")
    tape = Tape()
    with _Activate(tape):
        records = []
        traced_args = []
        for i, a in enumerate(args):
            traced, leaves, recs, treedef = _trace_leaves(tape, a, fname, i, lanes)
            traced_args.append(traced)
            records.append((leaves, recs, treedef))
        out = _call(f, traced_args, {}, lanes)
    out_leaves, out_def = pytree.flatten(out)

    def vjp_fn(cotangent):
        cot_leaves, cot_def = pytree.flatten(cotangent)
        if cot_def != out_def:
            raise ValueError(f"cotangent structure {cot_def} does not match the output structure {out_def}")
        seeds = {}
        for o, c in zip(out_leaves, cot_leaves):
            if isinstance(o, Batched):
                shape = tuple(np.shape(o.data))
                o = o.data
                if isinstance(c, Batched):
                    c = c.data
                elif c is not None:
                    c = P.broadcast_to(c, shape=shape) if hasattr(c, "tape") else \
                        np.broadcast_to(np.asarray(c, dtype=o.dtype), shape)
            if type(o) is Tracer and o.tape is tape:
                if not hasattr(c, "tape"):
                    c = namespace(c).asarray(c, dtype=o.dtype)
                if tuple(c.shape) != tuple(o.shape):
                    raise ValueError(f"cotangent of shape {c.shape} for an output of shape {o.shape}")
                seeds[o.node] = seeds[o.node] + c if o.node in seeds else c
        leaf_grads = tape.backward(seeds)
        return tuple(_gradient_tree(*rec, leaf_grads, False, lanes) for rec in records)

    vjp_fn._spmd_native = True
    return pytree.tree_map(_strip, out), vjp_fn


def _strip_leaf(x):
    """A value without the tracers of tapes that are not recording (the tape just run)."""
    if type(x) is Tracer:
        return _constant(x)
    if type(x) is Batched:
        data = _constant(x.data)
        return x if data is x.data else Batched(data, x.weak)
    if type(x) is Ragged:
        data = _constant(x.data)
        return x if data is x.data else Ragged(data, x.lengths)
    return x


def _strip(value):
    return pytree.tree_map(_strip_leaf, value)


def stop_gradient(x):
    """`x` with no gradient flowing back through it (works on pytrees and batched values)."""
    def strip(leaf):
        while type(leaf) is Tracer:
            leaf = leaf.value
        hook = getattr(leaf, "_spmd_stop_gradient", None)
        return hook() if hook is not None else leaf
    return pytree.tree_map(strip, x)
