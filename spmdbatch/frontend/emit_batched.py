"""Generate the batch program of a FunctionIR: the masked (SPMD) version of the function.

The generated function has the original signature; its arguments may be varying
(`Batched`) or uniform. Its body is a scheduler loop over the blocks, numbered by the
schedule (frontend/schedule.py)::

    def f(x):
        _F = Frame(LOOP_END, lane_count(x), ENV_NAMES)
        _F.jump(0, None, _F.n, (x,))
        while True:
            _blk, _L, _N, _E = _F.pop()
            if _blk == 0:
                x, = _E
                _t1 = x < 0
                _F.branch(_t1, _L, _N, 1, (x,), 2, (x,))   # splits lanes if _t1 varies
            elif _blk == 1:
                ...
            else:
                return _F.result()

A block's environment `_E` holds its params (stack values) followed by its live-in
locals, in a fixed order. Statements are the plain emitter's, except that calls, subscripts,
item assignment, `not` and iteration go through the execution runtime, which gives them
their batched meaning. A jump to a block with this block as its only predecessor is
emitted inline (no scheduling needed: no lanes can join there).
"""
from __future__ import annotations

from . import ir
from .emit_plain import PlainEmitter, Writer
from .ir import Var
from .liveness import analyze as analyze_liveness
from .liveness import live_params
from .child_loops import EndIteration, ParallelFor
from .recursion import Recurse
from .schedule import schedule


class _LineMark:
    """A statement that only marks its source line (emitted as the line comment)."""

    def __init__(self, lineno):
        self.lineno = lineno


