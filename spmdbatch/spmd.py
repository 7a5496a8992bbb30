"""`@spmd`: run a per-example function on a whole batch, and `show` its batch program.

``spmd(f, in_axes=..., out_axes=...)(*args)`` equals
``stack([f(*example_args) for each example], axis=out_axes)``, as `jax.vmap`:

- `in_axes` says where arguments carry their batch axis: an int (any axis of an array,
  negative counted from the end, as numpy does) or ``None`` (uniform: shared by every
  example, such as parameters); one for all arguments, or a tuple/list with one entry per
  positional argument, each a pytree prefix of its argument (tuples, lists, dicts matching
  its structure) with an int or None per leaf. Keyword arguments are batched along axis 0.
- A batched argument is an array, a pytree whose leaves are arrays, or a Python list with
  one entry per example (stacked here along axis 0, which is then its only batch axis;
  entries must agree in structure, rank and dtype).
- `out_axes` (int, None, or a pytree prefix of the result) says where the stacked
  results get their batch axis; None marks a result that is the same in every example
  (returned once, unstacked).
- Structures that do not match, axes out of range, and a non-zero axis for values that are
  not arrays (lists of per-example values, results of per-example length) raise `AxesError`.

Autodiff sees through it: ``grad(lambda p, xs: spmd(f, in_axes=(None, 0))(p, xs).sum())``.
"""
from __future__ import annotations

import functools
import types

import numpy as np

from .ad.tracer import is_traced
from .errors import AxesError, BatchSizeError, UnsupportedConstruct
from .frontend.decode import check_python_version
from .frontend.show import describe
from .execution.calls import call, is_user_function, run_batched
from .execution.state import STATE
from .execution.lanes import UNIFORM_OBJECTS, forget_uniform_objects, is_varying, weak_merge_dtype
from .runtime import primitives as P
from .runtime import levels
from .runtime import pytree
from .runtime.backend import namespace
from .runtime import views
from .runtime.batched import Batched, Ragged
from .runtime.blame import user_frame
from .runtime.mapped import LaneMapped
from .execution.lane_list import LaneDict, RaggedList, to_user
from .runtime.ragged import from_examples, to_examples


def spmd(fn=None, *, in_axes=0, out_axes=0, max_depth=None):
    """Batch a per-example function (decorator with or without arguments); `in_axes` and
    `out_axes` as in the module docstring.

    `max_depth` limits the depth of recursive calls in each example (default:
    ``sys.getrecursionlimit()``, as the per-example loop's RecursionError): an example that
    goes deeper (a recursion that never ends, over a cyclic "tree") raises a `LaneError`
    naming it.
    """
    if fn is None:
        return lambda f: spmd(f, in_axes=in_axes, out_axes=out_axes, max_depth=max_depth)
    check_python_version(fn)
    _check_axes_spec(in_axes, "in_axes")
    _check_axes_spec(out_axes, "out_axes")
    return SpmdFunction(fn, in_axes, max_depth, out_axes)


