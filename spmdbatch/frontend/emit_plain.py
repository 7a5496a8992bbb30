"""Generate plain (un-batched) Python source from a FunctionIR and compile it.

The result behaves like the original function; it is the round-trip oracle of the
lowering and the skeleton the batched code generator builds on.  The code shape is a
dispatch loop over blocks in reverse post-order::

    def f(x):
        _blk = 0
        while True:
            if _blk == 0:
                ...                    # block 0, with single-predecessor successors
                if _t1:                # inlined into the branch arms
                    ...
                else:
                    _blk = 3           # a jump to a merge point / loop header
            elif _blk == 3:
                ...

A function without loops or merge points comes out as straight nested ``if``/``else``
code with no loop at all.  Closure cells are explicit: a cell variable ``x`` lives in
``_c_x`` (a ``types.CellType``), free variables receive the original function's cells.
:class:`PlainEmitter` has one method per statement/expression/terminator kind
(``stmt_<Kind>``, ``expr_<Kind>``, ``term_<Kind>``) so subclasses can override them.
"""
from __future__ import annotations

import builtins
import linecache
import math
import sys
import types

from . import ir
from .ir import Const, FunctionIR, PyNames, Var

_LITERAL_TYPES = (type(None), bool, int, str, bytes)


# --------------------------------------------------------------------------- runtime helpers

def _make_function(code, globals_, defaults, kwdefaults, annotations, closure):
    """Runtime of MakeFunction: build a function like MAKE_FUNCTION does."""
    f = types.FunctionType(code, globals_, code.co_name, defaults, closure)
    if kwdefaults is not None:
        f.__kwdefaults__ = kwdefaults
    if annotations is not None:
        if isinstance(annotations, tuple):
            annotations = dict(zip(annotations[::2], annotations[1::2]))
        f.__annotations__ = annotations
    f.__qualname__ = getattr(code, "co_qualname", code.co_name)
    return f


def _dict_merge(d, other):
    """Runtime of DictMerge: update ``d`` but reject duplicate keys like ``f(**a, **b)``."""
    if not hasattr(other, "keys"):
        raise TypeError(f"argument after ** must be a mapping, not {type(other).__name__}")
    for k in other.keys():
        if k in d:
            raise TypeError(f"got multiple values for keyword argument '{k}'")
        d[k] = other[k]


def _import_from(module, name):
    """Runtime of ImportFrom."""
    try:
        return getattr(module, name)
    except AttributeError:
        full = f"{getattr(module, '__name__', '?')}.{name}"
        if full in sys.modules:
            return sys.modules[full]
        raise ImportError(f"cannot import name {name!r} from {module.__name__!r}") from None


def _import_name(name, globals_, fromlist, level):
    """Runtime of ImportName."""
    return builtins.__import__(name, globals_, None, fromlist, level)


def _load_global(globals_, name):
    """Runtime of LoadGlobal for names that a local of the generated code shadows."""
    try:
        return globals_[name]
    except KeyError:
        b = globals_.get("__builtins__", builtins)
        b = b if isinstance(b, dict) else b.__dict__
        try:
            return b[name]
        except KeyError:
            raise NameError(f"name {name!r} is not defined") from None


_END = object()
_HELPERS = {
    "mkfunc": _make_function, "dict_merge": _dict_merge, "import_from": _import_from,
    "import_name": _import_name, "load_global": _load_global, "Cell": types.CellType,
    "iter": iter, "next": next, "slice": slice, "set": set, "format": format, "repr": repr,
    "str": str, "ascii": ascii, "UNBOUND": ir.UNBOUND, "END": _END,
}
_CONVERT = {"s": "str", "r": "repr", "a": "ascii"}


# --------------------------------------------------------------------------- writer

class Writer:
    """Collects indented source lines."""

    def __init__(self):
        self.lines: list[str] = []
        self.level = 0

    def line(self, text: str):
        self.lines.append("    " * self.level + text)

    def indent(self):
        self.level += 1

    def dedent(self):
        self.level -= 1


