"""Control-flow analyses on a FunctionIR: orders, dominators, post-dominators, control
dependence and natural loops.

Definitions used (``s -> t`` is a CFG edge, ``entry`` the entry block):

* Reverse post-order (RPO): reverse of the order in which a depth-first search from
  ``entry`` (visiting successors in terminator order) finishes blocks.  Only reachable
  blocks appear.
* ``a`` dominates ``b`` if every path from ``entry`` to ``b`` goes through ``a`` (every
  block dominates itself).  ``idom(b)`` is the unique strict dominator of ``b`` that every
  other strict dominator of ``b`` dominates.  Computed by the iterative data-flow
  algorithm ``Dom(b) = {b} | intersect(Dom(p) for p in preds(b))``.
* Post-dominance is dominance on the reversed CFG from a virtual exit node :data:`EXIT`
  which every Return/Raise block jumps to.  Blocks from which no Return/Raise is
  reachable (infinite loops) also get an edge to EXIT, so every block has an ipdom.
* Control dependence (Ferrante, Ottenstein & Warren): block ``b`` is control dependent on
  block ``a`` if ``a`` has an edge ``a -> s`` such that ``b`` post-dominates ``s`` (or
  ``b == s``) and ``b`` does not strictly post-dominate ``a``.  Intuitively the decision
  taken at ``a`` determines whether ``b`` runs.  A loop header is control dependent on
  the loop's exit branches (including itself).
* Natural loops: a back edge is an edge ``u -> h`` where ``h`` dominates ``u``.  The loop
  of ``h`` is ``h`` plus every block that reaches a back-edge source ``u`` without going
  through ``h`` (loops sharing a header are merged).  Its exits are the edges leaving the
  body.  Loop ``A`` is nested in ``B`` if ``A``'s body is a strict subset of ``B``'s; the
  parent is the smallest such ``B``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .ir import FunctionIR

#: Id of the virtual exit node used by post-dominance and control dependence.
EXIT = -1


def successors(fn: FunctionIR) -> dict[int, list[int]]:
    """Successor lists (no duplicates) of every block."""
    return {b: fn.successors(b) for b in fn.blocks}


def predecessors(fn: FunctionIR) -> dict[int, list[int]]:
    """Predecessor lists of every block (reachable predecessors only)."""
    succ = successors(fn)
    preds: dict[int, list[int]] = {b: [] for b in fn.blocks}
    for b in reverse_postorder(fn):
        for s in succ[b]:
            if b not in preds[s]:
                preds[s].append(b)
    return preds


def _rpo(entry, succ) -> list:
    seen, post = {entry}, []
    stack = [(entry, iter(succ.get(entry, ())))]
    while stack:
        node, it = stack[-1]
        for s in it:
            if s not in seen:
                seen.add(s)
                stack.append((s, iter(succ.get(s, ()))))
                break
        else:
            stack.pop()
            post.append(node)
    return post[::-1]


def reverse_postorder(fn: FunctionIR) -> list[int]:
    """Reachable blocks in reverse post-order from the entry."""
    return _rpo(fn.entry, {b: fn.successors(b) for b in fn.blocks})


def _dominators(nodes: list, entry, preds) -> dict:
    """Iterative set-based dominators; ``nodes`` must be in RPO of the graph."""
    allset = set(nodes)
    dom = {n: set(allset) for n in nodes}
    dom[entry] = {entry}
    changed = True
    while changed:
        changed = False
        for n in nodes:
            if n == entry:
                continue
            ps = [p for p in preds.get(n, ()) if p in dom]
            new = set.intersection(*(dom[p] for p in ps)) if ps else set()
            new = new | {n}
            if new != dom[n]:
                dom[n] = new
                changed = True
    return dom


def _idom_from_dom(dom: dict) -> dict:
    """Immediate dominator: the strict dominator with the largest dominator set."""
    idom = {}
    for n, ds in dom.items():
        strict = ds - {n}
        idom[n] = max(strict, key=lambda d: len(dom[d])) if strict else None
    return idom


def dominators(fn: FunctionIR) -> dict[int, set[int]]:
    """``dom[b]`` = set of blocks dominating ``b`` (including ``b``)."""
    return _dominators(reverse_postorder(fn), fn.entry, predecessors(fn))


def immediate_dominators(fn: FunctionIR) -> dict[int, int | None]:
    """``idom[b]``; None for the entry."""
    return _idom_from_dom(dominators(fn))


def _reverse_graph(fn: FunctionIR):
    """Successors of the reversed CFG (with EXIT), and the node list in its RPO."""
    succ = successors(fn)
    from .ir import Raise, Return
    rsucc: dict[int, list[int]] = {b: [] for b in fn.blocks}
    rsucc[EXIT] = []
    for b in fn.blocks:
        if isinstance(fn.blocks[b].term, (Return, Raise)):
            rsucc[EXIT].append(b)
        for s in succ[b]:
            rsucc[s].append(b)
    reach = set(_rpo(EXIT, rsucc))
    for b in fn.blocks:          # blocks that never reach an exit (infinite loops)
        if b not in reach:
            rsucc[EXIT].append(b)
    return rsucc, _rpo(EXIT, rsucc)


def post_dominators(fn: FunctionIR) -> dict[int, set[int]]:
    """``pdom[b]`` = set of blocks post-dominating ``b`` (incl. ``b`` and EXIT)."""
    rsucc, order = _reverse_graph(fn)
    rpred: dict[int, list[int]] = {n: [] for n in order}
    for n, ss in rsucc.items():
        for s in ss:
            rpred.setdefault(s, []).append(n)
    return _dominators(order, EXIT, rpred)


def immediate_post_dominators(fn: FunctionIR) -> dict[int, int | None]:
    """``ipdom[b]`` (EXIT for blocks that end the function); None for EXIT itself."""
    return _idom_from_dom(post_dominators(fn))


def control_dependence(fn: FunctionIR) -> dict[int, set[int]]:
    """``cd[b]`` = set of branch blocks ``a`` on which ``b`` is control dependent."""
    ipdom = immediate_post_dominators(fn)
    cd: dict[int, set[int]] = {b: set() for b in fn.blocks}
    for a in fn.blocks:
        succ = fn.successors(a)
        if len(succ) < 2:
            continue
        for s in succ:
            runner = s
            while runner is not None and runner != ipdom[a]:
                cd[runner].add(a)
                runner = ipdom[runner]
    return cd


def dependents(cd: dict[int, set[int]]) -> dict[int, set[int]]:
    """Invert control dependence: ``dep[a]`` = blocks control dependent on ``a``."""
    out: dict[int, set[int]] = {}
    for b, ds in cd.items():
        for a in ds:
            out.setdefault(a, set()).add(b)
    return out


@dataclass
class Loop:
    """A natural loop."""
    header: int
    body: set                 # includes the header
    latches: set              # sources of the back edges
    exits: set = field(default_factory=set)      # edges (src, dst) leaving the body
    parent: "Loop | None" = None
    children: list = field(default_factory=list)

    @property
    def depth(self) -> int:
        """1 for an outermost loop."""
        d, p = 1, self.parent
        while p is not None:
            d, p = d + 1, p.parent
        return d

    def __repr__(self) -> str:
        return (f"Loop(header={self.header}, body={sorted(self.body)}, "
                f"latches={sorted(self.latches)}, exits={sorted(self.exits)})")


def natural_loops(fn: FunctionIR) -> list[Loop]:
    """Natural loops of ``fn``, outermost first (sorted by header RPO position)."""
    dom = dominators(fn)
    preds = predecessors(fn)
    order = reverse_postorder(fn)
    loops: dict[int, Loop] = {}
    for u in order:
        for h in fn.successors(u):
            if h in dom[u]:
                body = {h}
                work = [u]
                while work:
                    n = work.pop()
                    if n not in body:
                        body.add(n)
                        work.extend(preds[n])
                lp = loops.setdefault(h, Loop(h, set(), set()))
                lp.body |= body
                lp.latches.add(u)
    out = sorted(loops.values(), key=lambda lp: order.index(lp.header))
    for lp in out:
        lp.exits = {(b, s) for b in lp.body for s in fn.successors(b) if s not in lp.body}
    for lp in out:
        enclosing = [o for o in out if o is not lp and lp.body < o.body]
        if enclosing:
            lp.parent = min(enclosing, key=lambda o: len(o.body))
            lp.parent.children.append(lp)
    return out


def loop_of(loops: list[Loop]) -> dict[int, Loop]:
    """Innermost loop containing each block (blocks outside loops are absent)."""
    out: dict[int, Loop] = {}
    for lp in sorted(loops, key=lambda lp: len(lp.body), reverse=True):
        for b in lp.body:
            out[b] = lp
    return out
