"""Live-variable analysis (backward data flow) over a FunctionIR.

A variable is live at a point if some path from that point reads it before writing it.
Per block: ``live_out(B) = union(live_in(S) for S in succ(B))`` and ``live_in(B) =
uses(B) | (live_out(B) - defs(B))`` evaluated statement by statement backwards.  Block
params are defined at block entry (so they are never live-in); the args of Jump/Branch/
ForIter are uses in the predecessor; ForIter's ``item_target`` is defined by the
terminator after its iterator is read and before its edge args are.  Deleting a variable
(``del x``) counts as a definition (it kills liveness).
"""
from __future__ import annotations

from dataclasses import dataclass

from .ir import FunctionIR, Var


@dataclass
class Liveness:
    """Result of :func:`analyze`: live-in and live-out sets per block id."""
    live_in: dict
    live_out: dict


def _names(ops) -> set[str]:
    return {o.name for o in ops if isinstance(o, Var)}


def block_transfer(fn: FunctionIR, bid: int, live_out: set[str]) -> set[str]:
    """Live-in set of block ``bid`` given its live-out set."""
    blk = fn.blocks[bid]
    t = blk.term
    live = set(live_out)
    for _, args in t.successors():
        live |= _names(args)
    live -= set(t.defs())
    live |= set(t.uses_before()) if t.defs() else _names(
        [o for o in t.operands()])
    for s in reversed(blk.stmts):
        live -= set(s.defs())
        live |= set(s.uses())
    live -= set(blk.params)
    return live


def analyze(fn: FunctionIR) -> Liveness:
    """Iterate to the fixpoint; returns live-in/live-out for every block."""
    live_in = {b: set() for b in fn.blocks}
    live_out = {b: set() for b in fn.blocks}
    order = list(reversed(fn.order))
    changed = True
    while changed:
        changed = False
        for b in order:
            out = set()
            for s in fn.successors(b):
                out |= live_in[s]
            new_in = block_transfer(fn, b, out)
            if out != live_out[b] or new_in != live_in[b]:
                live_out[b], live_in[b] = out, new_in
                changed = True
    return Liveness(live_in, live_out)
