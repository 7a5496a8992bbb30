"""Staged code for straight-line regions: batching rules resolved once, one tape node per call.

A function whose batch program has no branches and no loops (a *straight-line region*: a
helper such as ``sigmoid``, a cell written inline, a whole branch-free per-example model)
computes the same sequence of raw array operations every time it is called with arguments of
the same kinds: the batching rules, the dispatch through `Batched` values and the Python of
the function itself only decide *which* raw operations run. `call` records that sequence
once and then replays it:

1. **Record.** The function's batch program runs once with every array leaf of its arguments
   replaced by a `Rec` (lane-major data of a varying argument inside a `Batched`, uniform
   arrays as they are). Every primitive bound on a `Rec` computes its raw result and appends
   ``(primitive, operand references, params)`` to the recording. Anything that would let a
   value's contents steer Python (``bool``, ``int``, ``float``, ``numpy.asarray`` of a `Rec`),
   a side effect (item assignment, attribute or global stores, I/O, list mutation, calls of
   functions outside numpy, spmdbatch and a few pure builtins), a varying branch in a callee,
   or a read from outside the arguments that the guard cannot check (see Guards) aborts the
   recording (`_Abort`); the call then runs on the general path, and the key is remembered
   as not stageable (`not_staged_because(fn)` says why).
2. **Generate.** The recording becomes Python source: one assignment per operation calling the
   primitive's implementation (numpy or CuPy through the backend) on the previous results,
   params inlined. The lane count is the one parameter that changes between calls (groups
   differ in size): a second recording at another lane count is compared with the first, and
   the params and constants that differ exactly as the lane counts do (shapes with the lane
   axis, ``arange(lanes)`` of a gather) become expressions of ``K``, the lane count of the
   call. Recordings that do not generalise stay specialised to their lane count.
3. **Replay.** A later call with the same key runs the generated function on the raw arrays
   and wraps the outputs. When an input is being differentiated, the replay appends the
   operations that carry a gradient to the tape as the tracers would have (one entry per
   operation, the forward values as residuals), so the tape's backward sweep runs their VJP
   rules; no batching rule and no tracer dispatch ran forward. (A single tape node per
   region with its own backward sweep, as first built, cost more than it saved on small
   regions such as a `sigmoid`: the tape's sweep is the cheaper loop.)

Guards. The key of a call is its arguments' structure (pytree), and per leaf: varying or
uniform, dtype, per-example shape and weak flag of a varying value, dtype and shape of a
uniform array, type and value of a Python scalar, string or None. A call with a new key
records again (a dtype, rank or uniform->varying change re-specialises); the arrays of the
arguments (a dict of parameters included) are read at every replay. Everything else the
region reads (globals, closure cells, default arguments, attributes of modules and classes)
is found in the bytecode of the functions it runs and checked by identity before every replay
(execution/staging_guards.py, which refuses reads it cannot check: a global dict or array,
a module passed around); when one was rebound the call records again. A function that keeps
missing (more than `MAX_KEYS` keys or re-recordings) stops being staged. An exception raised
by the generated code (an index out of range, say) reruns the call on the general path,
which raises the error the unstaged program raises (a `LaneError` naming the examples).

Levels. Staging applies only where this batch program is the innermost transform level and
the only batch level, with at most one tape outside it (``grad(spmd(f))``, whose gradient
the replay records as one tape node); under ``spmd(grad(f))``, nested ``spmd`` or
``grad(grad(...))`` every call takes the general path, and a transform started inside a
region aborts its recording.

The switch: ``SPMDBATCH_STAGING=0`` in the environment (read at import) or
``with staging.disabled():`` runs every call on the general path.

`spmdbatch.stats()` counts a replayed call as the batch programs it stands for (the
function and the straight-line callees it ran), with the same lanes.
"""
from __future__ import annotations

import builtins
import os
import threading
import types

import numpy as np

from ..ad.tape import Tape
from ..ad.tracer import Tracer
from ..runtime import pytree
from ..runtime.array_methods import ArrayMethods
from ..runtime.backend import is_float_dtype, namespace
from ..runtime.batched import Batched
from ..runtime.dispatch import Primitive, register_value_type
from ..runtime.levels import LEVELS, BatchLevel
from .state import STATE
from .staging_guards import Guard, scan
from .stats import STATS, Stats

MAX_KEYS = 32          # keys (and lane-count specialisations) per function before giving up
NOT_STAGED = object()  # `call`'s answer when the call must take the general path


