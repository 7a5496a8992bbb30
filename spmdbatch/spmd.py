"""`@spmd`: run a per-example function on a whole batch, and `show` its batch program.

``spmd(f, in_axes=...)(*args)`` equals ``stack([f(*example_args) for each example])``:

- `in_axes` says which arguments carry a batch axis: ``0`` (batched along the leading
  axis) or ``None`` (uniform: shared by every example, such as parameters), per argument
  and, as a pytree prefix, per leaf. Keyword arguments are batched.
- A batched argument is an array with a leading batch axis, a pytree whose leaves have one,
  or a Python list with one entry per example (stacked here; entries must agree in
  structure, rank and dtype).
- The result is the pytree of per-example results stacked along a new leading axis.

Autodiff sees through it: ``grad(lambda p, xs: spmd(f, in_axes=(None, 0))(p, xs).sum())``.
"""
from __future__ import annotations

import functools

import numpy as np

from .errors import BatchSizeError
from .frontend.decode import check_python_version
from .frontend.transform import program_of
from .masking.calls import run_batched
from .masking.frame import STATE
from .masking.lanes import UNIFORM_OBJECTS, forget_uniform_objects, weak_merge_dtype
from .runtime import primitives as P
from .runtime import pytree
from .runtime.backend import namespace
from .runtime.batched import Batched
from .runtime.mapped import LaneMapped
from .masking.lane_list import to_user
from .runtime.ragged import Ragged, from_examples, to_examples


def spmd(fn=None, *, in_axes=0, max_depth=None):
    """Batch a per-example function (decorator with or without arguments).

    `max_depth` limits the depth of recursive calls in each example (default:
    ``sys.getrecursionlimit()``, as the per-example loop's RecursionError): an example that
    goes deeper (a recursion that never ends, over a cyclic "tree") raises a `LaneError`
    naming it.
    """
    if fn is None:
        return lambda f: spmd(f, in_axes=in_axes, max_depth=max_depth)
    check_python_version(fn)
    return SpmdFunction(fn, in_axes, max_depth)


class SpmdFunction:
    """A per-example function together with how its arguments are batched."""

    def __init__(self, fn, in_axes, max_depth=None):
        self.fn = fn
        self.in_axes = in_axes
        self.max_depth = max_depth
        functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        specs = self.in_axes if isinstance(self.in_axes, (tuple, list)) else (self.in_axes,) * len(args)
        if len(specs) != len(args):
            raise ValueError(f"spmd({self.fn.__qualname__}): in_axes has {len(specs)} entries for "
                             f"{len(args)} positional arguments")
        sizes: list = []
        wrapped = [_wrap(a, s, f"argument {i}", sizes) for i, (a, s) in enumerate(zip(args, specs))]
        wrapped_kw = {k: _wrap(v, 0, f"argument {k!r}", sizes) for k, v in kwargs.items()}
        if not sizes:
            raise ValueError(f"spmd({self.fn.__qualname__}): no argument is batched "
                             f"(in_axes={self.in_axes!r}); mark at least one with 0")
        batch = sizes[0][1]
        for where, n in sizes[1:]:
            if n != batch:
                raise BatchSizeError(
                    f"spmd({self.fn.__qualname__}): batched arguments disagree on the batch size: "
                    f"{sizes[0][0]} has {batch} examples, {where} has {n}", hint=
                    "Every batched argument needs the same leading (batch) axis length.")
        saved = (STATE.partial, STATE.frame, STATE.lanes, STATE.max_depth)
        STATE.partial, STATE.frame, STATE.lanes = False, None, None
        if self.max_depth is not None:
            STATE.max_depth = self.max_depth
        forget_uniform_objects()
        UNIFORM_OBJECTS.active += 1
        try:
            out = run_batched(self.fn, (), wrapped, wrapped_kw)
        finally:
            STATE.partial, STATE.frame, STATE.lanes, STATE.max_depth = saved
            UNIFORM_OBJECTS.active -= 1
            forget_uniform_objects()
            if not UNIFORM_OBJECTS.active:
                UNIFORM_OBJECTS.cells.clear()
        return to_user(out, batch, _unwrap)


