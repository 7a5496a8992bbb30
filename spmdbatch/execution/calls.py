"""Calls inside batch programs.

`call(fn, *args, **kwargs)` is what every call in a transformed function goes through:

- Python functions (user helpers, lambdas, closures, methods) called with a varying argument
  run as their own batch program: transformed on first call, cached per function and per
  pattern of varying arguments, and run on the calling group's lanes only (the group is
  already compacted, so a call under a branch costs in proportion to its lanes);
- the same functions called with uniform arguments only run natively, at Python speed;
- library code (numpy, the standard library, spmdbatch's runtime) runs natively and sees
  varying values through numpy's protocols;
- a few builtins get batched meanings: `range` and `numpy.arange` with a varying bound,
  `min`/`max` of several values, `sum`/`min`/`max` of a per-example sequence, `zip` and
  `enumerate` over varying sequences, and I/O (`print`, `open`, `input`) is refused under
  divergent control.
"""
from __future__ import annotations

import builtins
import operator
import sys
import threading
import types

import numpy as np

from ..ad.tracer import is_traced, untraced
from ..errors import DivergentSideEffect, SpmdError, UnmergeableGroups, UnsupportedConstruct
from ..runtime.array_methods import index_update
from ..runtime.batched import Batched, Ragged
from ..runtime.blame import lane_error, user_frame
from ..runtime.mapped import LaneMapped, mapped_rows
from ..runtime.packed import Packed
from ..runtime.ragged import ragged_arange
from ..runtime import primitives as P
from ..runtime import views
from .iterators import batched_range, lane_enumerate, lane_zip
from . import lane_list as LL
from .lane_list import LaneDict, LaneList, RaggedList
from .formatting import example_value, lane_strings
from .lanes import (forget_uniform_objects, is_owned_cell, is_owned_object, is_varying, lane_count,
                    merge, merge_calls, own_object, take)
from .state import STATE
from .raising import raise_all_lanes
from . import staging
from .stats import STATS, count_running_call

_TRANSFORMER = None   # set by the frontend: transformer(fn, varying_pattern) -> batched function
_NATIVE_MODULE_PREFIXES = ("numpy", "cupy", "cupyx", "scipy", "spmdbatch.runtime", "spmdbatch.ad",
                           "spmdbatch.execution", "spmdbatch.frontend", "spmdbatch.errors",
                           "spmdbatch.primitives", "spmdbatch.custom_vjp", "spmdbatch.spmd")
_STDLIB = frozenset(sys.stdlib_module_names)


def set_transformer(transformer) -> None:
    """Install the function that builds batch programs (frontend/api.py does this)."""
    global _TRANSFORMER
    _TRANSFORMER = transformer


_NATIVE_MODULE: dict = {}    # module name -> whether its functions run natively (by name only,
                             # so the cache never keeps a user function or its closure alive)


def _is_native_module(module: str) -> bool:
    answer = module.startswith(_NATIVE_MODULE_PREFIXES) or module.split(".")[0] in _STDLIB
    if len(_NATIVE_MODULE) < 10_000:
        _NATIVE_MODULE[module] = answer
    return answer


def is_user_function(fn) -> bool:
    """True for Python functions that should be rewritten rather than run natively."""
    if type(fn) is types.FunctionType:          # (the hot path: no failing getattr)
        marked = fn.__dict__.get("_spmd_native")   # (`native` / `per_example` decide)
        if marked is not None:
            return not marked
        module = fn.__module__
    else:
        if getattr(fn, "_spmd_native", False):
            return False
        module = getattr(fn, "__module__", None)
    answer = _NATIVE_MODULE.get(module)
    if answer is None:
        answer = _is_native_module(module) if isinstance(module, str) else False
    return not answer


staging.set_user_function_test(is_user_function)


def native(fn):
    """Decorator: never rewrite `fn`; it runs as is on varying values (numpy protocols)."""
    fn._spmd_native = True
    return fn


def per_example(fn):
    """Decorator for library code written for one example (it branches on per-example
    values): rewritten into a batch program like user code, although its module runs
    natively."""
    fn._spmd_native = False
    return fn


def batch_polymorphic(fn=None, *, when=None):
    """Decorator: `fn` already treats a leading axis of its array arguments as a batch axis
    (it is written with ``axis=-1``, ``x @ W.T`` and elementwise operations, as the cells of
    `spmdbatch.nn` are), so a batched call runs it once, natively, on the stacked lanes.

    That is its batching rule: it skips the batch program (no per-operation batching, no
    scheduler) and costs what the same code costs on a hand-stacked batch. It applies when
    every array argument is a plain batched value or a lane-mapped one (its rows gathered
    once) and `when`, if given, is true when called like the function on the stacked
    arguments (``when(self, x)`` for a method). Uniform arrays, ragged values and a
    per-example `self` take the general path. Every array the function returns must have
    the batch axis.
    """
    def mark(f):
        f._spmd_batch_polymorphic = when if when is not None else True
        return f
    return mark if fn is None else mark(fn)


NOT_PLAIN = object()


def _plain_lane_data(value, n):
    """`value` with every Batched leaf replaced by its data, or `NOT_PLAIN` when some leaf
    cannot be passed to a batch-polymorphic function as it is (see `batch_polymorphic`)."""
    kind = type(value)
    if kind is Batched:
        data = value.data
        if data.shape[0] != n:
            return NOT_PLAIN
        return data
    if kind is tuple or kind is list or kind is LaneList:
        items = [_plain_lane_data(v, n) for v in value]
        for item in items:
            if item is NOT_PLAIN:
                return NOT_PLAIN
        return list(items) if kind is LaneList else kind(items)
    if value is None or kind is int or kind is float or kind is bool or kind is str:
        return value
    if kind is LaneMapped and value.lengths is None and len(value.index) == n:
        return value.base[value.index]      # (rows the function reads anyway: one gather)
    return NOT_PLAIN