class SpmdFunction:
    """A per-example function together with how its arguments and results are batched."""

    def __init__(self, fn, in_axes, max_depth=None, out_axes=0):
        functools.update_wrapper(self, fn)   # (first: it copies fn's __dict__, an inner spmd's too)
        self.fn = fn
        self.in_axes = in_axes
        self.out_axes = out_axes
        self.max_depth = max_depth

    def __call__(self, *args, **kwargs):
        specs = self.in_axes if isinstance(self.in_axes, (tuple, list)) else (self.in_axes,) * len(args)
        if len(specs) != len(args):
            _axes_error(f"spmd({self.fn.__qualname__}): in_axes has {len(specs)} entries for "
                        f"{len(args)} positional arguments",
                        "Give one in_axes entry (an int, None or a pytree of them) per positional "
                        "argument, or one int/None for all.")
        if levels.innermost(levels.BatchLevel) is not None and \
                (_holds_varying((args, kwargs)) or is_varying(self.fn)):
            return self._call_nested(args, kwargs, specs)   # inside a running batch program
        sizes: list = []
        wrapped = [_wrap(a, s, f"argument {i}", sizes) for i, (a, s) in enumerate(zip(args, specs))]
        wrapped_kw = {k: _wrap(v, 0, f"argument {k!r}", sizes) for k, v in kwargs.items()}
        if not sizes:
            _axes_error(f"spmd({self.fn.__qualname__}): no argument is batched "
                        f"(in_axes={self.in_axes!r})", "Mark at least one argument with an axis (0).")
        batch = sizes[0][1]
        for where, n in sizes[1:]:
            if n != batch:
                raise BatchSizeError(
                    f"spmd({self.fn.__qualname__}): batched arguments disagree on the batch size: "
                    f"{sizes[0][0]} has {batch} examples, {where} has {n}", *user_frame(), hint=
                    "Every batched argument needs the same leading (batch) axis length.")
        return _place_outputs(self._run(self.fn, wrapped, wrapped_kw, batch), self.out_axes, batch,
                              "result")

    def _run(self, fn, wrapped, wrapped_kw, batch):
        """Run the batch program on per-example values `wrapped` as a new batch level."""
        saved = (STATE.partial, STATE.frame, STATE.lanes, STATE.max_depth, STATE.calls)
        STATE.partial, STATE.frame, STATE.lanes, STATE.calls = False, None, None, 0
        if self.max_depth is not None:
            STATE.max_depth = self.max_depth
        forget_uniform_objects()
        UNIFORM_OBJECTS.active += 1
        level = levels.push(levels.BatchLevel(getattr(fn, "__qualname__", "f"), call,
                                              lambda: _running_lanes(batch)))
        try:
            if getattr(fn, "_spmd_native", False):   # @native (a custom_vjp function): as it
                return fn(*wrapped, **wrapped_kw)      # is, on the batched values
            if is_user_function(fn) and not isinstance(fn, SpmdFunction):
                out = run_batched(fn, (), wrapped, wrapped_kw)
                if views.RECORDS.stale:
                    views.check_results((out,))   # (the loop's result would show an update)
                return out
            # library code (grad(f), another spmd): runs natively in the batch program
            return call(fn, *wrapped, **wrapped_kw)
        finally:
            levels.pop(level)
            STATE.partial, STATE.frame, STATE.lanes, STATE.max_depth, STATE.calls = saved
            UNIFORM_OBJECTS.active -= 1
            forget_uniform_objects()
            if not UNIFORM_OBJECTS.active:
                UNIFORM_OBJECTS.cells.clear()
                UNIFORM_OBJECTS.made.clear()
                views.forget()

    def _call_nested(self, args, kwargs, specs):
        """`spmd` called inside a batch program with per-example arguments or per-example
        values in its function's closure (``spmd(spmd(f))``): every (outer example, inner
        example) pair is one lane of a batch program of n * m lanes (lanes never mix, so the
        flattened batch computes what the nested loops do); an outer example's values are
        repeated for each of its inner examples, and the results are folded back to n outer
        examples of m inner results each."""
        name = getattr(self.fn, "__qualname__", "f")
        inner = []
        if self.out_axes != 0 or not _zero_or_none((specs, self.in_axes)):
            _axes_error(f"spmd({name}) inside a batch program with in_axes {self.in_axes!r} and "
                        f"out_axes {self.out_axes!r}: nested spmd maps axis 0 only",
                        "Move the mapped axis first (numpy.moveaxis) inside the outer function.")

        def scan(leaf, spec, where):
            if spec != 0:
                return leaf
            if type(leaf) is LaneMapped:
                leaf = leaf.materialize()
            if isinstance(leaf, Batched):
                if type(leaf) is not Batched:
                    filename, lineno = user_frame()
                    raise UnsupportedConstruct(
                        f"spmd({name}) inside a batch program, batched over a per-example "
                        f"{type(leaf).__name__} ({where}): nested spmd maps arrays of the same "
                        f"length in every example", filename, lineno,
                        "Pad the per-example sequences to one length (and mask), or loop over "
                        "them inside the outer function.")
                if leaf.data.ndim < 2:
                    raise BatchSizeError(f"spmd({name}): {where} is marked batched (in_axes 0) "
                                         f"but each example's value has no leading axis")
                inner.append((where, leaf.data.shape[1]))
            elif is_varying(leaf):
                filename, lineno = user_frame()
                raise UnsupportedConstruct(
                    f"spmd({name}) inside a batch program, batched over a per-example "
                    f"{type(leaf).__name__} ({where})", filename, lineno,
                    "Batch nested spmd over arrays (stack per-example lists first).")
            else:
                shape = tuple(np.shape(leaf))
                if not shape:
                    raise BatchSizeError(f"spmd({name}): {where} is marked batched (in_axes 0) but "
                                         f"has no leading batch axis")
                inner.append((where, shape[0]))
            return leaf

        args = [_map_spec(a, s, f"argument {i}", scan) for i, (a, s) in enumerate(zip(args, specs))]
        kwargs = {k: _map_spec(v, 0, f"argument {k!r}", scan) for k, v in kwargs.items()}
        if not inner:
            raise ValueError(f"spmd({name}): no argument is batched (in_axes={self.in_axes!r}); "
                             f"mark at least one with 0")
        n, m = levels.innermost(levels.BatchLevel).lanes(), inner[0][1]
        for where, size in inner[1:]:
            if size != m:
                raise BatchSizeError(
                    f"spmd({name}): batched arguments disagree on the batch size: "
                    f"{inner[0][0]} has {m} examples, {where} has {size}", hint=
                    "Every batched argument needs the same leading (batch) axis length.")
        def flatten(leaf, spec, where):
            if spec != 0:       # the outer example's value, for each of its inner examples
                return _repeat_lanes(leaf, n, m, {}, name) if is_varying(leaf) else leaf
            if type(leaf) is LaneMapped:
                leaf = leaf.materialize()
            if type(leaf) is Batched:
                data = leaf.data
                return Batched(P.reshape(data, shape=(n * m,) + tuple(data.shape[2:])), leaf.weak)
            if type(leaf) is list:
                leaf = np.stack(leaf)
            rest = tuple(np.shape(leaf))[1:]
            data = P.broadcast_to(leaf, shape=(n, m) + rest)
            return Batched(P.reshape(data, shape=(n * m,) + rest))

        flat = [_map_spec(a, s, f"argument {i}", flatten) for i, (a, s) in enumerate(zip(args, specs))]
        flat_kw = {k: _map_spec(v, 0, f"argument {k!r}", flatten) for k, v in kwargs.items()}
        fn = _repeat_lanes(self.fn, n, m, {}, name) if is_varying(self.fn) else self.fn  # (closure)
        out = self._run(fn, flat, flat_kw, n * m)

        def fold(leaf):
            if type(leaf) is LaneMapped:
                leaf = leaf.materialize()
            if type(leaf) is Batched:
                data = leaf.data
                return Batched(P.reshape(data, shape=(n, m) + tuple(data.shape[1:])))
            if is_varying(leaf):
                filename, lineno = user_frame()
                raise UnsupportedConstruct(
                    f"spmd({name}) inside a batch program returned a per-example "
                    f"{type(leaf).__name__}", filename, lineno,
                    "Nested spmd returns arrays of fixed shape per example (and tuples and "
                    "dicts of them).")
            return _unwrap(leaf, m)

        return _map_result(out, fold)