class _Switch:
    enabled = os.environ.get("SPMDBATCH_STAGING", "1") not in ("0", "off", "false")


SWITCH = _Switch()


class disabled:  # noqa: N801  (a context manager used like a function)
    """``with staging.disabled():`` runs every call on the general path (tests compare the two;
    a benchmark measures what staging gains)."""

    def __enter__(self):
        self.previous = SWITCH.enabled
        SWITCH.enabled = False

    def __exit__(self, *exc):
        SWITCH.enabled = self.previous
        return False


class _Abort(BaseException):
    """The region cannot be staged (a BaseException, so that no library `except Exception`
    on the way swallows it and carries on with a different computation)."""


class _Recording(threading.local):
    active = None     # the Recorder of this thread, while a region is being recorded
    last_abort = ""   # why this thread's last recording stopped


RECORDING = _Recording()


def recording() -> bool:
    """True while this thread records a region (calls.py then checks what runs)."""
    return RECORDING.active is not None


def abort(why: str = "") -> None:
    raise _Abort(why)


def refuse_while_recording(what: str) -> None:
    """Hook of calls.py's stores, item assignments and in-place updates: a region that makes
    one is not staged (a replay would not repeat it)."""
    if RECORDING.active is not None:
        raise _Abort(what)


# --------------------------------------------------------------------------- recording values

class Rec(ArrayMethods):
    """A raw array produced (or read) inside a region being recorded, and its reference."""

    __slots__ = ("raw", "ref")

    def __init__(self, raw, ref):
        self.raw = raw
        self.ref = ref

    shape = property(lambda self: self.raw.shape)
    ndim = property(lambda self: self.raw.ndim)
    dtype = property(lambda self: self.raw.dtype)
    xp = property(lambda self: namespace(self.raw))

    def _spmd_stop_gradient(self):
        return _STOP(self)

    def _concrete(self, *args, **kwargs):
        abort("a concrete value of an array of the region")

    __bool__ = __int__ = __index__ = __float__ = __complex__ = _concrete
    item = tolist = __array__ = __setitem__ = __format__ = __hash__ = _concrete

    def _spmd_assign(self, other):
        abort("an in-place update")

    def _spmd_refuse_assign(self):
        abort("an in-place update of a varying value")

    def __repr__(self):
        return f"Rec({self.ref}, shape={self.raw.shape}, dtype={self.raw.dtype})"


_STOP = Primitive("stop_gradient", lambda x: x, differentiable=False)


def _rec_apply(prim, args, params):
    """Dispatch handler of `Rec`: compute on the raw values and record the operation."""
    rec = RECORDING.active
    if rec is None:
        raise AssertionError("a recording value outside its recording")
    if len(LEVELS.stack) != rec.depth:
        abort("a transform (grad, spmd) inside the region")
    raw, refs = [], []
    for a in args:
        kind = type(a)
        if kind is Rec:
            raw.append(a.raw)
            refs.append(a.ref)
        elif kind is Tracer:
            abort("a value being differentiated that is not an argument (a global or closure)")
        elif kind in _LITERALS:
            if (kind is tuple or kind is list) and not _plain_literal(a):
                abort(f"{prim.name} takes a sequence of arrays")
            raw.append(a)
            refs.append(("l", a))
        elif hasattr(a, "shape") and hasattr(a, "dtype"):
            if getattr(a, "ndim", 0) == 0 and type(a) is not np.ndarray:    # a numpy scalar
                raw.append(a)
                refs.append(("l", a))
            else:
                raw.append(a)
                refs.append(("c", rec.constant(a)))
        elif isinstance(a, (np.dtype, type)) or a is Ellipsis:
            raw.append(a)
            refs.append(("l", a))
        else:
            abort(f"{prim.name} takes a {kind.__name__}")
    ans = prim.impl(*raw, **params)
    if not hasattr(ans, "dtype"):
        abort(f"{prim.name} gave a {type(ans).__name__}")
    rec.ops.append((prim, tuple(refs), params))
    return Rec(ans, ("v", len(rec.ops) - 1))


register_value_type(Rec, 1.5, _rec_apply)

_LITERALS = frozenset([int, float, bool, complex, type(None), str, slice, tuple, list])


def _plain_literal(value) -> bool:
    """A (nested) tuple or list of Python scalars, slices and None: safe to bake into code."""
    for v in value:
        kind = type(v)
        if kind is tuple or kind is list:
            if not _plain_literal(v):
                return False
        elif kind not in _LITERALS:
            return False
    return True