def _lanes_of_result(value, n, fn):
    """A batch-polymorphic function's result with the batch axis of its arrays made `Batched`."""
    kind = type(value)
    if kind is tuple or kind is list:
        return kind(_lanes_of_result(v, n, fn) for v in value)
    if value is None or kind is int or kind is float or kind is bool or kind is str:
        return value
    shape = getattr(value, "shape", None)
    if shape is None or not shape or shape[0] != n:
        filename, lineno = user_frame()
        raise SpmdError(f"{getattr(fn, '__qualname__', fn)} is marked batch_polymorphic but returned a "
                        f"{type(value).__name__} without the batch axis (shape {shape}, {n} lanes)",
                        filename, lineno, "Remove the batch_polymorphic mark, or return per-lane arrays only.")
    return Batched(value)


def _plain_lane_count(args):
    """The lane count of the first batched or lane-mapped array in `args` (None: none)."""
    for a in args:
        kind = type(a)
        if kind is Batched:
            return a.data.shape[0]
        if kind is LaneMapped:
            return len(a.index)
        if kind is tuple or kind is list:
            n = _plain_lane_count(a)
            if n is not None:
                return n
    return None


def call_polymorphic(fn, self_arg, args, kwargs, when):
    """Run batch-polymorphic `fn` natively on the lanes' data (`NOT_PLAIN` if it does not apply:
    the caller then runs its batch program)."""
    n = _plain_lane_count(args)
    if n is None:
        n = _plain_lane_count(tuple(kwargs.values()))
    if n is None:
        return NOT_PLAIN
    data = _plain_lane_data(args, n)
    if data is NOT_PLAIN:
        return NOT_PLAIN
    kw = {}
    for key, value in kwargs.items():
        kw[key] = _plain_lane_data(value, n)
        if kw[key] is NOT_PLAIN:
            return NOT_PLAIN
    if when is not True and not when(*self_arg, *data, **kw):
        return NOT_PLAIN
    if STATS.active is not None:
        count_running_call(fn.__qualname__, n)
    return _lanes_of_result(fn(*self_arg, *data, **kw), n, fn)


def run_batched(fn, self_arg, args, kwargs):
    """``fn(*self_arg, *args, **kwargs)`` with varying operands: natively on the stacked lanes
    when `fn` is batch-polymorphic and they allow it, else as `fn`'s batch program."""
    when = getattr(fn, "_spmd_batch_polymorphic", None)
    if when is not None and not (self_arg and is_varying(self_arg[0])):
        out = call_polymorphic(fn, self_arg, args, kwargs, when)
        if out is not NOT_PLAIN:
            return out
    program = _TRANSFORMER(fn)
    if getattr(program, "__spmd_straight__", False):     # staged code (execution/staging.py)
        out = staging.call(fn, program, self_arg, args, kwargs,
                           lambda: _run_program(program, self_arg, args, kwargs))
        if out is not staging.NOT_STAGED:
            return out
    elif staging.RECORDING.active is not None:
        staging.abort("calls a function with branches or loops")
    return _run_program(program, self_arg, args, kwargs)


def _run_program(program, self_arg, args, kwargs):
    """Run a batch program on the calling group's lanes."""
    lent = LL.lend(args) if any(type(a) in _OWNED_TYPES for a in args) else None
    STATE.calls += 1
    try:
        return program(*self_arg, *args, **kwargs)
    except RecursionError:
        raise _too_deep(args, kwargs) from None
    finally:
        STATE.calls -= 1
        if lent:
            LL.give_back(lent)


_OWNED_TYPES = (LL.LaneList, LL.RaggedList)


def _too_deep(args, kwargs):
    """Python's stack ran out in a recursion through batched calls (one that is not scheduled
    by height: mutual recursion, say): a LaneError naming the examples of the deepest group,
    the ones still recursing. (The innermost handler may itself run out of stack; an outer
    one then builds the error: the deepest frame stays recorded in STATE.)"""
    frame = STATE.frame
    if frame is None:
        n = lane_count(*args, *kwargs.values())
    else:
        n = frame.n if STATE.lanes is None else len(STATE.lanes)
    return lane_error(RecursionError(f"maximum recursion depth exceeded (Python's limit, "
                                     f"{sys.getrecursionlimit()} frames)"), np.arange(n), depth=4)


def _io_guard(fn, name=None):
    name = name or fn.__name__

    def guarded(*args, **kwargs):
        if STATE.partial:
            filename, lineno = user_frame()
            raise DivergentSideEffect(
                f"{name}() called under a varying condition (only some examples reach this "
                f"call)", filename, lineno, "Move the I/O out of the data-dependent branch or loop, "
                "or return the values and print them after the batched call.")
        return fn(*args, **kwargs)
    return guarded


def _print(*args, **kwargs):
    """`print` of per-example values: one line per lane, each with that lane's own values (as
    the per-example loop prints them, never an internal wrapper)."""
    if not _any_varying(args, kwargs):
        return builtins.print(*args, **kwargs)
    n = lane_count(*[a for a in args if is_varying(a)])
    for i in range(n):
        builtins.print(*[example_value(a, i) if is_varying(a) else a for a in args], **kwargs)


class _Fusion(threading.local):
    """How many fused calls (`call_fused`) this thread is running inside (`depth`), and how
    many groups of calls with memory reads moved across them (`guard`)."""
    depth = 0
    guard = 0


FUSION = _Fusion()


class _SideEffectInFusedCall(BaseException):
    """Raised by a write to shared state (an attribute, a global, a nonlocal) inside a fused
    call: calls run as one batched call would write once, with the lanes of all of them, where
    the loop writes once per call; `call_fused` runs the calls one after the other instead.
    (A BaseException, so the user's `except Exception` does not stop it.)"""


def _not_in_fused_call():
    if FUSION.depth or FUSION.guard:
        raise _SideEffectInFusedCall()


def _before_store():
    """What every store to a name or attribute outside the batch program's locals checks
    first: it is not staged (a replay would not repeat it) and it is not in a fused call."""
    staging.refuse_while_recording("a store")
    _not_in_fused_call()


def _refuse_divergent(what: str, hint: str):
    filename, lineno = user_frame(3)
    raise DivergentSideEffect(f"{what} under a varying condition (only some examples run it, but "
                              f"the change would be seen by all)", filename, lineno, hint)