def _running_lanes(batch):
    """The lane count of the group of lanes the running batch program computes on (`batch`,
    the whole batch, while no scheduler frame runs: straight-line code)."""
    frame = STATE.frame
    if frame is None:
        return batch
    return frame.n if STATE.lanes is None else len(STATE.lanes)


def _repeat_lanes(value, n, m, memo, name):
    """`value` of n lanes as n * m lanes, each lane repeated m times (differentiably: a
    gradient sums over the repeats); closures and containers are copied with their
    per-example contents repeated."""
    kind = type(value)
    if kind is Batched:
        data = value.data
        rest = tuple(data.shape[1:])
        data = P.broadcast_to(P.reshape(data, shape=(n, 1) + rest), shape=(n, m) + rest)
        return Batched(P.reshape(data, shape=(n * m,) + rest), value.weak)
    if kind is LaneMapped:
        return LaneMapped(value.base, np.repeat(value.index, m), value.lengths)
    if not is_varying(value):
        return value
    if kind is Ragged:
        data = value.data
        rest = tuple(data.shape[1:])
        data = P.broadcast_to(P.reshape(data, shape=(n, 1) + rest), shape=(n, m) + rest)
        return Ragged(P.reshape(data, shape=(n * m,) + rest), np.repeat(value.lengths, m))
    if kind is tuple or kind is list:
        return kind(_repeat_lanes(v, n, m, memo, name) for v in value)
    if kind is dict:
        return {k: _repeat_lanes(v, n, m, memo, name) for k, v in value.items()}
    if kind is types.CellType:
        if id(value) not in memo:
            memo[id(value)] = types.CellType(_repeat_lanes(value.cell_contents, n, m, memo, name))
        return memo[id(value)]
    if kind is types.FunctionType:
        if id(value) not in memo:
            cells = tuple(_repeat_lanes(c, n, m, memo, name) for c in value.__closure__ or ())
            new = types.FunctionType(value.__code__, value.__globals__, value.__name__,
                                     value.__defaults__, cells or None)
            new.__kwdefaults__ = value.__kwdefaults__
            new.__qualname__ = value.__qualname__
            new.__dict__.update(value.__dict__)
            memo[id(value)] = new
        return memo[id(value)]
    if kind is types.MethodType:
        return types.MethodType(value.__func__, _repeat_lanes(value.__self__, n, m, memo, name))
    filename, lineno = user_frame()
    raise UnsupportedConstruct(
        f"spmd({name}) inside a batch program reads a per-example {kind.__name__} of the "
        f"enclosing batch program (an argument with in_axes None, or in its closure)",
        filename, lineno, "Pass per-example arrays (or tuples and dicts of them) instead.")


