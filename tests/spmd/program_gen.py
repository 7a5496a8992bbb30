"""Random per-example programs, as source text, for differential fuzzing of `@spmd`.

`programs()` is a hypothesis strategy of `Program`s: the source of a small module with
`import numpy as np`, 0-2 helper functions, an optional depth-bounded recursive helper, and
the main function ``f(x, n, v)`` (`x` a float, `n` an int in 0..6, `v` a float vector of
shape (3,)). The main function returns a float, or a tuple ``(float, vector)``.

Every generated program terminates and stays finite for inputs in [-3, 3]:

- `while` loops carry an explicit counter (incremented first in the body, so `continue`
  cannot skip it) bounded by a small constant or `n`, and a data-dependent condition;
- `for` loops run over `range(n)`, `range(3)`, `range(1, n)`, `range(int % 4)`;
- plain assignments that multiply are bounded by `np.tanh`/`np.clip`; augmented
  assignments add bounded terms or scale by factors of magnitude <= 1.5;
- divisions are by ``1.0 + e * e`` (never zero); ints stay small (`% 5`, loop counters);
- recursion depth is bounded by an int argument reduced `% 5`.

Vectors are never aliased (a vector variable is only assigned fresh arrays or swapped), so
item assignment `w[i % 3] = ...` means the same per example as in the batch program.

With ``smooth=True`` (for gradient checks) the non-smooth operations (abs, clip, maximum,
min/max, truth value of floats, sorting and masks) are left out; branches remain.

Per-example sequences: slices of a vector with per-example bounds (`v[:n]`, `v[k % 4:]`,
`v[:n - 2]`, stepped and reversed slices), `np.arange(n % 5)`, and `enumerate`/`zip` loops
over them; a batch program sees them as ragged values. They are reduced to floats with
`sum`, `np.cumsum`, `np.pad`, `np.roll`, `np.flip`, `np.concatenate`, `np.einsum`, builtin
`sum`/`min`/`max` (with a default), `len`, sorting and boolean masks; all are defined for
empty sequences.

With ``faulty=True`` some indices may be out of range (`v[n - 2]`, `w[k + 1] = ...`, an
element of a short sequence): the per-example program then raises IndexError in some
examples, and the batch program must raise a LaneError naming only such examples.

With ``lists=True`` the programs also build per-example lists (`Gen.list_stmt`).

`mixed_dtype_inputs` draws the arguments of a batch as per-example lists of mixed dtypes
(int8/int32/int64/Python int, float32/float64/Python float); `loop_dtype` is the dtype the
batched result must have.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import strategies as st

FLOAT_CONSTS = ("0.5", "-1.0", "2.0", "0.25", "1.5", "-0.75", "3.0")
THRESHOLDS = ("0.0", "0.3", "-0.5", "1.0", "-1.25", "2.0")
SCALES = ("0.5", "-0.5", "0.9", "1.5", "-1.25")


@dataclasses.dataclass
class Program:
    source: str
    returns_tuple: bool
    smooth: bool
    faulty: bool = False

    def __repr__(self):  # hypothesis prints this for a falsifying example
        return "Program(returns_tuple=%r):\n%s" % (self.returns_tuple, self.source)


class Scope:
    """Variables usable at a point of the program, by kind, and which are writable."""

    def __init__(self, floats, ints, vecs, fwrite, vwrite, iwrite, in_loop=False, ret_kind="f",
                 lists=(), vlists=()):
        self.floats, self.ints, self.vecs = list(floats), list(ints), list(vecs)
        self.fwrite, self.vwrite, self.iwrite = list(fwrite), list(vwrite), list(iwrite)
        self.in_loop = in_loop
        self.ret_kind = ret_kind
        self.lists, self.vlists = list(lists), list(vlists)   # lists of floats, of vectors

    def child(self, in_loop=None, without=()):
        return Scope(self.floats, self.ints, self.vecs, self.fwrite, self.vwrite, self.iwrite,
                     self.in_loop if in_loop is None else in_loop, self.ret_kind,
                     [x for x in self.lists if x not in without],
                     [x for x in self.vlists if x not in without])


class Gen:
    def __init__(self, draw, smooth=False, lists=False, faulty=False, straight=False):
        self.draw = draw
        self.straight = straight          # no branches or loops anywhere (staged regions)
        self.smooth = smooth
        self.use_lists = lists
        self.faulty = faulty
        self.counter = 0
        self.helpers: list[str] = []      # callable helper names (signature (a, b, m) -> float)
        self.recursive = None             # name of the recursive helper, if any
        self.tuple_helpers: list[str] = []  # helpers (a, q) -> (float, vector)
        self.lines: list[str] = []

    # --- drawing --------------------------------------------------------------------------
    def choice(self, options):
        return options[self.draw(st.integers(0, len(options) - 1))]

    def coin(self, p_true_pct=50):
        return self.draw(st.integers(0, 99)) < p_true_pct

    def fresh(self, prefix):
        self.counter += 1
        return f"{prefix}{self.counter}"

    # --- expressions ----------------------------------------------------------------------
    def int_expr(self, sc, depth=1):
        kinds = ["var", "const", "var"]
        if depth > 0:
            kinds += ["add", "mod", "mul"]
        if sc.lists or sc.vlists:
            kinds += ["len"]
        k = self.choice(kinds)
        if k == "var":
            return self.choice(sc.ints)
        if k == "const":
            return self.choice(("1", "2", "0", "3"))
        if k == "len":
            return f"len({self.choice(sc.lists + sc.vlists)})"
        a = self.int_expr(sc, depth - 1)
        if k == "add":
            return f"({a} + {self.choice(('1', '2'))})"
        if k == "mod":
            return f"({a} % {self.choice(('2', '3', '4'))})"
        return f"({a} * 2)"

    def float_expr(self, sc, depth=2):
        """A float expression; bounded when its variables are (see module docstring)."""
        kinds = ["var", "const", "var"]
        if depth > 0:
            kinds += ["bin", "tanh", "ifexp", "div", "helper", "intmix", "where", "or", "strong"]
            if sc.vecs:
                kinds += ["sum", "index", "seq"]
                if self.faulty:
                    kinds += ["oob", "oob"]
            if not self.smooth:
                kinds += ["abs", "maximum", "clip", "minmax"]
            if sc.lists:
                kinds += ["lget", "lget", "lsum", "lstack"]
            if sc.vlists:
                kinds += ["vstack"]
        if self.straight:
            kinds = [k for k in kinds if k not in _BRANCHING_EXPRESSIONS]
        k = self.choice(kinds)
        d = depth - 1
        if k == "seq":
            return self.seq_reduction(sc, d)
        if k == "oob":
            if self.coin(50):
                return f"{self.choice(sc.vecs)}[{self.int_expr(sc, 1)} - {self.choice(('1', '2', '3'))}]"
            return f"{self.seq_expr(sc, 0)}[{self.int_expr(sc, 0)} % 4]"
        if k == "var":
            return self.choice(sc.floats)
        if k == "lget":
            lst = self.choice(sc.lists)
            idx = self.choice(("-1", "0", f"{self.int_expr(sc, 1)} % len({lst})", f"len({lst}) - 1",
                               f"-({self.int_expr(sc, 1)} % len({lst})) - 1"))
            return f"({lst}[{idx}] if {lst} else {self.float_expr(sc, d)})"
        if k == "lsum":
            lst = self.choice(sc.lists)
            return self.choice((f"np.tanh(sum({lst}))", f"(len({lst}) * 0.125)",
                                f"(0.5 if not {lst} else -0.5)"))
        if k == "lstack":
            lst = self.choice(sc.lists)
            forms = [f"(np.tanh(np.stack({lst})).sum() * 0.25 if {lst} else 0.0)"]
            if not self.smooth:    # (np.array of traced values is refused by grad itself)
                forms += [f"(np.array({lst}).sum() * 0.1 if len({lst}) > 0 else 1.0)",
                          f"(np.array({lst}).max() if {lst} else 0.0)"]
            return self.choice(forms)
        if k == "vstack":
            lst = self.choice(sc.vlists)
            return self.choice((f"(np.stack({lst}).sum() * 0.1 if {lst} else 0.0)",
                                f"(np.concatenate({lst}).sum() * 0.1 if {lst} else 0.5)",
                                f"({lst}[-1].sum() if {lst} else 0.25)"))
        if k == "const":
            return self.choice(FLOAT_CONSTS)
        if k == "strong":
            # a float64 numpy value: in a float32 program, a variable that is float64 on some
            # paths only has a per-example dtype (the groups must not merge into one dtype)
            return f"(np.float64(1.0) * {self.float_expr(sc, d)})"
        if k == "bin":
            return f"({self.float_expr(sc, d)} {self.choice(('+', '-', '*'))} {self.float_expr(sc, d)})"
        if k == "tanh":
            return f"np.tanh({self.float_expr(sc, d)})"
        if k == "sum":
            return f"{self.vec_expr(sc, d)}.sum()" if self.coin(40) else f"{self.choice(sc.vecs)}.sum()"
        if k == "index":
            return f"{self.choice(sc.vecs)}[{self.int_expr(sc, 1)} % 3]"
        if k == "ifexp":
            return (f"({self.float_expr(sc, d)} if {self.cond(sc, d)} "
                    f"else {self.float_expr(sc, d)})")
        if k == "div":
            e = self.float_expr(sc, d)
            return f"({self.float_expr(sc, d)} / (1.0 + {e} * {e}))"
        if k == "helper":
            return self.call_expr(sc, d)
        if k == "intmix":
            return f"({self.int_expr(sc, 1)} * {self.choice(('0.5', '0.25', '-0.5'))})"
        if k == "where":
            # + 0.0: a 0-d array from np.where would be updated in place by `+=` (aliasing)
            return (f"(np.where({self.cond_simple(sc, d)}, {self.float_expr(sc, d)}, "
                    f"{self.float_expr(sc, d)}) + 0.0)")
        if k == "or":
            # truth value of a float (0.0 is false): only exercised outside smooth mode
            if self.smooth:
                return f"({self.float_expr(sc, d)} - {self.float_expr(sc, d)})"
            return f"({self.float_expr(sc, d)} {self.choice(('or', 'and'))} {self.choice(FLOAT_CONSTS)})"
        if k == "abs":
            return f"abs({self.float_expr(sc, d)})"
        if k == "maximum":
            return f"np.maximum({self.float_expr(sc, d)}, {self.float_expr(sc, d)})"
        if k == "clip":
            return f"np.clip({self.float_expr(sc, d)}, -2.0, 2.0)"
        if k == "minmax":
            return f"{self.choice(('min', 'max'))}({self.float_expr(sc, d)}, {self.float_expr(sc, d)})"
        raise AssertionError(k)

    def seq_expr(self, sc, depth):
        """A per-example sequence: its length varies between examples when `n` does."""
        vec = self.choice(sc.vecs)
        i = self.int_expr(sc, 1)
        kinds = ["head", "tail", "rev", "negstop", "arange", "stepped"]
        if depth > 0:
            kinds += ["tanh"]
        k = self.choice(kinds)
        if k == "head":
            return f"{vec}[:{i}]"
        if k == "tail":
            return f"{vec}[{i} % 4:]"
        if k == "rev":
            return f"{vec}[::-1][:{i}]"
        if k == "negstop":
            return f"{vec}[:{i} - 2]"
        if k == "arange":
            return f"(np.arange({i} % 5) * {self.choice(SCALES)})"
        if k == "stepped":
            return f"{vec}[{i} % 3::{self.choice(('2', '-1', '-2'))}]"
        return f"np.tanh({self.seq_expr(sc, depth - 1)} * {self.float_expr(sc, 0)})"

    def seq_reduction(self, sc, depth):
        """A float computed from a per-example sequence (defined for empty ones too)."""
        q = self.seq_expr(sc, depth)
        forms = [f"{q}.sum()", f"sum({q})", f"(np.cumsum({q}).sum() * 0.25)",
                 f"(({q}) * np.arange(len({q}))).sum() * 0.25",
                 f"np.pad({q}, (1, 2), constant_values=0.5).sum()",
                 f"np.roll({q}, {self.choice(('1', '-1', '2'))})[:2].sum()",
                 f"np.flip({q})[:2].sum()", f"np.einsum('i,i->', {q}, {q})",
                 f"(len({q}) * 0.5)", f"np.concatenate([{q}, {q}[:1]]).sum()",
                 f"np.stack([{q}, {q}], axis=1)[:, 1].sum()"]
        if not self.smooth:
            forms += [f"max({q}, default=0.0)", f"min({q}, default=1.0)",
                      f"np.sort({q})[::-1][:2].sum()", f"({q})[({q}) > {self.choice(THRESHOLDS)}].sum()",
                      f"(np.argsort({q}) * 0.5).sum()"]
        return self.choice(forms)

    def call_expr(self, sc, depth):
        options = list(self.helpers) + ([self.recursive] if self.recursive else [])
        if not options:
            return f"np.tanh({self.float_expr(sc, depth)})"
        name = self.choice(options)
        if name == self.recursive:
            return f"{name}({self.int_expr(sc, 1)} % 5, {self.float_expr(sc, depth)})"
        return f"{name}({self.float_expr(sc, depth)}, {self.float_expr(sc, depth)}, {self.int_expr(sc, 1)})"

    def vec_expr(self, sc, depth=2):
        kinds = ["var"]
        if depth > 0:
            kinds += ["scale", "shift", "tanh", "mul", "where"]
            if not self.smooth:
                kinds += ["maximum", "clip", "abs"]
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
        if k == "where":
            a = self.vec_expr(sc, d)
            return f"np.where({a} > {self.float_expr(sc, 0)}, {a}, {self.vec_expr(sc, d)})"
        if k == "maximum":
            return f"np.maximum({self.vec_expr(sc, d)}, {self.float_expr(sc, d)})"
        if k == "clip":
            return f"np.clip({self.vec_expr(sc, d)}, -2.0, 2.0)"
        if k == "abs":
            return f"np.abs({self.vec_expr(sc, d)})"
        raise AssertionError(k)

    def fresh_vec_expr(self, sc, depth=2):
        """A vector expression that is never a bare variable (no aliasing)."""
        e = self.vec_expr(sc, depth)
        if e in sc.vecs:
            e = f"({e} * {self.choice(('1.0', '0.5', '-1.0'))})"
        return e

    def cond_simple(self, sc, depth=1):
        k = self.choice(["gt", "lt", "cmp", "parity", "intcmp"] + (["elem", "anyall"] if sc.vecs else []))
        if k == "gt":
            return f"{self.float_expr(sc, min(depth, 1))} > {self.choice(THRESHOLDS)}"
        if k == "lt":
            return f"{self.float_expr(sc, min(depth, 1))} < {self.choice(THRESHOLDS)}"
        if k == "cmp":
            return (f"{self.float_expr(sc, min(depth, 1))} {self.choice(('<', '<=', '>', '>='))} "
                    f"{self.float_expr(sc, min(depth, 1))}")
        if k == "parity":
            return f"{self.int_expr(sc, 0)} % 2 == {self.choice(('0', '1'))}"
        if k == "intcmp":
            return f"{self.int_expr(sc, 1)} {self.choice(('>', '<', '==', '!=', '>='))} {self.choice(('1', '2', '3'))}"
        if k == "elem":
            return f"{self.choice(sc.vecs)}[{self.int_expr(sc, 0)} % 3] < {self.choice(sc.floats)}"
        if k == "anyall":
            return f"({self.vec_expr(sc, 0)} > {self.float_expr(sc, 0)}).{self.choice(('any', 'all'))}()"
        raise AssertionError(k)

    def cond(self, sc, depth=2):
        kinds = ["simple"]
        if depth > 0:
            kinds += ["and", "or", "not", "chain"]
            if not self.smooth:
                kinds += ["truth"]
        if self.straight:     # (short-circuit and chained comparisons branch)
            kinds = [k for k in kinds if k not in ("and", "or", "chain", "truth")]
        k = self.choice(kinds)
        d = depth - 1
        if k == "simple":
            return self.cond_simple(sc, depth)
        if k in ("and", "or"):
            return f"({self.cond(sc, d)} {k} {self.cond(sc, d)})"
        if k == "not":
            return f"not ({self.cond(sc, d)})"
        if k == "chain":
            lo, hi = sorted(self.draw(st.lists(st.sampled_from(THRESHOLDS), min_size=2, max_size=2,
                                               unique=True)), key=float)
            return f"{lo} < {self.float_expr(sc, 1)} <= {hi}"
        if k == "truth":
            return self.choice(sc.floats)
        raise AssertionError(k)

    # --- statements -----------------------------------------------------------------------
    def emit(self, indent, text):
        self.lines.append("    " * indent + text)

    def bounded(self, e):
        """Wrap a float expression so that its value stays small."""
        if "*" not in e and e.count("(") < 2:
            return e
        if self.smooth:
            return self.choice((f"np.tanh({e})", f"2.0 * np.tanh({e})"))
        return self.choice((f"np.tanh({e})", f"np.clip({e}, -3.0, 3.0)", f"2.0 * np.tanh({e})"))

    def vbounded(self, e):
        if self.smooth:
            return f"np.tanh({e})"
        return self.choice((f"np.tanh({e})", f"np.clip({e}, -3.0, 3.0)"))

    def ret_expr(self, sc):
        f = self.float_expr(sc, 2)
        if sc.ret_kind == "fv":
            return f"{f}, {self.vbounded(self.fresh_vec_expr(sc, 1))}"
        return f

    def block(self, sc, indent, depth, min_stmts=1):
        n = self.draw(st.integers(min_stmts, 5 if depth > 2 else 3 if depth > 0 else 2))
        start = len(self.lines)
        for _ in range(n):
            if self.stmt(sc, indent, depth):
                break   # a terminating statement ends the block
        if len(self.lines) == start:
            self.emit(indent, "pass")

    def stmt(self, sc, indent, depth):
        """Emit one statement; True when it ends the block (return/break/continue)."""
        kinds = ["assign", "augassign", "ifexp", "swap"]
        if sc.iwrite:
            kinds += ["int"]
        if sc.vwrite:
            kinds += ["vassign", "vaug", "setitem"]
        kinds += ["temp", "pack"]
        if depth > 0:
            kinds += ["if", "if", "while", "while", "for", "for", "for"]
            if sc.vecs:
                kinds += ["seqfor"]
        if self.faulty and sc.vwrite:
            kinds += ["oobset"]
        if self.helpers or self.recursive:
            kinds += ["call"]
        if self.tuple_helpers and sc.vwrite:
            kinds += ["tcall"]
        kinds += ["guarded_exit"]
        if sc.in_loop:
            kinds += ["guarded_exit"]
        if sc.lists:
            kinds += ["lappend", "lappend", "lpop", "lpop", "linsert", "lextend", "lset", "lquery"]
            if depth > 0:
                kinds += ["lfor", "lwhile"]
        if sc.vlists:
            kinds += ["vappend", "vpop"]
        if self.straight:
            kinds = [k for k in kinds if k not in _BRANCHING_STATEMENTS]
        k = self.choice(kinds)
        if k.startswith(("l", "v")) and k not in ("vassign", "vaug"):
            self.list_stmt(k, sc, indent, depth)
            return False
        if k == "assign":
            self.emit(indent, f"{self.choice(sc.fwrite)} = {self.bounded(self.float_expr(sc))}")
        elif k == "augassign":
            op = self.choice(("+=", "-=", "*="))
            if op == "*=":
                rhs = self.choice((self.choice(SCALES), f"np.tanh({self.float_expr(sc, 1)})"))
            else:
                rhs = self.choice((self.choice(FLOAT_CONSTS), f"np.tanh({self.float_expr(sc, 1)})",
                                   f"0.5 * {self.choice(sc.floats)}"))
            self.emit(indent, f"{self.choice(sc.fwrite)} {op} {rhs}")
        elif k == "ifexp":
            self.emit(indent, f"{self.choice(sc.fwrite)} = {self.bounded(self.float_expr(sc, 1))} "
                              f"if {self.cond(sc)} else {self.bounded(self.float_expr(sc, 1))}")
        elif k == "swap":
            if len(sc.fwrite) >= 2 and self.coin(70):
                a, b = self.draw(st.lists(st.sampled_from(sc.fwrite), min_size=2, max_size=2, unique=True))
                self.emit(indent, f"{a}, {b} = {b}, {a}")
            elif len(sc.vwrite) >= 2:
                a, b = self.draw(st.lists(st.sampled_from(sc.vwrite), min_size=2, max_size=2, unique=True))
                self.emit(indent, f"{a}, {b} = {b}, {a}")
            else:
                self.emit(indent, f"{self.choice(sc.fwrite)} = {self.choice(sc.floats)}")
        elif k == "call":
            self.emit(indent, f"{self.choice(sc.fwrite)} = {self.call_expr(sc, 1)}")
        elif k == "int":
            var = self.choice(sc.iwrite)
            self.emit(indent, self.choice((f"{var} += 1", f"{var} = ({var} + {self.int_expr(sc, 1)}) % 5")))
        elif k == "vassign":
            self.emit(indent, f"{self.choice(sc.vwrite)} = {self.vbounded(self.vec_expr(sc))}")
        elif k == "vaug":
            op = self.choice(("+=", "*=", "-="))
            rhs = (f"np.tanh({self.vec_expr(sc, 1)})" if op != "*=" else
                   self.choice((self.choice(SCALES), f"np.tanh({self.float_expr(sc, 1)})")))
            self.emit(indent, f"{self.choice(sc.vwrite)} {op} {rhs}")
        elif k == "setitem":
            self.emit(indent, f"{self.choice(sc.vwrite)}[{self.int_expr(sc, 1)} % 3] = "
                              f"{self.bounded(self.float_expr(sc, 1))}")
        elif k == "temp":
            # a variable defined here only (undefined in lanes on other paths)
            name = self.fresh("t")
            self.emit(indent, f"{name} = {self.bounded(self.float_expr(sc))}")
            sc.floats.append(name)
            sc.fwrite.append(name)
        elif k == "pack":
            if sc.vwrite and self.coin(40):
                a, b = self.choice(sc.fwrite), self.choice(sc.vwrite)
                self.emit(indent, f"{a}, {b} = {self.bounded(self.float_expr(sc, 1))}, "
                                  f"{self.vbounded(self.vec_expr(sc, 1))}")
            else:
                tup = self.fresh("p")
                self.emit(indent, f"{tup} = ({self.bounded(self.float_expr(sc, 1))}, "
                                  f"{self.bounded(self.float_expr(sc, 1))})")
                a, b = self.choice(sc.fwrite), self.choice(sc.fwrite)
                if a == b:
                    self.emit(indent, f"{a}, _ = {tup}")
                else:
                    self.emit(indent, f"{a}, {b} = {tup}")
        elif k == "if":
            self.emit(indent, f"if {self.cond(sc)}:")
            self.block(sc.child(), indent + 1, depth - 1)
            for _ in range(self.draw(st.integers(0, 2))):
                self.emit(indent, f"elif {self.cond(sc)}:")
                self.block(sc.child(), indent + 1, depth - 1)
            if self.coin(60):
                self.emit(indent, "else:")
                self.block(sc.child(), indent + 1, depth - 1)
        elif k == "while":
            c = self.fresh("c")
            top = sc.ints[0]   # n in f, m in helpers
            bound = self.choice((top, "3", f"({top} + 1)", "2"))
            self.emit(indent, f"{c} = 0")
            cond = self.cond(sc, 1)
            form = self.choice(("and", "and", "rev", "true"))
            if form == "and":
                self.emit(indent, f"while {c} < {bound} and {cond}:")
            elif form == "rev":
                self.emit(indent, f"while {cond} and {c} < {bound}:")
            else:
                self.emit(indent, "while True:")
            self.emit(indent + 1, f"{c} += 1")
            if form == "true":
                self.emit(indent + 1, f"if {c} > {bound} or not ({cond}):")
                self.emit(indent + 2, "break")
            body = sc.child(in_loop=True)
            body.ints.append(c)
            self.block(body, indent + 1, depth - 1, min_stmts=0)
            self.loop_else(sc, indent, depth)
        elif k == "for":
            i = self.fresh("i")
            top = sc.ints[0]
            body = sc.child(in_loop=True)
            if self.coin(15):
                # iterate over the elements of a vector (uniform length 3); a fresh one, as
                # the body may update the variable in place
                self.emit(indent, f"for {i} in {self.fresh_vec_expr(sc, 1)}:")
                body.floats.append(i)
            else:
                rng = self.choice((f"range({top})", "range(3)", f"range(1, {top})",
                                   f"range({self.int_expr(sc, 1)} % 4)"))
                self.emit(indent, f"for {i} in {rng}:")
                body.ints.append(i)
            self.block(body, indent + 1, depth - 1)
            self.loop_else(sc, indent, depth)
        elif k == "seqfor":
            # enumerate / zip over per-example sequences: each example its own number of steps
            # The sequence is a fresh array (`+ 0.0`), never a view of a vector the body may
            # update in place (`w += ...`): numpy's loop would see those updates through the
            # view, and batch programs update arrays functionally (README, Limitations).
            i, e = self.fresh("i"), self.fresh("e")
            body = sc.child(in_loop=True)
            if self.coin(50):
                self.emit(indent, f"for {i}, {e} in enumerate({self.seq_expr(sc, 1)} + 0.0):")
                body.ints.append(i)
                body.floats.append(e)
            else:
                q = f"({self.seq_expr(sc, 0)} + 0.0)"
                self.emit(indent, f"for {i}, {e} in zip({q}, {q}[1:]):")
                body.floats += [i, e]
            self.block(body, indent + 1, depth - 1)
        elif k == "oobset":
            self.emit(indent, f"{self.choice(sc.vwrite)}[{self.int_expr(sc, 1)} - {self.choice(('1', '2'))}] = "
                              f"{self.bounded(self.float_expr(sc, 1))}")
        elif k == "tcall":
            a, b = self.choice(sc.fwrite), self.choice(sc.vwrite)
            self.emit(indent, f"{a}, {b} = {self.choice(self.tuple_helpers)}({self.float_expr(sc, 1)}, "
                              f"{self.fresh_vec_expr(sc, 1)})")
        elif k == "guarded_exit":
            exits = ["return"]
            if sc.in_loop:
                exits += ["break", "continue"]
            ex = self.choice(exits)
            text = f"return {self.ret_expr(sc)}" if ex == "return" else ex
            if self.coin(85):
                self.emit(indent, f"if {self.cond(sc)}:")
                self.emit(indent + 1, text)
                return False
            self.emit(indent, text)
            return True
        else:
            raise AssertionError(k)
        return False

    def list_stmt(self, k, sc, indent, depth):
        """Per-example list operations (lists built in `f`; any control flow around them)."""
        if k == "lappend":
            self.emit(indent, f"{self.choice(sc.lists)}.append(np.tanh({self.float_expr(sc, 1)}))")
        elif k == "lpop":
            lst, target = self.choice(sc.lists), self.choice(sc.fwrite)
            form = self.choice(("last", "first", "index", "expr"))
            if form == "last":
                self.emit(indent, f"if {lst}:")
                self.emit(indent + 1, f"{target} = {lst}.pop()")
            elif form == "first":
                self.emit(indent, f"if len({lst}) > 1:")
                self.emit(indent + 1, f"{target} = {lst}.pop(0)")
            elif form == "index":
                self.emit(indent, f"if {lst}:")
                self.emit(indent + 1, f"{target} = np.tanh({target} + {lst}.pop({self.int_expr(sc, 1)} % len({lst})))")
            else:
                self.emit(indent, f"{target} = {lst}.pop() if {lst} else {self.bounded(self.float_expr(sc, 1))}")
        elif k == "linsert":
            pos = self.choice((f"{self.int_expr(sc, 1)} % 3", "0", "-1", f"len({self.choice(sc.lists)})"))
            self.emit(indent, f"{self.choice(sc.lists)}.insert({pos}, np.tanh({self.float_expr(sc, 1)}))")
        elif k == "lextend":
            a = self.choice(sc.lists)
            others = [x for x in sc.lists if x != a]
            if others and self.coin(50):
                self.emit(indent, f"{a}.extend({self.choice(others)}[{self.choice(('1:', ':2', '-2:', '::-1'))}][:2])")
            else:
                self.emit(indent, f"{a}.extend([np.tanh({self.float_expr(sc, 1)}), {self.choice(FLOAT_CONSTS)}])")
        elif k == "lset":
            lst = self.choice(sc.lists)
            self.emit(indent, f"if {lst}:")
            self.emit(indent + 1, f"{lst}[{self.choice(('-1', '0', f'{self.int_expr(sc, 1)} % len({lst})'))}] = "
                                  f"np.tanh({self.float_expr(sc, 1)})")
        elif k == "lquery":            # native consumers: in, sorted, builtin min/max
            lst, target = self.choice(sc.lists), self.choice(sc.fwrite)
            c = self.choice(FLOAT_CONSTS)
            expr = self.choice((f"(max({lst}) if {lst} else {c})", f"min({lst}, default={c})",
                                f"(sorted({lst})[0] if {lst} else {c})",
                                f"(sorted({lst}, reverse=True)[-1] if {lst} else {c})",
                                f"(1.0 if {c} in {lst} else -1.0)", f"({lst}[-1] if {lst} else 0.0) * ({c} not in {lst})"))
            self.emit(indent, f"{target} = np.tanh({target} + {expr})")
        elif k == "lfor":
            lst, e = self.choice(sc.lists), self.fresh("e")
            self.emit(indent, f"for {e} in {lst}{self.choice(('', '', '[1:]', '[::-1]'))}:")
            body = sc.child(in_loop=True, without=(lst,))   # (never grows the list it iterates)
            body.floats.append(e)
            self.block(body, indent + 1, depth - 1)
        elif k == "lwhile":
            lst, target = self.choice(sc.lists), self.choice(sc.fwrite)
            self.emit(indent, f"while {lst}:")
            self.emit(indent + 1, f"{target} = np.tanh({target} + {lst}.pop({self.choice(('', '0'))}))")
            self.block(sc.child(in_loop=True, without=(lst,)), indent + 1, depth - 1, min_stmts=0)
        elif k == "vappend":
            self.emit(indent, f"{self.choice(sc.vlists)}.append(np.tanh({self.vec_expr(sc, 1)}))")
        elif k == "vpop":
            lst = self.choice(sc.vlists)
            if sc.vwrite and self.coin(50):
                self.emit(indent, f"if {lst}:")
                self.emit(indent + 1, f"{self.choice(sc.vwrite)} = {lst}.pop({self.choice(('', '0'))})")
            else:
                self.emit(indent, f"{self.choice(sc.fwrite)} = {lst}.pop().sum() if {lst} else 0.5")
        else:
            raise AssertionError(k)

    def loop_else(self, sc, indent, depth):
        if self.coin(20):
            self.emit(indent, "else:")
            self.block(sc.child(), indent + 1, depth - 1)

    # --- functions ------------------------------------------------------------------------
    def recursive_helper(self):
        name = "r"
        self.recursive = name
        sc = Scope(["y"], ["k"], [], ["y"], [], [])
        form = self.choice(("ifexp", "stmts", "tree"))
        self.emit(0, f"def {name}(k, y):")
        step = self.bounded(self.float_expr_rec(sc))
        if form == "ifexp":
            self.emit(1, f"return y if k <= 0 else {name}(k - 1, {step})")
        elif form == "stmts":
            self.emit(1, "if k <= 0:")
            self.emit(2, f"return {self.choice(('y', 'np.tanh(y)', 'y * 0.5'))}")
            self.emit(1, f"if {self.cond_rec(sc)}:")
            self.emit(2, f"return {name}(k - 1, {step})")
            self.emit(1, f"return {self.choice(('0.5 * ', '', '-'))}{name}(k - 2, "
                         f"{self.bounded(self.float_expr_rec(sc))})")
        else:
            self.emit(1, "if k <= 1:")
            self.emit(2, "return y")
            self.emit(1, f"return 0.5 * {name}(k - 1, {step}) + 0.25 * {name}(k - 2, y)")
        self.emit(0, "")
        self.emit(0, "")

    def float_expr_rec(self, sc):
        # the recursive helper must not call itself through float_expr (unbounded recursion)
        saved, self.recursive = self.recursive, None
        saved_helpers, self.helpers = self.helpers, []
        try:
            return self.float_expr(sc, 2)
        finally:
            self.recursive, self.helpers = saved, saved_helpers

    def cond_rec(self, sc):
        saved, self.recursive = self.recursive, None
        saved_helpers, self.helpers = self.helpers, []
        try:
            return self.cond(sc, 1)
        finally:
            self.recursive, self.helpers = saved, saved_helpers

    def helper(self, name):
        self.emit(0, f"def {name}(a, b, m):")
        self.emit(1, "t = a * 0.5")
        self.emit(1, "j = 0")
        sc = Scope(["a", "b", "t"], ["m", "j"], ["q"], ["a", "b", "t"], ["q"], ["j"], ret_kind="f")
        self.emit(1, f"q = np.tanh(np.stack([a, b, {self.choice(FLOAT_CONSTS)}]))")
        self.block(sc, 1, self.draw(st.integers(0, 2)))
        self.emit(1, f"return {self.ret_expr(sc)}")
        self.emit(0, "")
        self.emit(0, "")
        self.helpers.append(name)

    def tuple_helper(self, name):
        self.emit(0, f"def {name}(a, q):")
        self.emit(1, "t = q.sum() * 0.5")
        self.emit(1, "j = 0")
        sc = Scope(["a", "t"], ["j"], ["q"], ["a", "t"], ["q"], ["j"], ret_kind="fv")
        self.block(sc, 1, self.draw(st.integers(0, 2)))
        self.emit(1, f"return {self.ret_expr(sc)}")
        self.emit(0, "")
        self.emit(0, "")
        self.tuple_helpers.append(name)

    def program(self) -> Program:
        self.emit(0, "import numpy as np")
        self.emit(0, "")
        self.emit(0, "")
        if self.coin(40) and not self.straight:
            self.recursive_helper()
        for j in range(self.draw(st.integers(0, 2))):
            self.helper(f"h{j}")
        if self.coin(30):
            self.tuple_helper("g0")
        returns_tuple = (not self.smooth) and self.coin(25)
        ret_kind = "fv" if returns_tuple else "f"
        lists = ["L0", "L1"] if self.use_lists else []
        vlists = ["V0"] if self.use_lists else []
        sc = Scope(["x", "y", "z"], ["n", "k"], ["v", "w", "u"], ["x", "y", "z"], ["w", "u"], ["k"],
                   ret_kind=ret_kind, lists=lists, vlists=vlists)
        self.emit(0, "def f(x, n, v):")
        self.emit(1, f"y = {self.choice(('x * 0.5', 'x', 'np.tanh(x)', 'v.sum()'))}")
        self.emit(1, f"z = {self.choice(('1.0', 'np.tanh(x)', 'v[0]', '-x'))}")
        self.emit(1, "k = 0")
        self.emit(1, f"w = {self.choice(('v * 1.0', 'np.tanh(v + x)', 'v.copy()'))}")
        self.emit(1, "u = np.tanh(v - x)")
        if self.use_lists:
            self.emit(1, f"L0 = {self.choice(('[]', '[x]', '[np.tanh(y), 0.5]'))}")
            self.emit(1, f"L1 = {self.choice(('[]', '[z]'))}")
            self.emit(1, f"V0 = {self.choice(('[]', '[np.tanh(v)]'))}")
        self.block(sc, 1, 3, min_stmts=2)
        if self.use_lists:   # what the lists hold at the end decides the result too
            self.emit(1, "y = y + 0.125 * len(L0) - 0.25 * len(L1) + (np.tanh(sum(L0)) if L0 else 0.0)")
            self.emit(1, "z = z + (np.stack(V0).sum() * 0.1 if V0 else 0.0) + (L1[-1] if L1 else 0.0)")
            sc.ret_kind = "f"
            ret = f"{self.ret_expr(sc)} + 0.5 * (y + z)"
            self.emit(1, f"return ({ret}, {self.vbounded(self.fresh_vec_expr(sc, 1))})" if returns_tuple
                      else f"return {ret}")
        else:
            self.emit(1, f"return {self.ret_expr(sc)}")
        return Program("\n".join(self.lines) + "\n", returns_tuple, self.smooth, self.faulty)


_BRANCHING_STATEMENTS = frozenset(["if", "while", "for", "seqfor", "guarded_exit", "ifexp"])
_BRANCHING_EXPRESSIONS = frozenset(["ifexp", "or"])


@st.composite
def programs(draw, smooth=False, lists=False, faulty=False, straight=False):
    """Random programs; `lists=True` adds per-example lists (see `Gen.list_stmt`), `faulty=True`
    out-of-range indices, `straight=True` no branches or loops in any function (straight-line
    regions, which execution/staging.py replays as staged code)."""
    return Gen(draw, smooth, lists and not straight, faulty, straight).program()


# --- mixed-dtype inputs ------------------------------------------------------------------------
PYTHON_NUMBERS = (int, float, bool, complex)
INT_DTYPES = ("int8", "int32", "int64", "python")
"""Per-example dtypes of the int argument `n` (``python``: a Python int)."""


def loop_dtype(results):
    """The dtype the per-example results make together: numpy's promotion with Python numbers
    weak (NEP 50), so Python floats among float32 results give float32. When every result is
    a Python number there is no numpy dtype to match, only a kind: the kind's default dtype
    (int64, float64) is returned, and `dtype_matches` accepts any dtype of that kind."""
    return np.result_type(*[r if type(r) in PYTHON_NUMBERS else np.asarray(r).dtype for r in results])


def dtype_matches(dtype, results) -> bool:
    """True when a batched result of `dtype` has the per-example results' dtype: exactly
    `loop_dtype`, numpy's promotion over the examples' own result types (a Python float, a
    numpy float32, a numpy float64; a Python int, a numpy int64) with the Python numbers weak,
    as stacking the loop's results in one array gives. Every result a Python number: the
    kind's default dtype (float64, int64)."""
    return np.dtype(dtype) == loop_dtype(results)


