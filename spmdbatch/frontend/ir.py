"""The frontend IR: a control-flow graph of basic blocks in three-address form.

A :class:`FunctionIR` holds :class:`Block` objects keyed by integer id.  Every block has
``params`` (block arguments: they receive the values that were live on the interpreter
stack when control entered the block, i.e. phi nodes), a list of statements and one
terminator.  Statement operands are always :class:`Var` or :class:`Const`, never nested
expressions.

Naming: Python locals keep their names (``x``, ``h``).  Temporaries are ``$t<n>`` and
block parameters ``$b<block>_<slot>``; the ``$`` makes them impossible to clash with
user code.  :class:`PyNames` maps every IR name to a valid, clash-free Python identifier
for code generation.
"""
from __future__ import annotations

import keyword
import linecache
from dataclasses import dataclass, field
from typing import Any, Iterator, Union


# ----------------------------------------------------------------------------- operands

@dataclass(frozen=True)
class Var:
    """A named variable: a Python local (``x``), a temporary (``$t3``) or a block param."""
    name: str

    def __repr__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Const:
    """A compile-time constant value (from ``co_consts`` or produced by the lowering)."""
    value: Any

    def __repr__(self) -> str:
        v = self.value
        if hasattr(v, "co_name"):
            return f"<code {v.co_name}>"
        return repr(v)


Operand = Union[Var, Const]


class _UnboundType:
    """Type of :data:`UNBOUND`, the value a saved comprehension variable has when unset."""
    _inst = None

    def __new__(cls):
        if cls._inst is None:
            cls._inst = super().__new__(cls)
        return cls._inst

    def __repr__(self) -> str:
        return "UNBOUND"


#: Marker for "this local had no value" (3.12+ inlined comprehensions save/restore it).
UNBOUND = _UnboundType()


def _flatten(values) -> Iterator[Operand]:
    """Yield every operand found in ``values`` (operands, lists, dicts, None)."""
    for v in values:
        if v is None:
            continue
        if isinstance(v, (Var, Const)):
            yield v
        elif isinstance(v, dict):
            yield from _flatten(v.values())
        elif isinstance(v, (list, tuple)):
            yield from _flatten(v)


class _HasOperands:
    """Mixin: ``OPERANDS`` lists the attribute names that hold operands."""
    OPERANDS: tuple[str, ...] = ()

    def operands(self) -> list[Operand]:
        """All operands read, in evaluation order."""
        return list(_flatten(getattr(self, f) for f in self.OPERANDS))

    def used_vars(self) -> list[str]:
        """Names of the variables read."""
        return [o.name for o in self.operands() if isinstance(o, Var)]


# ----------------------------------------------------------------------------- expressions

class Expr(_HasOperands):
    """Right-hand side of an :class:`Assign`; operands are Var/Const only."""


@dataclass
class Use(Expr):
    """Copy of an operand."""
    a: Operand
    OPERANDS = ("a",)


@dataclass
class BinOp(Expr):
    """Binary operator; ``op`` is the Python symbol ('+', '@', '**', ...) or in-place form ('+=')."""
    op: str
    a: Operand
    b: Operand
    OPERANDS = ("a", "b")


@dataclass
class UnaryOp(Expr):
    """Unary operator: '-', '+', '~' or 'not'."""
    op: str
    a: Operand
    OPERANDS = ("a",)


@dataclass
class Compare(Expr):
    """Comparison: '<','<=','==','!=','>','>=','is','is not','in','not in'."""
    op: str
    a: Operand
    b: Operand
    OPERANDS = ("a", "b")


@dataclass
class Call(Expr):
    """``func(*args, **kwargs, *star_args, **star_kwargs)``; star parts are a tuple and a dict."""
    func: Operand
    args: list
    kwargs: dict = field(default_factory=dict)
    star_args: Operand | None = None
    star_kwargs: Operand | None = None
    OPERANDS = ("func", "args", "kwargs", "star_args", "star_kwargs")


@dataclass
class GetAttr(Expr):
    """``obj.name``."""
    obj: Operand
    name: str
    OPERANDS = ("obj",)


@dataclass
class Subscr(Expr):
    """``obj[index]``."""
    obj: Operand
    index: Operand
    OPERANDS = ("obj", "index")


@dataclass
class Slice(Expr):
    """``slice(start, stop, step)``."""
    start: Operand
    stop: Operand
    step: Operand
    OPERANDS = ("start", "stop", "step")


