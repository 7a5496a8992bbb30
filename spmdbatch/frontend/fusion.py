"""Call fusion: calls to one function whose arguments do not depend on each other's results
become one batched call over all their lanes.

In a recursive tree encoder::

    hl, cl = encode(p, tree, tree.left[k])
    hr, cr = encode(p, tree, tree.right[k])

the second call's arguments do not use the first call's results, so both run as ONE call
over twice the lanes (execution/calls.py `call_fused`). With compaction, a recursive encoder
then makes one batched call per tree depth, over all nodes at that depth: the schedule of
a hand-batched implementation.

Definition used, per basic block: starting at a call statement ``t1 = f(a1)``, scan the
following statements. A later call ``t2 = g(a2)`` joins the group when `g` is loaded the
same way as `f` (same global, closure variable, local, or attribute of the same object)
and nothing it uses depends on the group's results. Other statements are moved *after*
the fused call if they depend on a group result, or *before* it otherwise; only
assignments of call-free expressions (and unpacking) may move, and a statement may not
move before a statement or call whose variables it redefines. The scan stops at any other statement;
statements after the group's last call stay where they are (after the fused call). The
runtime checks that the callees are really the same function; if not, the calls run one
after the other, in their original order. A callee that writes shared state (an attribute,
a global, a nonlocal) would write once for all the calls: the runtime then runs the calls
apart, in order, unless statements that read memory (attributes, items, globals) were moved
across a call (`FusedCall.reads`), which it refuses with the user's line instead.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import ir
from .ir import Assign, Call, FunctionIR, Stmt, Unpack, Var

_MOVABLE_EXPRS = (ir.Use, ir.BinOp, ir.UnaryOp, ir.Compare, ir.GetAttr, ir.Subscr, ir.Slice,
                  ir.BuildTuple, ir.BuildList, ir.BuildMap, ir.LoadGlobal, ir.LoadDeref)


@dataclass
class FusedCall(Stmt):
    """``targets[i] = funcs[i](*args[i], **kwargs[i])`` for all i, as one batched call."""
    targets: list
    funcs: list
    args: list
    kwargs: list
    lineno: int | None = field(default=None, kw_only=True)
    reads: bool = field(default=False, kw_only=True)   # memory reads moved across a call
    OPERANDS = ("funcs", "args", "kwargs")

    def defs(self):
        return list(self.targets)

    def __str__(self):
        calls = "; ".join(f"{t} = {f!r}({', '.join(map(repr, a))})"
                          for t, f, a in zip(self.targets, self.funcs, self.args))
        return f"fused [{calls}]"


def fuse_calls(fn: FunctionIR) -> int:
    """Fuse call groups in every block of `fn` (in place); returns the number of fusions."""
    fused = 0
    for block in fn.blocks.values():
        origins = {}
        i = 0
        stmts = block.stmts
        while i < len(stmts):
            s = stmts[i]
            if isinstance(s, Assign):
                origins[s.target] = _origin(s.value, origins)
            group = _fusable_call(s)
            if group is not None:
                new = _fuse_from(stmts, i, origins)
                if new is not None:
                    stmts[:] = new[0]
                    fused += 1
                    for moved in stmts[i:new[1]]:
                        if isinstance(moved, Assign):
                            origins[moved.target] = _origin(moved.value, origins)
                    i = new[1]
                    continue
            i += 1
    return fused


def _origin(expr, origins):
    """How a callee value was loaded: a key equal for loads of the same function."""
    if isinstance(expr, ir.LoadGlobal):
        return ("global", expr.name)
    if isinstance(expr, ir.LoadDeref):
        return ("deref", expr.name)
    if isinstance(expr, ir.GetAttr) and isinstance(expr.obj, Var):
        return ("attr", origins.get(expr.obj.name, ("var", expr.obj.name)), expr.name)
    if isinstance(expr, ir.Use) and isinstance(expr.a, Var):
        return origins.get(expr.a.name, ("var", expr.a.name))
    return None


def _fusable_call(s):
    if isinstance(s, Assign) and isinstance(s.value, Call) and s.value.star_args is None \
            and s.value.star_kwargs is None and isinstance(s.value.func, Var):
        return s.value
    return None


def _callee_key(call, origins):
    return origins.get(call.func.name, ("var", call.func.name))


def _fuse_from(stmts, start, origins):
    first = stmts[start]
    key = _callee_key(first.value, origins)
    if key is None:
        return None
    group = [first]
    group_uses = set(first.uses())    # variables the group's calls read
    depends = {first.target}          # variables derived from the group's results
    before, after = [], []            # statements moved before / after the fused call
    after_names: set = set()
    local_origins = dict(origins)
    j = start + 1
    last = (start + 1, 0, 0)          # (end of the group's last call, len(before), len(after))
    while j < len(stmts):
        s = stmts[j]
        uses = set(s.uses())
        call = _fusable_call(s)
        if call is not None and not uses & depends and _callee_key(call, local_origins) == key \
                and s.target not in after_names and s.target not in uses:
            group.append(s)
            group_uses |= uses
            depends.add(s.target)
            j += 1
            last = (j, len(before), len(after))
            continue
        if not _movable(s) or _reads_receiver(s, key, local_origins):
            break
        defs = set(s.defs())
        if uses & depends:
            after.append(s)
            after_names |= uses | defs
            depends |= defs
        else:
            # moving s before the fused call must not change what the calls read
            if defs & after_names or defs & depends or defs & group_uses:
                break
            before.append(s)
            if isinstance(s, Assign):
                local_origins[s.target] = _origin(s.value, local_origins)
        j += 1
    if len(group) < 2:
        return None
    j, n_before, n_after = last         # (statements after the last call stay in place)
    callees = {g.value.func.name for g in group}
    before, after = before[:n_before], after[:n_after]
    fused = FusedCall([g.target for g in group], [g.value.func for g in group],
                      [list(g.value.args) for g in group], [dict(g.value.kwargs) for g in group],
                      lineno=group[-1].lineno,
                      reads=any(_reads_memory(m, callees) for m in before + after))
    new = stmts[:start] + before + [fused] + after + stmts[j:]
    return new, start + len(before) + 1 + len(after)


_MEMORY_READS = (ir.GetAttr, ir.Subscr, ir.LoadGlobal, ir.LoadDeref)


def _reads_receiver(s, key, origins) -> bool:
    """True for a statement reading an attribute or item of the object whose method the group
    calls (`a.add(x); r = a.total; a.add(y)`): a method is likely to change its object, so the
    group ends there (loading the method itself again does not end it)."""
    if key[0] != "attr" or not isinstance(s, Assign) or not isinstance(s.value, (ir.GetAttr, ir.Subscr)):
        return False
    obj = s.value.obj
    return isinstance(obj, Var) and origins.get(obj.name, ("var", obj.name)) == key[1] \
        and _origin(s.value, origins) != key


def _reads_memory(s, callees) -> bool:
    """True for a moved statement that reads an attribute, an item, a global or a closure
    variable (what a call's side effect could change), other than loading a callee."""
    return isinstance(s, Assign) and isinstance(s.value, _MEMORY_READS) and s.target not in callees


def _movable(s) -> bool:
    if isinstance(s, Unpack):
        return True
    if isinstance(s, Assign) and isinstance(s.value, ir.BinOp) and s.value.op.endswith("=") \
            and s.value.op not in ("==", "!=", "<=", ">="):
        return False    # an in-place update (`w += b`): views read by the calls see it in the loop
    return isinstance(s, Assign) and isinstance(s.value, _MOVABLE_EXPRS)