def lane_tolerance(result):
    """(rtol, atol) for comparing one lane with the loop's `result` computed in its own type:
    float32 (or narrower) arithmetic may round differently in the batch; a Python float or a
    float64 must come out as exact as float64 arithmetic allows (a lane computed in float32
    instead, where the loop had a Python float, is a mismatch)."""
    dtype = np.asarray(result).dtype if type(result) not in PYTHON_NUMBERS else np.dtype(np.float64)
    if dtype.kind in "fc" and dtype.itemsize < (8 if dtype.kind == "f" else 16):
        return 2e-5, 2e-6
    return 1e-9, 1e-12


@st.composite
def mixed_dtype_inputs(draw, B, xs, ns, vs, float32=True):
    """Per-example lists ``(x, n, v)`` of the values `xs`, `ns`, `vs` in mixed dtypes.

    - float64 batches: `x` examples numpy float64 or Python floats, mixed; `n` examples int8,
      int32, int64 or Python ints, mixed; `v` float64;
    - float32 batches: `x` examples all numpy float32 or all Python floats; `n` examples all
      of one of int8, int32, int64, Python int; `v` float32.

    What is not drawn, and why: a batch holds one dtype per argument (numpy's promotion over
    all examples), so examples that would compute in different precisions in the loop
    (float32 with float64 examples, Python floats with numpy float32 ones) compute in one
    precision in the batch, which moves values near a branch threshold across it; and in a
    float32 program an int32 example meets float32 as float64 but an int8 or Python int
    example as float32, so mixing those changes the dtype of lanes whose path mixes them.

    With ``float32=False`` only float64 batches are drawn. In float32 batches a value whose
    type in the loop depends on the path an example takes (builtin ``min(a, b)``, ``a or b``
    or a conditional expression choosing between a float32 value and a float64 or Python
    float) keeps each example's type: such groups do not merge (execution/lanes.py,
    `_check_one_dtype`).
    """
    if not float32 or draw(st.booleans()):
        ints = [draw(st.sampled_from(INT_DTYPES)) for _ in range(B)]
        kinds = [draw(st.sampled_from(("numpy", "python"))) for _ in range(B)]
        x = [float(a) if k == "python" else np.float64(a) for a, k in zip(xs, kinds)]
        v = [np.array(r, dtype=np.float64) for r in vs]
    else:
        ints = [draw(st.sampled_from(INT_DTYPES))] * B
        python = draw(st.booleans())
        x = [float(np.float32(a)) if python else np.float32(a) for a in xs]
        v = [np.array(r, dtype=np.float32) for r in vs]
    n = [int(k) if d == "python" else np.dtype(d).type(k) for k, d in zip(ns, ints)]
    return x, n, v
