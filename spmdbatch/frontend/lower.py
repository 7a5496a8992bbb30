"""Lower bytecode to the IR by symbolic stack simulation, one handler per opcode.

Each reachable basic block of the ``bytecode`` CFG becomes one IR :class:`Block`.  The
interpreter stack is simulated with operands (:class:`Var`/:class:`Const`) and a ``NULL``
marker (CPython's NULL slot used by calls).  When control leaves a block with values on
the stack they travel to the successor: a block with a single predecessor simply inherits
the predecessor's stack operands; any other block receives them as block params
(``$b<block>_<slot>``) filled by the jump's args.

Rules that keep three-address form faithful to Python:

* ``LOAD_FAST x`` pushes ``Var('x')`` lazily; when ``x`` is overwritten or deleted while
  such an entry is still on the stack, the entry is first snapshotted into a temporary
  (so ``x, y = y, x`` works).
* Everything with an observable effect or that may fail (attribute loads, calls,
  globals, cells, operators) is emitted at its original position, so evaluation order is
  the original one.

Opcode handlers live in :data:`HANDLERS` (registered with :func:`handles`), version-gated
with :data:`PY312`/:data:`PY313` where CPython 3.11, 3.12 and 3.13 differ.
"""
from __future__ import annotations

import sys
from typing import Callable

from bytecode import CellVar, FreeVar, Instr

from ..errors import UnsupportedConstruct
from . import ir
from .decode import Decoded, decode
from .ir import (Assign, Block, Branch, Const, ForIter, FunctionIR, Jump, Raise, Return, Var)

PY311 = sys.version_info >= (3, 11)
PY312 = sys.version_info >= (3, 12)
PY313 = sys.version_info >= (3, 13)


class _Null:
    """The NULL stack marker (a slot with no Python object in it)."""

    def __repr__(self) -> str:
        return "NULL"


NULL = _Null()

#: opcode name -> handler(lowerer, instr)
HANDLERS: dict[str, Callable] = {}


def handles(*names: str, when: bool = True):
    """Register the decorated function as the handler of the opcodes ``names`` (if ``when``)."""
    def deco(fn):
        if when:
            for n in names:
                HANDLERS[n] = fn
        return fn
    return deco


_COND_JUMPS = {
    "POP_JUMP_IF_FALSE", "POP_JUMP_IF_TRUE", "POP_JUMP_IF_NONE", "POP_JUMP_IF_NOT_NONE",
    "POP_JUMP_FORWARD_IF_FALSE", "POP_JUMP_FORWARD_IF_TRUE", "POP_JUMP_FORWARD_IF_NONE",
    "POP_JUMP_FORWARD_IF_NOT_NONE", "POP_JUMP_BACKWARD_IF_FALSE", "POP_JUMP_BACKWARD_IF_TRUE",
    "POP_JUMP_BACKWARD_IF_NONE", "POP_JUMP_BACKWARD_IF_NOT_NONE",
    "JUMP_IF_FALSE_OR_POP", "JUMP_IF_TRUE_OR_POP", "FOR_ITER",
}
_UNCOND_JUMPS = {"JUMP_FORWARD", "JUMP_BACKWARD", "JUMP_BACKWARD_NO_INTERRUPT", "JUMP",
                 "JUMP_NO_INTERRUPT", "JUMP_ABSOLUTE"}
_FINAL = {"RETURN_VALUE", "RETURN_CONST", "RAISE_VARARGS", "RERAISE"}


def _instrs(bblock) -> list[Instr]:
    return [i for i in bblock if isinstance(i, Instr)]