class BatchedEmitter(PlainEmitter):
    """PlainEmitter with batched statements and scheduler-based control flow."""

    def __init__(self, fn, sums=()):
        super().__init__(fn)
        self.sums = tuple(sums)     # return positions summed over the recursion (reduction.py)
        self.sched = schedule(fn)
        self.live = analyze_liveness(fn)
        # a block's environment: its live params (stack values), then its live-in locals
        self.env = {b: live_params(fn, self.live, b) + sorted(self.live.live_in[b] - set(fn.blocks[b].params))
                    for b in self.sched.order}
        # Closure cells travel with the lanes too (a lambda reading a varying local must
        # see its own group's lanes), so every block's environment ends with them.
        self.cells = list(fn.cellvars) + [n for n in fn.freevars if n not in fn.cellvars]
        # Without branches and loops, lanes never diverge: the program is straight-line code
        # (no scheduler), like the plain function with batched statements.
        self.straight = all(type(b.term).__name__ in ("Jump", "Return", "Raise") for b in fn.blocks.values())
        self.preds_of = fn.predecessors()
        # A continuation block (frontend/recursion.py) receives the recursive calls' results
        # last, after its other live-in variables.
        self.recursion_sites = {b: blk.term for b, blk in fn.blocks.items() if isinstance(blk.term, Recurse)}
        for t in self.recursion_sites.values():
            targets = t.defs()
            self.env[t.cont] = [n for n in self.env[t.cont] if n not in targets] + targets
        # the exit of a parallel loop (frontend/child_loops.py) receives the accumulators last
        for t in [b.term for b in fn.blocks.values() if isinstance(b.term, ParallelFor)]:
            sums = self.loop_sums(t)
            self.env[t.cont] = [n for n in self.env[t.cont] if n not in sums] + sums
        # blocks from which a recursive call can be reached: an empty group (a batch of no
        # examples, run for the structure of its result) avoids them where it can
        self.reaches_recursion = set(self.recursion_sites)
        work = list(self.recursion_sites)
        while work:
            for p in self.preds_of[work.pop()]:
                if p not in self.reaches_recursion:
                    self.reaches_recursion.add(p)
                    work.append(p)

    # --- names of the scheduler's variables --------------------------------------------------
    @property
    def F(self):
        return self.names.helper("F")

    @property
    def L(self):
        return self.names.helper("L")

    @property
    def N(self):
        return self.names.helper("N")

    # --- statements with batched meaning -------------------------------------------------------
    def expr_Call(self, e):
        parts = [self.op(e.func)] + [self.op(a) for a in e.args]
        parts += [f"{k}={self.op(v)}" for k, v in e.kwargs.items()]
        if e.star_args is not None:
            parts.append("*" + self.op(e.star_args))
        if e.star_kwargs is not None:
            parts.append("**" + self.op(e.star_kwargs))
        return f"{self.h('call')}({', '.join(parts)})"

    def expr_Subscr(self, e):
        return f"{self.h('getitem')}({self.op(e.obj)}, {self.op(e.index)})"

    def expr_UnaryOp(self, e):
        if e.op == "not":
            return f"{self.h('logical_not')}({self.op(e.a)})"
        return super().expr_UnaryOp(e)

    def expr_GetIter(self, e):
        return f"{self.h('get_iter')}({self.op(e.x)})"

    def expr_BuildList(self, e):
        # a list the lanes own: each group of lanes gets its own (execution/lane_list.py)
        return f"{self.h('LaneList')}([{self.ops(e.items)}])"

    def expr_BuildMap(self, e):
        return f"{self.h('LaneDict')}({super().expr_BuildMap(e)})"

    def expr_FormatValue(self, e):
        conversion = repr(e.conversion) if e.conversion is not None else "None"
        spec = self.op(e.spec) if e.spec is not None else "''"
        return f"{self.h('format_value')}({self.op(e.value)}, {conversion}, {spec})"

    def expr_BuildString(self, e):
        return f"{self.h('build_string')}(({''.join(self.op(x) + ', ' for x in e.items)}))"

    def stmt_Assign(self, s):
        e = s.value
        if isinstance(e, ir.BinOp) and e.op.endswith("=") and e.op not in ("==", "!=", "<=", ">="):
            self.w.line(f"{self.v(s.target)} = {self.h('inplace')}({e.op!r}, {self.op(e.a)}, {self.op(e.b)})")
            return
        super().stmt_Assign(s)

    def stmt_StoreSubscr(self, s):
        call = f"{self.h('setitem')}({self.op(s.obj)}, {self.op(s.index)}, {self.op(s.value)})"
        if isinstance(s.obj, Var):
            self.w.line(f"{self.v(s.obj.name)} = {call}")
        else:
            self.w.line(call)

    def expr_Compare(self, e):
        if e.op in ("in", "not in"):      # (per example for lists the program built)
            return f"{self.h('contains')}({self.op(e.a)}, {self.op(e.b)}, {e.op == 'not in'})"
        return super().expr_Compare(e)

    def stmt_FusedCall(self, s):
        funcs = "(" + "".join(self.op(f) + ", " for f in s.funcs) + ")"
        args = "(" + "".join("(" + "".join(self.op(a) + ", " for a in al) + "), " for al in s.args) + ")"
        kwargs = "(" + "".join("{" + ", ".join(f"{k!r}: {self.op(v)}" for k, v in kw.items()) + "}, "
                               for kw in s.kwargs) + ")"
        targets = "".join(self.v(t) + ", " for t in s.targets)
        reads = ", True" if getattr(s, "reads", False) else ""
        self.w.line(f"{targets}= {self.h('call_fused')}({funcs}, {args}, {kwargs}{reads})")

    def stmt__LineMark(self, s):
        pass

    def stmt_Accumulate(self, s):
        self.w.line(f"{self.F}.finisher.add({s.position}, {self.L}, {self.N}, {self.op(s.value)})")

    def stmt_DeferredCall(self, s):
        args = "(" + "".join(self.op(a) + ", " for a in s.args) + ")"
        kwargs = "{" + ", ".join(f"{k!r}: {self.op(v)}" for k, v in s.kwargs.items()) + "}"
        self.w.line(f"{self.F}.finisher.defer({s.position}, {self.L}, {self.N}, {self.op(s.func)}, {args}, {kwargs})")

    def stmt_StoreAttr(self, s):
        self.w.line(f"{self.h('store_attr')}({self.op(s.obj)}, {s.name!r}, {self.op(s.value)})")

    def stmt_DelAttr(self, s):
        self.w.line(f"{self.h('del_attr')}({self.op(s.obj)}, {s.name!r})")

    def stmt_StoreGlobal(self, s):
        self.w.line(f"{self.h('store_global')}({self.names.helper('g')}, {s.name!r}, {self.op(s.value)})")

    def stmt_DeleteGlobal(self, s):
        self.w.line(f"{self.h('del_global')}({self.names.helper('g')}, {s.name!r})")

    def stmt_StoreDeref(self, s):
        if s.name in self.fn.freevars and s.name not in self.fn.cellvars:
            self.w.line(f"{self.h('store_nonlocal')}({self.cell(s.name)}, {s.name!r}, {self.op(s.value)})")
        else:
            super().stmt_StoreDeref(s)

    # --- control flow ----------------------------------------------------------------------------
    def _env_tuple(self, target, args, override=None):
        """Source of the environment tuple sent to `target`."""
        params = self.fn.blocks[target].params
        values = {p: self.op(a) for p, a in zip(params, args)}
        if override:
            values.update(override)
        items = [values[n] if n in values else self.v(n) for n in self.env[target]]
        items += [self.cell(c) for c in self.cells]
        return "(" + "".join(i + ", " for i in items) + ")"

    def _is_back(self, src, target) -> bool:
        return (src, target) in self.sched.back_edges

    def inlinable(self, src, target) -> bool:
        if self.straight:
            return super().inlinable(src, target)
        return (self.preds_of[target] == [src] and src not in self.recursion_sites and target != self.fn.entry
                and not self._is_back(src, target)
                and [t for t, _ in self.fn.blocks[src].term.successors()].count(target) == 1)

    def edge(self, src, target, args):
        if self.straight:
            return super().edge(src, target, args)
        if self.inlinable(src, target):
            params = self.fn.blocks[target].params
            pairs = [(self.v(p), self.op(a)) for p, a in zip(params, args)
                     if not (isinstance(a, Var) and a.name == p)]
            if pairs:
                self.w.line(f"{', '.join(p for p, _ in pairs)} = {', '.join(a for _, a in pairs)}")
            self.block(target)
            return
        method = "jump_back" if self._is_back(src, target) else "jump"
        pos = self.sched.position[target]
        E = self.names.helper("E")
        self.w.line(f"{E} = {self._env_tuple(target, args)}")
        # the only group of the call goes on at once (no scheduling, nothing to merge with)
        self.w.line(f"if not {self.F}.fwd and not {self.F}.back:")
        self.w.line(f"    {self.names.helper('blk')} = {pos}")
        self.w.line("    continue")
        self.w.line(f"{self.F}.{method}({pos}, {self.L}, {self.N}, {E})")

    def _branch(self, src, cond, t_target, t_args, f_target, f_args, t_override=None, f_override=None):
        t_pos, f_pos = self.sched.position[t_target], self.sched.position[f_target]
        t_env = self._env_tuple(t_target, t_args, t_override)
        f_env = self._env_tuple(f_target, f_args, f_override)
        flags = ""
        if self._is_back(src, t_target) or self._is_back(src, f_target):
            flags = f", {self._is_back(src, t_target)}, {self._is_back(src, f_target)}"
        t_rec, f_rec = t_target in self.reaches_recursion, f_target in self.reaches_recursion
        empty = f_target if t_rec else t_target
        if t_rec != f_rec and not self._is_back(src, empty):
            flags += f", empty={self.sched.position[empty]}"
        c, blk, E = self.names.helper("c"), self.names.helper("blk"), self.names.helper("E")
        self.w.line(f"{c} = {cond}")
        # (a list whose length differs between lanes is true in some lanes only)
        self.w.line(f"if type({c}) is {self.h('RaggedList')}: {c} = {self.h('list_truth')}({c})")
        # a uniform condition and no other waiting group: go on at once, like plain Python
        self.w.line(f"if type({c}) is not {self.h('Batched')} and not {self.F}.fwd and not {self.F}.back:")
        self.w.line(f"    if {c}:")
        self.w.line(f"        {blk}, {E} = {t_pos}, {t_env}")
        self.w.line("    else:")
        self.w.line(f"        {blk}, {E} = {f_pos}, {f_env}")
        self.w.line("    continue")
        join = self._select_join(src, t_target, t_args, f_target, f_args, t_override, f_override)
        if join is None:
            self.w.line(f"{self.F}.branch({c}, {self.L}, {self.N}, {t_pos}, {t_env}, {f_pos}, {f_env}{flags})")
            return
        # both sides only pass values on to one join block (`x = 0 if c else 1`): select
        # them lane by lane instead of splitting the group (no side computes anything)
        j_pos, t_join, f_join = join
        self.w.line(f"{E} = {self.h('select_env')}({c}, {self.N}, {t_join}, {f_join})")
        self.w.line(f"if {E} is not None:")
        self.w.line(f"    if not {self.F}.fwd and not {self.F}.back:")
        self.w.line(f"        {blk} = {j_pos}")
        self.w.line("        continue")
        self.w.line(f"    {self.F}.jump({j_pos}, {self.L}, {self.N}, {E})")
        self.w.line("else:")
        self.w.line(f"    {self.F}.branch({c}, {self.L}, {self.N}, {t_pos}, {t_env}, {f_pos}, {f_env}{flags})")

    def _select_join(self, src, t_target, t_args, f_target, f_args, t_override, f_override):
        """(join position, join environment from each side) when both targets of a branch are
        blocks without statements that jump forward to one join block; else None."""
        if t_override or f_override or t_target == f_target:
            return None
        blocks = self.fn.blocks
        sides = []
        for target, args in ((t_target, t_args), (f_target, f_args)):
            blk = blocks[target]
            if blk.stmts or type(blk.term) is not ir.Jump or self._is_back(src, target) \
                    or self._is_back(target, blk.term.target) or target in self.recursion_sites:
                return None
            given = {p: self.op(a) for p, a in zip(blk.params, args)}
            sides.append((blk.term.target, [given.get(a.name, self.op(a)) if isinstance(a, Var)
                                            else self.op(a) for a in blk.term.args]))
        (join, t_vals), (f_join, f_vals) = sides
        if join != f_join or join in (t_target, f_target):
            return None
        envs = []
        for vals in (t_vals, f_vals):
            override = dict(zip(blocks[join].params, vals))
            items = [override[n] if n in override else self.v(n) for n in self.env[join]]
            items += [self.cell(c) for c in self.cells]
            envs.append("(" + "".join(i + ", " for i in items) + ")")
        return self.sched.position[join], envs[0], envs[1]

    def term_Branch(self, bid, t):
        self._branch(bid, self.op(t.cond), t.true_target, t.true_args, t.false_target, t.false_args)

    def term_ForIter(self, bid, t):
        item, more = self.names.helper("item"), self.names.helper("more")
        self.w.line(f"{item}, {more} = {self.h('iter_next')}({self.op(t.iterator)})")
        # the loop variable takes the new item only in lanes that go on looping
        self._branch(bid, more, t.body, t.body_args, t.exit, t.exit_args,
                     t_override={t.item_target: item})

    def term_Recurse(self, bid, t):
        """A self-recursive call: the frame parks the lanes at the continuation (the callee
        lanes join this frame) or, for any other callee, calls it and jumps there."""
        targets, funcs, args, kwargs = t.calls()
        if t.lineno is not None:            # errors at the call name the call's line
            self.stmt(_LineMark(t.lineno))
        calls = "(" + "".join(self.op(f) + ", " for f in funcs) + ")"
        arg_lists = "(" + "".join("(" + "".join(self.op(a) + ", " for a in al) + "), " for al in args) + ")"
        kw = "(" + "".join("{" + ", ".join(f"{k!r}: {self.op(v)}" for k, v in d.items()) + "}, "
                           for d in kwargs) + ")"
        env = "(" + "".join(self.v(n) + ", " for n in self.env[t.cont] if n not in targets) + ")"
        self.w.line(f"{self.h('recurse')}({self.F}, {self.sched.position[t.cont]}, {self.L}, {self.N}, {calls}, "
                    f"{arg_lists}, {kw}, {env}, "
                    f"{self.names.helper('recursion')}, {self.names.helper('g')})")

    def loop_sums(self, t):
        """The accumulators of a parallel loop that its exit block reads."""
        return [a for a in t.accs if a in self.live.live_in[t.cont]]

    def term_ParallelFor(self, bid, t):
        """A loop whose iterations run side by side (execution/child_loops.py), or, when the
        iterable cannot be split, the loop as written."""
        sums = self.loop_sums(t)
        body_env = self._env_tuple(t.body, [], {n: "None" for n in [t.target] + t.accs})
        names = self.env[t.body]
        item_slot = names.index(t.target) if t.target in names else -1
        acc_slots = tuple(names.index(a) for a in t.accs if a in names)
        self.w.line(f"if not {self.h('parallel_for')}({self.F}, {self.L}, {self.N}, "
                    f"{self.op(t.iterable)}, {self.sched.position[t.cont]}, "
                    f"{self._env_tuple(t.cont, [])}, {len(sums)}, {self.sched.position[t.body]}, "
                    f"{body_env}, {item_slot}, {acc_slots!r}):")
        self.w.indent()
        self.edge(bid, t.header, [t.iterator])
        self.w.dedent()

    def term_EndIteration(self, bid, t):
        sums = [a for a in t.accs if a in self.live.live_in[t.cont]]
        self.w.line(f"{self.h('end_iteration')}({self.F}, {self.L}, {self.N}, "
                    f"({''.join(self.v(a) + ', ' for a in sums)}))")

    def term_Return(self, bid, t):
        if self.straight:
            self.w.line(f"return {self.op(t.value)}")
            return
        self.w.line(f"{self.F}.ret({self.L}, {self.N}, {self.op(t.value)})")

    def term_Raise(self, bid, t):
        if t.exc is None:
            self.w.line("raise")
            return
        exc = self.op(t.exc)
        if t.cause is not None:
            exc_var = self.names.helper("exc")
            self.w.line(f"{exc_var} = {exc}")
            self.w.line(f"{exc_var}.__cause__ = {self.op(t.cause)}")
            exc = exc_var
        if self.straight:
            self.w.line(f"{self.h('raise_all_lanes')}({exc})")
            return
        self.w.line(f"{self.h('raise_in_lanes')}({self.F}, {exc}, {self.L}, {self.N})")

    # --- whole function --------------------------------------------------------------------------
    def body(self):
        if self.straight:
            return self.straight_body()
        fn, sched = self.fn, self.sched
        self.emitted = set()
        arms = []
        for bid in sched.order:
            if bid in self.emitted:
                continue
            self.w = Writer()
            self.last_line = None
            env = [self.v(n) for n in self.env[bid]] + [self.cell(c) for c in self.cells]
            if env:
                self.w.line(f"{''.join(n + ', ' for n in env)}= {self.names.helper('E')}")
            self.block(bid)
            arms.append((sched.position[bid], self.w.lines))
        args = [self.v(a) for a in fn.argnames]
        locals_ = sorted({n for b in fn.blocks.values() for s in b.stmts for n in s.defs()}
                         | {n for b in fn.blocks.values() for n in b.params}
                         | {t for b in fn.blocks.values() for t in b.term.defs()}
                         | {n for envs in self.env.values() for n in envs})
        undefined = [self.v(n) for n in locals_ if n not in fn.argnames]
        undefined += [self.cell(c) for c in fn.cellvars]
        F, L, N, E, blk = self.F, self.L, self.N, self.names.helper("E"), self.names.helper("blk")
        out = [f"{self.cell(n)} = {self.names.helper('fv_' + n)}" for n in fn.freevars
               if n not in fn.cellvars]
        if undefined:
            out.append(f"{' = '.join(undefined)} = {self.h('UNDEFINED')}")
        out.append(f"{F} = {self.h('Frame')}({self.names.helper('loop_end')}, "
                   f"{self.h('lane_count')}({', '.join(args)}), {self.names.helper('env_names')}, "
                   f"{fn.qualname!r})")
        if self.sums:
            out.append(f"{F}.finisher = {self.h('Sums')}({self.sums!r})")
        entry_env = "(" + "".join(n + ", " for n in [self.v(n) for n in self.env[fn.entry]]
                                  + [self.cell(c) for c in self.cells]) + ")"
        out.append(f"{F}.jump({sched.position[fn.entry]}, None, {F}.n, {entry_env})")
        out.append(f"{blk}, {L}, {N}, {E} = {F}.pop()")
        out.append("while True:")
        for i, (pos, lines) in enumerate(arms):
            out.append(f"    {'if' if i == 0 else 'elif'} {blk} == {pos}:")
            out.extend("        " + ln for ln in lines)
        out.append("    else:")
        out.append(f"        return {F}.result()")
        out.append(f"    {blk}, {L}, {N}, {E} = {F}.pop()")
        return out

    def straight_body(self):
        """Straight-line batch program: the plain emitter's body with batched statements."""
        lines = PlainEmitter.body(self)
        head = [f"{self.h('count_call')}({self.fn.qualname!r}, {', '.join(self.v(a) for a in self.fn.argnames)})"]
        return head + lines

    def closure_params(self):
        if self.straight:
            return super().closure_params()
        return [self.names.helper("fv_" + n) for n in self.fn.freevars]

    def extra_factory_params(self):
        if self.straight:
            return []
        return [self.names.helper("loop_end"), self.names.helper("env_names"), self.names.helper("recursion")]

    def factory_extras(self):
        """Values of the extra factory parameters (after the plain emitter's)."""
        if self.straight:
            return []
        names = [None] * len(self.sched.order)
        for bid, pos in self.sched.position.items():
            names[pos] = tuple(self.env[bid]) + tuple(self.cells)
        return [tuple(self.sched.loop_end), tuple(names), self.recursion_spec()]

    def recursion_spec(self):
        """What `recursion.recurse` needs to start callee lanes: (the function's code object, the
        entry block's number, the argument index of each entry environment slot)."""
        if not self.recursion_sites:
            return None
        entry_env = self.env[self.fn.entry]
        argnames = list(self.fn.argnames)
        return (self.fn.code, self.sched.position[self.fn.entry],
                tuple(argnames.index(n) if n in argnames else -1 for n in entry_env))