def _wrap(arg, spec, where, sizes):
    """Wrap the batched leaves of `arg` (per the in_axes prefix `spec`) as `Batched`."""
    if spec is None:
        return arg
    if spec == 0:
        if type(arg) is list:
            return _stack_examples(arg, where, sizes)
        leaves, treedef = pytree.flatten(arg)
        return treedef.unflatten([_wrap_leaf(leaf, f"{where}{path}", sizes)
                                  for leaf, path in zip(leaves, pytree.leaf_paths(arg))])
    if isinstance(spec, dict):
        if not isinstance(arg, dict) or set(arg) != set(spec):
            raise ValueError(f"in_axes for {where} is a dict with keys {sorted(spec)}, which does not "
                             f"match the argument ({type(arg).__name__})")
        return type(arg)({k: _wrap(arg[k], spec[k], f"{where}[{k!r}]", sizes) for k in arg})
    if isinstance(spec, (tuple, list)):
        if not isinstance(arg, (tuple, list)) or len(arg) != len(spec):
            raise ValueError(f"in_axes for {where} has {len(spec)} entries, which does not match the "
                             f"argument ({type(arg).__name__})")
        items = [_wrap(a, s, f"{where}[{i}]", sizes) for i, (a, s) in enumerate(zip(arg, spec))]
        return type(arg)(*items) if hasattr(type(arg), "_fields") else type(arg)(items)
    raise ValueError(f"in_axes entries must be 0 or None (or a dict/tuple/list of them), got {spec!r} "
                     f"for {where}")


def _wrap_leaf(leaf, where, sizes):
    shape = getattr(leaf, "shape", None)
    if shape is None or len(shape) == 0:
        raise BatchSizeError(f"{where} is marked batched (in_axes 0) but has no leading batch axis "
                             f"(got {type(leaf).__name__} {leaf!r:.40})", hint=
                             "Pass an array with one row per example, or mark it None (uniform).")
    sizes.append((where, shape[0]))
    return Batched(leaf)


_RECORD_LEAVES = frozenset((np.ndarray, float, int, bool))


def _stack_examples(examples, where, sizes):
    """A Python list of per-example values -> one batched value."""
    sizes.append((where, len(examples)))
    if not examples:
        raise BatchSizeError(f"{where} is an empty list: the batch size cannot be inferred from it",
                             hint="Pass arrays with a zero-length leading axis for an empty batch.")
    first = examples[0]
    treedef = pytree.flatten(first)[1]
    kind = type(first)
    if pytree.flattens_to_items(first) and all(type(v) in _RECORD_LEAVES for v in first) and \
            all(type(e) is kind and len(e) == len(first) for e in examples) and \
            all(type(v) in _RECORD_LEAVES for e in examples for v in e):
        columns = list(zip(*examples))     # (records of arrays and numbers, such as trees or
        #                                    molecules with a target: no tree walks)
    else:
        flat = [pytree.flatten(e) for e in examples]
        for i, (_, d) in enumerate(flat):
            if d != treedef:
                raise BatchSizeError(f"{where}: example {i} has structure {d}, example 0 has {treedef}")
        columns = [[f[0][j] for f in flat] for j in range(len(flat[0][0]))]
    paths = pytree.leaf_paths(first)
    out = []
    lengths: dict = {}     # fields of equal lengths share one array (and later one lane map)
    for values, path in zip(columns, paths):
        stacked = _stack_leaf(values, f"{where}{path}")
        if type(stacked) is Ragged:
            key = stacked.lengths.tobytes()
            stacked = Ragged(stacked.data, lengths.setdefault(key, stacked.lengths))
        if type(stacked) is not Ragged:     # Python numbers stay Python numbers (weak) per example
            stacked = Batched(stacked, weak=all(type(v) in (int, float, bool, complex) for v in values))
        out.append(stacked)
    return treedef.unflatten(out)


def _stack_leaf(values, where):
    if all(type(v) is np.ndarray for v in values):
        arrays = values
    elif any(hasattr(v, "tape") for v in values):   # traced values
        shapes = {tuple(np.shape(v)) for v in values}
        if len(shapes) == 1:
            return np.stack(values)
        return _stack_traced_ragged(values, where)
    else:
        arrays = [np.asarray(v) for v in values]
    ranks = {a.ndim for a in arrays}
    kinds = {a.dtype.kind for a in arrays}
    if len(kinds) == 1 and arrays is not values:
        weak = weak_merge_dtype(values)   # Python numbers among arrays: as numpy promotes them
        if weak is not None:
            arrays = [np.asarray(v, dtype=weak) if type(v) in (int, float, bool, complex) else a
                      for v, a in zip(values, arrays)]
    if len(ranks) > 1:
        raise BatchSizeError(f"{where}: per-example arrays differ in rank ({sorted(ranks)})",
                             hint="Every example's value must have the same number of axes.")
    if len(kinds) > 1:
        raise BatchSizeError(f"{where}: per-example arrays differ in dtype kind "
                             f"({sorted(str(a.dtype) for a in arrays[:3])}...)",
                             hint="Give every example the same dtype.")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        if ranks == {0}:
            raise BatchSizeError(f"{where}: per-example values differ in shape")
        return from_examples(arrays)
    return np.stack(arrays)