class Lowerer:
    """Symbolic-stack lowering of one decoded function to a :class:`FunctionIR`."""

    def __init__(self, dec: Decoded):
        self.dec = dec
        self.code = dec.code
        self.cfg = dec.cfg
        self.index = {id(b): i for i, b in enumerate(self.cfg)}
        self.ntemp = 0
        self.maybe_unbound: set[str] = set()
        self.entry_stack: dict[int, list] = {}
        self.blocks: dict[int, Block] = {}
        c = self.code
        vn = c.co_varnames
        n = c.co_argcount + c.co_kwonlyargcount
        self.pos = list(vn[:c.co_argcount])
        self.kwonly = list(vn[c.co_argcount:n])
        self.vararg = self.varkw = None
        if c.co_flags & 0x04:
            self.vararg = vn[n]
            n += 1
        if c.co_flags & 0x08:
            self.varkw = vn[n]
        self.argset = set(vn[:n + (1 if self.varkw else 0)])
        self.cells = set(c.co_cellvars) | set(c.co_freevars)
        # per-block state
        self.stack: list = []
        self.stmts: list = []
        self.term = None
        self.lineno: int | None = c.co_firstlineno
        self.cur = -1
        self.kw_names: tuple = ()

    # ------------------------------------------------------------------ helpers
    def error(self, msg: str, hint: str | None = None) -> UnsupportedConstruct:
        """An UnsupportedConstruct pointing at the current source line."""
        return UnsupportedConstruct(msg, self.code.co_filename, self.lineno, hint)

    def temp(self) -> str:
        """A fresh temporary name."""
        self.ntemp += 1
        return f"$t{self.ntemp}"

    def emit(self, stmt):
        """Append a statement (stamped with the current line) to the current block."""
        stmt.lineno = self.lineno
        self.stmts.append(stmt)
        return stmt

    def assign(self, expr) -> Var:
        """Emit ``$tN = expr`` and return ``Var('$tN')``."""
        t = self.temp()
        self.emit(Assign(t, expr))
        return Var(t)

    def push(self, v):
        self.stack.append(v)

    def pop(self):
        if not self.stack:
            raise self.error("internal error: stack underflow while lowering bytecode")
        return self.stack.pop()

    def popn(self, n: int) -> list:
        """Pop ``n`` entries; returned bottom-first (the order they were pushed)."""
        if n == 0:
            return []
        if len(self.stack) < n:
            raise self.error("internal error: stack underflow while lowering bytecode")
        out = self.stack[-n:]
        del self.stack[-n:]
        return out

    def operand(self, v):
        """Check that a popped entry is a real value (not NULL)."""
        if v is NULL:
            raise self.error("internal error: NULL stack slot used as a value")
        return v

    def as_var(self, v) -> Var:
        """Return ``v`` as a Var, materializing constants into a temporary."""
        v = self.operand(v)
        return v if isinstance(v, Var) else self.assign(ir.Use(v))

    def snapshot(self, name: str):
        """Before ``name`` is overwritten: copy stack entries that refer to it into a temp."""
        if any(isinstance(e, Var) and e.name == name for e in self.stack):
            t = self.assign(ir.Use(Var(name)))
            self.stack = [t if (isinstance(e, Var) and e.name == name) else e
                          for e in self.stack]

    def store_local(self, name: str, value):
        """``name = value`` for a fast local."""
        value = self.operand(value)
        self.snapshot(name)
        if isinstance(value, Var) and value.name in self.maybe_unbound:
            self.emit(ir.RestoreLocal(name, value))
        else:
            self.emit(Assign(name, ir.Use(value)))

    def target(self, ins: Instr) -> int:
        return self.index[id(ins.arg)]

    def next_block(self) -> int:
        nb = self.cfg[self.cur].next_block
        if nb is None:
            raise self.error("internal error: control falls off the end of the bytecode")
        return self.index[id(nb)]

    def edge(self, target: int, stack: list) -> list:
        """Pass ``stack`` to block ``target``; returns the jump args."""
        if target not in self.entry_stack:
            if self.inherits(target):
                self.entry_stack[target] = list(stack)
            else:
                slots = []
                for i, e in enumerate(stack):
                    if e is NULL:
                        slots.append(NULL)
                    else:
                        p = Var(f"$b{target}_{i}")
                        if isinstance(e, Var) and e.name in self.maybe_unbound:
                            self.maybe_unbound.add(p.name)
                        slots.append(p)
                self.entry_stack[target] = slots
            self.worklist.append(target)
        want = self.entry_stack[target]
        if len(want) != len(stack):
            raise self.error("internal error: inconsistent stack depth at a join")
        if self.inherits(target):
            return []
        return [e for e in stack if e is not NULL]

    def inherits(self, b: int) -> bool:
        """True if block ``b`` takes its predecessor's stack as is (single predecessor)."""
        return b != 0 and len(self.preds.get(b, ())) == 1

    # ------------------------------------------------------------------ CFG of the bytecode
    def bc_successors(self, i: int) -> list[int]:
        blk = self.cfg[i]
        ins = _instrs(blk)
        last = ins[-1] if ins else None
        nxt = [self.index[id(blk.next_block)]] if blk.next_block is not None else []
        if last is None:
            return nxt
        if last.name in _COND_JUMPS:
            return [self.index[id(last.arg)]] + nxt
        if last.name in _UNCOND_JUMPS:
            return [self.index[id(last.arg)]]
        if last.name in _FINAL:
            return []
        return nxt

    def compute_preds(self):
        self.preds: dict[int, set] = {}
        seen, todo = {0}, [0]
        while todo:
            b = todo.pop()
            for s in self.bc_successors(b):
                self.preds.setdefault(s, set()).add(b)
                if s not in seen:
                    seen.add(s)
                    todo.append(s)

    # ------------------------------------------------------------------ driver
    def run(self) -> FunctionIR:
        self.compute_preds()
        self.entry_stack[0] = []
        self.worklist = [0]
        done = set()
        while self.worklist:
            b = self.worklist.pop()
            if b in done:
                continue
            done.add(b)
            self.lower_block(b)
        c = self.code
        fn = FunctionIR(
            name=c.co_name, qualname=getattr(c, "co_qualname", c.co_name),
            argnames=self.pos + ([self.vararg] if self.vararg else []) + self.kwonly
            + ([self.varkw] if self.varkw else []),
            posonly_count=c.co_posonlyargcount, argcount=c.co_argcount,
            kwonly=self.kwonly, vararg=self.vararg, varkw=self.varkw,
            cellvars=list(c.co_cellvars), freevars=list(c.co_freevars),
            filename=c.co_filename, firstlineno=c.co_firstlineno, code=c,
            func=self.dec.func, blocks=self.blocks, entry=0)
        _remove_empty_blocks(fn)
        _forward_stores(fn)
        from .cfg import reverse_postorder
        fn.order = reverse_postorder(fn)
        fn.blocks = {b: fn.blocks[b] for b in fn.order}
        return fn

    def lower_block(self, b: int):
        self.cur = b
        slots = self.entry_stack[b]
        self.stack = list(slots)
        params = [] if self.inherits(b) else [s.name for s in slots if s is not NULL]
        self.stmts, self.term, self.kw_names = [], None, ()
        for ins in _instrs(self.cfg[b]):
            if ins.lineno is not None:
                self.lineno = ins.lineno
            if self.term is not None:
                break
            h = HANDLERS.get(ins.name)
            if h is None:
                raise self.error(
                    f"bytecode instruction {ins.name} (Python {sys.version_info[0]}."
                    f"{sys.version_info[1]}) is not supported by the spmd rewriter.",
                    hint="Rewrite this line with simpler constructs, or move it into a "
                         "helper function that is called normally.")
            h(self, ins)
        if self.term is None:
            nb = self.next_block()
            self.term = Jump(nb, self.edge(nb, self.stack))
        self.term.lineno = self.lineno
        self.blocks[b] = Block(b, params, self.stmts, self.term)


