"""Uniformity (divergence) analysis: which values and branches may differ between examples.

The batched program runs all examples (lanes) together.  A value is *uniform* if it is
the same in every lane, *varying* otherwise.  ``analyze(fn, varying_args)`` computes the
least fixpoint of these rules:

1. Data dependence.  The arguments in ``varying_args`` are varying.  The result of an
   expression is varying if any operand is (for calls this includes the callee; for
   attributes/subscripts the object and the index).  ``Const``, ``LoadGlobal``,
   ``LoadClosure`` and ``LoadDeref`` are uniform, except that ``LoadDeref(x)`` is varying
   if this function stores a varying value into cell ``x``.  ``Unpack`` targets are varying
   if the unpacked value is.  A block param is varying if an incoming edge passes a
   varying arg; ForIter's item is varying if the iterator is.
2. Mutation.  ``obj[i] = v``, ``obj.a = v``, ``ListAppend(obj, v)`` and the like make
   ``obj`` varying if any operand is varying.  A method call ``obj.m(args)`` with a varying
   argument makes ``obj`` varying too (the method may mutate it).  Aliases are not tracked.
3. Divergent control.  A branch block (Branch/ForIter) is varying if its condition or
   iterator is varying.  Every variable defined in a block that is control dependent
   (see :mod:`.cfg`) on a varying branch is varying, since lanes that skip the block
   keep the old value; so are the params of a block with a predecessor that is a
   varying branch or is control dependent on one (the join of the branch).  Objects
   mutated in such blocks (rule 2) become varying.
4. Loops.  If a loop has a varying exit branch (a varying branch block with an edge
   leaving the loop), lanes leave the loop at different iterations, so every variable
   defined anywhere in the loop is varying.

The iteration repeats until neither set changes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import ir
from .cfg import control_dependence, natural_loops
from .ir import Assign, Branch, ForIter, FunctionIR, Var


@dataclass
class UniformityInfo:
    """Result of :func:`analyze`."""
    varying_vars: set = field(default_factory=set)
    varying_branches: set = field(default_factory=set)     # block ids
    divergent_blocks: set = field(default_factory=set)     # blocks CD on a varying branch

    def is_varying(self, operand) -> bool:
        """True if ``operand`` (Var, Const or name) may differ between examples."""
        if isinstance(operand, str):
            return operand in self.varying_vars
        return isinstance(operand, Var) and operand.name in self.varying_vars


_MUTATORS = (ir.StoreSubscr, ir.StoreAttr, ir.DelSubscr, ir.DelAttr, ir.ListAppend,
             ir.ListExtend, ir.SetAdd, ir.SetUpdate, ir.MapAdd, ir.DictUpdate, ir.DictMerge)


def _mutated_obj(s):
    """The object a side-effect statement mutates, or None."""
    if isinstance(s, _MUTATORS):
        obj = getattr(s, s.OPERANDS[0]) if not isinstance(
            s, (ir.StoreSubscr, ir.StoreAttr)) else s.obj
        return obj.name if isinstance(obj, Var) else None
    return None


def _block_defs(blk) -> set[str]:
    out = set(blk.params)
    for s in blk.stmts:
        out.update(s.defs())
        m = _mutated_obj(s)
        if m is not None:
            out.add(m)
    out.update(blk.term.defs())
    return out


def analyze(fn: FunctionIR, varying_args) -> UniformityInfo:
    """Compute varying variables and branches of ``fn`` given the varying arguments."""
    V: set[str] = set(varying_args)
    VB: set[int] = set()
    cd = control_dependence(fn)
    loops = natural_loops(fn)
    preds = fn.predecessors()
    receivers: dict[str, str] = {}          # bound-method temp -> receiver var
    for blk in fn.blocks.values():
        for s in blk.stmts:
            if isinstance(s, Assign) and isinstance(s.value, ir.GetAttr) \
                    and isinstance(s.value.obj, Var):
                receivers[s.target] = s.value.obj.name
    block_defs = {b: _block_defs(blk) for b, blk in fn.blocks.items()}

    def vary(ops) -> bool:
        return any(isinstance(o, Var) and o.name in V for o in ops)

    changed = True
    divergent: set[int] = set()
    while changed:
        before = (len(V), len(VB))
        divergent = {b for b in fn.blocks if cd[b] & VB}
        # rule 3 and 4: definitions under divergent control
        for b in divergent:
            V |= block_defs[b]
        for b in fn.blocks:
            if any(p in VB or (cd[p] & VB) for p in preds[b]):
                V.update(fn.blocks[b].params)
        for lp in loops:
            if any(src in VB for src, _ in lp.exits):
                for b in lp.body:
                    V |= block_defs[b]
        # rules 1 and 2: data dependence, in RPO
        for b in fn.order:
            blk = fn.blocks[b]
            for s in blk.stmts:
                if isinstance(s, Assign):
                    e = s.value
                    if isinstance(e, ir.LoadDeref):
                        if e.name in V:
                            V.add(s.target)
                    elif isinstance(e, ir.SaveLocal):
                        if e.name in V:
                            V.add(s.target)
                    elif vary(e.operands()):
                        V.add(s.target)
                        if isinstance(e, ir.Call) and isinstance(e.func, Var) \
                                and e.func.name in receivers and vary(
                                    list(e.args) + list(e.kwargs.values())
                                    + [e.star_args, e.star_kwargs]):
                            V.add(receivers[e.func.name])
                    if b in divergent and isinstance(e, ir.Call) and isinstance(e.func, Var) \
                            and e.func.name in receivers:
                        V.add(receivers[e.func.name])
                elif isinstance(s, (ir.Unpack, ir.StoreDeref, ir.RestoreLocal, ir.MakeCell)):
                    if vary(s.operands()) or (isinstance(s, ir.MakeCell) and s.name in V):
                        V.update(s.defs())
                else:
                    m = _mutated_obj(s)
                    if m is not None and vary(s.operands()):
                        V.add(m)
            t = blk.term
            if isinstance(t, ForIter) and vary([t.iterator]):
                V.add(t.item_target)
            elif t.defs() and vary(t.operands()):      # a recursive call site
                V.update(t.defs())
            for target, args in t.successors():
                params = fn.blocks[target].params
                for p, a in zip(params, args):
                    if isinstance(a, Var) and a.name in V:
                        V.add(p)
            if isinstance(t, Branch) and t.cond.name in V:
                VB.add(b)
            if isinstance(t, ForIter) and vary([t.iterator]):
                VB.add(b)
        changed = (len(V), len(VB)) != before
    return UniformityInfo(V, VB, {b for b in fn.blocks if cd[b] & VB})
