"""`Tracer`: an array whose operations are recorded on its tape.

A tracer behaves like an ndarray (operators, methods, numpy functions through
`__array_ufunc__` / `__array_function__`). A tape is a transform level
(runtime/levels.py): `grad` inside `grad` runs a tape one level deeper, whose tracers hold
tracers of the outer tape as their values. A primitive applied to tracers goes to the
deepest active tape among its operands (`trace_apply`): that tape's tracers give their
values, which are raw arrays (then the primitive's `impl` runs on them directly: the fast
path) or tracers of outer tapes (then the primitive is bound again, so the outer tapes record
it too); one tape entry is recorded. Non-differentiable primitives and integer results
return untraced values. Tracers of a finished tape act as constants.
"""
from __future__ import annotations

import threading

from ..errors import GradientError
from ..runtime.array_methods import ArrayMethods
from ..runtime.blame import user_frame
from ..runtime.backend import is_float_dtype, namespace
from ..runtime.dispatch import bind, register_value_type
from ..runtime.levels import LEVELS


class _State(threading.local):
    fast = None
    """The tape whose tracers take the fast path of `trace_apply`: the only recording tape of
    this thread (None while none records, or while tapes nest: grad of grad)."""

    @property
    def tape(self):
        """The innermost active tape of this thread (None when nothing is differentiated)."""
        for level in reversed(LEVELS.stack):
            if hasattr(level, "nodes"):
                return level
        return None


STATE = _State()
"""This thread's differentiation state (`STATE.tape`); threads differentiate independently."""


def live(tape) -> bool:
    """True while `tape` records (its level is active in this thread)."""
    stack = LEVELS.stack
    d = tape.depth
    return 0 <= d < len(stack) and stack[d] is tape


class Tracer(ArrayMethods):
    """A raw array value plus its node on a tape."""

    __slots__ = ("value", "tape", "node", "_transposed")

    def __init__(self, value, tape, node):
        self.value = value
        self.tape = tape
        self.node = node
        self._transposed = None

    @property
    def T(self):
        """The transpose, recorded once per tracer (parameters are transposed at every use)."""
        t = self._transposed
        if t is None:
            t = self._transposed = ArrayMethods.T.fget(self)
        return t

    shape = property(lambda self: self.value.shape)
    ndim = property(lambda self: self.value.ndim)
    dtype = property(lambda self: self.value.dtype)
    xp = property(lambda self: namespace(self.value))

    def copy(self):
        """A distinct tracer of the same value (item assignment on it leaves the original)."""
        return Tracer(self.value, self.tape, self.node)

    def __setitem__(self, index, value):
        # numpy-style in-place update: this tracer now stands for the updated array.
        from ..runtime.array_methods import index_update
        self._spmd_assign(index_update(self, index, value, mode="set"))

    def _spmd_assign(self, updated):
        """Make this tracer stand for `updated` (in-place updates: x[i] = v, numpy.add.at)."""
        self._transposed = None
        if type(updated) is Tracer:
            self.value, self.tape, self.node = updated.value, updated.tape, updated.node
        else:
            self.value = updated

    # concrete views of the value. Python control flow on traced values is allowed (truth
    # values and integers carry no gradient); a float leaving the tracer while its tape
    # records would lose its gradient, so it is refused (a finished tape's tracer is a constant).
    def __bool__(self): return bool(self.value)
    def __int__(self): return int(self.value)
    def __index__(self): return int(self.value)

    def __float__(self):
        self._check_exit("float()", "numpy also calls float() when a traced scalar is written into "
                         "an array element: use spmdbatch.index_update(a, i, x) to build arrays")
        return float(self.value)

    def __complex__(self):
        self._check_exit("complex()", "keep it an array")
        return complex(self.value)

    def item(self, *args):
        self._check_exit(".item()", "keep it an array (x.reshape(()) for a 0-d one)")
        return self.value.item(*args)

    def tolist(self):
        self._check_exit(".tolist()", "keep it an array; numpy.stack / numpy.concatenate combine "
                         "traced values")
        return self.value.tolist()

    def __array__(self, dtype=None, copy=None):
        self._check_exit("converting to a numpy array (numpy.asarray / numpy.array)",
                         "use numpy.stack / numpy.concatenate to build arrays from traced values")
        if type(self.value) is Tracer:    # (a finished tape's tracer of a live outer one)
            return self.value.__array__(dtype, copy)
        value = self.value if dtype is None else self.value.astype(dtype)
        return value.copy() if copy else value

    def _check_exit(self, what, hint):
        tape = self.tape
        if tape is not None and live(tape):
            filename, lineno = user_frame(3)
            raise GradientError(
                f"{what} of a value being differentiated would drop its gradient (the result is a "
                f"plain number that autodiff cannot follow)", filename, lineno,
                f"Fix: {hint}; or write spmdbatch.stop_gradient(x) first where no gradient "
                f"should flow through it.")

    def __repr__(self):
        return f"Tracer({self.value!r})"

    def __format__(self, spec):
        return format(self.value, spec)