def _forward_stores(fn: FunctionIR):
    """Fold ``$t = expr; x = $t`` into ``x = expr`` when ``$t`` has no other use."""
    uses: dict[str, int] = {}
    for blk in fn.blocks.values():
        for item in list(blk.stmts) + [blk.term]:
            for o in item.operands():
                if isinstance(o, Var):
                    uses[o.name] = uses.get(o.name, 0) + 1
    for blk in fn.blocks.values():
        out = []
        for s in blk.stmts:
            prev = out[-1] if out else None
            if (isinstance(s, Assign) and isinstance(s.value, ir.Use)
                    and isinstance(s.value.a, Var) and s.value.a.name.startswith("$t")
                    and isinstance(prev, Assign) and prev.target == s.value.a.name
                    and uses.get(prev.target) == 1
                    and not isinstance(prev.value, ir.SaveLocal)):
                out[-1] = Assign(s.target, prev.value, lineno=prev.lineno)
            else:
                out.append(s)
        blk.stmts = out


def _remove_empty_blocks(fn: FunctionIR):
    """Bypass blocks with no params and no statements that only jump on without args."""
    fwd = {}
    for bid, blk in fn.blocks.items():
        if (bid != fn.entry and not blk.params and not blk.stmts
                and isinstance(blk.term, Jump) and not blk.term.args
                and not fn.blocks[blk.term.target].params and blk.term.target != bid):
            fwd[bid] = blk.term.target

    def resolve(b):
        seen = set()
        while b in fwd and b not in seen:
            seen.add(b)
            b = fwd[b]
        return b

    for blk in fn.blocks.values():
        t = blk.term
        if isinstance(t, Jump):
            t.target = resolve(t.target)
        elif isinstance(t, Branch):
            t.true_target, t.false_target = resolve(t.true_target), resolve(t.false_target)
        elif isinstance(t, ForIter):
            t.body, t.exit = resolve(t.body), resolve(t.exit)


# ============================================================================ handlers