def _map_result(value, fn):
    """`fn` of each leaf of a batch program's result (tuples, lists and dicts walked)."""
    if isinstance(value, (tuple, list)) and not hasattr(value, "_spmd_take_lanes") \
            and type(value) in (tuple, list):
        return type(value)(_map_result(v, fn) for v in value)
    if type(value) is dict:
        return {k: _map_result(v, fn) for k, v in value.items()}
    return fn(value)


def _zero_or_none(spec) -> bool:
    """True when every leaf of an axes spec is 0 or None."""
    if isinstance(spec, dict):
        return all(_zero_or_none(v) for v in spec.values())
    if isinstance(spec, (tuple, list)):
        return all(_zero_or_none(v) for v in spec)
    return spec is None or spec == 0


def _holds_varying(tree) -> bool:
    """True when `tree` holds a per-example value of a running batch program."""
    for leaf in pytree.flatten(tree)[0]:
        if isinstance(leaf, Batched) or type(leaf) is LaneMapped or hasattr(leaf, "_spmd_take_lanes"):
            return True
    return False


def _map_spec(arg, spec, where, on_leaf):
    """Apply ``on_leaf(leaf, leaf_spec, where)`` to the leaves of `arg`, `spec` being an
    in_axes prefix of it (0 or None per leaf)."""
    if spec is None or spec == 0:
        if spec == 0 and type(arg) is list and not _holds_varying(arg):
            return on_leaf(arg, 0, where)
        leaves, treedef = pytree.flatten(arg)
        return treedef.unflatten([on_leaf(leaf, spec, f"{where}{path}")
                                  for leaf, path in zip(leaves, pytree.leaf_paths(arg))])
    if isinstance(spec, dict):
        if not isinstance(arg, dict) or set(arg) != set(spec):
            raise ValueError(f"in_axes for {where} is a dict with keys {sorted(spec)}, which does not "
                             f"match the argument ({type(arg).__name__})")
        return type(arg)({k: _map_spec(arg[k], spec[k], f"{where}[{k!r}]", on_leaf) for k in arg})
    if isinstance(spec, (tuple, list)):
        if not isinstance(arg, (tuple, list)) or len(arg) != len(spec):
            raise ValueError(f"in_axes for {where} has {len(spec)} entries, which does not match the "
                             f"argument ({type(arg).__name__})")
        items = [_map_spec(a, s, f"{where}[{i}]", on_leaf) for i, (a, s) in enumerate(zip(arg, spec))]
        return type(arg)(*items) if hasattr(type(arg), "_fields") else type(arg)(items)
    raise ValueError(f"in_axes entries must be 0 or None (or a dict/tuple/list of them), got {spec!r} "
                     f"for {where}")


