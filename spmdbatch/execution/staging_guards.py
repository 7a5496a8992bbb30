"""What a staged region reads from outside its arguments, and the guard that re-checks it.

A staged region (execution/staging.py) bakes into its generated code everything its Python
decided while it was recorded: which operations ran, their parameters, the constants they
took. Those decisions depend on the call's arguments (the key of the call) and on values the
region's functions read from outside them: globals, closure cells, default arguments, and
attributes of modules and classes reached from those. This module finds every such read in
the code of the functions a region runs (statically, from their bytecode, including the
functions and comprehensions they define), and records each one as a guard entry
``(kind, owner, name, value)``; a replay first checks that every entry still gives the same
object (`Guard.holds`), and records again when one does not.

A read is only accepted when its value cannot change without the guard seeing it:

- immutable values (numbers, strings, None, tuples and frozensets of such), functions
  (scanned in turn: their own reads join the guard), classes and callables of numpy and of
  spmdbatch, numpy ufuncs and dtypes, modules;
- a module or a class whose attributes can be rebound is only accepted as the owner of an
  attribute read written in the code (``mod.W``, ``mod.sub.f``, ``Cls.helper``): the read is
  a guard entry of its own. Every other use of such a namespace (``m = mod``, passing it to a
  function, returning it) would let the code read its attributes out of the guard's sight,
  so it stops the recording.

Anything else read from outside (a dict or list of parameters, an array, an object) stops the
recording: the call runs on the general path. (An array's contents may change in place, and
values computed from it natively would be stale; pass such values as arguments instead, whose
leaves are read at every replay.) So do ``import`` inside a region, ``super()`` and
``LOAD_NAME`` (class bodies, ``exec``).

`scan(fn, guard, abort, is_user_function)` adds `fn`'s reads to `guard`, calling
``abort(why)`` on a read it cannot guard.
"""
from __future__ import annotations

import builtins
import dis
import types

import numpy as np

from ..runtime.dispatch import Primitive

MISSING = object()

_IMMUTABLE = (int, float, bool, complex, str, bytes, type(None), type(Ellipsis), range,
              slice, np.generic, np.dtype)
_SKIP = frozenset(["CACHE", "EXTENDED_ARG", "NOP"])
_ATTR_LOADS = frozenset(["LOAD_ATTR", "LOAD_METHOD"])
_REFUSED = {"IMPORT_NAME": "an import", "IMPORT_FROM": "an import", "IMPORT_STAR": "an import",
            "LOAD_SUPER_ATTR": "super()", "LOAD_NAME": "a name read through locals()",
            "LOAD_CLASSDEREF": "a class body", "LOAD_FROM_DICT_OR_GLOBALS": "a class body",
            "LOAD_FROM_DICT_OR_DEREF": "a class body"}
_IMMUTABLE_TYPE_FLAG = 1 << 8       # Py_TPFLAGS_IMMUTABLETYPE (static and immutable types)
# Writes a function run natively (not as a batch program, whose writes calls.py refuses while
# a region records) would make once and a replay would not make again:
_NATIVE_WRITES = {"STORE_GLOBAL": "a global store", "DELETE_GLOBAL": "a global deletion",
                  "STORE_ATTR": "an attribute store", "DELETE_ATTR": "an attribute deletion",
                  "STORE_SUBSCR": "an item assignment", "DELETE_SUBSCR": "an item deletion",
                  "STORE_SLICE": "a slice assignment"}
# Functions and modules whose calls have effects or results a replay would not repeat (I/O,
# random numbers, clocks, dynamic code): a region whose code names them is not staged (calls.py
# refuses them in batch programs already; a helper run natively would call them unseen).
_EFFECT_BUILTINS = frozenset(["print", "open", "input", "exec", "eval", "compile", "globals",
                              "locals", "vars", "setattr", "delattr", "__import__", "breakpoint",
                              "id"])
_EFFECT_MODULES = ("numpy.random", "random", "time", "os", "sys", "io", "secrets", "uuid",
                   "datetime", "threading", "subprocess", "pickle", "spmdbatch.nn.random")
_MUTATING_METHODS = frozenset(["append", "extend", "insert", "pop", "remove", "clear", "sort",
                               "reverse", "update", "setdefault", "popitem", "add", "discard",
                               "at", "fill", "resize", "itemset", "put", "setfield", "partition"])