def _refuse_escape(what: str, hint: str):
    filename, lineno = user_frame(3)
    raise DivergentSideEffect(f"{what}: the variable is shared by all examples and outlives the "
                              f"call, so it cannot hold one value per example", filename, lineno, hint)


def store_attr(obj, name, value):
    """`obj.name = value`, refused while only some lanes run (the object is shared), and
    refused for a per-example value on an object the caller can see (one the batch program
    neither constructed nor received as per-example data): it would keep an internal
    per-lane wrapper after the call."""
    _before_store()
    if STATE.partial:
        _refuse_divergent(f"assignment to attribute .{name} of a {type(obj).__name__}",
                          "Keep per-example state in local variables and return it.")
    if is_varying(value) and not is_owned_object(obj) and not is_varying(obj):
        _refuse_escape(f"assignment of a per-example value to attribute .{name} of a "
                       f"{type(obj).__name__} made outside the batched call",
                       "Keep per-example state in local variables (or in an object the function "
                       "constructs) and return it.")
    forget_uniform_objects()
    setattr(obj, name, value)


def del_attr(obj, name):
    _before_store()
    if STATE.partial:
        _refuse_divergent(f"deletion of attribute .{name}", "Move it out of the data-dependent branch.")
    forget_uniform_objects()
    delattr(obj, name)


def store_global(globals_, name, value):
    """`global name; name = value`, refused while only some lanes run."""
    _before_store()
    if STATE.partial:
        _refuse_divergent(f"assignment to global variable {name!r}",
                          "Return the value instead of storing it in a global.")
    if is_varying(value):
        _refuse_escape(f"assignment of a per-example value to global variable {name!r}",
                       "Return the value instead of storing it in a global.")
    globals_[name] = value


def del_global(globals_, name):
    _before_store()
    if STATE.partial:
        _refuse_divergent(f"deletion of global variable {name!r}", "Move it out of the branch.")
    del globals_[name]


def store_nonlocal(cell, name, value):
    """`nonlocal name; name = value` (a variable of an enclosing function), likewise."""
    _before_store()
    if STATE.partial:
        _refuse_divergent(f"assignment to nonlocal variable {name!r}",
                          "Return the value instead of assigning the enclosing function's variable.")
    if not is_owned_cell(cell) and is_varying(value):
        _refuse_escape(f"assignment of a per-example value to nonlocal variable {name!r} of a "
                       f"function outside the batched call",
                       "Return the value instead of assigning the enclosing function's variable.")
    cell.cell_contents = value


def _per_example_sequence(value):
    """`value` as a Ragged or Batched array when it is a per-example sequence (an array with
    a first axis that varies), else None."""
    if type(value) is LaneMapped or type(value) is Packed:
        value = value.materialize()
    if type(value) is Ragged or (type(value) is Batched and value.data.ndim >= 2):
        return value
    return None


def _extreme(builtin, ufunc, arg_prim):
    def extreme(*args, **kwargs):
        if len(args) > 1 and not kwargs and any(type(a) is Batched for a in args):
            kinds = [_number_kind(a) for a in args]
            if any(k != kinds[0] for k in kinds[1:]):
                return _extreme_of_kinds(builtin.__name__, args, kinds)
            out = args[0]
            for a in args[1:]:
                out = ufunc(out, a)
            return out
        seq = None
        if len(args) == 1 and set(kwargs) <= {"default"}:
            seq = _as_sequence(args[0])
            if seq is None:
                seq = _per_example_sequence(args[0])
        if seq is None:
            return builtin(*args, **kwargs)
        return _extreme_of_sequence(builtin.__name__, arg_prim, seq, kwargs)
    return extreme


def _number_kind(value):
    """What builtin min/max returns when `value` wins: a Python number ("weak", with its
    kind) or an array of its dtype."""
    if type(value) is Batched and value.weak:
        return ("weak", value.dtype.kind)
    if type(value) in (int, float, bool):
        return ("weak", np.asarray(value).dtype.kind)
    dtype = getattr(value, "dtype", None)
    return np.dtype(dtype) if dtype is not None else np.asarray(value).dtype


def _extreme_of_kinds(name, args, kinds):
    """Builtin min/max of arguments of different kinds (a Python float and a float32 value):
    when every example's winner has one kind, the result has that kind, as in the loop; where
    the winners differ, the loop's results differ in type too, which one array cannot hold:
    the promotion of the arguments' dtypes (the dtype fuzzer's oracle accepts either)."""
    better = P.greater if name == "max" else P.less
    win = np.zeros(lane_count(*args), dtype=np.intp)
    cur = args[0]
    for i, a in enumerate(args[1:], 1):
        b = better(a, cur)
        mask = np.asarray(getattr(b.data, "value", b.data)) if type(b) is Batched else np.full(len(win), bool(b))
        win = np.where(mask, i, win)
        cur = P.where(b, a, cur)
    chosen = {kinds[i] for i in np.unique(win)}
    if len(chosen) > 1:
        # examples whose results differ in type (one keeps the Python float, another the
        # float32 array): one array holds them in the promotion of the arguments' dtypes
        ufunc = P.maximum if name == "max" else P.minimum
        out = args[0]
        for a in args[1:]:
            out = ufunc(out, a)
        return out
    kind = chosen.pop()
    if type(kind) is tuple:               # every example keeps its Python number
        target = np.float64 if kind[1] == "f" else np.int64 if kind[1] in "iu" else None
        if target is None:
            data = cur.data if type(cur) is Batched else np.full(len(win), cur)
            return Batched(data, weak=True)
        # (selected among the Python numbers themselves, in their own precision: `cur`, a
        # `where` with the other arguments, has their dtype, float32 say)
        data = None
        for i, a in enumerate(args):
            if kinds[i] != kind:
                continue
            d = a.data if type(a) is Batched else np.full(len(win), a, dtype=target)
            if d.dtype != target:
                d = P.astype(d, dtype=np.dtype(target))
            data = d if data is None else P.where(win == i, d, data)
        return Batched(data, weak=True)
    if type(cur) is Batched and cur.dtype != kind:
        cur = Batched(P.astype(cur.data, dtype=kind))
    return cur