@handles("NOP", "RESUME", "CACHE", "EXTENDED_ARG", "COPY_FREE_VARS")
def _nop(L: Lowerer, ins):
    pass


@handles("PRECALL", when=not PY312)
def _precall(L, ins):
    pass


@handles("MAKE_CELL")
def _make_cell(L, ins):
    name = _varname(ins.arg)
    L.emit(ir.MakeCell(name, from_arg=name in L.argset))


def _varname(arg) -> str:
    return arg.name if isinstance(arg, (CellVar, FreeVar)) else arg


# ---------------------------------------------------------------- locals, consts

@handles("LOAD_CONST")
def _load_const(L, ins):
    L.push(Const(ins.arg))


@handles("LOAD_FAST", "LOAD_FAST_CHECK")
def _load_fast(L, ins):
    _push_local(L, ins.arg)


def _push_local(L, arg):
    """Push local ``arg``; a cell/free variable here is 3.13's LOAD_CLOSURE (the cell)."""
    name = _varname(arg)
    if isinstance(arg, (CellVar, FreeVar)) or name in L.cells:
        L.push(L.assign(ir.LoadClosure(name)))
    else:
        L.push(Var(name))


@handles("LOAD_FAST_LOAD_FAST", when=PY313)
def _load_fast_load_fast(L, ins):
    a, b = ins.arg
    _push_local(L, a)
    _push_local(L, b)


@handles("LOAD_FAST_AND_CLEAR", when=PY312)
def _load_fast_and_clear(L, ins):
    t = L.assign(ir.SaveLocal(ins.arg))
    L.maybe_unbound.add(t.name)
    L.push(t)


@handles("STORE_FAST")
def _store_fast(L, ins):
    L.store_local(ins.arg, L.pop())


@handles("STORE_FAST_LOAD_FAST", when=PY313)
def _store_fast_load_fast(L, ins):
    store, load = ins.arg
    L.store_local(store, L.pop())
    _push_local(L, load)


@handles("STORE_FAST_STORE_FAST", when=PY313)
def _store_fast_store_fast(L, ins):
    first, second = ins.arg
    L.store_local(first, L.pop())
    L.store_local(second, L.pop())


@handles("DELETE_FAST")
def _delete_fast(L, ins):
    L.snapshot(ins.arg)
    L.emit(ir.DeleteVar(ins.arg))


# ---------------------------------------------------------------- globals, cells

@handles("LOAD_GLOBAL")
def _load_global(L, ins):
    if isinstance(ins.arg, tuple):
        push_null, name = ins.arg
    else:
        push_null, name = False, ins.arg
    v = L.assign(ir.LoadGlobal(name))
    if push_null and not PY313:
        L.push(NULL)
    L.push(v)
    if push_null and PY313:
        L.push(NULL)


@handles("STORE_GLOBAL")
def _store_global(L, ins):
    L.emit(ir.StoreGlobal(ins.arg, L.operand(L.pop())))


@handles("DELETE_GLOBAL")
def _delete_global(L, ins):
    L.emit(ir.DeleteGlobal(ins.arg))


@handles("LOAD_DEREF")
def _load_deref(L, ins):
    L.push(L.assign(ir.LoadDeref(_varname(ins.arg))))


@handles("LOAD_CLOSURE")
def _load_closure(L, ins):
    L.push(L.assign(ir.LoadClosure(_varname(ins.arg))))


@handles("STORE_DEREF")
def _store_deref(L, ins):
    L.emit(ir.StoreDeref(_varname(ins.arg), L.operand(L.pop())))


@handles("DELETE_DEREF")
def _delete_deref(L, ins):
    L.emit(ir.DeleteDeref(_varname(ins.arg)))


# ---------------------------------------------------------------- stack shuffles

@handles("POP_TOP")
def _pop_top(L, ins):
    L.pop()


@handles("PUSH_NULL")
def _push_null(L, ins):
    L.push(NULL)


@handles("SWAP")
def _swap(L, ins):
    i = ins.arg
    s = L.stack
    s[-1], s[-i] = s[-i], s[-1]


@handles("COPY")
def _copy(L, ins):
    L.push(L.stack[-ins.arg])


@handles("END_FOR", when=PY312)
def _end_for(L, ins):
    L.pop()
    if not PY313:            # 3.12: END_FOR is POP_TOP; POP_TOP (dummy and iterator)
        L.pop()


# ---------------------------------------------------------------- operators