class PlainEmitter:
    """Emit un-batched Python source for a FunctionIR (one method per IR kind)."""

    def __init__(self, fn: FunctionIR):
        self.fn = fn
        self.names = PyNames(fn.all_names() | set(fn.argnames))
        self.P = self.names.prefix
        self.consts: list = []          # values passed in through the factory
        self.used_helpers: set[str] = set()
        self.preds = fn.predecessors()
        self.local_names = set(fn.code.co_varnames) | {
            d for blk in fn.blocks.values() for s in blk.stmts for d in s.defs()}
        self.w = Writer()
        self.last_line = None

    # ------------------------------------------------------------------ names, operands
    def v(self, name: str) -> str:
        """Python name of an IR variable."""
        return self.names(name)

    def h(self, helper: str) -> str:
        """Reference a runtime helper (passed into the factory)."""
        self.used_helpers.add(helper)
        return self.names.helper("h_" + helper)

    def cell(self, name: str) -> str:
        return self.names.cell(name)

    def const(self, value) -> str:
        """Source text of a constant: a literal when exact, else a factory parameter."""
        if isinstance(value, _LITERAL_TYPES) and type(value) in _LITERAL_TYPES:
            return repr(value)
        if type(value) is float and math.isfinite(value):
            return repr(value)
        if value is Ellipsis:
            return "..."
        if type(value) is tuple and all(self._is_literal(x) for x in value):
            return "(" + "".join(self.const(x) + ", " for x in value) + ")"
        for i, c in enumerate(self.consts):
            if c is value:
                return self.names.helper(f"k{i}")
        self.consts.append(value)
        return self.names.helper(f"k{len(self.consts) - 1}")

    def _is_literal(self, x) -> bool:
        return (type(x) in _LITERAL_TYPES or (type(x) is float and math.isfinite(x))
                or (type(x) is tuple and all(self._is_literal(y) for y in x)))

    def op(self, o) -> str:
        """Source text of an operand."""
        if isinstance(o, Var):
            return self.v(o.name)
        if isinstance(o, Const):
            return self.const(o.value)
        raise TypeError(f"not an operand: {o!r}")

    def ops(self, items) -> str:
        return ", ".join(self.op(x) for x in items)

    # ------------------------------------------------------------------ expressions
    def expr(self, e) -> str:
        return getattr(self, "expr_" + type(e).__name__)(e)

    def expr_Use(self, e):
        return self.op(e.a)

    def expr_BinOp(self, e):
        return f"{self.op(e.a)} {e.op} {self.op(e.b)}"

    def expr_UnaryOp(self, e):
        return f"not {self.op(e.a)}" if e.op == "not" else f"{e.op}{self.op(e.a)}"

    def expr_Compare(self, e):
        return f"{self.op(e.a)} {e.op} {self.op(e.b)}"

    def expr_Call(self, e):
        parts = [self.op(a) for a in e.args]
        parts += [f"{k}={self.op(v)}" for k, v in e.kwargs.items()]
        if e.star_args is not None:
            parts.append("*" + self.op(e.star_args))
        if e.star_kwargs is not None:
            parts.append("**" + self.op(e.star_kwargs))
        func = self.op(e.func)
        if isinstance(e.func, Const):
            func = f"({func})"
        return f"{func}({', '.join(parts)})"

    def expr_GetAttr(self, e):
        return f"{self._primary(e.obj)}.{e.name}"

    def _primary(self, o) -> str:
        s = self.op(o)
        return f"({s})" if isinstance(o, Const) else s

    def expr_Subscr(self, e):
        return f"{self._primary(e.obj)}[{self.op(e.index)}]"

    def expr_Slice(self, e):
        return f"{self.h('slice')}({self.ops([e.start, e.stop, e.step])})"

    def expr_BuildTuple(self, e):
        return "(" + "".join(self.op(x) + ", " for x in e.items) + ")"

    def expr_BuildList(self, e):
        return f"[{self.ops(e.items)}]"

    def expr_BuildSet(self, e):
        return f"{{{self.ops(e.items)}}}" if e.items else f"{self.h('set')}()"

    def expr_BuildMap(self, e):
        return "{" + ", ".join(f"{self.op(k)}: {self.op(v)}"
                               for k, v in zip(e.keys, e.values)) + "}"

    def expr_BuildString(self, e):
        return f"''.join(({''.join(self.op(x) + ', ' for x in e.items)}))"

    def expr_FormatValue(self, e):
        val = self.op(e.value)
        if e.conversion is not None:
            val = f"{self.h(_CONVERT[e.conversion])}({val})"
        spec = self.op(e.spec) if e.spec is not None else "''"
        return f"{self.h('format')}({val}, {spec})"

    def expr_GetIter(self, e):
        return f"{self.h('iter')}({self.op(e.x)})"

    def expr_LoadGlobal(self, e):
        if e.name in self.local_names or not e.name.isidentifier():
            return f"{self.h('load_global')}({self.names.helper('g')}, {e.name!r})"
        return e.name

    def expr_LoadDeref(self, e):
        return f"{self.cell(e.name)}.cell_contents"

    def expr_LoadClosure(self, e):
        return self.cell(e.name)

    def expr_MakeFunction(self, e):
        args = [self.op(e.code), self.names.helper("g")]
        for o in (e.defaults, e.kwdefaults, e.annotations, e.closure):
            args.append("None" if o is None else self.op(o))
        return f"{self.h('mkfunc')}({', '.join(args)})"

    def expr_ImportName(self, e):
        return (f"{self.h('import_name')}({e.name!r}, {self.names.helper('g')}, "
                f"{self.op(e.fromlist)}, {self.op(e.level)})")

    def expr_ImportFrom(self, e):
        return f"{self.h('import_from')}({self.op(e.module)}, {e.name!r})"

    # ------------------------------------------------------------------ statements
    def stmt(self, s):
        if s.lineno is not None and s.lineno != self.last_line:
            self.last_line = s.lineno
            src = linecache.getline(self.fn.filename, s.lineno).strip()
            self.w.line(f"# {s.lineno}: {src}" if src else f"# line {s.lineno}")
        getattr(self, "stmt_" + type(s).__name__)(s)

    def stmt_Assign(self, s):
        e = s.value
        t = self.v(s.target)
        if isinstance(e, ir.BinOp) and e.op.endswith("=") and e.op not in ("==", "!=",
                                                                           "<=", ">="):
            if not (isinstance(e.a, Var) and e.a.name == s.target):
                self.w.line(f"{t} = {self.op(e.a)}")
            self.w.line(f"{t} {e.op} {self.op(e.b)}")
        elif isinstance(e, ir.SaveLocal):
            # a cell variable's saved "value" is its cell object
            src = self.cell(e.name) if e.name in self.fn.cellvars else self.v(e.name)
            self.w.line("try:")
            self.w.line(f"    {t} = {src}")
            self.w.line("except NameError:")
            self.w.line(f"    {t} = {self.h('UNBOUND')}")
        else:
            self.w.line(f"{t} = {self.expr(e)}")

    def stmt_Unpack(self, s):
        ts = [("*" if i == s.star_index else "") + self.v(t) for i, t in enumerate(s.targets)]
        self.w.line(f"{', '.join(ts)}, = {self.op(s.value)}")

    def stmt_StoreSubscr(self, s):
        self.w.line(f"{self._primary(s.obj)}[{self.op(s.index)}] = {self.op(s.value)}")

    def stmt_StoreAttr(self, s):
        self.w.line(f"{self._primary(s.obj)}.{s.name} = {self.op(s.value)}")

    def stmt_DelSubscr(self, s):
        self.w.line(f"del {self._primary(s.obj)}[{self.op(s.index)}]")

    def stmt_DelAttr(self, s):
        self.w.line(f"del {self._primary(s.obj)}.{s.name}")

    def stmt_DeleteVar(self, s):
        self.w.line(f"del {self.v(s.name)}")

    def stmt_StoreDeref(self, s):
        self.w.line(f"{self.cell(s.name)}.cell_contents = {self.op(s.value)}")

    def stmt_DeleteDeref(self, s):
        self.w.line(f"del {self.cell(s.name)}.cell_contents")

    def stmt_StoreGlobal(self, s):
        self.w.line(f"{self.names.helper('g')}[{s.name!r}] = {self.op(s.value)}")

    def stmt_DeleteGlobal(self, s):
        self.w.line(f"del {self.names.helper('g')}[{s.name!r}]")

    def stmt_ListAppend(self, s):
        self.w.line(f"{self.op(s.lst)}.append({self.op(s.value)})")

    def stmt_ListExtend(self, s):
        self.w.line(f"{self.op(s.lst)}.extend({self.op(s.value)})")

    def stmt_SetAdd(self, s):
        self.w.line(f"{self.op(s.set_)}.add({self.op(s.value)})")

    def stmt_SetUpdate(self, s):
        self.w.line(f"{self.op(s.set_)}.update({self.op(s.value)})")

    def stmt_MapAdd(self, s):
        self.w.line(f"{self.op(s.map_)}[{self.op(s.key)}] = {self.op(s.value)}")

    def stmt_DictUpdate(self, s):
        self.w.line(f"{self.op(s.map_)}.update({self.op(s.value)})")

    def stmt_DictMerge(self, s):
        self.w.line(f"{self.h('dict_merge')}({self.op(s.map_)}, {self.op(s.value)})")

    def stmt_MakeCell(self, s):
        init = self.v(s.name) if s.from_arg else ""
        self.w.line(f"{self.cell(s.name)} = {self.h('Cell')}({init})")

    def stmt_RestoreLocal(self, s):
        n = self.cell(s.name) if s.name in self.fn.cellvars else self.v(s.name)
        self.w.line(f"{n} = {self.op(s.value)}")
        self.w.line(f"if {n} is {self.h('UNBOUND')}:")
        self.w.line(f"    del {n}")

    # ------------------------------------------------------------------ control flow
    def inlinable(self, src: int, target: int) -> bool:
        """True if ``target`` is emitted inside ``src`` (its only predecessor, one edge)."""
        if target == self.fn.entry or self.preds[target] != [src]:
            return False
        edges = [t for t, _ in self.fn.blocks[src].term.successors()]
        return edges.count(target) == 1

    def edge(self, src: int, target: int, args: list):
        """Emit the transfer of control from ``src`` to ``target``."""
        params = self.fn.blocks[target].params
        pairs = [(self.v(p), self.op(a)) for p, a in zip(params, args)
                 if not (isinstance(a, Var) and a.name == p)]
        if pairs:
            self.w.line(f"{', '.join(p for p, _ in pairs)} = {', '.join(a for _, a in pairs)}")
        if self.inlinable(src, target):
            self.block(target)
        else:
            self.w.line(f"{self.names.helper('blk')} = {target}")
            self.dispatch_needed = True

    def block(self, bid: int):
        """Emit block ``bid`` (and, recursively, its inlined successors)."""
        self.emitted.add(bid)
        blk = self.fn.blocks[bid]
        for s in blk.stmts:
            self.stmt(s)
        getattr(self, "term_" + type(blk.term).__name__)(bid, blk.term)

    def term_Jump(self, bid, t):
        self.edge(bid, t.target, t.args)

    def term_Branch(self, bid, t):
        self.w.line(f"if {self.op(t.cond)}:")
        self.w.indent()
        self.edge(bid, t.true_target, t.true_args)
        self.w.dedent()
        self.w.line("else:")
        self.w.indent()
        self.edge(bid, t.false_target, t.false_args)
        self.w.dedent()

    def term_ForIter(self, bid, t):
        item = self.v(t.item_target)
        self.w.line(f"{item} = {self.h('next')}({self.op(t.iterator)}, {self.h('END')})")
        self.w.line(f"if {item} is {self.h('END')}:")
        self.w.indent()
        self.edge(bid, t.exit, t.exit_args)
        self.w.dedent()
        self.w.line("else:")
        self.w.indent()
        self.edge(bid, t.body, t.body_args)
        self.w.dedent()

    def term_Return(self, bid, t):
        self.w.line(f"return {self.op(t.value)}")

    def term_Raise(self, bid, t):
        if t.exc is None:
            self.w.line("raise")
        elif t.cause is None:
            self.w.line(f"raise {self.op(t.exc)}")
        else:
            self.w.line(f"raise {self.op(t.exc)} from {self.op(t.cause)}")

    # ------------------------------------------------------------------ whole function
    def signature(self) -> str:
        fn = self.fn
        pos = [self.v(a) for a in fn.argnames[:fn.argcount]]
        parts = list(pos)
        if fn.posonly_count:
            parts.insert(fn.posonly_count, "/")
        if fn.vararg:
            parts.append("*" + self.v(fn.vararg))
        elif fn.kwonly:
            parts.append("*")
        parts += [self.v(a) for a in fn.kwonly]
        if fn.varkw:
            parts.append("**" + self.v(fn.varkw))
        return ", ".join(parts)

    def body(self) -> list[str]:
        """Source lines of the function body (at indentation level 0)."""
        self.emitted: set[int] = set()
        self.dispatch_needed = False
        arms = []
        for bid in self.fn.order:
            if bid in self.emitted:
                continue
            self.w = Writer()
            self.last_line = None
            self.block(bid)
            arms.append((bid, self.w.lines))
        if not self.dispatch_needed:
            return arms[0][1]
        blk = self.names.helper("blk")
        out = [f"{blk} = {self.fn.entry}", "while True:"]
        for i, (bid, lines) in enumerate(arms):
            out.append(f"    {'if' if i == 0 else 'elif'} {blk} == {bid}:")
            out.extend("        " + ln for ln in lines)
        return out

    def closure_params(self) -> list[str]:
        """Factory parameter names receiving the original function's closure cells."""
        return [self.cell(n) for n in self.fn.freevars]

    def extra_factory_params(self) -> list[str]:
        """Names of extra factory parameters (subclasses pass in more values)."""
        return []

    def source(self) -> str:
        """Full source of the factory that creates the function."""
        body = self.body()
        # Never the user's name: inside the factory it would shadow the global of that name
        # (a recursive call must reach the module's function, not this generated one).
        fname = self.names.helper("fn")
        self.fname = fname
        self.factory_params = ([self.names.helper("g")]
                               + [self.names.helper(f"k{i}") for i in range(len(self.consts))]
                               + [self.names.helper("h_" + h) for h in sorted(self.used_helpers)]
                               + self.closure_params()
                               + self.extra_factory_params())
        lines = [f"def {self.names.helper('factory')}({', '.join(self.factory_params)}):",
                 f"    def {fname}({self.signature()}):"]
        lines += ["        " + ln for ln in body]
        lines.append(f"    return {fname}")
        return "\n".join(lines) + "\n"


