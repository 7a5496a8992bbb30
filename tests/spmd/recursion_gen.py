"""Random self-recursive per-example programs, as source text, for differential fuzzing.

`rec_programs()` is a hypothesis strategy of `RecProgram`s: the source of a small module with
`import numpy as np`, 0-2 float helpers ``term<j>(a, b, m)`` (made by program_gen, so with
their own branches and loops), a vector helper ``vterm(q, a)``, the recursive function
``rec(p, n, x, v)`` and two entry points: ``top(p, n, x, v)`` (calls `rec`, maybe from a
varying branch) and ``loss(p, n, x, v)`` (a float: the float components of `rec`'s result
added up, for gradient checks). `p` is a float parameter vector of shape (4,) (uniform), `n`
the depth (an int >= 0), `x` a float, `v` a float vector of shape (3,).

`rec` returns a float (``result == "scalar"``), a vector (``"vector"``) or a tuple of 1-4
components (``"tuple"``), each of a *kind*:

- ``sf``, ``si``, ``sv``: sums (float, int, vector): ``a_1 + b_1 + term0(y, x, k)``, the
  children's component plus per-call terms, which frontend/reduction.py recognises as a sum
  over the recursion (the terms recorded per lane, the call terms deferred);
- ``nf``, ``ni``, ``nv``: not sums: ``np.tanh(0.5 * a_0 + ...)``, ``max(a, b)``,
  ``max(a, b) + 1`` (a height), ``np.tanh(a + b * y)``, ``np.maximum(a, b)``.

Call results are unpacked (``r3_0, r3_1 = rec(...)``), or read by index (``r3[1]``:
``access == "index"``, then reduction.py recognises nothing).

Self-calls come in *sections* after the base case: a single call; two independent calls
(fused); two dependent calls (the second's argument uses the first's result); a call in one
branch that returns there; calls in both branches of an if (same targets); a call in one
branch only that falls through; calls in a ``for j in range(2)`` or ``while`` loop; calls
inside expressions (scalar results); now and then a call with a conditional expression in
its arguments, which makes it an ordinary batched call instead of a recursion site. Around
them: float, int and vector statements, if/else, loops, helper calls, guarded early
returns, a base case that is ``n <= 0`` or that plus a data-dependent condition, either
first or last (``if n > 0: ...`` then the base case).

Termination: every call passes a depth that is smaller than `n` (``n - 1``, ``n - 2``,
``n // 2``, ``n - 1 - (k % 2)``, ``n - c`` with a loop counter c >= 1), and the base case
catches every ``n <= 0``. `max_n` bounds the depth of the inputs so that the number of
activations, at most ``calls_per_activation ** max_n`` or so, stays small. Values stay
finite: floats are bounded by np.tanh (|value| <= 3 everywhere except the sums, which grow
at most linearly in the number of activations and are never fed back unbounded). Returned
arrays are always fresh (never an argument itself), so item assignment cannot alias.

Sums are recognised from the code's shape only, so a recursive component must be used
*linearly*: on every path from a call to a return, component p of the call's result is
used exactly once, in that return's `+` chain. The generator keeps to that: the sum
components of results of calls in loops and in one branch of an if are added into
accumulators (``s1 = s1 + r3_1``), which the frontend may take for a sum or not (its
dataflow analysis decides; the values are checked either way), and not-sum components are always used in a non-`+` way somewhere, so
they are never taken for sums. `expected_sums` is then exactly the tuple of positions the
frontend must recognise. It allows for the frontend's conservative limits: a child's part
returned unchanged (``return h, a_1``) is no sum, and it writes no conditional expression
in a return and puts the latest call's part first in each chain (else call fusion may move
the first `+` above the call): the frontend takes no sum when a chain spans two blocks.

Constructs behind the bugs this fuzzer found (all fixed; tests/spmd/test_fuzz_recursion.py
keeps a minimal reproduction of each) are kept out unless ``hazards=True``, which brings back: sum parts dropped (``_`` targets, returns
that leave them out), used twice, overwritten by a loop, or given a non-recursive value on
another path; a number term in a vector sum; methods of values loaded before fused
self-calls (``w.sum()``, ``(w > 0).any()``); self-calls in loops over ``range(n % 3)`` or
``range(k)``; branches, early exits and nested loops in the body of a ``for`` loop that
makes self-calls; an ordinary call and a recursion site assigning the same targets.
`expected_sums` is None then.

With ``smooth=True`` (gradient checks) max/abs/clip are left out, and so are item
assignment and in-place additions into arrays (a traced value cannot be written into a
numpy array, even per example); branches remain.
"""
from __future__ import annotations

import dataclasses

from hypothesis import strategies as st

from program_gen import Gen as HelperGen

SUM_KINDS = ("sf", "si", "sv")
NOT_SUM_KINDS = ("nf", "ni", "nv")
FLOAT_KINDS = ("sf", "nf")
VEC_KINDS = ("sv", "nv")
THRESHOLDS = ("0.0", "0.3", "-0.5", "0.75", "-0.25")
CONSTS = ("0.5", "-1.0", "0.25", "1.5", "-0.75")
# the largest number of activations per example a program may make (about)
ACTIVATION_LIMIT = 130


@dataclasses.dataclass
class RecProgram:
    source: str
    result: str                 # "scalar", "vector" or "tuple"
    kinds: tuple                # kind of each component ("sf", "nv", ...); one for scalar/vector
    access: str                 # "unpack" or "index"
    expected_sums: tuple | None  # positions frontend/reduction.py may take for sums: those the
                                 # generator built as sums (None: unknown, hazards)
    certain_sums: tuple         # those it must take (sums in a linear tail)
    max_n: int                  # inputs n are drawn from 0..max_n
    call_sites: int             # self-calls written in the source
    site_calls: int             # those that are recursion sites (no conditional expression in
                                # the arguments)
    smooth: bool
    hazards: bool

    def __repr__(self):  # hypothesis prints this for a falsifying example
        return (f"RecProgram(result={self.result!r}, kinds={self.kinds!r}, access={self.access!r}, "
                f"expected_sums={self.expected_sums!r}, certain_sums={self.certain_sums!r}, "
                f"max_n={self.max_n}):\n{self.source}")


class Call:
    """The result of one self-call statement: how to read component p, and which parts the
    paths after it still have to use (safe mode)."""

    def __init__(self, name, gen):
        self.name = name
        self.gen = gen
        self.dropped = set()          # components bound to `_` (hazard mode)
        self.site = True              # a recursion site (frontend/recursion.py)

    def part(self, p):
        g = self.gen
        if p in self.dropped:
            return None
        if g.result != "tuple":
            return self.name
        if g.access == "index":
            return f"{self.name}[{p}]"
        return f"{self.name}_{p}"

    def targets(self):
        g = self.gen
        if g.result != "tuple" or g.access == "index":
            return self.name
        names = ["_" if p in self.dropped else f"{self.name}_{p}" for p in range(len(g.kinds))]
        return names[0] + "," if len(names) == 1 else ", ".join(names)


