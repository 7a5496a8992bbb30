"""Self-recursive calls become scheduling points: the recursion runs by height, not by depth.

A batched call normally runs to completion before its caller goes on. For a recursive tree
encoder that means one batched call per tree *depth*: leaves at different depths are
handled in different steps, and so is the work after the recursive calls. Hand-batched
code does better: all leaves in one step, then one step per *height*.

This pass gives the batch program that schedule. A call of the function to itself
(``t = f(a)``, or a fused group of such calls, frontend/fusion.py) ends its block with a
`Recurse` terminator whose only successor, the *continuation*, holds the rest of the block.
At run time (execution/recursion.py `recurse`) the call does not run a new batch program:
it adds the callee's lanes to the running frame at the entry block and parks the calling
lanes at the continuation. The frame runs the lowest-numbered block with waiting lanes as
usual, so lanes descend the whole recursion first; leaf lanes of all depths wait at their
block and run together; a parked lane resumes, with its calls' results, once all its callees
have returned, together with every other lane whose callees are done.

Definition of a self-recursive call site (checked again at run time, where a call to any
other function runs as an ordinary batched call): the callee is loaded as the global with
the function's own name, the call passes exactly the function's positional parameters by
position, and the function has no cell or free variables, no ``*args``, ``**kwargs`` or
keyword-only parameters.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import ir
from .cfg import reverse_postorder
from .fusion import FusedCall
from .ir import Assign, Call, FunctionIR, Terminator, Var


@dataclass
class Recurse(Terminator):
    """``call`` (an Assign of a Call, or a FusedCall) of the function itself, then ``cont``."""
    call: object
    cont: int
    lineno: int | None = field(default=None, kw_only=True)
    OPERANDS = ()

    def operands(self):
        return self.call.operands()

    def successors(self):
        return [(self.cont, [])]

    def defs(self):
        return list(self.call.defs())

    def uses_before(self):
        return self.call.used_vars()

    def calls(self):
        """(targets, funcs, args, kwargs) as lists, one entry per call."""
        c = self.call
        if isinstance(c, FusedCall):
            return c.targets, c.funcs, c.args, c.kwargs
        return [c.target], [c.value.func], [list(c.value.args)], [dict(c.value.kwargs)]

    def __str__(self):
        return f"recurse [{self.call}] then {self.cont}"


def eligible(fn: FunctionIR) -> bool:
    """Whether self-recursive calls of `fn` may be scheduled by height (module docstring)."""
    return not (fn.cellvars or fn.freevars or fn.vararg or fn.varkw or fn.kwonly)


def split_recursive_calls(fn: FunctionIR) -> int:
    """End a block at every self-recursive call site (in place); returns how many."""
    if not eligible(fn):
        return 0
    count = 0
    work = list(fn.blocks)
    while work:
        bid = work.pop()
        blk = fn.blocks[bid]
        loads: dict = {}
        for i, s in enumerate(blk.stmts):
            if isinstance(s, Assign) and isinstance(s.value, ir.LoadGlobal):
                loads[s.target] = s.value.name
            if _is_self_call(s, fn, loads):
                cont = max(fn.blocks) + 1
                fn.blocks[cont] = ir.Block(cont, [], blk.stmts[i + 1:], blk.term)
                blk.stmts = blk.stmts[:i]
                blk.term = Recurse(s, cont, lineno=s.lineno)
                work.append(cont)
                count += 1
                break
    if count:
        fn.order = reverse_postorder(fn)
    return count


def _is_self_call(s, fn, loads) -> bool:
    if isinstance(s, FusedCall):
        funcs, args, kwargs = s.funcs, s.args, s.kwargs
    elif isinstance(s, Assign) and isinstance(s.value, Call) and s.value.star_args is None \
            and s.value.star_kwargs is None:
        funcs, args, kwargs = [s.value.func], [s.value.args], [s.value.kwargs]
    else:
        return False
    return all(isinstance(f, Var) and loads.get(f.name) == fn.name for f in funcs) and \
        all(len(a) == fn.argcount for a in args) and not any(kwargs)
