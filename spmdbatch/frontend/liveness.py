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
    """Result of :func:`analyze`: live-in and live-out sets per block id (`live_in` without
    the block's params; `live_in_full` with its live params)."""
    live_in: dict
    live_out: dict
    live_in_full: dict | None = None


def _names(ops) -> set[str]:
    return {o.name for o in ops if isinstance(o, Var)}


def block_transfer(fn: FunctionIR, bid: int, live_out: set[str], include_params: bool = False,
                   target_live: dict | None = None) -> set[str]:
    """Live-in set of block ``bid`` given its live-out set.

    With `include_params`, the block's own params that are live at its entry are included.
    With `target_live` (live-in sets of the successors, params included), a jump argument is
    a use only when the target's param it fills is live there.
    """
    blk = fn.blocks[bid]
    t = blk.term
    live = set(live_out)
    for target, args in t.successors():
        if target_live is None:
            live |= _names(args)
        else:
            params = fn.blocks[target].params
            live |= _names([a for p, a in zip(params, args) if p in target_live[target]])
    live -= set(t.defs())
    live |= set(t.uses_before()) if t.defs() else _decision_uses(t)
    for s in reversed(blk.stmts):
        live -= set(s.defs())
        live |= set(s.uses())
    if not include_params:
        live -= set(blk.params)
    return live


def _decision_uses(term) -> set[str]:
    """Variables a terminator reads other than its edge arguments (a branch condition, a
    returned value): all operands minus one occurrence of each edge argument."""
    from collections import Counter
    names = Counter(o.name for o in term.operands() if isinstance(o, Var))
    names.subtract(a.name for _, args in term.successors() for a in args if isinstance(a, Var))
    return {n for n, k in names.items() if k > 0}


def analyze(fn: FunctionIR) -> Liveness:
    """Iterate to the fixpoint; returns live-in/live-out for every block."""
    full = {b: set() for b in fn.blocks}        # live at entry, params included
    live_out = {b: set() for b in fn.blocks}
    order = list(reversed(fn.order))
    changed = True
    while changed:
        changed = False
        for b in order:
            out = set()
            for s in fn.successors(b):
                out |= full[s] - set(fn.blocks[s].params)
            new_full = block_transfer(fn, b, out, include_params=True, target_live=full)
            if out != live_out[b] or new_full != full[b]:
                live_out[b], full[b] = out, new_full
                changed = True
    live_in = {b: full[b] - set(fn.blocks[b].params) for b in fn.blocks}
    return Liveness(live_in, live_out, full)


def live_params(fn: FunctionIR, liveness: "Liveness", bid: int) -> list[str]:
    """The params of block `bid` whose value is used (a dead stack value, such as the
    iterator a `return` inside a `for` loop pops, is not)."""
    return [p for p in fn.blocks[bid].params if p in liveness.live_in_full[bid]]