def _extreme_of_sequence(name, arg_prim, seq, kwargs):
    """Builtin min/max over each example's sequence: its first extreme element (the one the
    builtin returns, and the one that gets the gradient)."""
    if seq.data.ndim != 2:
        filename, lineno = user_frame(3)
        raise UnsupportedConstruct(f"builtin {name}() over the rows of a per-example array compares "
                                   f"arrays (ambiguous truth value)", filename, lineno,
                                   f"Use numpy.{name}(x, axis=0) for elementwise extremes.")
    lanes = seq.data.shape[0]
    lengths = np.asarray(seq.lengths) if type(seq) is Ragged else np.full(lanes, seq.data.shape[1])
    empty = lengths == 0
    if empty.any() and "default" not in kwargs:
        raise lane_error(ValueError(f"{name}() iterable argument is empty"), np.flatnonzero(empty))
    if empty.all():
        return kwargs["default"]
    pos = arg_prim(seq, axis=0)
    pos = np.where(empty, 0, untraced(pos.data))
    out = Batched(P.getitem(seq.data, np.arange(lanes), pos, index=(P.ARRAY_SLOT, P.ARRAY_SLOT)))
    return P.where(Batched(empty), kwargs["default"], out) if empty.any() else out


def contains(item, container, negate=False):
    """`item in container` (`not in` when `negate`): per example for a list the program built
    whose length or items vary, and for a per-example scalar in a uniform tuple or list."""
    kind = type(container)
    if (kind is RaggedList or kind is LaneList or kind is LL.FrozenList) and \
            (kind is RaggedList or is_varying(container) or is_varying(item)):
        found = LL.contains_lanes(container, item)
    elif (kind is tuple or kind is list) and type(item) is Batched and item.data.ndim == 1 and \
            not is_varying(container):
        found = LL.contains_lanes(LaneList(container), item)
    else:
        return (item not in container) if negate else (item in container)
    return P.logical_not(found) if negate else found


def _as_sequence(value):
    """A list of per-example length (or with per-example items) as a per-example array, else None."""
    kind = type(value)
    if kind is RaggedList or ((kind is LaneList or kind is LL.FrozenList) and is_varying(value)
                              and len(value)):
        arr = LL.stack_lanes(value, 0, "array") if kind is RaggedList else _stacker(np.stack, "stack")(value)
        if getattr(arr, "data", None) is not None and arr.data.ndim != 2:
            filename, lineno = user_frame(4)
            raise UnsupportedConstruct("sorted(), min() or max() of a per-example list of arrays "
                                       "compares arrays (ambiguous truth value)", filename, lineno,
                                       "Stack it (numpy.stack) and use numpy.sort/min/max with an axis.")
        return arr
    return None


def _sorted(iterable, /, *, key=None, reverse=False):
    """Builtin `sorted` of a list whose length or items differ between examples: each
    example's own sorted list (numbers; ties keep their order)."""
    seq = _as_sequence(iterable) if key is None and type(reverse) is bool else None
    if seq is None:
        return builtins.sorted(iterable, key=key, reverse=reverse)
    out = np.sort(seq, axis=0, kind="stable")
    if reverse:
        out = np.flip(out, axis=0)
    return _list(out)


def _sum(iterable, /, start=0):
    """Builtin sum: over a list of per-example length, item by item per lane; over a
    per-example sequence (ragged array), one reduction (in the loop's dtype)."""
    if type(iterable) is RaggedList:
        return LL.sum_lanes(iterable, start)
    seq = _per_example_sequence(iterable)
    if seq is None:
        return builtins.sum(iterable, start)
    if type(seq) is Ragged and not np.asarray(seq.lengths).any():
        return start          # every example's sequence is empty: the loop returns `start` itself
    total = P.sum(seq, axis=(0,), keepdims=False)
    dtype = np.result_type(start, seq.dtype)
    if total.dtype != dtype:
        total = P.astype(total, dtype=dtype)
    return total if type(start) is int and start == 0 else start + total


def _arange(*args, **kwargs):
    if any(isinstance(a, Batched) for a in args):
        if any(isinstance(a, Batched) and a.data.ndim != 1 for a in args) or set(kwargs) - {"dtype"}:
            filename, lineno = user_frame()
            raise UnsupportedConstruct("numpy.arange with a per-example bound that is not a number",
                                       filename, lineno, "Give numbers (len(x), n) as bounds.")
        return ragged_arange(*args, dtype=kwargs.get("dtype"))
    return np.arange(*args, **kwargs)


def _creator(fill):
    """np.zeros / ones / empty / full whose first dimension varies: a Ragged array."""
    numpy_fn = {0: np.zeros, 1: np.ones, None: np.empty}.get(fill, np.full)

    def create(shape, *args, **kwargs):
        dims = shape if isinstance(shape, tuple) else (shape,)
        if not any(type(d) is Batched for d in dims):
            return numpy_fn(shape, *args, **kwargs)
        if type(dims[0]) is not Batched or any(type(d) is Batched for d in dims[1:]):
            filename, lineno = user_frame()
            raise SpmdError("an array whose shape varies between examples in an axis other than the "
                            "first", filename, lineno, "Only the first axis may have a per-example length.")
        if fill == "full":
            fill_value, args = (args[0], args[1:]) if args else (kwargs.pop("fill_value"), args)
            default_dtype = np.asarray(fill_value).dtype      # as numpy.full does
        else:
            fill_value = 0 if fill is None else fill
            default_dtype = float
        dtype = args[0] if args else kwargs.get("dtype", default_dtype)
        lengths = np.asarray(getattr(dims[0].data, "value", dims[0].data)).astype(np.intp)
        width = int(lengths.max()) if lengths.size else 0
        data = np.full((len(lengths), width) + tuple(int(d) for d in dims[1:]), fill_value, dtype=dtype)
        return Ragged(data, lengths)
    return create


def _len(value):
    if type(value) is RaggedList:
        return LL.length(value)
    if type(value) is LaneMapped:
        value = value.materialize()
    if type(value) is Ragged or type(value) is Packed:
        return Batched(value.lengths, weak=True)    # a Python int in each example
    return builtins.len(value)