_BINOPS = {
    "ADD": "+", "AND": "&", "FLOOR_DIVIDE": "//", "LSHIFT": "<<", "MATRIX_MULTIPLY": "@",
    "MULTIPLY": "*", "REMAINDER": "%", "OR": "|", "POWER": "**", "RSHIFT": ">>",
    "SUBTRACT": "-", "TRUE_DIVIDE": "/", "XOR": "^",
}
_COMPARES = {"LT": "<", "LE": "<=", "EQ": "==", "NE": "!=", "GT": ">", "GE": ">="}


@handles("BINARY_OP")
def _binary_op(L, ins):
    name = getattr(ins.arg, "name", None)
    if name is None:
        raise L.error(f"BINARY_OP with unknown operator {ins.arg!r}")
    inplace = name.startswith("INPLACE_")
    sym = _BINOPS.get(name[8:] if inplace else name)
    if sym is None:
        raise L.error(f"BINARY_OP {name} is not supported by the spmd rewriter.")
    b = L.operand(L.pop())
    a = L.operand(L.pop())
    L.push(L.assign(ir.BinOp(sym + "=" if inplace else sym, a, b)))


def _unary(sym):
    def h(L, ins):
        L.push(L.assign(ir.UnaryOp(sym, L.operand(L.pop()))))
    return h


handles("UNARY_NEGATIVE")(_unary("-"))
handles("UNARY_INVERT")(_unary("~"))
handles("UNARY_NOT")(_unary("not"))
handles("UNARY_POSITIVE", when=not PY312)(_unary("+"))


@handles("COMPARE_OP")
def _compare_op(L, ins):
    name = getattr(ins.arg, "name", str(ins.arg))
    name = name[:-5] if name.endswith("_CAST") else name
    b = L.operand(L.pop())
    a = L.operand(L.pop())
    L.push(L.assign(ir.Compare(_COMPARES[name], a, b)))


@handles("IS_OP")
def _is_op(L, ins):
    b = L.operand(L.pop())
    a = L.operand(L.pop())
    L.push(L.assign(ir.Compare("is not" if ins.arg else "is", a, b)))


@handles("CONTAINS_OP")
def _contains_op(L, ins):
    b = L.operand(L.pop())
    a = L.operand(L.pop())
    L.push(L.assign(ir.Compare("not in" if ins.arg else "in", a, b)))


@handles("TO_BOOL", when=PY313)
def _to_bool(L, ins):
    # The truth value is taken by the consumer (Branch decides on truthiness, UnaryOp
    # 'not' computes it), so TO_BOOL is the identity on the symbolic stack.
    pass


@handles("CALL_INTRINSIC_1", when=PY312)
def _call_intrinsic_1(L, ins):
    name = getattr(ins.arg, "name", str(ins.arg))
    x = L.operand(L.pop())
    if name == "INTRINSIC_UNARY_POSITIVE":
        L.push(L.assign(ir.UnaryOp("+", x)))
    elif name == "INTRINSIC_LIST_TO_TUPLE":
        L.push(L.assign(ir.Call(Const(tuple), [x])))
    else:
        raise L.error(f"CALL_INTRINSIC_1 {name} is not supported by the spmd rewriter.")


@handles("LIST_TO_TUPLE", when=not PY312)
def _list_to_tuple(L, ins):
    L.push(L.assign(ir.Call(Const(tuple), [L.operand(L.pop())])))


# ---------------------------------------------------------------- subscripts, attributes

@handles("BINARY_SUBSCR")
def _binary_subscr(L, ins):
    key = L.operand(L.pop())
    obj = L.operand(L.pop())
    L.push(L.assign(ir.Subscr(obj, key)))


@handles("BINARY_SLICE", when=PY312)
def _binary_slice(L, ins):
    stop, start = L.operand(L.pop()), L.operand(L.pop())
    obj = L.operand(L.pop())
    s = L.assign(ir.Slice(start, stop, Const(None)))
    L.push(L.assign(ir.Subscr(obj, s)))


@handles("STORE_SUBSCR")
def _store_subscr(L, ins):
    key = L.operand(L.pop())
    obj = L.operand(L.pop())
    value = L.operand(L.pop())
    L.emit(ir.StoreSubscr(obj, key, value))


@handles("STORE_SLICE", when=PY312)
def _store_slice(L, ins):
    stop, start = L.operand(L.pop()), L.operand(L.pop())
    obj = L.operand(L.pop())
    value = L.operand(L.pop())
    s = L.assign(ir.Slice(start, stop, Const(None)))
    L.emit(ir.StoreSubscr(obj, s, value))