def emit_source(fn: FunctionIR) -> str:
    """Source text of the plain function generated for ``fn`` (for reading/debugging)."""
    return PlainEmitter(fn).source()


_counter = [0]


def compile_plain(fn: FunctionIR, globals_: dict | None = None):
    """Compile the plain code for ``fn`` into a function equivalent to the original."""
    em = PlainEmitter(fn)
    src = em.source()
    _counter[0] += 1
    filename = f"<spmd-plain {fn.qualname} #{_counter[0]}>"
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    ns: dict = {}
    exec(compile(src, filename, "exec"), ns)
    orig = fn.func
    if globals_ is None:
        globals_ = orig.__globals__ if orig is not None else {"__builtins__": builtins}
    values = [globals_] + list(em.consts) + [_HELPERS[h] for h in sorted(em.used_helpers)]
    if fn.freevars:
        closure = orig.__closure__ if orig is not None else None
        if closure is None:
            raise ValueError(f"{fn.qualname} has free variables but no closure was given")
        values += list(closure)
    inner = ns[em.names.helper("factory")](*values)
    code = inner.__code__.replace(co_name=fn.name, co_qualname=fn.qualname) \
        if hasattr(inner.__code__, "co_qualname") else inner.__code__.replace(co_name=fn.name)
    out = types.FunctionType(code, globals_, fn.name,
                             orig.__defaults__ if orig is not None else None,
                             inner.__closure__)
    if orig is not None:
        out.__kwdefaults__ = orig.__kwdefaults__
        out.__qualname__ = orig.__qualname__
        out.__doc__ = orig.__doc__
        out.__module__ = orig.__module__
        out.__annotations__ = dict(getattr(orig, "__annotations__", {}) or {})
    out.__spmd_source__ = src
    return out