class Recorder:
    """What a recording collects: operations, constants, the guard, counted calls."""

    def __init__(self, lanes, depth):
        self.lanes = lanes
        self.depth = depth            # len(LEVELS.stack) while the region runs
        self.ops: list = []
        self.consts: list = []
        self.guard = Guard()
        self.stats = Stats()

    def constant(self, value) -> int:
        for i, c in enumerate(self.consts):
            if c is value:
                return i
        self.consts.append(value)
        return len(self.consts) - 1

    def note_function(self, fn, native: bool = False) -> None:
        """Add what user function `fn` reads from outside its arguments to the guard
        (execution/staging_guards.py); abort on a read the guard cannot stand for (and, when
        `fn` runs `native`ly rather than as a batch program, on a write it could make)."""
        scan(fn, self.guard, abort, _IS_USER_FUNCTION, native)


_IS_USER_FUNCTION = None    # calls.is_user_function, set by calls.py (which imports this module)


def set_user_function_test(test) -> None:
    """Called once by calls.py: `test(fn)` tells user functions (scanned and guarded) from
    library ones (trusted)."""
    global _IS_USER_FUNCTION
    _IS_USER_FUNCTION = test


# --------------------------------------------------------------------------- calls during recording

_PURE_BUILTINS = frozenset([
    builtins.len, builtins.abs, builtins.min, builtins.max, builtins.isinstance, builtins.tuple,
    builtins.list, builtins.dict, builtins.range, builtins.zip, builtins.enumerate, builtins.sum,
    builtins.slice, builtins.int, builtins.float, builtins.bool, builtins.round, builtins.divmod,
    builtins.pow, builtins.reversed, builtins.sorted, builtins.any, builtins.all, builtins.map,
    builtins.getattr, builtins.hasattr, builtins.type, builtins.str, builtins.repr])
_MUTATORS = frozenset({"append", "extend", "insert", "pop", "remove", "clear", "sort", "reverse",
                       "update", "setdefault", "popitem", "add", "discard", "__setitem__",
                       "__delitem__", "__iadd__"})


def check_call(fn, user: bool, native: bool = True, args=(), kwargs=None) -> None:
    """Called by calls.call for every call a region being recorded makes: abort on what a
    replay would not repeat (side effects, randomness, functions outside the libraries)."""
    rec = RECORDING.active
    if user:
        rec.note_function(fn, native)
        return
    for a in (*args, *(kwargs or {}).values()):     # (map(f, ...), sorted(key=f): f runs natively)
        if type(a) is types.FunctionType and _IS_USER_FUNCTION(a):
            rec.note_function(a, True)
    kind = type(fn)
    if kind is types.BuiltinFunctionType or kind is types.BuiltinMethodType:
        owner = getattr(fn, "__self__", None)
        if owner is None or type(owner) is types.ModuleType:
            module = getattr(fn, "__module__", None) or getattr(owner, "__name__", "") or ""
            if fn in _PURE_BUILTINS or (module.startswith("numpy") and "random" not in module):
                return
            abort(f"calls {getattr(fn, '__name__', fn)}")
        if isinstance(owner, (list, dict, set, bytearray)) and fn.__name__ in _MUTATORS:
            abort("mutates a container")
        if isinstance(owner, (list, dict, tuple, set, frozenset, str)) or type(owner).__module__.startswith("numpy"):
            return
        abort(f"calls {getattr(fn, '__qualname__', fn)}")
    if kind is type:
        if fn in _PURE_BUILTINS or fn.__module__.startswith("numpy"):
            return
        abort(f"constructs a {fn.__name__}")
    if isinstance(fn, np.ufunc):
        return
    module = getattr(fn, "__module__", None) or ""
    if kind is types.MethodType:
        module = type(fn.__self__).__module__ if not isinstance(fn.__self__, type) else fn.__self__.__module__
        if fn.__self__.__class__ in (Rec, Batched) or module.startswith("spmdbatch"):
            return
    if (module.startswith("numpy") and "random" not in module) or \
            (module.startswith("spmdbatch") and not module.startswith("spmdbatch.nn.random")):
        return
    if fn in _PURE_BUILTINS:
        return
    abort(f"calls {getattr(fn, '__qualname__', fn)}")


# --------------------------------------------------------------------------- keys

_SCALARS = (int, float, bool, complex, str, type(None))


def _raw(value):
    return value.value if type(value) is Tracer else value