@dataclass
class BuildTuple(Expr):
    """``(items...)``."""
    items: list
    OPERANDS = ("items",)


@dataclass
class BuildList(Expr):
    """``[items...]``."""
    items: list
    OPERANDS = ("items",)


@dataclass
class BuildSet(Expr):
    """``{items...}``."""
    items: list
    OPERANDS = ("items",)


@dataclass
class BuildMap(Expr):
    """``{k0: v0, ...}``."""
    keys: list
    values: list
    OPERANDS = ("keys", "values")


@dataclass
class BuildString(Expr):
    """Concatenation of already formatted strings (f-string pieces)."""
    items: list
    OPERANDS = ("items",)


@dataclass
class FormatValue(Expr):
    """``format(conv(value), spec)``; conversion is None, 's', 'r' or 'a'; spec None means ''."""
    value: Operand
    conversion: str | None = None
    spec: Operand | None = None
    OPERANDS = ("value", "spec")


@dataclass
class GetIter(Expr):
    """``iter(x)``."""
    x: Operand
    OPERANDS = ("x",)


@dataclass
class LoadGlobal(Expr):
    """A global (or builtin) name."""
    name: str


@dataclass
class LoadDeref(Expr):
    """Contents of the closure cell of cell/free variable ``name``."""
    name: str


@dataclass
class LoadClosure(Expr):
    """The cell object itself of cell/free variable ``name`` (to build closures)."""
    name: str


@dataclass
class MakeFunction(Expr):
    """A new function from a code object constant, with optional attributes."""
    code: Operand
    defaults: Operand | None = None
    kwdefaults: Operand | None = None
    annotations: Operand | None = None
    closure: Operand | None = None
    OPERANDS = ("code", "defaults", "kwdefaults", "annotations", "closure")


@dataclass
class ImportName(Expr):
    """``__import__(name, globals, None, fromlist, level)``."""
    name: str
    fromlist: Operand
    level: Operand
    OPERANDS = ("fromlist", "level")


@dataclass
class ImportFrom(Expr):
    """``from module import name`` (attribute, falling back to the submodule)."""
    module: Operand
    name: str
    OPERANDS = ("module",)


@dataclass
class SaveLocal(Expr):
    """Current value of local ``name``, or :data:`UNBOUND` (3.12+ comprehension save)."""
    name: str

    def used_vars(self) -> list[str]:
        return [self.name]


# ----------------------------------------------------------------------------- statements

class Stmt(_HasOperands):
    """A statement.  ``defs()`` are the variables written, ``uses()`` those read."""
    lineno: int | None

    def defs(self) -> list[str]:
        return []

    def uses(self) -> list[str]:
        return self.used_vars()


@dataclass
class Assign(Stmt):
    """``target = value``."""
    target: str
    value: Expr
    lineno: int | None = field(default=None, kw_only=True)

    def operands(self):
        return self.value.operands()

    def uses(self):
        return self.value.used_vars()

    def defs(self):
        return [self.target]


@dataclass
class Unpack(Stmt):
    """``t0, t1, *t2, t3 = value``; ``star_index`` is the index of the starred target or None."""
    targets: list
    value: Operand
    star_index: int | None = None
    lineno: int | None = field(default=None, kw_only=True)
    OPERANDS = ("value",)

    def defs(self):
        return list(self.targets)


@dataclass
class StoreSubscr(Stmt):
    """``obj[index] = value``."""
    obj: Operand
    index: Operand
    value: Operand
    lineno: int | None = field(default=None, kw_only=True)
    OPERANDS = ("value", "obj", "index")


@dataclass
class StoreAttr(Stmt):
    """``obj.name = value``."""
    obj: Operand
    name: str
    value: Operand
    lineno: int | None = field(default=None, kw_only=True)
    OPERANDS = ("value", "obj")


@dataclass
class DelSubscr(Stmt):
    """``del obj[index]``."""
    obj: Operand
    index: Operand
    lineno: int | None = field(default=None, kw_only=True)
    OPERANDS = ("obj", "index")


@dataclass
class DelAttr(Stmt):
    """``del obj.name``."""
    obj: Operand
    name: str
    lineno: int | None = field(default=None, kw_only=True)
    OPERANDS = ("obj",)


@dataclass
class DeleteVar(Stmt):
    """``del name`` for a local."""
    name: str
    lineno: int | None = field(default=None, kw_only=True)

    def defs(self):
        return [self.name]