class Scope:
    """Values code at a point of `rec` may read, by kind (as expression texts)."""

    def __init__(self, floats, ints, vecs):
        self.floats, self.ints, self.vecs = list(floats), list(ints), list(vecs)

    def child(self):
        return Scope(self.floats, self.ints, self.vecs)


class RecGen:
    def __init__(self, draw, smooth=False, hazards=False):
        self.draw = draw
        self.smooth = smooth
        self.hazards = hazards
        self.lines: list[str] = []
        self.counter = 0
        self.helpers: list[str] = []
        self.pending: list[Call] = []     # calls whose results the paths from here must use
        self.accs: dict = {}              # component -> accumulator variable (defined up front)
        self.desummed: set = set()        # components used in a non-sum way
        self.bare: set = set()            # components returned as a child's part, unchanged
        self.weight = 1                   # how often the current code may run per activation
        self.calls_per_activation = 0
        self.call_sites = 0
        self.site_calls = 0
        # A conditional expression in a self-call's arguments makes the call an ordinary
        # batched call, not a recursion site (the callee reaches the call through a block
        # parameter); such calls are made on purpose only, and tracked.
        self.no_ifexp = False
        self.force_site = False
        # Straight-line code only (no branch, no loop, no conditional expression): the body
        # of a `for` loop that makes self-calls, where a lane group split in two pieces that
        # share the loop's native iterator lost iterations (a fixed bug, see the tests)
        self.straight = False
        # A *linear* tail (the shape of a tree encoder): self-calls in straight-line code
        # and nothing but straight-line code from the first one to the return, so every
        # sum the generator builds is one the frontend must recognise (`certain_sums`)
        self.linear = False

    # --- drawing -------------------------------------------------------------------------------
    def choice(self, options):
        return options[self.draw(st.integers(0, len(options) - 1))]

    def coin(self, pct=50):
        return self.draw(st.integers(0, 99)) < pct

    def fresh(self, prefix):
        self.counter += 1
        return f"{prefix}{self.counter}"

    def emit(self, indent, text):
        self.lines.append("    " * indent + text)

    @property
    def free(self):
        """Whether call results may be used any way (no sums to keep linear)."""
        return self.result != "tuple" or self.access == "index" or self.hazards

    # --- expressions ---------------------------------------------------------------------------
    def int_expr(self, sc):
        return self.choice(sc.ints + ["1", "2", "(n % 3)", f"({self.choice(sc.ints)} + 1)"])

    def float_expr(self, sc, depth=2):
        kinds = ["var", "var", "const"]
        if depth > 0:
            kinds += ["bin", "bin", "tanh", "sin", "param", "vsum", "vidx", "int"]
            if not self.no_ifexp:
                kinds += ["ifexp"]
            if self.helpers:
                kinds += ["helper"]
            if not self.smooth:
                kinds += ["max", "abs"]
        k = self.choice(kinds)
        d = depth - 1
        if k == "var":
            return self.choice(sc.floats)
        if k == "const":
            return self.choice(CONSTS)
        if k == "bin":
            return f"({self.float_expr(sc, d)} {self.choice(('+', '-', '*'))} {self.float_expr(sc, d)})"
        if k == "tanh":
            return f"np.tanh({self.float_expr(sc, d)})"
        if k == "sin":
            return f"np.sin({self.float_expr(sc, d)})"
        if k == "param":
            return f"p[{self.draw(st.integers(0, 3))}] * {self.float_expr(sc, d)}"
        if k == "vsum":
            if self.hazards:
                return f"{self.vec_expr(sc, d)}.sum()"
            # (a method of a value that does not depend on the calls is loaded before a
            # fused self-call and read with all the lanes that made it: a fixed bug)
            return f"np.sum({self.vec_expr(sc, d)})"
        if k == "vidx":
            return f"{self.choice(sc.vecs)}[{self.int_expr(sc)} % 3]"
        if k == "ifexp":
            return f"({self.float_expr(sc, d)} if {self.cond(sc, 0)} else {self.float_expr(sc, d)})"
        if k == "int":
            return f"({self.int_expr(sc)} * {self.choice(('0.5', '0.25', '-0.5'))})"
        if k == "helper":
            return (f"{self.choice(self.helpers)}({self.float_expr(sc, d)}, "
                    f"{self.float_expr(sc, 0)}, {self.int_expr(sc)})")
        if k == "max":
            return f"{self.choice(('max', 'min'))}({self.float_expr(sc, d)}, {self.float_expr(sc, d)})"
        if k == "abs":
            return f"abs({self.float_expr(sc, d)})"
        raise AssertionError(k)

    def vec_expr(self, sc, depth=1):
        kinds = ["var"]
        if depth > 0:
            kinds += ["scale", "shift", "tanh", "mul", "vterm"]
            if not self.smooth:
                kinds += ["maximum"]
        k = self.choice(kinds)
        d = depth - 1
        if k == "var":
            return self.choice(sc.vecs)
        if k == "scale":
            return f"({self.vec_expr(sc, d)} * {self.float_expr(sc, d)})"
        if k == "shift":
            return f"({self.vec_expr(sc, d)} {self.choice(('+', '-'))} {self.float_expr(sc, d)})"
        if k == "tanh":
            return f"np.tanh({self.vec_expr(sc, d)})"
        if k == "mul":
            return f"({self.vec_expr(sc, d)} * {self.vec_expr(sc, d)})"
        if k == "vterm":
            return f"vterm({self.vec_expr(sc, d)}, {self.float_expr(sc, d)})"
        if k == "maximum":
            return f"np.maximum({self.vec_expr(sc, d)}, {self.float_expr(sc, d)})"
        raise AssertionError(k)

    def cond(self, sc, depth=1):
        kinds = ["gt", "gt", "cmp", "parity", "elem", "any"]
        if depth > 0:
            kinds += ["and", "or", "not"]
        k = self.choice(kinds)
        if k == "gt":
            return f"{self.float_expr(sc, 1)} {self.choice(('>', '<'))} {self.choice(THRESHOLDS)}"
        if k == "cmp":
            return f"{self.float_expr(sc, 1)} {self.choice(('<', '>='))} {self.float_expr(sc, 0)}"
        if k == "parity":
            return f"{self.int_expr(sc)} % 2 == {self.choice(('0', '1'))}"
        if k == "elem":
            return f"{self.choice(sc.vecs)}[{self.draw(st.integers(0, 2))}] > {self.choice(sc.floats)}"
        if k == "any":
            how = self.choice(("any", "all"))
            test = f"{self.vec_expr(sc, 0)} > {self.choice(THRESHOLDS)}"
            return f"({test}).{how}()" if self.hazards else f"np.{how}({test})"
        if k in ("and", "or"):
            return f"({self.cond(sc, depth - 1)} {k} {self.cond(sc, depth - 1)})"
        return f"not ({self.cond(sc, depth - 1)})"

    def bounded(self, e):
        if self.smooth:
            return self.choice((f"np.tanh({e})", f"2.0 * np.tanh({e})"))
        return self.choice((f"np.tanh({e})", f"2.0 * np.tanh({e})", f"np.clip({e}, -3.0, 3.0)"))

    # --- terms and returns -----------------------------------------------------------------------
    def float_term(self, sc):
        options = [f"np.tanh({self.float_expr(sc, 1)}) * 0.5", self.choice(sc.floats), "0.25",
                   f"np.tanh({self.float_expr(sc, 1)})", f"p[{self.draw(st.integers(0, 3))}]"]
        if self.helpers:
            options += [f"{self.choice(self.helpers)}({self.choice(sc.floats)}, {self.float_expr(sc, 0)}, "
                        f"{self.int_expr(sc)})"] * 3
        return self.choice(options)

    def int_term(self, sc):
        return self.choice(("1", "k", "(k % 2)", "(n % 2)", "2"))

    def vec_term(self, sc):
        return self.choice((f"vterm({self.choice(sc.vecs)}, {self.choice(sc.floats)})",
                            f"vterm({self.choice(sc.vecs)}, {self.choice(sc.floats)})",
                            f"np.tanh({self.vec_expr(sc, 1)})", f"{self.choice(sc.vecs)} * 0.5",
                            # (never a bare array: returned arrays are fresh; a number
                            # term in a vector sum was a bug: hazard mode only)
                            "(v + 0.0)" if self.hazards else "(v + 0.5 * w)"))

    def term(self, kind, sc):
        return {"sf": self.float_term, "si": self.int_term, "sv": self.vec_term}[kind](sc)

    def sum_expr(self, p, kind, sc, parts, sites=()):
        """A `+` chain of the children's parts (each once, in safe mode) and terms; `sites`:
        the parts that come from recursion sites."""
        items = list(parts)
        if self.free and items and self.coin(20):
            if self.coin(50):
                items.append(self.choice(items))          # used twice
            else:
                items.remove(self.choice(items))          # dropped
        if p in self.accs and self.coin(90 if p in self.desummed else 40):
            items.append(self.accs[p])
        for _ in range(self.draw(st.integers(0 if items else 1, 2))):
            items.append(self.term(kind, sc))
        if not items:
            items.append(self.term(kind, sc))
        if len(items) == 1 and items[0] in sites:
            # the child's part returned as it is: the frontend takes no sum then (the tuple
            # display uses the part directly; a conservative limit of reduction.py)
            self.bare.add(p)
        order = self.draw(st.permutations(range(len(items))))
        items = [items[i] for i in order]
        if parts and parts[-1] in items:
            # the latest call's part first: no `+` of the chain can then be moved above that
            # call by call fusion (a chain split over two blocks is not taken for a sum)
            items.remove(parts[-1])
            items.insert(0, parts[-1])
        text = items[0]
        for it in items[1:]:
            if self.coin(15) and " + " not in text:
                text = f"({text} + {it})" if self.coin(50) else f"{it} + ({text})"
            else:
                text = f"{text} + {it}"
        return text

    def not_sum_expr(self, kind, sc, parts):
        """A use of the children's parts that is not a `+` chain (bounded)."""
        if kind == "nf":
            if not parts:
                return self.bounded(self.float_expr(sc, 1))
            forms = ["tanh", "prod"] + ([] if self.smooth else ["max"])
            form = self.choice(forms)
            if form == "tanh":
                inner = " + ".join(f"{self.choice(('0.5', '-0.75', '0.3'))} * {a}" for a in parts)
                return f"np.tanh({inner} + {self.float_expr(sc, 1)})"
            if form == "prod":
                text = parts[0]
                for a in parts[1:]:
                    text = f"{text} * np.tanh({a})"
                return f"{text} * np.tanh({self.float_expr(sc, 1)})"
            text = f"max({parts[0]}, {self.choice(sc.floats)})"
            for a in parts[1:]:
                text = f"max({text}, {a})"
            return text
        if kind == "ni":
            if not parts:
                return self.choice(("0", "k", "(k % 2)"))
            text = f"max({parts[0]}, {self.choice(('0', 'k'))})"
            for a in parts[1:]:
                text = f"max({text}, {a})"
            return f"{text} + 1"
        if kind == "nv":
            if not parts:
                return f"np.tanh({self.vec_expr(sc, 1)} * {self.float_expr(sc, 0)})"
            if not self.smooth and self.coin(30):
                text = f"np.maximum({parts[0]}, {self.vec_expr(sc, 0)})"
                for a in parts[1:]:
                    text = f"np.maximum({text}, {a})"
                return text
            inner = " + ".join(f"{a} * {self.choice(sc.floats)}" for a in parts)
            return f"np.tanh({inner} + {self.vec_expr(sc, 0)})"
        raise AssertionError(kind)

    def ret_value(self, sc, calls):
        # (no conditional expression in a return: it would split the `+` chains over blocks,
        # and the frontend then takes no sum; only where no sum is expected)
        saved, self.no_ifexp = self.no_ifexp, self.no_ifexp or not self.free
        try:
            return self._ret_value(sc, calls)
        finally:
            self.no_ifexp = saved

    def _ret_value(self, sc, calls):
        comps = []
        for p, kind in enumerate(self.kinds):
            parts = [c.part(p) for c in calls if c.part(p) is not None]
            sites = [c.part(p) for c in calls if c.part(p) is not None and c.site]
            if self.free and self.result == "tuple" and self.access == "unpack" and kind in SUM_KINDS:
                # hazard mode: sums with parts dropped or doubled
                comps.append(self.sum_expr(p, kind, sc, parts, sites))
            elif kind in SUM_KINDS and (not self.free or self.coin(70)):
                comps.append(self.sum_expr(p, kind, sc, parts, sites))
            elif kind in SUM_KINDS:        # (no sums to recognise: any use is right)
                comps.append(self.not_sum_expr({"sf": "nf", "si": "ni", "sv": "nv"}[kind], sc, parts))
            else:
                comps.append(self.not_sum_expr(kind, sc, parts))
        if self.result != "tuple":
            return comps[0]
        return comps[0] + "," if len(comps) == 1 else ", ".join(comps)

    def emit_return(self, indent, sc):
        self.emit(indent, f"return {self.ret_value(sc, self.pending)}")

    # --- self-calls ------------------------------------------------------------------------------
    def descent(self, sc, loop_var=None, counter=None):
        options = ["n - 1", "n - 1", "n - 2", "n // 2", f"n - 1 - ({self.choice(sc.ints)} % 2)"]
        if loop_var is not None:
            options += [f"n - 1 - ({loop_var} % 2)"] * 2
        if counter is not None:
            options += [f"n - {counter}"] * 2
        return self.choice(options)

    def call_args(self, sc, depth, plain=False):
        """Arguments of a self-call; `plain`: call-free expressions (they may be fused)."""
        saved, self.no_ifexp = self.no_ifexp, True
        try:
            if plain:
                xarg = self.choice(["x", "-x", "x * 0.5", "y", "z", "y * 0.5"] + sc.floats[3:])
                varg = self.choice(["v", "w", "w * 0.5", "v * -1.0"] + sc.vecs[2:])
            else:
                xarg = self.choice(["x", "-x", "y", f"2.0 * np.tanh({self.float_expr(sc, 1)})",
                                    f"np.tanh({self.float_expr(sc, 2)})"])
                varg = self.choice(["v", "w", f"np.tanh({self.vec_expr(sc, 1)})"])
                if not self.force_site and not self.straight and self.coin(6):
                    # a conditional expression: an ordinary batched call, not a recursion site
                    xarg = f"({xarg} if {self.cond(sc, 0)} else {self.choice(sc.floats)})"
        finally:
            self.no_ifexp = saved
        return f"p, {depth}, {xarg}, {varg}"

    def call_text(self, sc, depth, plain=False, call=None):
        self.call_sites += 1
        self.calls_per_activation += self.weight
        text = f"rec({self.call_args(sc, depth, plain)})"
        if " if " in text:
            if call is not None:
                call.site = False
        else:
            self.site_calls += 1
        return text

    def call_stmt(self, sc, indent, depth, plain=False, call=None):
        new = call is None
        call = call or Call(self.fresh("r"), self)
        if new and self.hazards and self.result == "tuple" and self.access == "unpack" and self.coin(15):
            call.dropped = {p for p, k in enumerate(self.kinds) if self.coin(50)}
            if len(call.dropped) == len(self.kinds):
                call.dropped.pop()
        self.emit(indent, f"{call.targets()} = {self.call_text(sc, depth, plain, call)}")
        if self.linear:       # nothing but straight-line code from here to the return
            self.straight = self.no_ifexp = True
        return call

    def bring_into_scope(self, sc, call):
        """Values of the call's result later code may read (never a sum part in safe mode)."""
        for p, kind in enumerate(self.kinds):
            a = call.part(p)
            if a is None:
                continue
            if kind == "nf":
                sc.floats.append(a)
            elif kind == "nv":
                sc.vecs.append(a)
            elif kind == "ni":
                sc.ints.append(a)
            elif self.free and kind == "sf":
                sc.floats.append(f"np.tanh({a})")
            elif self.free and kind == "sv":
                sc.vecs.append(f"np.tanh({a})")

    def use_up(self, sc, indent, call):
        """Use every part of a call whose result does not reach a return: sums go into
        accumulators (the component is then not a sum), the others into the state."""
        for p, kind in enumerate(self.kinds):
            a = call.part(p)
            if a is None:
                continue
            if kind in SUM_KINDS:
                if self.free and self.coin(40):
                    continue                       # dropped (or overwritten by a next iteration)
                acc = self.accumulator(p)
                if kind == "sv" and self.smooth:
                    # (`+=` into a numpy array cannot take a traced value, even per example)
                    self.emit(indent, f"{acc} = {acc} + {a}")
                else:
                    self.emit(indent, self.choice((f"{acc} = {acc} + {a}", f"{acc} += {a}")))
                if self.result == "tuple" and self.access == "unpack" and call.site:
                    self.desummed.add(p)
            elif kind == "nf":
                self.emit(indent, f"y = np.tanh(y + {self.choice(('0.5', '-0.3'))} * {a})")
            elif kind == "nv":
                self.emit(indent, f"w = np.tanh(w + 0.5 * {a})")
            elif kind == "ni":
                self.emit(indent, f"k = (k + {a}) % 3")

    def accumulator(self, p):
        if p not in self.accs:
            self.accs[p] = f"s{p}"
        return self.accs[p]

    def section(self, sc, indent):
        """One group of self-calls (and statements around them) after the base case."""
        if self.linear:
            k = self.choice(("single", "fused", "seq"))
        else:
            kinds = ["single", "single", "fused", "seq", "branch_return", "branch_both",
                     "branch_one", "loop", "loop"]
            if self.result == "scalar":
                kinds += ["inline", "inline"]
            k = self.choice(kinds)
        if k == "single":
            call = self.call_stmt(sc, indent, self.descent(sc))
            self.pending.append(call)
            self.bring_into_scope(sc, call)
        elif k == "fused":
            c1 = self.call_stmt(sc, indent, self.descent(sc))
            c2 = self.call_stmt(sc, indent, self.descent(sc), plain=True)
            self.pending += [c1, c2]
            self.bring_into_scope(sc, c1)
            self.bring_into_scope(sc, c2)
        elif k == "seq":
            c1 = self.call_stmt(sc, indent, self.descent(sc))
            self.bring_into_scope(sc, c1)
            dep = [c1.part(p) for p, kind in enumerate(self.kinds) if kind == "nf" or
                   (self.free and kind == "sf")]
            dep = [d for d in dep if d is not None]
            if dep:
                a = self.choice(dep)
                self.emit(indent, f"y = np.tanh(y + {a if a in sc.floats else f'np.tanh({a})'})")
            else:
                self.emit(indent, f"y = {self.bounded(self.float_expr(sc, 2))}")
            c2 = self.call_stmt(sc, indent, self.descent(sc))
            self.pending += [c1, c2]
            self.bring_into_scope(sc, c2)
        elif k == "branch_return":
            self.emit(indent, f"if {self.cond(sc)}:")
            inner = sc.child()
            saved = list(self.pending)
            self.statements(inner, indent + 1, 0)
            for _ in range(self.draw(st.integers(1, 2))):
                call = self.call_stmt(inner, indent + 1, self.descent(inner), plain=self.coin(50))
                self.pending.append(call)
                self.bring_into_scope(inner, call)
            if self.coin(40):
                self.simple_stmt(inner, indent + 1)
            self.emit_return(indent + 1, inner)
            self.pending = saved
        elif k == "branch_both":
            call = Call(self.fresh("r"), self)
            self.emit(indent, f"if {self.cond(sc)}:")
            w0 = self.weight
            # (an ordinary call on one side and a recursion site on the other, assigning the
            # same targets, was a bug: hazard mode only)
            self.force_site = not self.hazards
            self.statements(sc.child(), indent + 1, 0)
            self.call_stmt(sc, indent + 1, self.descent(sc), call=call)
            self.emit(indent, "else:")
            self.calls_per_activation -= self.weight      # one branch runs
            self.statements(sc.child(), indent + 1, 0)
            self.call_stmt(sc, indent + 1, self.descent(sc), call=call)
            self.force_site = False
            self.weight = w0
            self.pending.append(call)
            self.bring_into_scope(sc, call)
        elif k == "branch_one":
            self.emit(indent, f"if {self.cond(sc)}:")
            inner = sc.child()
            call = self.call_stmt(inner, indent + 1, self.descent(inner))
            if self.hazards and self.result == "tuple" and self.access == "unpack" and self.coin(40):
                # the same targets get other values on the other path (not recursive parts)
                self.emit(indent, "else:")
                for p, kind in enumerate(self.kinds):
                    if call.part(p) is not None:
                        self.emit(indent + 1, f"{call.part(p)} = {self.leafish(kind, sc)}")
                self.pending.append(call)
                self.bring_into_scope(sc, call)
                return
            self.use_up(inner, indent + 1, call)
            self.bring_into_scope(inner, call)
            self.statements(inner, indent + 1, 0)
            if self.coin(40):
                self.emit(indent, "else:")
                self.statements(sc.child(), indent + 1, 1)
        elif k == "loop":
            self.loop_section(sc, indent)
        elif k == "inline":
            # self-calls inside expressions (a float result: no sums)
            c = f"{self.call_text(sc, self.descent(sc), plain=True)}"
            if self.coin(50):
                c2 = self.call_text(sc, self.descent(sc), plain=True)
                self.emit(indent, f"y = np.tanh({c} * 0.5 - {c2} * 0.25 + y)")
            else:
                self.emit(indent, f"y = np.tanh(y + {c})")
        else:
            raise AssertionError(k)

    def leafish(self, kind, sc):
        if kind in SUM_KINDS:
            return self.term(kind, sc)
        return self.not_sum_expr(kind, sc, [])

    def loop_section(self, sc, indent):
        # (a loop over a range whose bound is uniform in some activations and varying in
        # others failed to take self-calls: a fixed bug, hazard mode only)
        form = self.choice(("for2", "forn", "while") if self.hazards else ("for2", "for2", "while"))
        body = sc.child()
        w0 = self.weight
        self.weight *= 2
        loop_var = counter = None
        if form == "for2" or form == "forn":
            loop_var = self.fresh("j")
            rng = "range(2)" if form == "for2" else self.choice(("range(n % 3)", "range(k)"))
            self.emit(indent, f"for {loop_var} in {rng}:")
            body.ints.append(loop_var)
        else:
            counter = self.fresh("c")
            self.emit(indent, f"{counter} = 0")
            self.emit(indent, f"while {counter} < 2 and {self.cond(sc, 0)}:")
            self.emit(indent + 1, f"{counter} += 1")
        ncalls = self.draw(st.integers(1, 2))
        saved = self.straight, self.no_ifexp
        if loop_var is not None and not self.hazards:
            self.straight = self.no_ifexp = True
        self.statements(body, indent + 1, 0)
        calls = [self.call_stmt(body, indent + 1, self.descent(body, loop_var, counter),
                                plain=j > 0) for j in range(ncalls)]
        for call in calls:
            self.use_up(body, indent + 1, call)
            self.bring_into_scope(body, call)
        if not self.straight and self.coin(30):
            self.emit(indent + 1, f"if {self.cond(body)}:")
            self.emit(indent + 2, "break")
        self.statements(body, indent + 1, 0)
        self.straight, self.no_ifexp = saved
        self.weight = w0
        if self.hazards and form == "for2" and self.coin(30):
            # the loop always runs: its last results reach the return (the first are lost)
            self.pending += calls

    # --- statements without self-calls -----------------------------------------------------------
    def simple_stmt(self, sc, indent):
        # (no item assignment in smooth mode: a traced value cannot be written into a numpy
        # array that is not traced, even per example)
        k = self.choice(("assign", "assign", "vassign", "int", "helper")
                        + (() if self.straight else ("ifexp",)) + (() if self.smooth else ("setitem",)))
        if k == "assign":
            self.emit(indent, f"{self.choice(('y', 'z'))} = {self.bounded(self.float_expr(sc))}")
        elif k == "ifexp":
            self.emit(indent, f"{self.choice(('y', 'z'))} = {self.bounded(self.float_expr(sc, 1))} "
                              f"if {self.cond(sc)} else {self.bounded(self.float_expr(sc, 1))}")
        elif k == "vassign":
            self.emit(indent, f"w = np.tanh({self.vec_expr(sc, 2)})")
        elif k == "int":
            self.emit(indent, f"k = (k + {self.int_expr(sc)}) % 3")
        elif k == "setitem":
            self.emit(indent, f"w[{self.int_expr(sc)} % 3] = {self.bounded(self.float_expr(sc, 1))}")
        elif k == "helper":
            if self.helpers:
                self.emit(indent, f"z = np.tanh({self.choice(self.helpers)}({self.float_expr(sc, 1)}, "
                                  f"{self.choice(sc.floats)}, {self.int_expr(sc)}))")
            else:
                self.emit(indent, f"z = np.tanh(np.sin({self.float_expr(sc, 1)}))")

    def statements(self, sc, indent, min_stmts, depth=1):
        start = len(self.lines)
        self._statements(sc, indent, min_stmts, depth)
        if min_stmts and len(self.lines) == start:
            self.simple_stmt(sc, indent)

    def _statements(self, sc, indent, min_stmts, depth):
        for _ in range(self.draw(st.integers(min_stmts, 2))):
            if self.straight:
                k = "simple"
            else:
                k = self.choice(("simple", "simple", "simple", "if", "for", "early") if depth > 0
                                else ("simple", "simple", "early"))
            if k == "simple":
                self.simple_stmt(sc, indent)
            elif k == "if":
                self.emit(indent, f"if {self.cond(sc)}:")
                self.statements(sc.child(), indent + 1, 1, depth - 1)
                if self.coin(50):
                    self.emit(indent, "else:")
                    self.statements(sc.child(), indent + 1, 1, depth - 1)
            elif k == "for":
                i = self.fresh("i")
                self.emit(indent, f"for {i} in {self.choice(('range(2)', 'range(k)', 'range(n % 3)'))}:")
                body = sc.child()
                body.ints.append(i)
                self.statements(body, indent + 1, 1, depth - 1)
            elif k == "early":
                if self.coin(30):
                    continue
                self.emit(indent, f"if {self.cond(sc)}:")
                self.emit_return(indent + 1, sc)

    # --- functions -------------------------------------------------------------------------------
    def vterm(self):
        self.emit(0, "def vterm(q, a):")
        self.emit(1, f"if a > {self.choice(THRESHOLDS)}:")
        self.emit(2, f"return np.tanh(q * a) * {self.choice(CONSTS)}")
        if self.coin(50):
            self.emit(1, f"if q[{self.draw(st.integers(0, 2))}] < {self.choice(THRESHOLDS)}:")
            self.emit(2, "return q * 0.5 - a")
        self.emit(1, f"return np.sin(q) + {self.choice(CONSTS)}")
        self.emit(0, "")
        self.emit(0, "")

    def rec(self):
        self.emit(0, "def rec(p, n, x, v):")
        body_start = len(self.lines)
        sc = Scope(["x", "y", "z"], ["k"], ["v", "w"])
        self.emit(1, self.choice(("k = n % 3", "k = (n + 1) % 2", "k = n % 2")))
        self.emit(1, self.choice(("y = np.tanh(x * p[0] + p[1])", "y = 2.0 * np.tanh(x * p[0] + p[1] * v[0])")))
        self.emit(1, self.choice(("z = np.tanh(v.sum() * p[2]) + x * 0.5", "z = np.sin(x + p[3])")))
        self.emit(1, self.choice(("w = np.tanh(v * p[3] + x)", "w = np.tanh(v + y)")))
        prologue_end = len(self.lines)
        inverted = self.coin(25)
        self.linear = (not self.hazards and self.result == "tuple" and self.access == "unpack"
                       and any(k in SUM_KINDS for k in self.kinds) and self.coin(40))
        base = self.choice(("n <= 0", "n <= 0", "n < 1", f"n <= 0 or {self.cond(sc, 0)}"))
        self.statements(sc, 1, 0)
        if inverted:
            guard = "n > 0" if self.coin(60) else f"n > 0 and {self.cond(sc, 0)}"
            self.emit(1, f"if {guard}:")
            indent = 2
            inner = sc.child()
        else:
            self.emit(1, f"if {base}:")
            if self.coin(30):
                self.simple_stmt(sc.child(), 2)
            self.emit_return(2, sc)
            indent = 1
            inner = sc
        self.statements(inner, indent, 0)
        for _ in range(self.draw(st.integers(1, 3))):
            self.section(inner, indent)
            if self.coin(40):
                self.statements(inner, indent, 0)
        if self.call_sites == 0:
            self.section(inner, indent)
        if self.calls_per_activation == 0:      # (only inline calls in loops, say)
            self.calls_per_activation = 1
        self.emit_return(indent, inner)
        self.linear_tail, self.linear = self.linear, False
        self.straight = self.no_ifexp = False
        if inverted:
            self.pending = []
            self.statements(sc, 1, 0)
            self.emit_return(1, sc)
        # accumulators are defined before any path can read them
        acc_lines = []
        for p, name in sorted(self.accs.items()):
            kind = self.kinds[p]
            init = {"sf": "0.0", "nf": "0.0", "si": "0", "ni": "0", "sv": "np.zeros(3)",
                    "nv": "np.zeros(3)"}[kind]
            acc_lines.append(f"    {name} = {init}")
        self.lines[prologue_end:prologue_end] = acc_lines
        assert len(self.lines) > body_start
        self.emit(0, "")
        self.emit(0, "")

    def entries(self):
        self.emit(0, "def top(p, n, x, v):")
        form = self.choice(("plain", "branch", "branch_uniform"))
        if form == "plain":
            self.emit(1, "return rec(p, n, x, v)")
        else:
            cond = self.choice(("x > 0.5", "v[1] < x", "np.tanh(x) * p[0] > 0.1")) if form == "branch" \
                else self.choice(("p[0] > 0.0", "n % 2 == 0"))
            self.emit(1, f"if {cond}:")
            self.emit(2, "return rec(p, n, x, v)")
            self.emit(1, f"return rec(p, {self.choice(('n // 2', 'n', 'max(n - 1, 0)'))}, "
                         f"{self.choice(('-x', 'np.tanh(x)', 'x * 0.5'))}, {self.choice(('v', 'v * 0.5'))})")
        self.emit(0, "")
        self.emit(0, "")
        self.emit(0, "def loss(p, n, x, v):")
        self.emit(1, f"r = {self.choice(('rec', 'top'))}(p, n, x, v)")
        if self.result == "scalar":
            self.emit(1, "return r * 1.0")
        elif self.result == "vector":
            self.emit(1, "return np.sum(r * np.array([1.0, -0.5, 0.25]))")
        else:
            terms = [f"r[{p}]" if k in FLOAT_KINDS else f"np.sum(r[{p}])"
                     for p, k in enumerate(self.kinds) if k in FLOAT_KINDS + VEC_KINDS]
            self.emit(1, f"return {' + '.join(terms) if terms else '0.0 * p[0]'}")

    def program(self) -> RecProgram:
        self.emit(0, "import numpy as np")
        self.emit(0, "")
        self.emit(0, "")
        helper_gen = HelperGen(self.draw, smooth=self.smooth)
        for j in range(self.draw(st.integers(0, 2))):
            helper_gen.helper(f"term{j}")
        self.lines += helper_gen.lines
        self.helpers = list(helper_gen.helpers)
        self.vterm()
        self.result = self.choice(("scalar", "vector", "tuple", "tuple", "tuple", "tuple"))
        if self.result == "tuple":
            n = self.draw(st.integers(1, 4))
            kinds = [self.choice(SUM_KINDS + SUM_KINDS + NOT_SUM_KINDS) for _ in range(n)]
            if not any(k in FLOAT_KINDS + VEC_KINDS for k in kinds):
                kinds[0] = self.choice(("sf", "nf", "sv"))
            self.kinds = tuple(kinds)
            self.access = "index" if self.coin(15) else "unpack"
        else:
            self.kinds = ("sf",) if self.result == "scalar" else ("sv",)
            self.access = "unpack"
        self.rec()
        self.entries()
        certain = ()
        if self.site_calls == 0:
            expected = ()
        elif self.result == "tuple" and self.access == "unpack" and not self.hazards:
            # (a sum whose parts go through accumulators may be taken for a sum or not: the
            # frontend takes it when every path uses each part once, which it proves itself)
            expected = tuple(p for p, k in enumerate(self.kinds) if k in SUM_KINDS)
            if self.linear_tail:
                certain = tuple(p for p in expected if p not in self.bare and p not in self.desummed)
        elif self.hazards:
            expected = None
        else:
            expected = ()
        c = max(self.calls_per_activation, 1)
        max_n = 7
        while max_n > 1 and c ** max_n > ACTIVATION_LIMIT:
            max_n -= 1
        return RecProgram("\n".join(self.lines) + "\n", self.result, self.kinds, self.access,
                          expected, certain, max_n, self.call_sites, self.site_calls, self.smooth,
                          self.hazards)


