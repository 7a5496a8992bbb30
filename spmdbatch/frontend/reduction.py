"""Sums over a recursion: a returned total of per-call terms is added up once, at the end.

A recursive tree model often returns, next to its state, a total over the subtree::

    def encode(model, tree, k):
        if tree.left[k] < 0:
            h = ...
            return h, node_loss(model, h, k)                       # the term of a leaf
        hl, loss_l = encode(model, tree, tree.left[k])
        hr, loss_r = encode(model, tree, tree.right[k])
        h = ...
        return h, loss_l + loss_r + node_loss(model, h, k)         # children's totals + own term

Run as written, every height of the recursion computes its nodes' terms and adds totals.
Since the total of a call is the sum of the terms of every call below it, the batch program
instead records each term with the lanes that made it, and the frame adds them up per
example when the batched call ends (masking/frame.py `Frame.sums`); a term that is a call
(here `node_loss`) is *deferred*: its arguments are recorded and the function runs once,
batched over all the lanes of all heights. This is what hand-batched code does (one
classifier step over all nodes); the sum is the same up to floating-point reassociation.

Definition. Let every `return` of a function with self-recursive call sites (frontend/
recursion.py) return a tuple display of the same length L, and let each recursive call's
result be used only by one unpacking into L targets. Component p is a *sum over the
recursion* when, at every return, component p is a `+` expression tree (in the returning
block, each intermediate value used once) whose leaves are component p of recursive results
(or copies of them) and other values, the *terms*; and component p of recursive results is
used nowhere else. Terms that are calls used only there (no `*args`/`**kwargs`) are
deferred; other terms are recorded as values. At run time a call is deferred only when its
callee is a user function without visible side effects (`may_defer`: no assignment into an
object, attribute, global or closure variable, no call of a mutating method such as
`append`); any other call runs where it is written.
"""
from __future__ import annotations

import types
from collections import Counter
from dataclasses import dataclass, field

from . import ir
from .ir import Assign, Const, FunctionIR, Stmt, Var
from .recursion import Recurse

_PLUS = ("+", "+=")


@dataclass
class Accumulate(Stmt):
    """Add ``value`` to sum ``position`` of the running lanes."""
    position: int
    value: object
    lineno: int | None = field(default=None, kw_only=True)
    OPERANDS = ("value",)

    def __str__(self):
        return f"sum[{self.position}] += {self.value!r}"


@dataclass
class DeferredCall(Stmt):
    """Add ``func(*args, **kwargs)`` to sum ``position``, called when the batched call ends."""
    position: int
    func: object
    args: list
    kwargs: dict
    lineno: int | None = field(default=None, kw_only=True)
    OPERANDS = ("func", "args", "kwargs")

    def __str__(self):
        return f"sum[{self.position}] += deferred {self.func!r}({', '.join(map(repr, self.args))})"


def recognize_sums(fn: FunctionIR) -> tuple:
    """Rewrite every sum over the recursion of `fn` (in place); returns their positions."""
    sites = [blk.term for blk in fn.blocks.values() if isinstance(blk.term, Recurse)]
    if not sites:
        return ()
    _spell_out_constant_returns(fn)
    defs, uses, def_counts = _defs_and_uses(fn)
    returns = []
    for bid, blk in fn.blocks.items():
        t = blk.term
        if isinstance(t, ir.Return):
            d = defs.get(t.value.name) if isinstance(t.value, Var) else None
            if d is None or d[0] != bid or not isinstance(d[1], Assign) or \
                    not isinstance(d[1].value, ir.BuildTuple) or uses[t.value.name] != 1:
                return ()
            returns.append((bid, d[1]))
    lengths = {len(s.value.items) for _, s in returns}
    if len(lengths) != 1:
        return ()
    length = lengths.pop()
    unpacks = []
    for site in sites:
        for target in site.defs():
            u = [s for s in _users(fn, target)]
            if len(u) != 1 or not isinstance(u[0], ir.Unpack) or u[0].star_index is not None \
                    or len(u[0].targets) != length or uses[target] != 1:
                return ()
            unpacks.append(u[0])
    plans = []
    for p in range(length):
        plan = _plan(fn, p, returns, unpacks, defs, uses, def_counts)
        if plan is not None:
            plans.append((p, plan))
    for p, plan in plans:
        _rewrite(fn, p, plan)
    return tuple(p for p, _ in plans)