@dataclass
class StoreDeref(Stmt):
    """Store into the closure cell of ``name``."""
    name: str
    value: Operand
    lineno: int | None = field(default=None, kw_only=True)
    OPERANDS = ("value",)

    def defs(self):
        return [self.name]


@dataclass
class DeleteDeref(Stmt):
    """Empty the closure cell of ``name``."""
    name: str
    lineno: int | None = field(default=None, kw_only=True)

    def defs(self):
        return [self.name]


@dataclass
class StoreGlobal(Stmt):
    """``global name; name = value``."""
    name: str
    value: Operand
    lineno: int | None = field(default=None, kw_only=True)
    OPERANDS = ("value",)


@dataclass
class DeleteGlobal(Stmt):
    """``global name; del name``."""
    name: str
    lineno: int | None = field(default=None, kw_only=True)


@dataclass
class ListAppend(Stmt):
    """``lst.append(value)`` on a list built by the comprehension/display code."""
    lst: Operand
    value: Operand
    lineno: int | None = field(default=None, kw_only=True)
    OPERANDS = ("lst", "value")


@dataclass
class ListExtend(Stmt):
    """``lst.extend(value)``."""
    lst: Operand
    value: Operand
    lineno: int | None = field(default=None, kw_only=True)
    OPERANDS = ("lst", "value")


@dataclass
class SetAdd(Stmt):
    """``set_.add(value)``."""
    set_: Operand
    value: Operand
    lineno: int | None = field(default=None, kw_only=True)
    OPERANDS = ("set_", "value")


@dataclass
class SetUpdate(Stmt):
    """``set_.update(value)``."""
    set_: Operand
    value: Operand
    lineno: int | None = field(default=None, kw_only=True)
    OPERANDS = ("set_", "value")


@dataclass
class MapAdd(Stmt):
    """``map_[key] = value`` (dict comprehension)."""
    map_: Operand
    key: Operand
    value: Operand
    lineno: int | None = field(default=None, kw_only=True)
    OPERANDS = ("map_", "key", "value")


@dataclass
class DictUpdate(Stmt):
    """``map_.update(value)`` (``{**a}`` displays)."""
    map_: Operand
    value: Operand
    lineno: int | None = field(default=None, kw_only=True)
    OPERANDS = ("map_", "value")


@dataclass
class DictMerge(Stmt):
    """Like DictUpdate but a duplicate key is a TypeError (``f(**a, **b)``)."""
    map_: Operand
    value: Operand
    lineno: int | None = field(default=None, kw_only=True)
    OPERANDS = ("map_", "value")


@dataclass
class MakeCell(Stmt):
    """Create the closure cell of cell variable ``name`` (holding the argument if ``from_arg``)."""
    name: str
    from_arg: bool = False
    lineno: int | None = field(default=None, kw_only=True)

    def uses(self):
        return [self.name] if self.from_arg else []

    def defs(self):
        return [self.name]


@dataclass
class RestoreLocal(Stmt):
    """``name = value``, or unbind ``name`` if value is UNBOUND (end of 3.12+ comprehension)."""
    name: str
    value: Operand
    lineno: int | None = field(default=None, kw_only=True)
    OPERANDS = ("value",)

    def defs(self):
        return [self.name]


# ----------------------------------------------------------------------------- terminators

class Terminator(_HasOperands):
    """Last instruction of a block."""
    lineno: int | None

    def successors(self) -> list[tuple[int, list]]:
        """(target block, args) for every outgoing edge."""
        return []

    def defs(self) -> list[str]:
        return []

    def uses_before(self) -> list[str]:
        """Variables read before ``defs()`` are written (the decision inputs)."""
        return self.used_vars()


@dataclass
class Jump(Terminator):
    """Unconditional jump; ``args`` fill the target's params."""
    target: int
    args: list = field(default_factory=list)
    lineno: int | None = field(default=None, kw_only=True)
    OPERANDS = ("args",)

    def successors(self):
        return [(self.target, self.args)]


@dataclass
class Branch(Terminator):
    """Two-way branch on the truthiness of ``cond``."""
    cond: Var
    true_target: int
    true_args: list
    false_target: int
    false_args: list
    lineno: int | None = field(default=None, kw_only=True)
    OPERANDS = ("cond", "true_args", "false_args")

    def successors(self):
        return [(self.true_target, self.true_args), (self.false_target, self.false_args)]