def _axes_error(message, hint=None):
    filename, lineno = user_frame(3)
    raise AxesError(message, filename, lineno, hint)


def _check_axes_spec(spec, name):
    """`spec` is an int, None, or a tuple/list/dict of such (nested): else AxesError."""
    if spec is None or (isinstance(spec, (int, np.integer)) and not isinstance(spec, bool)):
        return
    if isinstance(spec, dict):
        for v in spec.values():
            _check_axes_spec(v, name)
        return
    if isinstance(spec, (tuple, list)):
        for v in spec:
            _check_axes_spec(v, name)
        return
    _axes_error(f"{name} entries must be ints or None (or tuples, lists and dicts of them), "
                f"got {spec!r}")


def _axis(spec, ndim, where, name):
    """The non-negative axis `spec` names in a value of `ndim` axes, or AxesError."""
    if not -ndim <= spec < ndim:
        _axes_error(f"{name} {spec} for {where}, which has {ndim} axes",
                    f"Use an axis in [{-ndim}, {ndim - 1}] (negative axes count from the end).")
    return int(spec) % ndim


def _move_axis(x, source, dest):
    """`numpy.moveaxis` that autodiff (and an enclosing batch program) sees."""
    if source == dest:
        return x
    if type(x) is np.ndarray:
        return np.moveaxis(x, source, dest)
    perm = [i for i in range(x.ndim) if i != source]
    perm.insert(dest, source)
    return P.transpose(x, axes=tuple(perm))


def _match_prefix(arg, spec, where, name, recurse):
    """Walk a tuple/list/dict `spec` over the matching containers of `arg` (AxesError when the
    structures differ), calling `recurse(item, item_spec, item_where)`."""
    if isinstance(spec, dict):
        if not isinstance(arg, dict) or set(arg) != set(spec):
            keys = sorted(map(str, arg)) if isinstance(arg, dict) else type(arg).__name__
            _axes_error(f"{name} for {where} is a dict with keys {sorted(map(str, spec))}, which does "
                        f"not match the value ({keys})",
                        "Give a dict with the same keys, or one int/None for the whole value.")
        items = {k: recurse(arg[k], spec[k], f"{where}[{k!r}]") for k in arg}
        return items if type(arg) in (dict, LaneDict) else type(arg)(items)
    if not isinstance(arg, (tuple, list)) or len(arg) != len(spec):
        got = f"{type(arg).__name__} of {len(arg)}" if isinstance(arg, (tuple, list)) else type(arg).__name__
        _axes_error(f"{name} for {where} has {len(spec)} entries, which does not match the value "
                    f"({got})", "Give one entry per item, or one int/None for the whole value.")
    items = [recurse(a, s, f"{where}[{i}]") for i, (a, s) in enumerate(zip(list.__iter__(arg) if
                                                                         isinstance(arg, list) else arg, spec))]
    if hasattr(type(arg), "_fields"):
        return type(arg)(*items)
    return tuple(items) if isinstance(arg, tuple) else items