_DEFERRABLE: dict = {}        # code object -> whether calls of it may be deferred


def may_defer(fn) -> bool:
    """Whether a call of `fn` may run later than written (a deferred term): a user function
    (or method, or callable object) whose body assigns into no object, attribute, global or
    closure variable. Anything else (builtins, list.append, ...) runs where it is written."""
    from ..masking.calls import is_user_function
    if type(fn) is types.MethodType:
        fn = fn.__func__
    elif type(fn) is not types.FunctionType:
        fn = getattr(type(fn), "__call__", None)
    fn = getattr(fn, "__wrapped__", fn)           # (nn.Module's __call__ wrapper)
    if type(fn) is not types.FunctionType or not is_user_function(fn):
        return False
    code = fn.__code__
    answer = _DEFERRABLE.get(code)
    if answer is None:
        try:
            from .lower import lower_function
            body = lower_function(fn)
        except Exception:           # (not lowerable: it runs where it is written)
            answer = False
        else:
            answer = not any(_has_side_effect(st) for blk in body.blocks.values() for st in blk.stmts)
        _DEFERRABLE[code] = answer
    return answer


def _has_side_effect(st) -> bool:
    if isinstance(st, _SIDE_EFFECTS):
        return True
    # a method known to change its object: `items.append(x)`, `d.update(...)`, `a.fill(0)`
    return isinstance(st, Assign) and isinstance(st.value, ir.GetAttr) and st.value.name in _MUTATING_METHODS


_SIDE_EFFECTS = (ir.StoreSubscr, ir.StoreAttr, ir.DelSubscr, ir.DelAttr, ir.ListAppend,
                 ir.ListExtend, ir.SetAdd, ir.SetUpdate, ir.MapAdd, ir.DictUpdate, ir.DictMerge,
                 ir.StoreGlobal, ir.DeleteGlobal, ir.StoreDeref, ir.DeleteDeref)


_MUTATING_METHODS = frozenset({
    "append", "extend", "insert", "pop", "popitem", "remove", "clear", "update", "add",
    "discard", "setdefault", "sort", "reverse", "fill", "put", "resize", "itemset",
    "__setitem__", "__delitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__"})


def _spell_out_constant_returns(fn):
    """``return (1, 0.0)`` arrives as one constant: make it a tuple display of constants."""
    for bid, blk in fn.blocks.items():
        t = blk.term
        if isinstance(t, ir.Return) and isinstance(t.value, Const) and type(t.value.value) is tuple:
            name = f"$return{bid}"
            blk.stmts.append(Assign(name, ir.BuildTuple([Const(v) for v in t.value.value]),
                                    lineno=t.lineno))
            t.value = Var(name)


def _defs_and_uses(fn):
    """(name -> (block, defining statement), use counts, definition counts)."""
    defs, uses, counts = {}, Counter(), Counter()
    for bid, blk in fn.blocks.items():
        counts.update(blk.params)
        for s in blk.stmts:
            for d in s.defs():
                defs[d] = (bid, s)
                counts[d] += 1
            uses.update(s.uses())
        uses.update(blk.term.used_vars())
        counts.update(blk.term.defs())
    return defs, uses, counts


def _users(fn, name):
    out = []
    for blk in fn.blocks.values():
        out += [s for s in blk.stmts if name in s.uses()]
        if name in blk.term.used_vars():
            out.append(blk.term)
    return out