@st.composite
def rec_programs(draw, smooth=False, hazards=False):
    return RecGen(draw, smooth, hazards).program()


# --- accumulation forms of a sum over the recursion -------------------------------------------

@dataclasses.dataclass
class SumFormProgram:
    """A tree-shaped recursion ``rec(p, n, x) -> (h, s)`` whose s is a sum over the recursion
    written in a random accumulation form; `is_sum`: whether frontend/reduction.py must take
    component 1 for a sum (False: a hazard, or a form its definition leaves alone)."""
    source: str
    is_sum: bool
    why: str
    leaf_call: bool      # `term` called in the leaf branch before the join (not deferred)

    def __repr__(self):  # hypothesis prints this for a falsifying example
        return f"SumFormProgram(is_sum={self.is_sum}, why={self.why!r})\n{self.source}"


class SumFormGen:
    """Writes `rec` with its sum accumulated through temporaries, `+=`, `s = s + t`,
    `s = t + s`, a variable set in the leaf branch and joined with the inner branch's, terms in
    any order, call terms (deferred) and value terms; now and then a hazard (a part used
    twice, dropped, or scaled) that makes it no sum."""

    TERMS = ("term(p, h, x)", "term(p, h, x)", "0.5 * h", "1.0", "np.tanh(x)", "h * x")

    def __init__(self, draw):
        self.draw = draw
        self.lines: list = []
        self.counter = 0
        self.is_sum = True
        self.why = "a sum"
        self.leaf_call = False

    def choice(self, options):
        return self.draw(st.sampled_from(list(options)))

    def coin(self, pct):
        return self.draw(st.integers(0, 99)) < pct

    def emit(self, indent, text):
        self.lines.append("    " * indent + text)

    def terms(self, low, high):
        return [self.choice(self.TERMS) for _ in range(self.draw(st.integers(low, high)))]

    def chain(self, indent, items, target, parts=()):
        """Statements that set `target` to the sum of `items` (names or expressions), in a
        random order and grouping; when some items are children's `parts`, the first value
        given to `target` holds one (an in-place `+=` onto a value that may be shared with
        other variables is no sum). Returns whether `target`'s last value is fresh (made by a
        constant or a `+`, not an in-place `+=` or a call)."""
        items = [items[i] for i in self.draw(st.permutations(range(len(items))))]
        with_part = {it for it in items if it in parts}
        while len(items) > 2 and self.coin(40):          # a temporary of two items
            i = self.draw(st.integers(0, len(items) - 2))
            self.counter += 1
            tmp = f"t{self.counter}"
            self.emit(indent, f"{tmp} = {items[i]} + {items[i + 1]}")
            if items[i] in with_part or items[i + 1] in with_part:
                with_part.add(tmp)
            items[i:i + 2] = [tmp]
        if with_part and items[0] not in with_part:
            first = next(it for it in items if it in with_part)
            items.remove(first)
            items.insert(0, first)
        self.emit(indent, f"{target} = {items[0]}")
        fresh = items[0] in ("0.0", "1.0", "0.5 * h", "h * x")
        for it in items[1:]:
            form = self.choice(("+=", "s + t", "t + s"))
            if form == "+=":
                self.emit(indent, f"{target} += {it}")
                fresh = False
            elif form == "s + t":
                self.emit(indent, f"{target} = {target} + {it}")
                fresh = True
            else:
                self.emit(indent, f"{target} = {it} + {target}")
                fresh = True
        return fresh

    def hazard(self, parts):
        """The children's parts as the inner branch adds them (maybe wrongly: no sum then)."""
        if not self.coin(15):
            return list(parts)
        kind = self.choice(("twice", "dropped", "scaled"))
        self.is_sum, self.why = False, f"hazard: a part {kind}"
        if kind == "twice":
            return list(parts) + [parts[0]]
        if kind == "dropped":
            return list(parts[1:])
        return [f"0.5 * {parts[0]}"] + list(parts[1:])

    def program(self) -> SumFormProgram:
        self.emit(0, "import numpy as np")
        self.emit(0, "")
        self.emit(0, "")
        self.emit(0, "def term(p, h, x):")
        self.emit(1, "return np.tanh(p[0] * h + p[1] * x) * p[2]")
        self.emit(0, "")
        self.emit(0, "")
        self.emit(0, "def rec(p, n, x):")
        early = self.coin(30)                       # the leaf returns at once, or joins
        self.emit(1, "if n <= 0:")
        self.emit(2, "h = np.tanh(p[3] * x)")
        if early:
            self.emit(2, f"return h, {' + '.join(self.terms(1, 2))}")
            shared = False
        else:
            init = self.terms(1, 2) if self.coin(70) else ["0.0"]
            shared = not self.chain(2, init, "s")
            self.leaf_call = "term(p, h, x)" in init
        ind = 1 if early else 2                 # (after an early return: no `else`)
        if not early:
            self.emit(1, "else:")
        if self.coin(50):                                   # two independent (fused) calls
            self.emit(ind, "h1, s1 = rec(p, n - 1, x * 0.5)")
            self.emit(ind, "h2, s2 = rec(p, n - 2, -x)")
        else:                                               # the second call uses the first
            self.emit(ind, "h1, s1 = rec(p, n - 1, x * 0.5)")
            self.emit(ind, "h2, s2 = rec(p, n - 2, np.tanh(x + h1))")
        self.emit(ind, "h = np.tanh(p[0] * h1 + p[1] * h2 + x)")
        parts = self.hazard(["s1", "s2"])
        if early:
            inner = parts + self.terms(0, 2)
            self.chain(ind, inner or ["0.0"], "s", parts)
            shared = False
        else:
            self.chain(ind, (parts + self.terms(0, 1)) or ["0.0"], "s", parts)
        for t in self.terms(0, 2):                          # after the join
            form = self.choice(("+=", "s + t", "t + s"))
            if form == "+=":
                self.emit(1, f"s += {t}")
                if shared and self.is_sum:
                    self.is_sum, self.why = False, "`+=` onto a leaf value that is not fresh"
            else:
                self.emit(1, f"s = {t} + s" if form == "t + s" else f"s = s + {t}")
                shared = False
        ret = self.choice(("s", "s + t", "t + s"))
        t = self.choice(self.TERMS)
        self.emit(1, "return h, " + {"s": "s", "s + t": f"s + {t}", "t + s": f"{t} + s"}[ret])
        self.emit(0, "")
        self.emit(0, "")
        self.emit(0, "def top(p, n, x):")
        self.emit(1, "return rec(p, n, x)")
        self.emit(0, "")
        self.emit(0, "")
        self.emit(0, "def loss(p, n, x):")
        self.emit(1, "h, s = rec(p, n, x)")
        self.emit(1, "return s + 0.1 * h")
        return SumFormProgram("\n".join(self.lines) + "\n", self.is_sum, self.why, self.leaf_call)