def _wrap(arg, spec, where, sizes):
    """Wrap the batched leaves of `arg` (per the in_axes prefix `spec`) as `Batched`."""
    if spec is None:
        return arg
    if isinstance(spec, (dict, tuple, list)):
        return _match_prefix(arg, spec, where, "in_axes",
                             lambda a, s, w: _wrap(a, s, w, sizes))
    if type(arg) is list:
        if spec != 0:
            _axes_error(f"in_axes {spec} for {where}, a Python list of per-example values",
                        "A list is stacked along its entries (one per example): give it in_axes 0, "
                        "or pass an array.")
        return _stack_examples(arg, where, sizes)
    if type(arg) is np.ndarray:             # (the common case: one array, no tree to walk)
        return _wrap_leaf(arg, spec, where, sizes)
    leaves, treedef = pytree.flatten(arg)
    return treedef.unflatten([_wrap_leaf(leaf, spec, f"{where}{path}", sizes)
                              for leaf, path in zip(leaves, pytree.leaf_paths(arg))])


def _wrap_leaf(leaf, spec, where, sizes):
    shape = getattr(leaf, "shape", None)
    if shape is None or len(shape) == 0:
        raise BatchSizeError(f"{where} is marked batched (in_axes {spec}) but has no batch axis "
                             f"(got {type(leaf).__name__} {leaf!r:.40})", *user_frame(), hint=
                             "Pass an array with one row per example, or mark it None (uniform).")
    if type(leaf) is Ragged:
        if spec != 0:
            _axes_error(f"in_axes {spec} for {where}, a ragged value (its examples differ in "
                        f"length)", "A ragged value is batched along axis 0 only.")
        sizes.append((where, leaf.lengths.shape[0]))
        return leaf
    axis = _axis(spec, len(shape), where, "in_axes")
    sizes.append((where, shape[axis]))
    return Batched(_move_axis(leaf, axis, 0))


def _place_outputs(out, spec, batch, where):
    """The batch program's result `out` as the caller sees it, with its batch axes where the
    out_axes prefix `spec` puts them."""
    if spec is None:
        if is_varying(out):
            _axes_error(f"out_axes None for {where}, which differs between examples",
                        "Give it an axis (0), or return only values that are the same in every "
                        "example under out_axes None.")
        return to_user(out, batch, lambda leaf, _: leaf)
    if isinstance(spec, (dict, tuple, list)):
        if type(out) is RaggedList:
            _axes_error(f"out_axes {spec!r} for {where}, a list whose length differs between "
                        f"examples", "Give the list one int axis (0).")
        return _match_prefix(out, spec, where, "out_axes",
                             lambda o, s, w: _place_outputs(o, s, batch, w))
    user = to_user(out, batch, _unwrap)
    if spec == 0:
        return user
    if _has_ragged(out):
        _axes_error(f"out_axes {spec} for {where}, whose examples differ in length",
                    "Results of per-example length come back as one value per example: give "
                    "them out_axes 0.")
    return pytree.tree_map(lambda leaf: _move_leaf_out(leaf, spec, where), user)


def _has_ragged(value) -> bool:
    """True when a batch program's result holds a value of per-example length."""
    kind = type(value)
    if kind is Ragged or kind is RaggedList:
        return True
    if isinstance(value, (list, tuple)):
        return any(_has_ragged(v) for v in list.__iter__(value)) if isinstance(value, list) \
            else any(_has_ragged(v) for v in value)
    if isinstance(value, dict):
        return any(_has_ragged(v) for v in value.values())
    return any(type(leaf) is Ragged for leaf in pytree.leaves(value) if leaf is not value)


def _move_leaf_out(leaf, spec, where):
    ndim = getattr(leaf, "ndim", None)
    if ndim is None:
        return leaf
    return _move_axis(leaf, 0, _axis(spec, ndim, where, "out_axes"))


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
    elif any(is_traced(v) for v in values):   # traced values
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
    if is_traced(value):  # uniform traced result: broadcast with autodiff
        return P.broadcast_to(value, shape=(batch,) + tuple(value.shape))
    xp = namespace(value)
    return xp.array(xp.broadcast_to(value, (batch,) + tuple(np.shape(value))))


def show(fn) -> str:
    """A readable text of the batch program of `fn` (a function or an `spmd` of one): blocks,
    schedule, varying values, code (frontend/show.py)."""
    if isinstance(fn, SpmdFunction):
        return describe(fn.fn, fn.in_axes)
    return describe(fn, 0)