def _list(*args):
    """`list(x)` in a batch program: a list the lanes own (see execution/lane_list.py)."""
    if not args:
        return LaneList()
    (value,) = args
    out = LaneList()
    if type(value) is RaggedList:
        return value.copy()
    if type(value) is Packed:
        value = value.materialize()
    out.extend(value) if type(value) is not Ragged else LL.extend_lanes(out, value)
    return out


def _dict(*args, **kwargs):
    return LaneDict(*args, **kwargs)


def _array_of(value):
    """`numpy.array` of nested lists/tuples holding per-example values: stacked per example."""
    if type(value) is RaggedList:
        return LL.stack_lanes(value, 0, "array")
    if isinstance(value, (list, tuple)) and len(value) and is_varying(value):
        return np.stack([_array_of(v) for v in value])
    return value


def _stacker(fn, kind):
    def stack(arrays, *args, **kwargs):
        if type(arrays) is RaggedList:
            return LL.stack_lanes(arrays, kwargs.get("axis", args[0] if args else 0), kind)
        if kind == "array" and isinstance(arrays, (list, tuple)) and is_varying(arrays):
            out = _array_of(arrays)
            dtype = args[0] if args else kwargs.get("dtype")
            return out if dtype is None else out.astype(dtype)
        return fn(arrays, *args, **kwargs)
    return stack


_SPECIAL = {
    np.stack: _stacker(np.stack, "stack"), np.concatenate: _stacker(np.concatenate, "concatenate"),
    np.array: _stacker(np.array, "array"), np.asarray: _stacker(np.asarray, "array"),
    builtins.sum: _sum, builtins.list: _list, builtins.dict: _dict,
    builtins.str: lane_strings(str), builtins.repr: lane_strings(repr), builtins.format: lane_strings(format),
    np.zeros: _creator(0), np.ones: _creator(1), np.empty: _creator(None), np.full: _creator("full"),
    builtins.len: _len, builtins.sorted: _sorted,
    builtins.setattr: lambda obj, name, value: store_attr(obj, name, value),
    builtins.delattr: lambda obj, name: del_attr(obj, name),
    builtins.min: _extreme(builtins.min, P.minimum, P.argmin),
    builtins.max: _extreme(builtins.max, P.maximum, P.argmax),
    np.arange: _arange,
    builtins.print: _io_guard(_print, "print"),
    builtins.open: _io_guard(builtins.open),
    builtins.input: _io_guard(builtins.input),
}


def _any_varying(args, kwargs) -> bool:
    for a in args:                    # plain batched values first: no container walks
        if type(a) is Batched:
            return True
    for a in args:
        if is_varying(a):
            return True
    for a in kwargs.values():
        if is_varying(a):
            return True
    return False


def call(fn, *args, **kwargs):
    """Call `fn` from a batch program (see module docstring)."""
    kind = type(fn)
    if staging.RECORDING.active is not None:
        _check_recorded_call(fn, kind, args, kwargs)
    if kind is types.FunctionType:
        special = _SPECIAL.get(fn)
        if special is not None:
            return special(*args, **kwargs)
        if _any_varying(args, kwargs) and is_user_function(fn):
            return run_batched(fn, (), args, kwargs)
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            _in_running_lanes(exc, fn, args, kwargs)
            raise
    if kind is types.MethodType and type(fn.__func__) is types.FunctionType:
        if (_any_varying(args, kwargs) or is_varying(fn.__self__)) and is_user_function(fn.__func__):
            return run_batched(fn.__func__, (fn.__self__,), args, kwargs)
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            _in_running_lanes(exc, fn, args, kwargs)
            raise
    if kind is types.BuiltinFunctionType:
        special = _SPECIAL.get(fn)
        if special is not None:
            return special(*args, **kwargs)
        owner = fn.__self__
        owner_kind = type(owner)
        if owner_kind is LaneList:
            if args and type(args[0]) is Batched and fn.__name__ in ("pop", "insert"):
                return _per_lane_method(owner, fn.__name__, args, kwargs)   # a varying position
            if args and type(args[-1]) is RaggedList:
                if fn.__name__ == "extend":
                    return LL.extend_lanes(owner, args[0])        # items of per-lane count
                if fn.__name__ in ("append", "insert"):
                    return getattr(owner, fn.__name__)(*args)     # (a list as one item)
        elif owner_kind in _SHARED_CONTAINERS and fn.__name__ in _MUTATORS:
            _check_shared_mutation(owner, fn.__name__, args, kwargs)
    elif kind is type:
        if fn is builtins.range:
            return batched_range(*args)
        if fn is builtins.enumerate or fn is builtins.zip:
            return (lane_enumerate if fn is builtins.enumerate else lane_zip)(*args, **kwargs)
        special = _SPECIAL.get(fn)
        if special is not None:
            return special(*args, **kwargs)
        if len(args) == 1 and not kwargs and type(args[0]) is Batched and issubclass(fn, np.generic) \
                and fn is not np.object_ and not issubclass(fn, np.flexible):
            # a numpy scalar type of a per-example value (np.float32(x)): each example's value
            # in that dtype, a numpy value (not a Python number) as in the loop
            return Batched(P.astype(args[0].data, dtype=np.dtype(fn)))
    elif kind is Batched:
        filename, lineno = user_frame()
        raise SpmdError("calling a varying value (each example would call a different function)",
                        filename, lineno, "Call a uniform function, or branch on the example's data.")
    else:
        method = getattr(kind, "__call__", None)      # a callable object of a user class
        if type(method) is types.FunctionType and is_user_function(method) and \
                (_any_varying(args, kwargs) or is_varying(fn)):
            return run_batched(method, (fn,), args, kwargs)
        special = _SPECIAL.get(fn) if kind is np.stack.__class__ else None
        if special is not None:
            return special(*args, **kwargs)
    for i, a in enumerate(args):           # native code reads a list's storage: give it an array
        if type(a) is RaggedList:
            args = args[:i] + (LL.stack_lanes(a, 0, "array"),) + args[i + 1:]
    try:
        out = fn(*args, **kwargs)
        if isinstance(fn, type) and isinstance(out, fn) and hasattr(out, "__dict__"):
            own_object(out)                # an object this program constructed
        return out
    except Exception as exc:
        _in_running_lanes(exc, fn, args, kwargs)
        raise