@handles("DELETE_SUBSCR")
def _delete_subscr(L, ins):
    key = L.operand(L.pop())
    obj = L.operand(L.pop())
    L.emit(ir.DelSubscr(obj, key))


@handles("BUILD_SLICE")
def _build_slice(L, ins):
    parts = [L.operand(v) for v in L.popn(ins.arg)]
    if len(parts) == 2:
        parts.append(Const(None))
    L.push(L.assign(ir.Slice(*parts)))


@handles("LOAD_ATTR")
def _load_attr(L, ins):
    if isinstance(ins.arg, tuple):          # 3.12+: (is_method, name)
        is_method, name = ins.arg
    else:
        is_method, name = False, ins.arg
    obj = L.operand(L.pop())
    v = L.assign(ir.GetAttr(obj, name))
    if is_method and not PY313:
        L.push(NULL)
    L.push(v)
    if is_method and PY313:
        L.push(NULL)


@handles("LOAD_METHOD", when=not PY312)
def _load_method(L, ins):
    obj = L.operand(L.pop())
    v = L.assign(ir.GetAttr(obj, ins.arg))
    L.push(NULL)
    L.push(v)


@handles("STORE_ATTR")
def _store_attr(L, ins):
    obj = L.operand(L.pop())
    value = L.operand(L.pop())
    L.emit(ir.StoreAttr(obj, ins.arg, value))


@handles("DELETE_ATTR")
def _delete_attr(L, ins):
    L.emit(ir.DelAttr(L.operand(L.pop()), ins.arg))


# ---------------------------------------------------------------- calls

def _callee(L, a, b):
    """The callable and optional self from the two slots below the arguments."""
    if a is NULL:
        return L.operand(b), []
    if b is NULL:
        return L.operand(a), []
    return a, [b]


@handles("KW_NAMES", when=not PY313)
def _kw_names(L, ins):
    L.kw_names = tuple(ins.arg)


def _do_call(L, argc: int, kwnames: tuple):
    args = [L.operand(v) for v in L.popn(argc)]
    a, b = L.popn(2)
    func, self_arg = _callee(L, a, b)
    args = self_arg + args
    nkw = len(kwnames)
    pos = args[:len(args) - nkw]
    kwargs = dict(zip(kwnames, args[len(args) - nkw:]))
    L.push(L.assign(ir.Call(func, pos, kwargs)))


@handles("CALL")
def _call(L, ins):
    kw, L.kw_names = L.kw_names, ()
    _do_call(L, ins.arg, kw)


@handles("CALL_KW", when=PY313)
def _call_kw(L, ins):
    names = L.pop()
    if not isinstance(names, Const):
        raise L.error("internal error: CALL_KW without constant names")
    _do_call(L, ins.arg, tuple(names.value))


@handles("CALL_FUNCTION_EX")
def _call_function_ex(L, ins):
    kw = L.operand(L.pop()) if ins.arg & 1 else None
    star = L.operand(L.pop())
    a, b = L.popn(2)
    func, self_arg = _callee(L, a, b)
    if self_arg:
        raise L.error("internal error: CALL_FUNCTION_EX with a self argument")
    L.push(L.assign(ir.Call(func, [], {}, star_args=star, star_kwargs=kw)))


@handles("LOAD_ASSERTION_ERROR")
def _load_assertion_error(L, ins):
    L.push(Const(AssertionError))


# ---------------------------------------------------------------- functions

@handles("MAKE_FUNCTION")
def _make_function(L, ins):
    code = L.operand(L.pop())
    mf = ir.MakeFunction(code)
    if not PY313:
        flags = ins.arg
        if flags & 0x08:
            mf.closure = L.operand(L.pop())
        if flags & 0x04:
            mf.annotations = L.operand(L.pop())
        if flags & 0x02:
            mf.kwdefaults = L.operand(L.pop())
        if flags & 0x01:
            mf.defaults = L.operand(L.pop())
    L.push(L.assign(mf))


@handles("SET_FUNCTION_ATTRIBUTE", when=PY313)
def _set_function_attribute(L, ins):
    func = L.pop()
    value = L.operand(L.pop())
    last = L.stmts[-1] if L.stmts else None
    if not (isinstance(func, Var) and isinstance(last, Assign) and last.target == func.name
            and isinstance(last.value, ir.MakeFunction)):
        raise L.error("internal error: SET_FUNCTION_ATTRIBUTE not after MAKE_FUNCTION")
    field = {1: "defaults", 2: "kwdefaults", 4: "annotations", 8: "closure"}[int(ins.arg)]
    setattr(last.value, field, value)
    L.push(func)