def key_of(args, kwargs):
    """(leaves, key, lanes) of a call's arguments, or None when they are not stageable."""
    leaves: list = []
    parts: list = [len(args)]
    lanes = None
    for a in args:                  # plain batched arrays inline (the common case)
        if type(a) is Batched and type(a.data) is np.ndarray:
            data = a.data
            shape = data.shape
            if lanes is None:
                lanes = shape[0]
            elif lanes != shape[0]:
                return None
            leaves.append(a)
            parts.append(("B", data.dtype, shape[1:], a.weak))
        elif not _describe(a, leaves, parts):
            return None
    if kwargs and not _describe(kwargs, leaves, parts):
        return None
    for leaf in leaves:
        if type(leaf) is Batched:
            n = leaf.data.shape[0]
            if lanes is None:
                lanes = n
            elif lanes != n:
                return None
    if lanes is None or lanes < 2:
        return None
    return leaves, tuple(parts), lanes


def _describe(value, leaves, parts) -> bool:
    """Append `value`'s leaves and the key parts of its structure and leaves (False: a value
    the staged code cannot take)."""
    kind = type(value)
    if kind is Batched:
        data = value.data
        if type(data) is Tracer:
            data = data.value
        if type(data) is not np.ndarray and not hasattr(data, "__cuda_array_interface__"):
            return False
        leaves.append(value)
        parts.append(("B", data.dtype, data.shape[1:], value.weak))
        return True
    if kind is dict:
        parts.append(("d", tuple(value)))
        for v in value.values():
            if type(v) is np.ndarray:        # (the common case inline: a dict of parameters)
                leaves.append(v)
                parts.append(("A", v.dtype, v.shape))
            elif not _describe(v, leaves, parts):
                return False
        return True
    if kind is tuple or kind is list:
        parts.append((kind, len(value)))
        for v in value:
            if not _describe(v, leaves, parts):
                return False
        return True
    if kind in _SCALARS:
        leaves.append(value)
        parts.append((kind, value))
        return True
    raw = value.value if kind is Tracer else value
    if type(raw) is np.ndarray or (hasattr(raw, "__cuda_array_interface__") and hasattr(raw, "dtype")):
        leaves.append(value)
        parts.append(("A", raw.dtype, raw.shape))
        return True
    if isinstance(raw, np.generic):
        leaves.append(value)
        parts.append(("S", raw.dtype))
        return True
    # Anything else (an object, a registered pytree of a user class): not staged. Its class
    # can have attributes and methods the region reads through the argument (``self.scale``),
    # out of the guard's sight.
    return False


def _rebuild(value, it):
    """`value` with its leaves (in `_describe` order) taken from iterator `it`."""
    kind = type(value)
    if kind is dict:
        return {k: _rebuild(v, it) for k, v in value.items()}
    if kind is tuple:
        return tuple(_rebuild(v, it) for v in value)
    if kind is list:
        return [_rebuild(v, it) for v in value]
    if kind is Batched or kind in _SCALARS or pytree.is_leaf(value):
        return next(it)
    sub, treedef = pytree.flatten(value)
    return treedef.unflatten([next(it) for _ in sub])


# --------------------------------------------------------------------------- the cache

_CACHE_ATTR = "__spmd_staged__"


class _FunctionCache:
    __slots__ = ("entries", "misses", "disabled")

    def __init__(self):
        self.entries: dict = {}     # key -> _KeyEntry
        self.misses = 0
        self.disabled = False


class _KeyEntry:
    __slots__ = ("generic", "by_lanes", "first", "failed", "errors", "why")

    def __init__(self):
        self.errors = 0
        self.why = ""     # why the recording stopped (see `not_staged_because`)
        self.generic = None
        self.by_lanes: dict = {}
        self.first = None
        self.failed = False


def _cache_of(fn) -> _FunctionCache:
    d = fn.__dict__
    cache = d.get(_CACHE_ATTR)
    if cache is None or cache[0] is not fn.__code__:
        cache = d[_CACHE_ATTR] = (fn.__code__, _FunctionCache())
    return cache[1]


def not_staged_because(fn) -> list:
    """Why the recordings of `fn` stopped, one line per key that is not staged (for tests and
    for a user asking why a function runs on the general path)."""
    cache = fn.__dict__.get(_CACHE_ATTR)
    if cache is None:
        return []
    return [e.why for e in cache[1].entries.values() if e.failed and e.why]