@st.composite
def sum_form_programs(draw):
    return SumFormGen(draw).program()


# --- recursive calls in a loop over children (frontend/child_loops.py) --------------------------

@dataclasses.dataclass
class ChildLoopProgram:
    """``rec(p, n, x) -> (h, s)`` whose activations call `rec` in a `for` loop over 0-3
    children, adding the results into accumulators in random forms; `parallel`: whether
    frontend/child_loops.py must run the loop's iterations side by side (False: a hazard
    makes the iterations depend on each other, or the loop variable outlive the loop)."""
    source: str
    parallel: bool
    why: str

    def __repr__(self):  # hypothesis prints this for a falsifying example
        return f"ChildLoopProgram(parallel={self.parallel}, why={self.why!r})\n{self.source}"


class ChildLoopGen:
    """Writes `rec` with a loop around its recursive call: the iterable (`range(m)`,
    `range(1, m + 1)`, `np.arange(m)`: a per-example number of children), 1-3 accumulators
    (floats, an int counter) initialised to numbers or values, updated by `a = a + t`,
    `a = t + a`, `a += t`, a temporary, or in one or both branches of an `if`; now and then a
    hazard: a carried value that is not a sum, an accumulator read in the body (also by the
    call's argument), the loop variable read after the loop, a `break`."""

    TERMS = ("hc", "sc", "term(p, hc, x)", "hc * sc", "0.5", "np.tanh(hc + j)", "1")

    def __init__(self, draw):
        self.draw = draw
        self.lines: list = []
        self.counter = 0
        self.parallel = True
        self.why = "independent iterations"

    def choice(self, options):
        return self.draw(st.sampled_from(list(options)))

    def coin(self, pct):
        return self.draw(st.integers(0, 99)) < pct

    def emit(self, indent, text):
        self.lines.append("    " * indent + text)

    def hazard(self, why):
        self.parallel, self.why = False, why

    def update(self, indent, acc, term):
        form = self.choice(("a + t", "t + a", "+=", "temp"))
        if form == "a + t":
            self.emit(indent, f"{acc} = {acc} + {term}")
        elif form == "t + a":
            self.emit(indent, f"{acc} = {term} + {acc}")
        elif form == "+=":
            self.emit(indent, f"{acc} += {term}")
        else:
            self.counter += 1
            self.emit(indent, f"u{self.counter} = {term} + {acc}")
            self.emit(indent, f"{acc} = u{self.counter}")

    def program(self) -> ChildLoopProgram:
        self.emit(0, "import numpy as np")
        self.emit(0, "")
        self.emit(0, "")
        self.emit(0, "def term(p, h, x):")
        self.emit(1, "return np.tanh(p[0] * h + p[1] * x) * p[2]")
        self.emit(0, "")
        self.emit(0, "")
        self.emit(0, "def rec(p, n, x):")
        self.emit(1, "h = np.tanh(p[3] * x)")
        self.emit(1, "m = 0")
        self.emit(1, "if n > 0:")
        self.emit(2, f"m = {self.choice(('n % 3 + 1', '(n + 1) % 3', '2', 'n % 2 + 1'))}")
        accs = [f"a{i}" for i in range(self.draw(st.integers(1, 3)))]
        counter = self.coin(30)
        for a in accs:
            self.emit(1, f"{a} = {self.choice(('0.0', '0.0', 'h * 0.5', 'np.tanh(x)', '1.0'))}")
        if counter:
            self.emit(1, "c = 0")
        after = self.coin(8)
        if after:
            self.emit(1, "j = 0")
            self.hazard("the loop variable is read after the loop")
        iterable = self.choice(("range(m)", "range(1, m + 1)", "np.arange(m)"))
        self.emit(1, f"for j in {iterable}:")
        xarg = self.choice(("x * 0.5", "-x", "np.tanh(x + j)", "x + 0.1 * j"))
        reads_acc = self.coin(6)
        if reads_acc:
            xarg = f"x + 0.1 * {accs[0]}"
        self.emit(2, f"hc, sc = rec(p, n - 1 - (j % 2), {xarg})")
        updated = set()         # accumulators the loop body writes
        for a in accs:
            k = self.choice(("once", "once", "twice", "branch_one", "branch_both", "none"))
            if k != "none":
                updated.add(a)
            if k in ("once", "twice"):
                for _ in range(1 if k == "once" else 2):
                    self.update(2, a, self.choice(self.TERMS))
            elif k.startswith("branch"):
                self.emit(2, f"if {self.choice(('hc > 0.1', 'sc < 0.3', 'j % 2 == 0'))}:")
                self.update(3, a, self.choice(self.TERMS))
                if k == "branch_both":
                    self.emit(2, "else:")
                    self.update(3, a, self.choice(self.TERMS))
        if counter:
            self.emit(2, self.choice(("c += 1", "c = c + 1", "c = 1 + c")))
        if self.coin(8):
            a = self.choice(accs)
            updated.add(a)
            self.emit(2, f"{a} = {a} * 0.5 + hc")
            self.hazard("a carried value that is not a sum")
        elif self.coin(6):
            a = self.choice(accs)
            updated.add(a)
            self.emit(2, f"{a} = {a} + hc * np.tanh({a})")
            self.hazard("an accumulator read besides its `+`")
        if reads_acc and accs[0] in updated:
            # (an accumulator the body never writes is a constant of the loop: reading it
            # does not tie the iterations together)
            self.hazard("an accumulator is read by the call's argument")
        if self.coin(6):
            self.emit(2, "if hc > 0.5:")
            self.emit(3, "break")
            self.hazard("a break")
        total = " + ".join(accs) + (" + 0.1 * c" if counter else "") + (" + 0.01 * j" if after else "")
        self.emit(1, f"h = np.tanh(h + {total})")
        self.emit(1, "return h, " + self.choice(("term(p, h, x) + a0", "a0 + h", "h * 2.0")))
        self.emit(0, "")
        self.emit(0, "")
        self.emit(0, "def top(p, n, x):")
        self.emit(1, "return rec(p, n, x)")
        self.emit(0, "")
        self.emit(0, "")
        self.emit(0, "def loss(p, n, x):")
        self.emit(1, "h, s = rec(p, n, x)")
        self.emit(1, "return s + 0.1 * h")
        return ChildLoopProgram("\n".join(self.lines) + "\n", self.parallel, self.why)


@st.composite
def child_loop_programs(draw):
    return ChildLoopGen(draw).program()