def _check_recorded_call(fn, kind, args, kwargs):
    """A call made while a straight-line region is recorded (execution/staging.py): user code
    has what it reads from outside its arguments guarded (and, run `native`ly with uniform
    arguments, must not write outside its locals), other callables must be free of side
    effects."""
    if kind is types.FunctionType and is_user_function(fn):
        staging.check_call(fn, True, not _any_varying(args, kwargs))
    elif kind is types.MethodType and type(fn.__func__) is types.FunctionType \
            and is_user_function(fn.__func__):
        staging.check_call(fn.__func__, True, True)
    else:
        method = getattr(kind, "__call__", None)
        if type(method) is types.FunctionType and is_user_function(method):
            staging.check_call(method, True, True)
        else:
            staging.check_call(fn, False, True, args, kwargs)


def _in_running_lanes(exc, fn, args, kwargs):
    """An exception of a call with uniform arguments (run natively) while only some examples
    run (under a varying condition): theirs alone, so raise it as a LaneError naming them.
    (Returns when it is not such a case: the caller re-raises `exc`.)"""
    if isinstance(exc, SpmdError) or not STATE.partial or STATE.frame is None:
        return
    if _any_varying(args, kwargs) or is_varying(fn):
        return
    raise_all_lanes(exc)


_SHARED_CONTAINERS = (list, dict, set, bytearray)
_MUTATORS = frozenset({"append", "extend", "insert", "pop", "remove", "clear", "sort", "reverse",
                       "update", "setdefault", "popitem", "add", "discard", "__setitem__",
                       "__delitem__", "__iadd__", "difference_update", "intersection_update",
                       "symmetric_difference_update"})


def _check_shared_mutation(owner, name, args, kwargs):
    """Mutating a container the batch program did not build (a global, a closure's, an argument
    passed with in_axes=None, an attribute's): refused under a varying condition, and refused
    with a varying value (per-example data must never reach an object the caller can see)."""
    what = f"{type(owner).__name__}.{name}() on a {type(owner).__name__} this function did not create"
    if STATE.partial:
        _refuse_divergent(what, "Build the list in the function (out = []) and return it, or move "
                                "the call out of the data-dependent branch or loop.")
    if _any_varying(args, kwargs):
        filename, lineno = user_frame(3)
        raise DivergentSideEffect(f"{what}, with a per-example value (the object is shared by all "
                                  f"examples and outlives the call)", filename, lineno,
                                  "Build the list in the function (out = []) and return it.")


def _per_lane_method(lst, name, args, kwargs):
    """A LaneList method called with a varying position: per lane."""
    if name == "pop" and not kwargs:
        return LL.pop_lanes(lst, *args)
    if name == "insert" and not kwargs:
        return LL.insert_lanes(lst, *args)
    if name == "__getitem__":
        return LL.getitem_lanes(lst, *args)
    if name == "__setitem__":
        return LL.setitem_lanes(lst, *args)
    return getattr(lst, name)(*args, **kwargs)


def same_function(a, b) -> bool:
    if a is b:
        return True
    return (type(a) is types.MethodType and type(b) is types.MethodType
            and a.__func__ is b.__func__ and a.__self__ is b.__self__)


def call_fused(funcs, args, kwargs, reads=False):
    """Calls ``funcs[i](*args[i], **kwargs[i])`` whose arguments are independent of each
    other's results (frontend/fusion.py): one batched call over all their lanes when they
    call the same batched function, else one after the other. A callee that writes shared
    state makes them run one after the other (the loop writes once per call), or, when the
    program read memory across the calls (`reads`: those reads were moved, so they would not
    see the writes), is refused."""
    if not reads:
        return _call_fused(funcs, args, kwargs)
    FUSION.guard += 1
    try:
        return _call_fused(funcs, args, kwargs)
    except _SideEffectInFusedCall:
        filename, lineno = user_frame()
        raise UnsupportedConstruct(
            "calls that change an attribute, global or nonlocal, with reads of attributes, items "
            "or globals between them (the calls' arguments are computed before the calls run, so "
            "those reads would not see the changes)", filename, lineno,
            "Assign each call's argument to a variable before the first call, or return the "
            "new state from the function instead of storing it.") from None
    finally:
        FUSION.guard -= 1


def _call_fused(funcs, args, kwargs):
    fn = funcs[0]
    if not all(same_function(fn, f) for f in funcs[1:]) or \
            not all(_any_varying(a, k) for a, k in zip(args, kwargs)) or \
            any(set(k) != set(kwargs[0]) for k in kwargs[1:]) or \
            any(len(a) != len(args[0]) for a in args[1:]):
        return tuple(call(f, *a, **k) for f, a, k in zip(funcs, args, kwargs))
    if type(fn) is types.MethodType and is_owned_object(fn.__self__):
        # (methods of an object the program constructed are there to change it)
        return tuple(call(f, *a, **k) for f, a, k in zip(funcs, args, kwargs))
    target = fn.__func__ if type(fn) is types.MethodType else fn
    if type(target) is not types.FunctionType or not is_user_function(target):
        return tuple(call(f, *a, **k) for f, a, k in zip(funcs, args, kwargs))
    n = lane_count(*args[0], *kwargs[0].values())
    m = len(funcs)
    try:
        merged, merged_kw = merge_calls(args, kwargs, [n] * m)
    except (ValueError, UnmergeableGroups):
        # arguments that cannot become one batch (arrays of different shapes per call, as
        # slices of different lengths are): the calls run one after the other
        return tuple(call(f, *a, **k) for f, a, k in zip(funcs, args, kwargs))
    # lane i of the fused call is lane i % n of the caller (errors name the right examples)
    lanes = np.tile(np.arange(n) if STATE.lanes is None else STATE.lanes, m)
    FUSION.depth += 1
    try:
        result = call_merged(fn, merged, merged_kw, STATE.frame, lanes, STATE.partial)
    except _SideEffectInFusedCall:
        if FUSION.depth > 1 or FUSION.guard:
            raise                       # (the outermost fused call runs its calls apart)
        apart = True
    except Exception as exc:
        # state the calls share, read with the lanes of one call (an attribute a method
        # reads before it changes it): the calls one after the other raise what is real
        if isinstance(exc, SpmdError) or FUSION.depth > 1:
            raise
        apart = True
    else:
        apart = False
    finally:
        FUSION.depth -= 1
    if apart:
        return tuple(call(f, *a, **k) for f, a, k in zip(funcs, args, kwargs))
    STATS.record_fused(m)
    return tuple(take(result, np.arange(i * n, (i + 1) * n), {}) for i in range(m))