def call(fn, batched_fn, self_arg, args, kwargs, general):
    """Run straight-line `fn` (batch program `batched_fn`) staged, or `NOT_STAGED`.

    `general()` runs the call on the general path (used when a replay raises)."""
    if RECORDING.active is not None:
        # a straight-line callee of a region being recorded: part of that region
        RECORDING.active.note_function(fn)
        return batched_fn(*self_arg, *args, **kwargs)
    if not SWITCH.enabled:
        return NOT_STAGED
    tape = _staging_tape()
    if tape is False:
        return NOT_STAGED
    cache = _cache_of(fn)
    if cache.disabled:
        return NOT_STAGED
    all_args = tuple(self_arg) + tuple(args)
    found = key_of(all_args, kwargs)
    if found is None:
        return NOT_STAGED
    leaves, key, lanes = found
    entry = cache.entries.get(key)
    if entry is None:
        if len(cache.entries) >= MAX_KEYS:
            cache.disabled = True
            return NOT_STAGED
        entry = cache.entries[key] = _KeyEntry()
    if entry.failed:
        return NOT_STAGED
    staged = entry.generic
    if staged is None:
        staged = entry.by_lanes.get(lanes)
    if staged is not None and not staged.guard.holds():
        cache.misses += 1
        if cache.misses > MAX_KEYS:
            cache.disabled = True
            return NOT_STAGED
        entry.generic = None
        entry.by_lanes.clear()
        entry.first = None
        staged = None
    if staged is None:
        trace = _record(fn, batched_fn, all_args, kwargs, leaves, lanes, tape)
        if trace is _ERROR:           # the general path raises the program's own error;
            entry.errors += 1         # one that does not (a library that refuses `Rec`
            entry.failed = entry.errors >= 2   # values) stops the recording attempts
            return NOT_STAGED
        if trace is None:
            entry.failed = True
            entry.why = RECORDING.last_abort
            return NOT_STAGED
        first = entry.first
        if first is not None and first.lanes != lanes:
            generic = _generalise(first, trace)
            if generic is not None:
                entry.generic = generic.build()
                entry.by_lanes.clear()
                staged = entry.generic
        if staged is None:
            if len(entry.by_lanes) >= MAX_KEYS:
                entry.failed = True
                return NOT_STAGED
            entry.first = entry.first or trace
            staged = entry.by_lanes[lanes] = trace.build()
    try:
        return staged.run(leaves, lanes, tape)
    except Exception:
        return general()


def _staging_tape():
    """The tape a replay records on (None: no gradient is taken), or False where staging
    does not apply: the innermost level must be this batch program's, the only batch level
    running, with at most one tape outside it (grad of spmd); under spmd(grad(...)), nested
    spmd or grad of grad the call takes the general path."""
    stack = LEVELS.stack
    n = len(stack)
    if n == 1:
        return None if type(stack[0]) is BatchLevel else False
    if n == 2 and type(stack[1]) is BatchLevel and isinstance(stack[0], Tape):
        return stack[0]
    return False


def _record(fn, batched_fn, all_args, kwargs, leaves, lanes, tape):
    """Run the batch program once on recording values; the Trace, or None (not stageable)."""
    for leaf in leaves:
        data = leaf.data if type(leaf) is Batched else leaf
        if type(data) is Tracer and type(data.value) is Tracer:
            return None             # (a tracer of nested tapes)
    rec = Recorder(lanes, len(LEVELS.stack))
    rec.input_kinds = ["B" if type(leaf) is Batched else "A" for leaf in leaves]
    rec_leaves = []
    for i, leaf in enumerate(leaves):
        kind = type(leaf)
        if kind is Batched:
            rec_leaves.append(Batched(Rec(_raw(leaf.data), ("i", i)), leaf.weak))
        elif kind in _SCALARS:
            rec_leaves.append(leaf)
        else:
            rec_leaves.append(Rec(_raw(leaf), ("i", i)))
    it = iter(rec_leaves)
    r_args = _rebuild(all_args, it)
    r_kwargs = _rebuild(kwargs, it) if kwargs else {}
    saved_stats = STATS.active
    STATS.active = rec.stats      # the calls the region makes, counted again at each replay
    RECORDING.active = rec
    try:
        rec.note_function(fn)
        out = batched_fn(*r_args, **r_kwargs)
        outputs = _output_refs(out, rec)
    except _Abort as exc:
        RECORDING.last_abort = str(exc)
        return None
    except Exception:
        return _ERROR
    finally:
        RECORDING.active = None
        STATS.active = saved_stats
    return Trace(rec, outputs, len(leaves))