def _stack_traced_ragged(values, where):
    """Traced per-example arrays of different lengths -> a Ragged (padded, differentiable)."""
    ranks = {np.ndim(v) for v in values}
    rest = {tuple(np.shape(v))[1:] for v in values}
    if len(ranks) > 1 or 0 in ranks or len(rest) > 1:
        raise BatchSizeError(f"{where}: per-example arrays must have the same rank and differ only "
                             f"in their first axis")
    lengths = np.array([np.shape(v)[0] for v in values], dtype=np.intp)
    width = int(lengths.max())
    padded = []
    for v, n in zip(values, lengths):
        if n < width:
            zeros = np.zeros((width - n,) + tuple(np.shape(v))[1:], dtype=v.dtype)
            v = np.concatenate([v, zeros])
        padded.append(v)
    return Ragged(np.stack(padded), lengths)


def _unwrap(value, batch):
    """Per-example result -> stacked result with a leading batch axis."""
    if type(value) is LaneMapped:
        value = value.materialize()
    if type(value) is Batched:
        return value.data
    if type(value) is Ragged:
        return to_examples(value)  # examples of different lengths cannot be stacked
    if hasattr(value, "_spmd_examples"):
        return value._spmd_examples()
    if hasattr(value, "_spmd_take_lanes"):
        raise TypeError("a batched iterator or range cannot be returned from an @spmd function")
    if isinstance(value, (int, float, bool, complex, np.generic)) or value is None:
        if value is None:
            return None
        value = np.asarray(value)
    if hasattr(value, "tape"):  # uniform traced result: broadcast with autodiff
        return P.broadcast_to(value, shape=(batch,) + tuple(value.shape))
    xp = namespace(value)
    return xp.array(xp.broadcast_to(value, (batch,) + tuple(np.shape(value))))


def show(fn) -> str:
    """A readable text of the batch program of `fn`: blocks, schedule, varying values, code."""
    from .frontend.ir import format_ir
    from .frontend.uniformity import analyze
    target = fn.fn if isinstance(fn, SpmdFunction) else fn
    prog = program_of(target)
    fn_ir, em = prog.fn_ir, prog.emitter
    specs = fn.in_axes if isinstance(fn, SpmdFunction) else 0
    nargs = fn_ir.argcount
    specs = specs if isinstance(specs, (tuple, list)) else (specs,) * nargs
    varying_args = {a for a, s in zip(fn_ir.argnames, specs) if s is not None}
    info = analyze(fn_ir, varying_args)
    lines = [f"batch program of {fn_ir.qualname} ({fn_ir.filename}:{fn_ir.firstlineno})",
             f"varying arguments: {', '.join(sorted(varying_args)) or '(none)'}",
             f"varying values: {', '.join(sorted(v for v in info.varying_vars if not v.startswith('$'))) or '(none)'}",
             "", "blocks in schedule order (lanes split at varying branches, merge at joins):"]
    for pos, bid in enumerate(em.sched.order):
        blk = fn_ir.blocks[bid]
        notes = []
        if bid in info.varying_branches:
            notes.append("VARYING branch: split lanes (masks pushed)")
        elif type(blk.term).__name__ in ("Branch", "ForIter"):
            notes.append("uniform branch: native")
        if em.sched.loop_end[pos] >= 0:
            notes.append(f"loop header, loop ends at #{em.sched.loop_end[pos]}")
        preds = em.preds_of.get(bid, [])
        if len(preds) > 1:
            notes.append("join: lane groups merge here")
        lines.append(f"  #{pos} (block {bid}) env={em.env[bid]} " + ("; ".join(notes)))
    source = prog.source.replace(f"def {em.names.helper('fn')}(", f"def {fn_ir.name}(", 1)
    lines += ["", "IR:", format_ir(fn_ir), "", "generated code:", source]
    return "\n".join(lines)