def call_merged(fn, args, kwargs, frame, lanes, partial):
    """``fn(*args, **kwargs)``: ONE call over the lanes of several calls of `fn`, whose
    arguments `lanes.merge_calls` merged; lane j of it is lane ``lanes[j]`` of `frame` (errors
    name that lane's example), `partial` whether those are only some examples of the batch.

    The one place where several calls run as one batched call: fused calls (`call_fused`)
    and the deferred terms of sums (execution/sums.py). Recursive calls merge their arguments
    the same way but join the running frame instead (execution/recursion.py)."""
    saved = STATE.frame, STATE.lanes, STATE.partial
    STATE.frame, STATE.lanes, STATE.partial = frame, lanes, partial
    try:
        return call(fn, *args, **kwargs)
    finally:
        STATE.frame, STATE.lanes, STATE.partial = saved


class LaneSwitch:
    """The callables a uniform container holds under each lane's key (``OPS[mode]`` with a
    varying `mode`): calling it calls each lane's own choice on that lane (see `_lane_lookup`)."""

    __slots__ = ("which", "choices")

    def __init__(self, which, choices):
        self.which = which          # per lane: position in `choices`
        self.choices = choices

    def _spmd_take_lanes(self, idx):
        return LaneSwitch(self.which[idx], self.choices)

    def _spmd_merge_lanes(self, others, counts):
        if any(type(o) is not LaneSwitch or o.choices != self.choices for o in others):
            raise UnmergeableGroups("different selections of functions meet where control flow joins")
        return LaneSwitch(np.concatenate([self.which] + [o.which for o in others]), self.choices)

    def __call__(self, *args, **kwargs):
        """Each group of lanes with the same choice calls it (like the sides of a branch)."""
        n = len(self.which)
        if n == 0:
            return call(self.choices[0], *args, **kwargs)
        results, positions = [], []
        saved_partial, saved_lanes = STATE.partial, STATE.lanes
        for j in np.unique(self.which):
            idx = (self.which == j).nonzero()[0]
            sub_args = take(tuple(args), idx, {})
            sub_kwargs = {key: take(v, idx, {}) for key, v in kwargs.items()}
            STATE.partial = saved_partial or len(idx) < n
            STATE.lanes = idx if saved_lanes is None else np.asarray(saved_lanes)[idx]
            try:
                results.append(call(self.choices[int(j)], *sub_args, **sub_kwargs))
            finally:
                STATE.partial, STATE.lanes = saved_partial, saved_lanes
            positions.append(idx)
        if len(results) == 1:
            return results[0]
        value = merge(results, [len(p) for p in positions], "the result of a call through a varying key")
        return take(value, np.concatenate(positions).argsort(kind="stable"), {})


def _lane_lookup(obj, key):
    """``obj[key]`` of a list, tuple or dict with a per-example key (a number per lane): each
    lane's own entry. Arrays and numbers become one varying value (a gather from their stack,
    so gradients reach traced entries); callables a `LaneSwitch`. A missing key raises a
    LaneError naming the examples, as the loop's KeyError/IndexError."""
    raw = np.asarray(untraced(key.data))
    distinct, which = np.unique(raw, return_inverse=True)
    choices, bad, first = [], [], None
    for j, k in enumerate(distinct):
        try:
            choices.append(obj[k.item()])
        except (KeyError, IndexError, TypeError) as exc:
            bad.append((which == j).nonzero()[0])
            first = first or exc
    if bad:
        raise lane_error(first, np.concatenate(bad))
    if len(choices) == 1:
        return choices[0]
    if all(callable(c) and not hasattr(c, "shape") for c in choices):
        return LaneSwitch(which.reshape(-1), tuple(choices))
    if all(isinstance(c, (int, float, bool, complex, np.generic)) or hasattr(c, "shape") for c in choices):
        try:
            stacked = np.stack(choices)
        except ValueError:
            stacked = None
        if stacked is not None:
            return getitem(stacked, Batched(which.reshape(-1)))
    filename, lineno = user_frame(3)
    raise UnsupportedConstruct(f"a per-example key selects different kinds of objects from a "
                               f"{type(obj).__name__} ({', '.join(sorted({type(c).__name__ for c in choices}))})",
                               filename, lineno, "Branch on the key with if/elif instead.")


def getitem(obj, index):
    """`obj[index]`: arrays indexed by varying indices gather through the batching rules;
    lists, tuples and dicts indexed by a varying key give each lane its own entry."""
    kind = type(obj)
    if kind is RaggedList or ((kind is LaneList or kind is LL.FrozenList) and type(index) is Batched):
        return LL.getitem_lanes(obj, index)
    if type(obj) is LaneMapped and type(index) is Batched and type(index.data) is np.ndarray \
            and index.data.ndim == 1 and obj.base.ndim >= 2 and index.data.dtype.kind in "iu":
        return mapped_rows(obj, index.data)         # (the common `tree.left[k]`, directly)
    if type(obj) is np.ndarray and (isinstance(index, (Batched, LaneMapped)) or (type(index) is tuple and any(
            isinstance(i, (Batched, LaneMapped)) for i in index))):
        template, arrays = P.split_index(index)
        return P.getitem(obj, *arrays, index=template)
    if type(index) is Batched and index.data.ndim == 1 and (
            type(obj) is list or type(obj) is tuple or type(obj) is dict
            or (type(obj) is LaneDict and not is_varying(obj))):    # (a dict the program built)
        return _lane_lookup(obj, index)
    if (type(index) is slice or type(index) is tuple) and _varying_slice(index) and \
            not is_varying(obj) and getattr(obj, "ndim", 0):
        # a uniform array (or traced array) sliced with a per-example bound (v[:n]): each
        # example's own slice
        bound = next(b for s in (index if type(index) is tuple else (index,)) if type(s) is slice
                     for b in (s.start, s.stop) if type(b) is Batched)
        lanes = bound.data.shape[0]
        template, arrays = P.split_index(index)
        rows = P.broadcast_to(obj, shape=(lanes,) + tuple(obj.shape))
        return P.getitem(Batched(rows), *arrays, index=template)
    try:
        return obj[index]
    except (IndexError, KeyError) as exc:
        _in_running_lanes(exc, obj, (index,), {})
        raise