@dataclass
class ForIter(Terminator):
    """One step of a for loop: ``item_target = next(iterator)`` then body, or exit when exhausted."""
    iterator: Operand
    item_target: str
    body: int
    body_args: list
    exit: int
    exit_args: list
    lineno: int | None = field(default=None, kw_only=True)
    OPERANDS = ("iterator", "body_args", "exit_args")

    def successors(self):
        return [(self.body, self.body_args), (self.exit, self.exit_args)]

    def defs(self):
        return [self.item_target]

    def uses_before(self):
        return [self.iterator.name] if isinstance(self.iterator, Var) else []


@dataclass
class Return(Terminator):
    """``return value``."""
    value: Operand
    lineno: int | None = field(default=None, kw_only=True)
    OPERANDS = ("value",)


@dataclass
class Raise(Terminator):
    """``raise exc from cause``; exc None is a bare re-raise."""
    exc: Operand | None = None
    cause: Operand | None = None
    lineno: int | None = field(default=None, kw_only=True)
    OPERANDS = ("exc", "cause")


# ----------------------------------------------------------------------------- containers

@dataclass
class Block:
    """A basic block: params (block arguments), statements and a terminator."""
    id: int
    params: list = field(default_factory=list)
    stmts: list = field(default_factory=list)
    term: Terminator | None = None


@dataclass
class FunctionIR:
    """A lowered function.  ``order`` is the reverse post-order of the reachable blocks."""
    name: str
    qualname: str
    argnames: list            # every parameter in order (positional, *args, kw-only, **kwargs)
    posonly_count: int
    argcount: int             # positional parameters, including positional-only
    kwonly: list
    vararg: str | None
    varkw: str | None
    cellvars: list
    freevars: list
    filename: str
    firstlineno: int
    code: Any
    func: Any = None
    blocks: dict = field(default_factory=dict)
    entry: int = 0
    order: list = field(default_factory=list)

    def all_names(self) -> set[str]:
        """Every name appearing in user code (locals, cells, globals, attributes)."""
        c = self.code
        return set(c.co_varnames) | set(c.co_cellvars) | set(c.co_freevars) | set(c.co_names)

    def successors(self, bid: int) -> list[int]:
        """Successor block ids of ``bid`` (without duplicates, in edge order)."""
        out = []
        for t, _ in self.blocks[bid].term.successors():
            if t not in out:
                out.append(t)
        return out

    def predecessors(self) -> dict[int, list[int]]:
        """Predecessor lists for every block."""
        preds = {b: [] for b in self.blocks}
        for b in self.order:
            for s in self.successors(b):
                if b not in preds[s]:
                    preds[s].append(b)
        return preds


# ----------------------------------------------------------------------------- python names

class PyNames:
    """Maps IR names to valid Python identifiers that cannot clash with user names.

    User names are kept unchanged (so a generated function has the same signature).
    Generated names (temporaries, block params, helpers) all start with a prefix chosen
    so that no user name starts with it: ``_`` if possible (``$t3`` -> ``_t3``), else
    ``_s_``, ``_s1_``, ...  Names that are not identifiers are renamed with that prefix.
    """

    def __init__(self, user_names):
        user_names = set(user_names)
        prefix, i = "_", 0
        while any(u.startswith(prefix) for u in user_names):
            prefix = f"_s{i or ''}_"
            i += 1
        self.prefix = prefix
        self._map: dict[str, str] = {}
        self._counter = 0

    def __call__(self, name: str) -> str:
        """Python identifier for IR name ``name``."""
        got = self._map.get(name)
        if got is not None:
            return got
        if name.startswith("$"):
            out = self.prefix + name[1:]
        elif name.isidentifier() and not keyword.iskeyword(name):
            out = name
        else:
            self._counter += 1
            clean = "".join(ch if ch.isalnum() else "_" for ch in name)
            out = f"{self.prefix}v{self._counter}_{clean}"
        self._map[name] = out
        return out

    def helper(self, what: str) -> str:
        """Name of a generated helper/support variable, e.g. ``helper('blk')``."""
        return f"{self.prefix}{what}"

    def cell(self, name: str) -> str:
        """Name of the variable holding the closure cell of ``name``."""
        return f"{self.prefix}c_{self(name)}"


# ----------------------------------------------------------------------------- printing

def _fmt_args(args) -> str:
    return "(" + ", ".join(map(repr, args)) + ")" if args else ""