class Guard:
    """The reads of one region: entries ``(kind, owner, name, value)``.

    kinds: ``"g"`` a global (owner: the globals dict; a missing global reads builtins, so
    ``"b"`` then guards the builtin too), ``"c"`` a closure cell, ``"m"`` an attribute in a
    module's or function's ``__dict__``, ``"t"`` an attribute of a class found along its MRO,
    ``"o"`` an attribute of another object (read with getattr)."""

    __slots__ = ("entries", "seen_functions", "seen_codes")

    def __init__(self):
        self.entries: list = []
        self.seen_functions: dict = {}     # function -> scanned as native
        self.seen_codes: set = set()

    def add(self, kind, owner, name, value) -> None:
        self.entries.append((kind, owner, name, value))

    def holds(self) -> bool:
        """True when every read gives the object it gave when the region was recorded."""
        for kind, owner, name, value in self.entries:
            if kind == "g" or kind == "m" or kind == "b":
                if owner.get(name, MISSING) is not value:
                    return False
            elif kind == "c":
                try:
                    if owner.cell_contents is not value:
                        return False
                except ValueError:          # an emptied cell
                    return False
            elif kind == "t":
                if _class_attr(owner, name) is not value:
                    return False
            elif getattr(owner, name, MISSING) is not value:
                return False
        return True


def _class_attr(cls, name):
    """The raw attribute `name` of class `cls` (the first along its MRO), or MISSING."""
    for klass in cls.__mro__:
        d = klass.__dict__
        if name in d:
            return d[name]
    return MISSING


def _is_mutable_type(value) -> bool:
    return isinstance(value, type) and not (value.__flags__ & _IMMUTABLE_TYPE_FLAG)


def is_namespace(value) -> bool:
    """A module or a class whose attributes can be rebound: only accepted as the owner of an
    attribute read that the guard checks."""
    return isinstance(value, types.ModuleType) or _is_mutable_type(value)


def _library_callable(value) -> bool:
    """A function object of numpy (``numpy.split`` is a dispatcher object), or a stateless
    callable of spmdbatch (an object holding state, such as a layer, is not accepted)."""
    module = type(value).__module__ or ""
    if not callable(value) or hasattr(value, "shape"):
        return False
    return module.startswith("numpy") or (module.startswith("spmdbatch")
                                           and not hasattr(value, "__dict__"))


def acceptable(value) -> bool:
    """A value read from outside the arguments that the guard can stand for by identity."""
    if isinstance(value, _IMMUTABLE):
        return not isinstance(value, np.ndarray)
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, types.ModuleType, type,
                          np.ufunc, Primitive, staticmethod, classmethod)):
        return True
    if type(value) is tuple or type(value) is frozenset:
        return all(acceptable(v) and not is_namespace(v) for v in value)
    return _library_callable(value)


def _code_objects(code):
    """`code` and the code of the functions, lambdas and comprehensions it defines."""
    yield code
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            yield from _code_objects(c)


_INSTRUCTIONS: dict = {}


def _instructions(code) -> list:
    entry = _INSTRUCTIONS.get(id(code))
    if entry is not None and entry[0] is code:
        return entry[1]
    out = [(ins.opname, ins.argrepr if ins.opname == "BINARY_OP" else ins.argval)
           for ins in dis.get_instructions(code) if ins.opname not in _SKIP]
    if len(_INSTRUCTIONS) < 10_000:
        _INSTRUCTIONS[id(code)] = (code, out)
    return out


def scan(fn, guard: Guard, abort, is_user_function, native: bool = True) -> None:
    """Add the reads of user function `fn` (and of the functions it names) to `guard`.

    `native`: `fn` may run as plain Python (not as a batch program, whose stores calls.py
    refuses): then any write it could make to state outside its locals (a global, an
    attribute, an item, an in-place operator, a container's or array's mutating method,
    ``out=``) stops the recording too. Functions it names are scanned likewise (a function a
    batch program names and calls goes through calls.call, which scans it again as native
    when it runs natively; one it hands to a library function is scanned as native there)."""
    seen = guard.seen_functions
    if fn in seen and (seen[fn] or not native):
        return
    seen[fn] = native
    code = fn.__code__
    guard.add("o", fn, "__code__", code)     # (a function's code can be replaced)
    if code in guard.seen_codes:
        # a function defined inside a region already scanned (its free variables are that
        # function's local cells, made anew at every call)
        if native:
            for c in _code_objects(code):
                _check_native_writes(c, {}, abort)
        return
    for attr in ("__defaults__", "__kwdefaults__"):
        value = getattr(fn, attr)
        if value is not None:
            items = value if attr == "__defaults__" else tuple(value.values())
            for v in items:
                _check(v, f"a default argument of {fn.__qualname__}", abort)
            guard.add("o", fn, attr, value)
    cells = dict(zip(code.co_freevars, fn.__closure__ or ()))
    g = fn.__globals__
    todo = []
    for c in _code_objects(code):
        guard.seen_codes.add(c)
        # (a nested function reads the same outer cells: guarding a name it shadows is harmless)
        _scan_code(c, g, cells, guard, abort, todo)
        if native:
            _check_native_writes(c, cells, abort)
    for f in todo:
        if is_user_function(f):
            scan(f, guard, abort, is_user_function, native)