@handles("IMPORT_NAME")
def _import_name(L, ins):
    fromlist = L.operand(L.pop())
    level = L.operand(L.pop())
    L.push(L.assign(ir.ImportName(ins.arg, fromlist, level)))


@handles("IMPORT_FROM")
def _import_from(L, ins):
    L.push(L.assign(ir.ImportFrom(L.operand(L.stack[-1]), ins.arg)))


# ---------------------------------------------------------------- builds

def _builder(cls):
    def h(L, ins):
        L.push(L.assign(cls([L.operand(v) for v in L.popn(ins.arg)])))
    return h


handles("BUILD_TUPLE")(_builder(ir.BuildTuple))
handles("BUILD_LIST")(_builder(ir.BuildList))
handles("BUILD_SET")(_builder(ir.BuildSet))
handles("BUILD_STRING")(_builder(ir.BuildString))


@handles("BUILD_MAP")
def _build_map(L, ins):
    items = [L.operand(v) for v in L.popn(2 * ins.arg)]
    L.push(L.assign(ir.BuildMap(items[0::2], items[1::2])))


@handles("BUILD_CONST_KEY_MAP")
def _build_const_key_map(L, ins):
    keys = L.pop()
    values = [L.operand(v) for v in L.popn(ins.arg)]
    L.push(L.assign(ir.BuildMap([Const(k) for k in keys.value], values)))


def _container_op(cls, nvalues=1):
    def h(L, ins):
        vals = [L.operand(v) for v in L.popn(nvalues)]
        container = L.operand(L.stack[-ins.arg])
        L.emit(cls(container, *vals))
    return h


handles("LIST_APPEND")(_container_op(ir.ListAppend))
handles("LIST_EXTEND")(_container_op(ir.ListExtend))
handles("SET_ADD")(_container_op(ir.SetAdd))
handles("SET_UPDATE")(_container_op(ir.SetUpdate))
handles("DICT_UPDATE")(_container_op(ir.DictUpdate))
handles("DICT_MERGE")(_container_op(ir.DictMerge))
handles("MAP_ADD")(_container_op(ir.MapAdd, 2))


@handles("UNPACK_SEQUENCE")
def _unpack_sequence(L, ins):
    seq = L.operand(L.pop())
    targets = [L.temp() for _ in range(ins.arg)]
    L.emit(ir.Unpack(targets, seq, None))
    for t in reversed(targets):
        L.push(Var(t))


@handles("UNPACK_EX")
def _unpack_ex(L, ins):
    before, after = ins.arg & 0xFF, ins.arg >> 8
    seq = L.operand(L.pop())
    targets = [L.temp() for _ in range(before + 1 + after)]
    L.emit(ir.Unpack(targets, seq, before))
    for t in reversed(targets):
        L.push(Var(t))


# ---------------------------------------------------------------- f-strings

_CONVERSIONS = {0: None, 1: "s", 2: "r", 3: "a"}


@handles("FORMAT_VALUE", when=not PY313)
def _format_value(L, ins):
    flags = int(ins.arg)
    spec = L.operand(L.pop()) if flags & 0x04 else None
    value = L.operand(L.pop())
    L.push(L.assign(ir.FormatValue(value, _CONVERSIONS[flags & 0x03], spec)))


@handles("CONVERT_VALUE", when=PY313)
def _convert_value(L, ins):
    value = L.operand(L.pop())
    L.push(L.assign(ir.FormatValue(value, _CONVERSIONS[int(ins.arg)], None)))


def _fold_format(L, value, spec):
    """Fold FORMAT_* into a preceding CONVERT_VALUE's FormatValue when possible."""
    last = L.stmts[-1] if L.stmts else None
    if (isinstance(value, Var) and isinstance(last, Assign) and last.target == value.name
            and isinstance(last.value, ir.FormatValue) and last.value.spec is None
            and last.value.conversion is not None
            and not any(isinstance(e, Var) and e.name == value.name for e in L.stack)):
        if spec is not None:
            if isinstance(spec, Var) and spec.name == value.name:
                return None
            last.value.spec = spec
        return value
    return None


@handles("FORMAT_SIMPLE", when=PY313)
def _format_simple(L, ins):
    value = L.operand(L.pop())
    folded = _fold_format(L, value, None)
    L.push(folded if folded is not None else L.assign(ir.FormatValue(value)))


