"""Loops over a node's children run all their iterations at once: the recursion stays by height.

A tree model whose nodes have any number of children loops over them around the recursive
call::

    def encode(p, t, k):
        x = p["E"][t.word[k]]
        h_sum, fc = 0.0, 0.0
        for j in range(t.start[k], t.end[k]):
            hc, cc = encode(p, t, t.kids[j])        # a recursive call in the loop
            h_sum = h_sum + hc
            fc = fc + sigmoid(p["Uf"] @ hc + p["Wf"] @ x) * cc
        ...

Run as written, each iteration waits for its child's whole subtree before the next child
starts: the children of a node are encoded one after the other, and the recursion is no
longer by height (one batched call per child position and depth). This pass lets the
iterations run side by side instead. When the loop's iterations are independent except
for *accumulators* (variables the loop only adds to), the loop's entry becomes a
`ParallelFor` terminator: at run time (execution/child_loops.py) every (lane, item) pair of
the running group becomes a lane of its own (an *iteration lane*) that runs one pass of the
body with the accumulators at 0; the lane waits, as a recursive caller does, until all its
iteration lanes ended (`EndIteration`, where the body jumped back to the header), and goes
on after the loop with each accumulator's value plus the sum of what its iterations added.
The recursive calls of all iterations of all nodes of one depth then start together, and
the bodies of all iterations of one height run as one group: the hand-batched schedule.

Definition. A `for` loop qualifies when
- the function's self-recursive calls are scheduled by height (frontend/recursion.py) and the
  loop's body makes one (a `Recurse` terminator in the body);
- the loop is entered from one block, which ends by jumping to the header with the iterator
  of a `GetIter` it computed; the body leaves the loop only through the header (no `break`,
  `return` or `raise` in it) and has no loop of its own;
- the function changes no object (no item or attribute assignment, no global or closure
  variable, no method such as `append`: `reduction._has_side_effect`), so iterations and
  other activations may interleave;
- every variable the body assigns that is live at the header (a loop-carried value) is an
  accumulator: on every path through the body, its value at the header is used exactly
  once, by `+`, `+=` or a copy whose result is used the same way, and the chain ends in the
  same variable when the body jumps back (a forward dataflow analysis, `_accumulators`);
  the loop variable is not read after the loop.

The original loop is kept: at run time an iterable the runtime cannot split into items
(an iterator, a list the program built, a sequence of objects that are not numbers) takes
it as written. The parallel body is a copy of the loop's blocks.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

from . import ir
from .cfg import natural_loops, reverse_postorder
from .ir import Assign, FunctionIR, Terminator, Var
from .liveness import analyze
from .recursion import Recurse, eligible


@dataclass
class ParallelFor(Terminator):
    """``for target in iterable`` with independent iterations: `body` for every item at once
    (iteration lanes), then `cont` with the accumulators summed; `header` (with `iterator`)
    for the loop as written when the iterable cannot be split."""
    iterable: Var
    iterator: Var
    header: int
    target: str
    body: int
    cont: int
    accs: list
    lineno: int | None = field(default=None, kw_only=True)
    OPERANDS = ("iterable", "iterator")

    def operands(self):
        return [self.iterable, self.iterator] + [Var(a) for a in self.accs]

    def successors(self):
        return [(self.header, [self.iterator]), (self.body, []), (self.cont, [])]

    def defs(self):
        return list(self.accs) + [self.target]

    def uses_before(self):
        return [self.iterable.name, self.iterator.name] + list(self.accs)

    def __str__(self):
        return (f"parallel for {self.target} in {self.iterable!r} -> {self.body}, then "
                f"{self.cont} with sums of {self.accs} (as written: {self.header})")


@dataclass
class EndIteration(Terminator):
    """The end of one iteration lane: what it added to each accumulator (those the loop's
    exit block `cont` reads)."""
    accs: list
    cont: int
    lineno: int | None = field(default=None, kw_only=True)
    OPERANDS = ()

    def operands(self):
        return [Var(a) for a in self.accs]

    def __str__(self):
        return f"end iteration ({', '.join(self.accs)})"


def parallelize_child_loops(fn: FunctionIR) -> int:
    """Give every qualifying loop a parallel version (in place); returns how many."""
    if not eligible(fn) or not any(isinstance(b.term, Recurse) for b in fn.blocks.values()):
        return 0
    if any(_changes_objects(s) for b in fn.blocks.values() for s in b.stmts):
        return 0
    count = 0
    for lp in natural_loops(fn):
        if lp.children or lp.parent is not None:
            continue
        plan = _qualifies(fn, lp)
        if plan is not None:
            _rewrite(fn, lp, *plan)
            count += 1
    if count:
        fn.order = reverse_postorder(fn)
    return count


def _changes_objects(st) -> bool:
    from .reduction import _has_side_effect
    return _has_side_effect(st)


def _qualifies(fn, lp):
    """(preheader, iterable, iterator, accumulators) or None."""
    h = lp.header
    head = fn.blocks[h]
    t = head.term
    if not isinstance(t, ir.ForIter) or len(head.params) != 1 or head.stmts or t.body_args \
            or t.exit_args or not isinstance(t.iterator, Var) or t.iterator.name != head.params[0]:
        return None
    body = lp.body - {h}
    if t.body not in body or t.exit in lp.body or fn.blocks[t.exit].params:
        return None
    if not any(isinstance(fn.blocks[b].term, Recurse) for b in body):
        return None
    iters = _iterator_names(fn, lp)
    for b in body:
        term = fn.blocks[b].term
        if isinstance(term, (ir.Return, ir.Raise)):
            return None
        if any(p not in iters for p in fn.blocks[b].params):
            return None             # (a value on the stack other than the iterator)
        for s, args in term.successors():
            if s not in lp.body:
                return None
            if s == h and (not isinstance(term, ir.Jump) or len(args) != 1 or
                           getattr(args[0], "name", None) not in iters):
                return None         # (`continue` under a condition: a branch to the header)
    preds = [b for b in fn.blocks if h in fn.successors(b) and b not in lp.body]
    if len(preds) != 1:
        return None
    pre = fn.blocks[preds[0]]
    jt = pre.term
    if not isinstance(jt, ir.Jump) or jt.target != h or len(jt.args) != 1 or \
            not isinstance(jt.args[0], Var):
        return None
    iterator = jt.args[0].name
    made = [s for s in pre.stmts if iterator in s.defs()]
    if len(made) != 1 or not isinstance(made[0], Assign) or not isinstance(made[0].value, ir.GetIter) \
            or not isinstance(made[0].value.x, Var):
        return None
    iterable = made[0].value.x
    live = analyze(fn)
    if t.item_target in live.live_in[h]:
        return None                 # the loop variable is read after the loop
    assigned = {d for b in body for s in fn.blocks[b].stmts for d in s.defs()} | \
        {d for b in body for d in fn.blocks[b].term.defs()} | {t.item_target}
    carried = sorted((assigned & live.live_in[h]) - iters)
    if iterable.name in assigned:
        return None
    if not _accumulators(fn, lp, carried):
        return None
    return preds[0], iterable, Var(iterator), carried, iters


def _iterator_names(fn, lp):
    """The header's iterator param and the body blocks' params that only ever receive it
    (the iterator stays on the stack through the body's branches)."""
    h = lp.header
    iters = {fn.blocks[h].params[0]}
    changed = True
    while changed:
        changed = False
        for b in lp.body - {h}:
            for i, p in enumerate(fn.blocks[b].params):
                if p in iters:
                    continue
                incoming = [args[i] for src in lp.body for s, args in fn.blocks[src].term.successors()
                            if s == b and i < len(args)]
                if incoming and all(getattr(a, "name", None) in iters for a in incoming):
                    iters.add(p)
                    changed = True
    return iters


def _accumulators(fn, lp, accs) -> bool:
    """Whether every variable of `accs` is only added to by the loop's body (module docstring):
    a forward analysis of which variables hold an accumulator's running value ("pending",
    tagged with the accumulator), each used exactly once, by `+`, `+=` or a copy."""
    h = lp.header
    t = fn.blocks[h].term
    body = lp.body - {h}
    ins = {t.body: {a: a for a in accs}}
    outs: dict = {}
    consumed = object()
    work = [t.body]
    while work:
        bid = work.pop()
        state = dict(ins[bid])
        blk = fn.blocks[bid]
        for st in blk.stmts:
            used = st.uses()
            pending = [u for u in used if u in state]
            if any(state[u] is consumed for u in pending):
                return False
            produces = None
            if pending:
                tags = {state[u] for u in pending}
                if len(pending) != 1 or len(tags) != 1 or used.count(pending[0]) != 1:
                    return False
                if isinstance(st, Assign) and isinstance(st.value, ir.Use):
                    produces = st.target
                elif isinstance(st, Assign) and isinstance(st.value, ir.BinOp) and \
                        st.value.op in ("+", "+="):
                    produces = st.target
                else:
                    return False
                tag = tags.pop()
                state[pending[0]] = consumed
            for d in st.defs():
                if d in state and state[d] is not consumed:
                    return False        # a running value overwritten
                state.pop(d, None)
            if produces is not None:
                state[produces] = tag
        term = blk.term
        if any(u in state for u in term.used_vars() if state.get(u) is not consumed):
            if not (isinstance(term, ir.Jump) and term.target == h):
                return False
        for d in term.defs():
            if d in state and state[d] is not consumed:
                return False
            state.pop(d, None)
        for s, _ in term.successors():
            if s == h:
                live = {k: v for k, v in state.items() if v is not consumed}
                if live != {a: a for a in accs}:
                    return False        # each accumulator's running value back in its variable
                continue
            if s not in body:
                return False
            old = ins.get(s)
            if old is None:
                ins[s] = state
                work.append(s)
                continue
            if {k: v for k, v in old.items() if v is not consumed} != \
                    {k: v for k, v in state.items() if v is not consumed}:
                return False            # joins must agree on the running values
            merged = dict(old)
            merged.update((k, v) for k, v in state.items() if v is consumed)
            if merged != old:           # (a value consumed on some path is never read again)
                ins[s] = merged
                work.append(s)
        outs[bid] = state
    return True


def _rewrite(fn, lp, pre_id, iterable, iterator, accs, iters):
    """Copy the loop's body; the preheader ends in a `ParallelFor` to the copy."""
    h = lp.header
    t = fn.blocks[h].term
    body = sorted(lp.body - {h})
    base = max(fn.blocks) + 1
    new_id = {b: base + i for i, b in enumerate(body)}
    for b in body:
        old = fn.blocks[b]          # (statements are shared: no pass changes them after this)
        blk = ir.Block(new_id[b], list(old.params), list(old.stmts), copy.copy(old.term))
        blk.term = _retarget(blk.term, new_id, h, accs, t.exit, iters)
        fn.blocks[blk.id] = blk
    pre = fn.blocks[pre_id]
    pre.term = ParallelFor(iterable, iterator, h, t.item_target, new_id[t.body], t.exit, list(accs),
                           lineno=t.lineno)


def _retarget(term, new_id, header, accs, cont, iters):
    """The copy `term` (a shallow copy) of a body block's terminator, in the parallel body
    (edges that carried the iterator carry None: an iteration lane has none)."""
    def args(values):
        return [ir.Const(None) if getattr(a, "name", None) in iters else a for a in values]
    if isinstance(term, ir.Jump) and term.target == header:
        return EndIteration(list(accs), cont, lineno=term.lineno)
    if isinstance(term, ir.Jump):
        term.target, term.args = new_id[term.target], args(term.args)
    elif isinstance(term, ir.Branch):
        term.true_target, term.true_args = new_id[term.true_target], args(term.true_args)
        term.false_target, term.false_args = new_id[term.false_target], args(term.false_args)
    elif isinstance(term, Recurse):
        term.cont = new_id[term.cont]
    else:
        raise AssertionError(f"unexpected terminator in a parallel loop body: {term}")
    return term