def _output_refs(out, rec):
    leaves, treedef = pytree.flatten(out)
    refs = []
    for leaf in leaves:
        kind = type(leaf)
        if kind is Batched:
            if type(leaf.data) is not Rec:
                abort("a varying output that is not computed from the inputs")
            refs.append(("B", leaf.data.ref, leaf.weak))
        elif kind is Rec:
            refs.append(("U", leaf.ref, False))
        elif kind in _SCALARS or isinstance(leaf, np.generic):
            refs.append(("L", leaf, False))   # computed from the key's Python values alone
        else:
            abort(f"returns a {kind.__name__}")
    return treedef, refs


# --------------------------------------------------------------------------- traces

class _LanesSym:
    """Stands for the lane count `K` of a call in generalised params."""

    def __repr__(self):
        return "K"


LANES = _LanesSym()


class Arange:
    """Stands for ``arange(m * K, (m + 1) * K)`` in generalised constants: a gather's lane
    positions (m = 0), the lanes of the m-th call of a fused call."""

    __slots__ = ("m",)

    def __init__(self, m):
        self.m = m

    def value(self, lanes, xp):
        return xp.arange(self.m * lanes, (self.m + 1) * lanes)


class Trace:
    """One recording: operations, constants, outputs; `build()` generates its code."""

    def __init__(self, rec: Recorder, outputs, n_inputs):
        self.lanes = rec.lanes
        self.ops = rec.ops
        self.consts = rec.consts
        self.guard = rec.guard
        self.outputs = outputs
        self.n_inputs = n_inputs
        self.input_kinds = rec.input_kinds
        self.calls = [(name, len(v)) for name, v in rec.stats.lanes.items()]

    def build(self) -> "Staged":
        return Staged(self)


def _generalise_value(a, b, na, nb):
    """`a` (recorded at na lanes) and `b` (at nb) as one value with `LANES`, or _NO."""
    if type(a) is int and type(b) is int:
        if a == b:
            return a
        if a == na and b == nb:
            return LANES
        return _NO
    if type(a) is tuple and type(b) is tuple and len(a) == len(b):
        out = []
        for x, y in zip(a, b):
            g = _generalise_value(x, y, na, nb)
            if g is _NO:
                return _NO
            out.append(g)
        return tuple(out)
    if type(a) is not type(b):
        return _NO
    try:
        if isinstance(a, np.generic) and a.dtype == b.dtype and bool(a == b):
            return a
        if a is b or (not hasattr(a, "shape") and bool(a == b)):
            return a
    except Exception:
        return _NO
    return _NO


_NO = object()
_ERROR = object()


def _same(a, b) -> bool:
    """Structural equality of output references (literals compared by type and value)."""
    if type(a) is not type(b):
        return False
    if type(a) in (tuple, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:
        return False


def _generalise_const(a, b, na, nb):
    if a is b:
        return a
    if type(a) is np.ndarray and type(b) is np.ndarray:
        if a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b):
            return a
        if a.ndim == 1 and a.dtype.kind == "i" and a.shape == (na,) and b.shape == (nb,) and na:
            m = int(a[0]) // na
            if np.array_equal(a, np.arange(m * na, (m + 1) * na)) and \
                    np.array_equal(b, np.arange(m * nb, (m + 1) * nb)):
                return Arange(m)
    return _NO


def _generalise(t1: Trace, t2: Trace):
    """One trace for any lane count from traces at two lane counts, or None."""
    na, nb = t1.lanes, t2.lanes
    if len(t1.ops) != len(t2.ops) or len(t1.consts) != len(t2.consts) or t1.calls != t2.calls \
            or t1.n_inputs != t2.n_inputs:
        return None
    if t1.outputs[0] != t2.outputs[0] or not _same(t1.outputs[1], t2.outputs[1]):
        return None
    ops = []
    for (p1, r1, k1), (p2, r2, k2) in zip(t1.ops, t2.ops):
        if p1 is not p2 or len(r1) != len(r2) or k1.keys() != k2.keys():
            return None
        for x, y in zip(r1, r2):
            if x[0] != y[0] or (x[0] != "l" and x != y):
                return None
            if x[0] == "l" and _generalise_value(x[1], y[1], na, nb) is not x[1]:
                return None
        params = {}
        for name in k1:
            g = _generalise_value(k1[name], k2[name], na, nb)
            if g is _NO:
                return None
            params[name] = g
        ops.append((p1, r1, params))
    consts = []
    for a, b in zip(t1.consts, t2.consts):
        g = _generalise_const(a, b, na, nb)
        if g is _NO:
            return None
        consts.append(g)
    out = Trace.__new__(Trace)
    out.lanes = None
    out.ops, out.consts, out.guard = ops, consts, t2.guard
    out.outputs, out.n_inputs, out.calls = t2.outputs, t2.n_inputs, t2.calls
    out.input_kinds = t2.input_kinds
    return out