def _plan(fn, p, returns, unpacks, defs, uses, def_counts):
    """(chain statements, terms per return) of component p, or None if it is not a sum."""
    partial = {u.targets[p] for u in unpacks}
    changed = True
    while changed:                     # copies of recursive parts are recursive parts
        changed = False
        for name, (_, s) in defs.items():
            if name not in partial and isinstance(s, Assign) and isinstance(s.value, ir.Use) \
                    and isinstance(s.value.a, Var) and s.value.a.name in partial:
                partial.add(name)
                changed = True
    chain: set = set()
    terms = []
    for bid, tuple_stmt in returns:
        found = []

        def expand(op):
            if isinstance(op, Var) and op.name in partial:
                return True
            if isinstance(op, Var):
                d = defs.get(op.name)
                if d is not None and d[0] == bid and isinstance(d[1], Assign) and \
                        isinstance(d[1].value, ir.BinOp) and d[1].value.op in _PLUS and uses[op.name] == 1:
                    chain.add(id(d[1]))
                    return expand(d[1].value.a) and expand(d[1].value.b)
            found.append(op)
            return True
        expand(tuple_stmt.value.items[p])
        terms.append((bid, tuple_stmt, found))
    # every use of a recursive part must be a copy or a `+` of a chain
    for name in partial:
        for s in _users(fn, name):
            is_copy = isinstance(s, Assign) and isinstance(s.value, ir.Use) and s.target in partial
            if not is_copy and id(s) not in chain:
                return None
    if any(isinstance(op, Var) and op.name in partial for _, _, found in terms for op in found):
        return None
    # each call's part counts exactly once: one value (defined once, used once) that reaches a
    # return's sum on every path from the call (straight continuation blocks, no branch)
    if any(def_counts[name] != 1 or uses[name] != 1 for name in partial):
        return None
    chain_block = {id(st): bid for bid, blk in fn.blocks.items() for st in blk.stmts if id(st) in chain}
    for u in unpacks:
        name, user = u.targets[p], None
        while True:
            user = _users(fn, name)[0]
            if isinstance(user, Assign) and isinstance(user.value, ir.Use) and user.target in partial:
                name = user.target
                continue
            break
        start = next(b for b, blk in fn.blocks.items() if any(st is u for st in blk.stmts))
        if not _straight(fn, start, chain_block[id(user)]):
            return None
    return chain, terms, defs, uses


def _straight(fn, start, end) -> bool:
    """Whether every path from block `start` reaches block `end`, through blocks that end in
    an unconditional jump or a recursive call."""
    seen = set()
    b = start
    while b != end:
        t = fn.blocks[b].term
        targets = {target for target, _ in t.successors()}
        if not isinstance(t, (ir.Jump, Recurse)) or len(targets) != 1 or b in seen:
            return False
        seen.add(b)
        b = targets.pop()
    return True


def _rewrite(fn, p, plan):
    chain, terms, defs, uses = plan
    for bid, tuple_stmt, found in terms:
        blk = fn.blocks[bid]
        stmts = [s for s in blk.stmts if id(s) not in chain]
        extra = []
        for op in found:
            d = defs.get(op.name) if isinstance(op, Var) else None
            call = d[1] if d is not None and d[0] == bid else None
            at = next((i for i, s in enumerate(stmts) if s is call), None)
            if at is not None and isinstance(call, Assign) and \
                    isinstance(call.value, ir.Call) and call.value.star_args is None and \
                    call.value.star_kwargs is None and uses[op.name] == 1:
                stmts[at] = DeferredCall(p, call.value.func, list(call.value.args),
                                                        dict(call.value.kwargs), lineno=call.lineno)
            else:
                extra.append(Accumulate(p, op, lineno=tuple_stmt.lineno))
        at = next(i for i, s in enumerate(stmts) if s is tuple_stmt)
        stmts[at:at] = extra
        items = list(tuple_stmt.value.items)
        items[p] = Const(None)
        tuple_stmt.value = ir.BuildTuple(items)
        blk.stmts = stmts