def trace_apply(prim, args, params):
    """Dispatch handler: apply `prim` on the deepest active tape among the traced operands
    and record it there when a traced operand is differentiable (see the module docstring).

    The fast path: every traced operand belongs to the only recording tape of this thread
    (`STATE.fast`), so its values are raw arrays and `prim.impl` runs on them directly;
    anything else goes to `_trace_apply_levels`."""
    tape = None
    raw = []
    parents = []
    pos = 0
    for a in args:
        if type(a) is Tracer:
            t = a.tape
            if t is not tape:
                if tape is not None or t is not STATE.fast:
                    return _trace_apply_levels(prim, args, params)
                tape = t
            raw.append(a.value)
            parents.append((pos, a.node))
        else:
            raw.append(a)
        pos += 1
    ans = prim.impl(*raw, **params)
    if not parents or not prim.differentiable or (ans.dtype.kind not in "fc"
                                                  and not is_float_dtype(ans.dtype)):
        return ans
    if prim.vjp is None:
        raise NotImplementedError(f"primitive {prim.name!r} has no VJP rule; declare one with vjp= where it is declared (spmdbatch.primitive)")
    nodes = tape.nodes
    nodes.append((prim, raw, params, ans, parents))
    return Tracer(ans, tape, len(nodes) - 1)


def _trace_apply_levels(prim, args, params):
    """`trace_apply` in general: tracers of several tapes (the deepest active one records;
    the values of its tracers may be tracers of outer tapes, on which the primitive is bound
    again) and tracers of finished tapes (constants)."""
    stack = LEVELS.stack
    n = len(stack)
    tape = None
    depth = -1
    for a in args:
        if type(a) is Tracer:
            t = a.tape
            d = t.depth
            if d > depth and d < n and stack[d] is t:
                tape, depth = t, d
    raw = []
    parents = []
    wrapped = False
    pos = 0
    for a in args:
        if type(a) is Tracer:
            if a.tape is tape:
                v = a.value
                parents.append((pos, a.node))
            elif depth > 0 and live(a.tape):
                v = a                         # a tracer of an outer tape: re-bound below
            else:
                v = a.value                   # a finished tape's tracer: a constant
                while type(v) is Tracer and not live(v.tape):
                    v = v.value
            if type(v) is Tracer:
                wrapped = True
            raw.append(v)
        else:
            raw.append(a)
        pos += 1
    if wrapped:
        ans = bind(prim, tuple(raw), params)
        if not parents:
            return ans
        value = ans.value if type(ans) is Tracer else ans
        dtype = value.dtype
    else:
        ans = prim.impl(*raw, **params)
        dtype = ans.dtype
    return _record(prim, tape, raw, params, ans, dtype, parents)


def _record(prim, tape, raw, params, ans, dtype, parents):
    """Record one entry on `tape` and return the traced result (or `ans` itself when nothing
    is differentiated: no traced operand, a non-differentiable primitive, a non-float result)."""
    if not parents or not prim.differentiable or (dtype.kind not in "fc" and not is_float_dtype(dtype)):
        return ans
    if prim.vjp is None:
        raise NotImplementedError(f"primitive {prim.name!r} has no VJP rule; declare one with vjp= where it is declared (spmdbatch.primitive)")
    nodes = tape.nodes
    nodes.append((prim, raw, params, ans, parents))
    return Tracer(ans, tape, len(nodes) - 1)


register_value_type(Tracer, 1, trace_apply)

from ..runtime.pytree import register_leaf_type  # noqa: E402

register_leaf_type(Tracer)


# --- what code outside `ad` may ask of a value (instead of looking inside tracers) ---------------
def is_traced(x) -> bool:
    """Whether `x` is a value being differentiated (a `Tracer`)."""
    return isinstance(x, Tracer)


def untraced(x):
    """The array `x` stands for, without its autodiff record: a `Tracer`'s value; anything
    else as it is (no gradient flows through what is computed from it). Under nested tapes
    (`grad` of `grad`) a tracer's value may be another tape's tracer: every level is removed."""
    while isinstance(x, Tracer):
        x = x.value
    return x