def _has_lanes(value) -> bool:
    if value is LANES:
        return True
    if type(value) is tuple:
        return any(_has_lanes(v) for v in value)
    return False


class Staged:
    """The generated code of one trace and what a replay needs."""

    def __init__(self, trace: Trace):
        self.trace = trace
        self.guard = trace.guard
        self.calls = trace.calls
        self.treedef, self.outputs = trace.outputs
        self.ops = trace.ops
        self.forward = self._generate()
        self.plans: dict = {}       # traced-input mask -> backward plan

    # --- code generation ------------------------------------------------------------------
    def _generate(self):
        trace = self.trace
        env: dict = {"np": np}
        lines = ["def staged(I, K, xp):"]
        n = 0

        def const(value):
            nonlocal n
            n += 1
            env[f"_c{n}"] = value
            return f"_c{n}"

        def expr_of(value):
            if value is LANES:
                return "K"
            if type(value) is tuple and _has_lanes(value):
                return "(" + "".join(expr_of(v) + ", " for v in value) + ")"
            if type(value) in (int, bool, type(None)) or (type(value) is str):
                return repr(value)
            return const(value)

        const_names = []
        for c in trace.consts:
            if type(c) is Arange:
                const_names.append(f"xp.arange({c.m} * K, {c.m + 1} * K)")
            else:
                const_names.append(const(c))

        def ref(r):
            kind = r[0]
            if kind == "v":
                return f"v{r[1]}"
            if kind == "i":
                return f"a{r[1]}"
            if kind == "c":
                return const_names[r[1]]
            return expr_of(r[1]) if type(r[1]) in (int, bool, type(None)) else const(r[1])

        body = []
        for j, (prim, refs, params) in enumerate(trace.ops):
            f = const(prim.impl)
            args = [ref(r) for r in refs] + [f"{k}={expr_of(v)}" for k, v in params.items()]
            body.append(f"    v{j} = {f}({', '.join(args)})")
        used = sorted({r[1] for _, refs, _ in trace.ops for r in refs if r[0] == "i"}
                      | {r[1] for kind, r, _ in self.outputs if kind != "L" and r[0] == "i"})
        needs_xp = any(type(c) is Arange for c in trace.consts)
        # staged(I, K, xp): raw inputs -> every value (the residuals of a VJP)
        lines = ["def staged(I, K, xp):"]
        lines += [f"    a{i} = I[{i}]" for i in used] + body
        lines.append("    return [" + "".join(f"v{j}, " for j in range(len(trace.ops))) + "]")
        # fast(L, K): leaves -> the call's result (no tape active)
        fast = ["def fast(L, K):"]
        for i in used:
            fast.append(f"    a{i} = L[{i}].data" if trace.input_kinds[i] == "B" else f"    a{i} = L[{i}]")
        if needs_xp:
            fast.append(f"    xp = _namespace(a{used[0]})" if used else "    xp = np")
        fast += body
        if self.calls:
            fast.append("    if _STATS.active is not None:\n        _count(K)")
        env["_Batched"], env["_STATS"], env["_count"], env["_namespace"] = \
            Batched, STATS, self.count, namespace

        def out_expr(o):
            kind, r, weak = o
            if kind == "L":
                return const(r)
            e = ref(r)
            return f"_Batched({e}, {weak!r})" if kind == "B" else e
        exprs = [out_expr(o) for o in self.outputs]
        td = self.treedef
        if td.kind is None:
            fast.append(f"    return {exprs[0]}")
        elif td.aux is tuple and all(c.kind is None for c in td.children):
            fast.append("    return (" + "".join(e + ", " for e in exprs) + ")")
        else:
            fast.append(f"    return {const(td)}.unflatten([{', '.join(exprs)}])")
        self.source = "\n".join(lines) + "\n\n" + "\n".join(fast)
        exec(compile(self.source, f"<staged {len(trace.ops)} ops>", "exec"), env)
        self.const_env = env
        self.const_refs = const_names
        self.fast = env["fast"]
        return env["staged"]

    def count(self, lanes):
        """Count the batch programs this replay stands for in `spmdbatch.stats()`."""
        frame = STATE.frame
        skipped = 0 if frame is None or STATE.lanes is None else max(0, frame.n - len(STATE.lanes))
        for name, count in self.calls:
            for _ in range(count):
                STATS.record_call(name, lanes, skipped)

    # --- replay ---------------------------------------------------------------------------
    def run(self, leaves, lanes, tape):
        if tape is None:
            return self.fast(leaves, lanes)
        raw = []
        traced = []
        xp = np
        for i, leaf in enumerate(leaves):
            kind = type(leaf)
            if kind is Batched:
                leaf = leaf.data
                kind = type(leaf)
            if kind is Tracer:
                if tape is not None and leaf.tape is tape:
                    traced.append(i)
                raw.append(leaf.value)
            else:
                raw.append(leaf)
        for r in raw:
            if type(r) is not np.ndarray and hasattr(r, "__cuda_array_interface__"):
                xp = namespace(r)
                break
        values = self.forward(raw, lanes, xp)
        if STATS.active is not None:
            self.count(lanes)
        outs = []
        for kind, r, weak in self.outputs:
            if kind == "L":
                outs.append(r)
                continue
            v = self._value(r, raw, values, lanes, xp)
            outs.append(v)
        if traced:
            self._record_on_tape(tape, leaves, raw, values, traced, outs, lanes, xp)
        result = []
        for (kind, r, weak), v in zip(self.outputs, outs):
            result.append(Batched(v, weak) if kind == "B" else v)
        return self.treedef.unflatten(result)

    def _value(self, r, raw, values, lanes, xp):
        kind = r[0]
        if kind == "v":
            return values[r[1]]
        if kind == "i":
            return raw[r[1]]
        if kind == "c":
            c = self.trace.consts[r[1]]
            return c.value(lanes, xp) if type(c) is Arange else c
        return r[1]

    def _record_on_tape(self, tape, leaves, raw, values, traced, outs, lanes, xp):
        """Append the replayed operations that carry a gradient to `tape`, as the tracers
        would have (one entry per operation, its residuals the values the forward computed),
        and make the outputs that depend on a traced input tracers of those entries. The
        tape's own backward sweep then differentiates them: no batching rule ran forward."""
        mask = tuple(traced)
        plan = self.plans.get(mask)
        if plan is None:
            plan = self.plans[mask] = _backward_plan(self.ops, set(traced), values)
        if not plan:
            return
        inputs = {}
        for i in traced:
            leaf = leaves[i]
            inputs[i] = leaf.data if type(leaf) is Batched else leaf
        node_of = {}
        nodes = tape.nodes
        value = self._value
        for j, prim, refs, params, lane_params, parent_refs in plan:
            operands = [value(r, raw, values, lanes, xp) for r in refs]
            parents = [(pos, inputs[idx].node if kind == "i" else node_of[idx])
                       for pos, kind, idx in parent_refs]
            if lane_params:
                params = _concrete_params(params, lanes)
            nodes.append((prim, operands, params, values[j], parents))
            node_of[j] = len(nodes) - 1
        for k, (kind, r, weak) in enumerate(self.outputs):
            if kind == "L":
                continue
            if r[0] == "v" and r[1] in node_of:
                outs[k] = Tracer(outs[k], tape, node_of[r[1]])
            elif r[0] == "i" and r[1] in inputs:
                outs[k] = inputs[r[1]]