def _check_native_writes(code, cells, abort) -> None:
    for op, arg in _instructions(code):
        if op in _NATIVE_WRITES:
            abort(_NATIVE_WRITES[op])
        if op == "STORE_DEREF" and arg in cells:
            abort("an assignment of a nonlocal variable")
        if op == "BINARY_OP" and arg.endswith("=") and arg not in ("==", "!=", "<=", ">="):
            abort(f"an in-place operator ({arg})")
        if op in _ATTR_LOADS and arg in _MUTATING_METHODS:
            abort(f"a call of .{arg} (it may change its object in place)")
    for c in code.co_consts:
        if type(c) is tuple and "out" in c:
            abort("an out= argument")


def _check(value, what, abort):
    if not acceptable(value):
        abort(f"reads {what}, a {type(value).__name__} that may change between calls "
              f"(pass it as an argument)")


def _scan_code(code, g, cells, guard, abort, todo) -> None:
    ins = _instructions(code)
    builtins_dict = g.get("__builtins__", builtins.__dict__)
    if isinstance(builtins_dict, types.ModuleType):
        builtins_dict = builtins_dict.__dict__
    static = MISSING            # the value the previous instruction pushed, when known
    for k, (op, arg) in enumerate(ins):
        if op in _REFUSED:
            abort(_REFUSED[op])
        value = MISSING
        if op == "LOAD_GLOBAL":
            value = g.get(arg, MISSING)
            guard.add("g", g, arg, value)
            if value is MISSING:
                value = builtins_dict.get(arg, MISSING)
                guard.add("b", builtins_dict, arg, value)
                if value is MISSING:
                    abort(f"reads the undefined name {arg!r}")
            _check(value, f"global {arg!r}", abort)
        elif op == "LOAD_DEREF" and arg in cells:
            cell = cells[arg]
            try:
                value = cell.cell_contents
            except ValueError:
                abort(f"reads the empty closure variable {arg!r}")
            guard.add("c", cell, arg, value)
            _check(value, f"closure variable {arg!r}", abort)
        elif op in _ATTR_LOADS and static is not MISSING:
            value = _attribute(static, arg, guard, abort)
            _check(value, f"attribute {arg!r} of {getattr(static, '__name__', static)!r}", abort)
        if value is MISSING:
            static = MISSING
            continue
        if _has_effects(value, builtins_dict):
            abort(f"uses {getattr(value, '__name__', value)!r}, whose calls a replay would not "
                  f"repeat")
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if type(value) is types.FunctionType:
            todo.append(value)
        elif type(value) is tuple:
            todo.extend(v for v in value if type(v) is types.FunctionType)
        if is_namespace(value):
            nxt = ins[k + 1][0] if k + 1 < len(ins) else ""
            if nxt not in _ATTR_LOADS:
                abort(f"uses {getattr(value, '__name__', value)!r} other than to read an "
                      f"attribute (its attributes could change unseen)")
        static = value


def _has_effects(value, builtins_dict) -> bool:
    if isinstance(value, types.ModuleType):
        module = value.__name__
    elif isinstance(value, (types.BuiltinFunctionType, types.FunctionType, type)) or \
            _library_callable(value):
        name = getattr(value, "__name__", None)
        if name in _EFFECT_BUILTINS and builtins_dict.get(name) is value:
            return True
        module = getattr(value, "__module__", None) or type(value).__module__ or ""
    else:
        return False
    return any(module == m or module.startswith(m + ".") for m in _EFFECT_MODULES)


def _attribute(owner, name, guard, abort):
    """The attribute `name` of `owner` (a value the guard already stands for), added to the
    guard unless it cannot be rebound."""
    if isinstance(owner, types.ModuleType) or type(owner) is types.FunctionType:
        value = owner.__dict__.get(name, MISSING)
        if value is MISSING:
            if type(owner) is types.FunctionType and name in ("__name__", "__qualname__",
                                                               "__module__", "__doc__"):
                value = getattr(owner, name)
                guard.add("o", owner, name, value)
                return value
            abort(f"reads {name!r}, which {owner!r} computes on access")
        guard.add("m", owner.__dict__, name, value)
        return value
    if isinstance(owner, type):
        raw = _class_attr(owner, name)
        if raw is MISSING:
            abort(f"reads {name!r}, which class {owner.__name__} computes on access")
        if _is_mutable_type(owner) or any(_is_mutable_type(k) for k in owner.__mro__):
            guard.add("t", owner, name, raw)
        if isinstance(raw, (staticmethod, classmethod, types.FunctionType)) or \
                not hasattr(type(raw), "__get__"):
            return raw
        return getattr(owner, name)         # (a descriptor of an immutable type)
    if not (type(owner).__flags__ & _IMMUTABLE_TYPE_FLAG) or hasattr(owner, "__dict__"):
        value = getattr(owner, name, MISSING)
        guard.add("o", owner, name, value)
        return value
    return getattr(owner, name)             # (an attribute of a numpy or builtin object)
