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
example when the batched call ends (execution/sums.py `Sums`); a term that is a call
(here `node_loss`) is *deferred*: its arguments are recorded and the function runs once,
batched over all the lanes of all heights. This is what hand-batched code does (one
classifier step over all nodes); the sum is the same up to floating-point reassociation.

Definition. Let every `return` of a function with self-recursive call sites (frontend/
recursion.py) return a tuple display of the same length L, and let each recursive call's
result be used only by one unpacking into L targets, where the call returns. Component p is
a *sum over the recursion* when a dataflow analysis (`_plan`) proves that on every path,
component p of each recursive result is used exactly once, by `+` (or `+=`) and copies whose
results are used the same way, until it reaches component p of a return; whatever else is
added on the way (the *terms*, in any order, through temporaries, `+=`, or a variable that
holds ``0.0`` on one path into a join and ``ll + lr`` on the other) is recorded where it is
added. So these are all sums::

    return h, loss_l + loss_r + node_loss(model, h, k)

    if leaf: ...; sub = 0.0
    else:    ...; sub = ll + lr
    nll = node_loss(params, h, label)
    return h, c, sub + nll

    total = node_loss(model, h, k); total += ll; total = lr + total
    return h, total

Terms that are calls defined in the block that adds them and used only there (no
`*args`/`**kwargs`) are deferred; other terms are recorded as values. At run time a call is
deferred only when its callee is a user function without visible side effects (`may_defer`:
no assignment into an object, attribute, global or closure variable, no call of a mutating
method such as `append`); any other call runs where it is written. Anything else (a part
used twice, dropped, multiplied, read after it was added) leaves the function as written.
"""
from __future__ import annotations

import types
from collections import Counter
from dataclasses import dataclass, field

from . import ir
from .fusion import FusedCall
from .ir import Assign, Const, FunctionIR, Stmt, Var
from .liveness import analyze
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
    defs, uses, _ = _defs_and_uses(fn)
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
        cont = fn.blocks[site.cont].stmts
        for target in site.defs():
            u = [s for s in _users(fn, target)]
            if len(u) != 1 or not isinstance(u[0], ir.Unpack) or u[0].star_index is not None \
                    or len(u[0].targets) != length or uses[target] != 1 \
                    or not any(st is u[0] for st in cont):
                return ()       # (unpacked where the call returns: every call's part is seen)
            unpacks.append(u[0])
    plans = []
    for p in range(length):
        plan = _plan(fn, p, returns, unpacks)
        if plan is not None:
            plans.append((p, plan))
    live_out = analyze(fn).live_out if plans else None
    for p, plan in plans:
        _rewrite(fn, p, plan, live_out)
    return tuple(p for p, _ in plans)


_DEFERRABLE: dict = {}        # code object -> whether calls of it may be deferred


def may_defer(fn) -> bool:
    """Whether a call of `fn` may run later than written (a deferred term): a user function
    (or method, or callable object) whose body assigns into no object, attribute, global or
    closure variable. Anything else (builtins, list.append, ...) runs where it is written."""
    from ..execution.calls import is_user_function
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


_PENDING, _SHARED, _CONSUMED = "pending", "pending, maybe shared", "consumed"
_PENDINGS = (_PENDING, _SHARED)


class _NotASum(Exception):
    """Component p is not a sum over the recursion (the function runs as written)."""


def _plan(fn, p, returns, unpacks):
    """``(actions, promotions)``: how to rewrite component p as recorded terms, or None if it
    is not a sum.

    A forward dataflow analysis over the blocks. A variable is *pending* while it holds a
    part of the sum that has yet to reach a return: component p of a recursive result, or a
    `+` with a pending operand (its other operands are *terms*), or a copy of a pending
    variable. Using a pending variable *consumes* it; the analysis proves that every pending
    value is consumed exactly once, by a `+`, a copy, or component p of a return, on every
    path: no other use, no overwrite, none left at a return, a consumed variable never read
    again. A variable that is pending after a join but holds an ordinary value on one incoming
    edge (``sub = 0.0`` in the leaf branch, ``sub = ll + lr`` in the other) becomes a term at
    the end of that edge's block; unless that value is a constant or the result of arithmetic,
    it may be an object something else refers to, and an in-place `+=` onto it is then no
    sum (it would change that object). Then the returned total of a call equals the sum of the
    terms recorded while it ran plus its children's totals, each once: what the frame adds up.
    """
    unpack_ids = {id(u) for u in unpacks}
    return_stmts = {id(stmt) for _, stmt in returns}
    preds: dict = {b: [] for b in fn.blocks}
    for bid, blk in fn.blocks.items():
        for target, _ in blk.term.successors():
            preds[target].append(bid)
    outs: dict = {}
    ins: dict = {fn.entry: {}}

    def merged_in(bid):
        state: dict = {}
        for pred in preds[bid]:
            if pred not in outs:
                continue
            for name, status in outs[pred].items():
                old = state.get(name)
                if old is not None and (old == _CONSUMED) != (status == _CONSUMED):
                    raise _NotASum          # pending on one edge, consumed on another
                state[name] = _SHARED if _SHARED in (old, status) else status
        for pred in preds[bid]:
            if pred in outs:
                for name, status in state.items():
                    if status == _PENDING and name not in outs[pred] and \
                            not _fresh_at_end(fn.blocks[pred], name):
                        state[name] = _SHARED      # promoted on that edge (checked later)
        return state

    def transfer(bid, state, actions):
        state = dict(state)
        blk = fn.blocks[bid]
        for st in blk.stmts:
            used = st.uses()
            if any(state.get(u) == _CONSUMED for u in used):
                raise _NotASum
            pending = [u for u in used if state.get(u) in _PENDINGS]
            produces = None
            if id(st) in unpack_ids:
                produces = st.targets[p]
                actions[id(st)] = ("unpack",)
            elif not pending:
                pass
            elif isinstance(st, Assign) and isinstance(st.value, ir.Use):
                produces = st.target
                actions[id(st)] = ("copy",)
            elif isinstance(st, Assign) and isinstance(st.value, ir.BinOp) and st.value.op in _PLUS:
                ops = [st.value.a, st.value.b]
                if len(pending) != len(set(pending)):
                    raise _NotASum          # `x + x`: twice the same part
                if st.value.op == "+=" and state.get(getattr(ops[0], "name", None)) != _PENDING:
                    raise _NotASum          # changes in place an object others may refer to
                produces = st.target
                actions[id(st)] = ("add", [op for op in ops
                                           if not (isinstance(op, Var) and op.name in pending)])
            elif id(st) in return_stmts:
                item = st.value.items[p]
                if not isinstance(item, Var) or pending != [item.name]:
                    raise _NotASum          # a part elsewhere in the returned tuple
                actions[id(st)] = ("return", [])
            else:
                raise _NotASum              # any other use of a part of the sum
            if id(st) in return_stmts and not pending:
                actions[id(st)] = ("return", [st.value.items[p]])
            shared = any(state.get(u) == _SHARED for u in pending)
            for u in pending:
                state[u] = _CONSUMED
            for d in st.defs():
                if state.get(d) in _PENDINGS:
                    raise _NotASum          # a part overwritten before it reached a return
                if d == produces:
                    state[d] = _SHARED if shared and isinstance(st.value, ir.Use) else _PENDING
                else:
                    state.pop(d, None)
        t = blk.term
        if any(state.get(u) is not None for u in t.used_vars()):
            raise _NotASum
        if isinstance(t, ir.Return) and any(v in _PENDINGS for v in state.values()):
            raise _NotASum                  # a part that never reaches the return
        for d in t.defs():
            if state.get(d) in _PENDINGS:
                raise _NotASum
            state.pop(d, None)
        return state

    try:
        work = [fn.entry]
        while work:
            bid = work.pop()
            state = transfer(bid, ins[bid], {})
            if outs.get(bid) == state:
                continue
            outs[bid] = state
            for target, _ in fn.blocks[bid].term.successors():
                new = merged_in(target)
                if ins.get(target) != new or target not in outs:
                    ins[target] = new
                    work.append(target)
        actions: dict = {}
        for bid in outs:
            transfer(bid, ins[bid], actions)
        promotions = []                    # (block, variable): an ordinary value becomes a term
        for bid in outs:
            for target, _ in fn.blocks[bid].term.successors():
                for name, status in ins[target].items():
                    if status in _PENDINGS and outs[bid].get(name) is None:
                        promotions.append((bid, _promotable(fn, bid, name)))
    except _NotASum:
        return None
    if not any(a[0] == "unpack" for a in actions.values()):
        return None
    return actions, promotions


def _promotable(fn, bid, name):
    """`name` if block `bid` ends in a jump and assigns `name` (so it holds a value there,
    which becomes a term at the end of the block); else `_NotASum`."""
    blk = fn.blocks[bid]
    if not isinstance(blk.term, ir.Jump) or _last_def(blk, name) is None:
        raise _NotASum
    return name


def _last_def(blk, name):
    last = None
    for st in blk.stmts:
        if name in st.defs():
            last = st
    return last


def _fresh_at_end(blk, name) -> bool:
    """Whether `name` holds, at the end of `blk`, a value no other variable refers to: its
    last assignment there is a constant or arithmetic that makes a new value (not an
    in-place operator), and nothing after it reads `name`."""
    st = _last_def(blk, name)
    if not isinstance(st, Assign):
        return False
    after = blk.stmts[next(i for i, s in enumerate(blk.stmts) if s is st) + 1:]
    if any(name in s.uses() for s in after):
        return False
    v = st.value
    if isinstance(v, ir.Use):
        return isinstance(v.a, Const)
    return (isinstance(v, ir.BinOp) and not v.op.endswith("=")) or isinstance(v, ir.UnaryOp)


def _rewrite(fn, p, plan, live_out):
    actions, promotions = plan
    for bid, blk in fn.blocks.items():
        stmts = []
        original = blk.stmts
        for at, st in enumerate(original):
            action = actions.get(id(st))
            if action is None or action[0] == "unpack":
                stmts.append(st)
            elif action[0] in ("add", "return"):
                # a term's own value may be looked into when nothing reads it afterwards
                later = {u for s2 in original[at + 1:] for u in s2.uses()} | \
                    set(blk.term.used_vars()) | live_out[bid]
                for op in action[1]:
                    _record_term(stmts, p, op, later, st.lineno)
                if action[0] == "return":
                    items = list(st.value.items)
                    items[p] = Const(None)
                    st.value = ir.BuildTuple(items)
                    stmts.append(st)
            # ("copy": dropped; the part is added by the frame)
        blk.stmts = stmts
    for bid, name in promotions:
        blk = fn.blocks[bid]
        blk.stmts.append(Accumulate(p, Var(name), lineno=blk.term.lineno))


def _record_term(stmts, p, op, later, lineno):
    """Append to `stmts` the recording of term `op` of sum p. A value defined earlier in the
    same block (by the last statement of `stmts` that assigns it) and read nowhere else (not
    in between, not in `later`: the rest of the block and what is live after it) is looked
    into: a call becomes a deferred call where it stands, a `+` of two values is recorded as
    their terms."""
    if isinstance(op, Var) and op.name not in later:
        for i in range(len(stmts) - 1, -1, -1):
            st = stmts[i]
            if op.name not in st.defs():
                if op.name in st.uses():
                    break
                continue
            if isinstance(st, Assign) and isinstance(st.value, ir.Call) and \
                    st.value.star_args is None and st.value.star_kwargs is None:
                stmts[i] = DeferredCall(p, st.value.func, list(st.value.args),
                                        dict(st.value.kwargs), lineno=st.lineno)
                return
            if isinstance(st, FusedCall):          # (calls fused with others: take it out)
                j = st.targets.index(op.name)
                deferred = DeferredCall(p, st.funcs[j], list(st.args[j]), dict(st.kwargs[j]),
                                        lineno=st.lineno)
                rest = [k for k in range(len(st.targets)) if k != j]
                stmts[i:i + 1] = [deferred] + ([FusedCall([st.targets[k] for k in rest],
                                                          [st.funcs[k] for k in rest],
                                                          [st.args[k] for k in rest],
                                                          [st.kwargs[k] for k in rest],
                                                          lineno=st.lineno)] if rest else [])
                return
            if isinstance(st, Assign) and isinstance(st.value, ir.BinOp) and st.value.op == "+" \
                    and st.value.a != st.value.b and op not in (st.value.a, st.value.b):
                del stmts[i]
                _record_term(stmts, p, st.value.a, later, lineno)
                _record_term(stmts, p, st.value.b, later, lineno)
                return
            break
    stmts.append(Accumulate(p, op, lineno=lineno))