def _backward_plan(ops, traced_inputs, values):
    """The operations that depend on a traced input and carry a gradient, in order:
    ``(index, primitive, operand refs, params, params mention the lane count, parent refs)``
    with parent refs ``(operand position, "i" or "v", input or operation index)``."""
    needed = set()
    plan = []
    for j, (prim, refs, params) in enumerate(ops):
        if not prim.differentiable or not is_float_dtype(values[j].dtype):
            continue
        parent_refs = [(pos, r[0], r[1]) for pos, r in enumerate(refs)
                       if (r[0] == "v" and r[1] in needed) or (r[0] == "i" and r[1] in traced_inputs)]
        if not parent_refs:
            continue
        if prim.vjp is None:
            raise NotImplementedError(f"primitive {prim.name!r} has no VJP rule; declare one "
                                      f"with vjp= where it is declared (spmdbatch.primitive)")
        needed.add(j)
        plan.append((j, prim, refs, params, any(_has_lanes(v) for v in params.values()),
                     parent_refs))
    return plan


def _concrete_params(params, lanes):
    for v in params.values():
        if _has_lanes(v):
            return {k: _substitute(v, lanes) for k, v in params.items()}
    return params


def _substitute(value, lanes):
    if value is LANES:
        return lanes
    if type(value) is tuple:
        return tuple(_substitute(v, lanes) for v in value)
    return value