def _varying_slice(index) -> bool:
    for item in (index if type(index) is tuple else (index,)):
        if type(item) is slice and (type(item.start) is Batched or type(item.stop) is Batched):
            return True
    return False


def setitem(obj, index, value):
    """`obj[index] = value` on a local variable; returns the object the variable now holds.

    Arrays are updated functionally (a new array: other groups of lanes holding the same
    array never see the write, and autodiff records it); lists and dicts are updated in
    place, which is only allowed while every lane runs together.
    """
    staging.refuse_while_recording("an item assignment")
    kind = type(obj)
    if kind is RaggedList or (kind is LaneList and type(index) is Batched):
        LL.setitem_lanes(obj, index, value)
        return obj
    if kind is LaneList or kind is LaneDict or kind is LL.FrozenList:   # built by this program
        obj[index] = value
        return obj
    if type(obj) is np.ndarray and obj.flags.writeable and not STATE.partial \
            and not is_varying(value) and not is_varying(index) and not is_traced(value):
        # one array for all examples, a write that is the same for all of them, every lane
        # running: in place, as each example's loop does (its views and other names see it)
        obj[index] = value
        return obj
    if type(obj) is Batched or hasattr(obj, "shape") and hasattr(obj, "dtype"):
        out = index_update(obj, index, value, mode="set")
        if getattr(type(obj), "_notes_views", False) and obj.ndim >= 1:
            # (other names and views keep the old values: those that overlap the write are
            # out of date)
            views.note_update(obj, rebound=True, index=index)
        return out
    if type(index) is Batched or (type(index) is tuple and any(type(i) is Batched for i in index)):
        filename, lineno = user_frame()
        raise SpmdError(f"item assignment into a {type(obj).__name__} with a varying index",
                        filename, lineno, "Use an array (numpy.zeros) for per-example positions.")
    if STATE.partial:
        _refuse_divergent(f"item assignment into a {type(obj).__name__}",
                          "Use an array, which each example updates separately, or move the "
                          "assignment out of the data-dependent branch.")
    if is_varying(value):
        filename, lineno = user_frame()
        raise DivergentSideEffect(
            f"item assignment of a per-example value into a {type(obj).__name__} this function did "
            f"not create (it is shared by all examples and outlives the call)", filename, lineno,
            "Build the container in the function ({} or []) and return it.")
    obj[index] = value
    return obj


_INPLACE = {"+=": (operator.iadd, operator.add), "-=": (operator.isub, operator.sub),
            "*=": (operator.imul, operator.mul), "/=": (operator.itruediv, operator.truediv),
            "//=": (operator.ifloordiv, operator.floordiv), "%=": (operator.imod, operator.mod),
            "**=": (operator.ipow, operator.pow), "@=": (operator.imatmul, operator.matmul),
            "&=": (operator.iand, operator.and_), "|=": (operator.ior, operator.or_),
            "^=": (operator.ixor, operator.xor), "<<=": (operator.ilshift, operator.lshift),
            ">>=": (operator.irshift, operator.rshift)}


def inplace(op, a, b):
    """`a op= b` in a batch program: arrays get a new value instead of being mutated.

    An array may be shared by lane groups that took different branches (uniform values
    are not copied when lanes split), so mutating it in place would leak one group's
    update into the others; and a varying right side cannot be written into a uniform array.
    """
    in_place, functional = _INPLACE[op]
    if type(a) is Batched and a.data.ndim == 1:
        return functional(a, b)          # (a per-example number: a new value, as Python's)
    if hasattr(a, "shape") and hasattr(a, "dtype"):
        # a staged replay would run it functionally too, without the view records below:
        # a region with an in-place update of an array is not staged
        staging.refuse_while_recording("an in-place update of an array")
        out = functional(a, b)
        if (type(a) is np.ndarray or a.ndim >= 1) and getattr(out, "dtype", a.dtype) != a.dtype \
                and np.can_cast(out.dtype, a.dtype, "same_kind"):
            out = out.astype(a.dtype)   # an array updated in place keeps its dtype, as in numpy
        if getattr(type(a), "_notes_views", False) and a.ndim >= 1:
            views.note_update(a, rebound=True)   # (other names and views keep the old values)
        return out
    kind = type(a)
    if not isinstance(a, (int, float, complex, str, tuple)):
        staging.refuse_while_recording("an in-place update of a container")
    if kind is RaggedList or kind is LaneList or kind is LaneDict or kind is LL.FrozenList:
        if op == "+=" and kind is not LaneDict:
            if type(b) is RaggedList and kind is LaneList:
                LL.extend_lanes(a, b)
            else:
                a.extend(b)
            return a
        return in_place(a, b)
    if isinstance(a, (list, dict, set, bytearray)):
        if STATE.partial:
            _refuse_divergent(f"in-place update ({op}) of a {type(a).__name__}",
                              "Use an array, or build a new list instead of extending a shared one.")
        if is_varying(b):
            filename, lineno = user_frame()
            raise DivergentSideEffect(
                f"in-place update ({op}) of a {type(a).__name__} this function did not create with "
                f"per-example values", filename, lineno, "Build a new list in the function and return it.")
    return in_place(a, b)


def logical_not(value):
    """`not value`, batched when varying."""
    if type(value) is Batched:
        return P.logical_not(value)
    if type(value) is RaggedList:
        return Batched(value.lengths == 0)
    return not value