@handles("FORMAT_WITH_SPEC", when=PY313)
def _format_with_spec(L, ins):
    spec = L.operand(L.pop())
    value = L.operand(L.pop())
    folded = _fold_format(L, value, spec)
    L.push(folded if folded is not None else L.assign(ir.FormatValue(value, None, spec)))


# ---------------------------------------------------------------- control flow

@handles("RETURN_VALUE")
def _return_value(L, ins):
    L.term = Return(L.operand(L.pop()))


@handles("RETURN_CONST", when=PY312)
def _return_const(L, ins):
    L.term = Return(Const(ins.arg))


@handles("RAISE_VARARGS")
def _raise_varargs(L, ins):
    n = ins.arg
    cause = L.operand(L.pop()) if n >= 2 else None
    exc = L.operand(L.pop()) if n >= 1 else None
    L.term = Raise(exc, cause)


@handles(*_UNCOND_JUMPS)
def _jump(L, ins):
    t = L.target(ins)
    L.term = Jump(t, L.edge(t, L.stack))


def _pop_jump(jump_if: str):
    def h(L, ins):
        v = L.operand(L.pop())
        tgt, nxt = L.target(ins), L.next_block()
        if jump_if in ("none", "not none"):
            cond = L.assign(ir.Compare("is" if jump_if == "none" else "is not", v, Const(None)))
            jump_when = True
        else:
            cond = L.as_var(v)
            jump_when = jump_if == "true"
        a_tgt = L.edge(tgt, L.stack)
        a_nxt = L.edge(nxt, L.stack)
        if jump_when:
            L.term = Branch(cond, tgt, a_tgt, nxt, a_nxt)
        else:
            L.term = Branch(cond, nxt, a_nxt, tgt, a_tgt)
    return h


for _prefix in ("POP_JUMP_IF_", "POP_JUMP_FORWARD_IF_", "POP_JUMP_BACKWARD_IF_"):
    for _suffix, _kind in (("FALSE", "false"), ("TRUE", "true"), ("NONE", "none"),
                           ("NOT_NONE", "not none")):
        handles(_prefix + _suffix, when=(_prefix == "POP_JUMP_IF_") or not PY312)(
            _pop_jump(_kind))


def _jump_or_pop(jump_when_true: bool):
    def h(L, ins):
        v = L.operand(L.stack[-1])
        cond = L.as_var(v)
        tgt, nxt = L.target(ins), L.next_block()
        a_tgt = L.edge(tgt, L.stack)            # value stays on the stack when jumping
        a_nxt = L.edge(nxt, L.stack[:-1])       # popped when falling through
        if jump_when_true:
            L.term = Branch(cond, tgt, a_tgt, nxt, a_nxt)
        else:
            L.term = Branch(cond, nxt, a_nxt, tgt, a_tgt)
    return h


handles("JUMP_IF_TRUE_OR_POP", when=not PY312)(_jump_or_pop(True))
handles("JUMP_IF_FALSE_OR_POP", when=not PY312)(_jump_or_pop(False))


@handles("GET_ITER")
def _get_iter(L, ins):
    L.push(L.assign(ir.GetIter(L.operand(L.pop()))))


@handles("FOR_ITER")
def _for_iter(L, ins):
    it = L.operand(L.stack[-1])
    item = L.temp()
    body, exit_ = L.next_block(), L.target(ins)
    body_args = L.edge(body, L.stack + [Var(item)])
    if PY312:       # exhausted: jumps to END_FOR with (iterator, dummy) on the stack
        exit_args = L.edge(exit_, L.stack + [NULL])
    else:           # 3.11: the iterator is popped
        exit_args = L.edge(exit_, L.stack[:-1])
    L.term = ForIter(it, item, body, body_args, exit_, exit_args)


def _unsupported_suspend(L, ins):
    raise L.error(f"'{ins.name}' (yield/await) cannot be rewritten into a batched program.",
                  hint="Use a plain function that returns its results instead of yielding.")


for _op in ("YIELD_VALUE", "SEND", "GET_AWAITABLE", "RETURN_GENERATOR", "GET_YIELD_FROM_ITER",
            "GET_AITER", "GET_ANEXT", "END_ASYNC_FOR", "BEFORE_ASYNC_WITH"):
    handles(_op)(_unsupported_suspend)


# ============================================================================ entry point

def lower_decoded(dec: Decoded) -> FunctionIR:
    """Lower an already decoded function."""
    return Lowerer(dec).run()


def lower_function(fn) -> FunctionIR:
    """Decode ``fn`` (function, method or code object) and lower it to a FunctionIR."""
    return lower_decoded(decode(fn))
