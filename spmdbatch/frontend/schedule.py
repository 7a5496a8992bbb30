"""The order in which a batch program runs its blocks.

Definition: a *schedule* numbers the reachable blocks so that

1. every forward edge (an edge that is not a back edge ``u -> h`` with ``h`` dominating
   ``u``) goes from a lower to a higher number, and
2. the blocks of every natural loop are numbered contiguously, header first.

The scheduler of execution/frame.py runs the lowest-numbered block with waiting lanes. With
(1), all lanes that will meet at a join have arrived before it runs; with (2), lanes that
leave a loop wait at its exit (numbered after the loop) until no lane is left inside it.
Built by topologically sorting each loop region with its inner loops collapsed into one
node, ties broken by reverse post-order, and expanding inner loops in place.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

from ..errors import UnsupportedConstruct
from .cfg import natural_loops, reverse_postorder
from .ir import FunctionIR


@dataclass
class Schedule:
    """Block order plus the loop facts the generated code needs."""
    order: list            # block ids in schedule order
    position: dict         # block id -> its number
    loop_end: list         # by number: number of the last block of the loop it heads, or -1
    back_edges: set        # (source id, header id)


def schedule(fn: FunctionIR) -> Schedule:
    rpo = reverse_postorder(fn)
    rank = {b: i for i, b in enumerate(rpo)}
    loops = natural_loops(fn)
    top = [lp for lp in loops if lp.parent is None]
    order = _order_region(fn, set(rpo), None, top, rank)
    if len(order) != len(rpo):
        raise UnsupportedConstruct(f"{fn.qualname}: control flow that is not structured loops and "
                                   f"branches (irreducible) cannot be batched", fn.filename, fn.firstlineno)
    position = {b: i for i, b in enumerate(order)}
    loop_end = [-1] * len(order)
    back = set()
    for lp in loops:
        loop_end[position[lp.header]] = max(position[b] for b in lp.body)
        back |= {(u, lp.header) for u in lp.latches}
    return Schedule(order, position, loop_end, back)


def _order_region(fn, blocks, header, child_loops, rank):
    rep = {b: b for b in blocks}
    children = {}
    for lp in child_loops:
        children[lp.header] = lp
        for b in lp.body:
            rep[b] = lp.header
    nodes = set(rep.values())
    succ = {n: set() for n in nodes}
    indeg = {n: 0 for n in nodes}
    for b in blocks:
        for s in fn.successors(b):
            if s not in blocks:
                continue
            u, v = rep[b], rep[s]
            if u == v or v == header or v in succ[u]:
                continue
            succ[u].add(v)
            indeg[v] += 1
    ready = [(rank[n], n) for n in nodes if indeg[n] == 0]
    heapq.heapify(ready)
    out = []
    while ready:
        _, n = heapq.heappop(ready)
        if n in children:
            lp = children[n]
            out.extend(_order_region(fn, lp.body, lp.header, lp.children, rank))
        else:
            out.append(n)
        for v in succ[n]:
            indeg[v] -= 1
            if indeg[v] == 0:
                heapq.heappush(ready, (rank[v], v))
    return out