def format_expr(e: Expr) -> str:
    """Readable one-line form of an expression."""
    k = type(e).__name__
    if isinstance(e, Use):
        return repr(e.a)
    if isinstance(e, (BinOp, Compare)):
        return f"{e.a!r} {e.op} {e.b!r}"
    if isinstance(e, UnaryOp):
        return f"{e.op}{' ' if e.op == 'not' else ''}{e.a!r}"
    if isinstance(e, Call):
        parts = [repr(a) for a in e.args] + [f"{k}={v!r}" for k, v in e.kwargs.items()]
        if e.star_args is not None:
            parts.append(f"*{e.star_args!r}")
        if e.star_kwargs is not None:
            parts.append(f"**{e.star_kwargs!r}")
        return f"call {e.func!r}({', '.join(parts)})"
    if isinstance(e, GetAttr):
        return f"{e.obj!r}.{e.name}"
    if isinstance(e, Subscr):
        return f"{e.obj!r}[{e.index!r}]"
    if isinstance(e, (LoadGlobal, LoadDeref, LoadClosure, SaveLocal)):
        return f"{k}({e.name})"
    if isinstance(e, BuildMap):
        return "{" + ", ".join(f"{a!r}: {b!r}" for a, b in zip(e.keys, e.values)) + "}"
    fields = []
    for f in e.__dataclass_fields__:
        v = getattr(e, f)
        if v is not None:
            fields.append(repr(v))
    return f"{k}({', '.join(fields)})"


def format_stmt(s: Stmt) -> str:
    """Readable one-line form of a statement."""
    if isinstance(s, Assign):
        return f"{s.target} = {format_expr(s.value)}"
    if isinstance(s, Unpack):
        ts = [("*" if i == s.star_index else "") + t for i, t in enumerate(s.targets)]
        return f"{', '.join(ts)} = unpack {s.value!r}"
    if isinstance(s, StoreSubscr):
        return f"{s.obj!r}[{s.index!r}] = {s.value!r}"
    if isinstance(s, StoreAttr):
        return f"{s.obj!r}.{s.name} = {s.value!r}"
    fields = [repr(getattr(s, f)) for f in s.__dataclass_fields__ if f != "lineno"]
    return f"{type(s).__name__}({', '.join(fields)})"


def format_term(t: Terminator) -> str:
    """Readable one-line form of a terminator."""
    if isinstance(t, Jump):
        return f"jump {t.target}{_fmt_args(t.args)}"
    if isinstance(t, Branch):
        return (f"branch {t.cond!r} ? {t.true_target}{_fmt_args(t.true_args)}"
                f" : {t.false_target}{_fmt_args(t.false_args)}")
    if isinstance(t, ForIter):
        return (f"for {t.item_target} in {t.iterator!r} -> {t.body}{_fmt_args(t.body_args)}"
                f" else {t.exit}{_fmt_args(t.exit_args)}")
    if isinstance(t, Return):
        return f"return {t.value!r}"
    if isinstance(t, Raise):
        out = "raise"
        if t.exc is not None:
            out += f" {t.exc!r}"
        if t.cause is not None:
            out += f" from {t.cause!r}"
        return out
    return repr(t)


def format_ir(fn: FunctionIR) -> str:
    """Pretty-print a FunctionIR: one line per statement, with source lines as comments."""
    lines = [f"function {fn.qualname}({', '.join(fn.argnames)})  "
             f"# {fn.filename}:{fn.firstlineno}"]
    if fn.cellvars or fn.freevars:
        lines.append(f"  cellvars={fn.cellvars} freevars={fn.freevars}")
    preds = fn.predecessors()
    ids = list(fn.order) + [b for b in fn.blocks if b not in fn.order]
    for bid in ids:
        blk = fn.blocks[bid]
        head = f"block {bid}"
        if blk.params:
            head += "(" + ", ".join(blk.params) + ")"
        head += f":  # preds {sorted(preds.get(bid, []))}"
        if bid == fn.entry:
            head += " entry"
        lines.append(head)
        last = None
        items = [(s.lineno, format_stmt(s)) for s in blk.stmts]
        if blk.term is not None:
            items.append((blk.term.lineno, format_term(blk.term)))
        for lineno, text in items:
            if lineno is not None and lineno != last:
                src = linecache.getline(fn.filename, lineno).strip()
                if src:
                    lines.append(f"    # {lineno}: {src}")
                last = lineno
            lines.append(f"    {text}")
    return "\n".join(lines)
