"""`Tracer`: an array whose operations are recorded on the active tape.

A tracer behaves like an ndarray (operators, methods, numpy functions through
`__array_ufunc__` / `__array_function__`). Every primitive applied to a tracer of the active
tape computes on raw arrays and records one tape entry; non-differentiable primitives and
integer results return raw arrays. Tracers of a finished tape act as constants.
"""
from __future__ import annotations

import threading

from ..errors import GradientError
from ..runtime.array_methods import ArrayMethods
from ..runtime.blame import user_frame
from ..runtime.backend import is_float_dtype, namespace
from ..runtime.dispatch import register_value_type


class _State(threading.local):
    tape = None


STATE = _State()
"""The active tape of this thread (one at a time per thread: nested differentiation is not
supported; threads differentiate independently)."""


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
        value = self.value if dtype is None else self.value.astype(dtype)
        return value.copy() if copy else value

    def _check_exit(self, what, hint):
        tape = self.tape
        if tape is not None and tape is STATE.tape:
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
    """Dispatch handler: apply `prim` and record it when a traced operand is differentiable."""
    tape = STATE.tape
    raw = []
    parents = []
    pos = 0
    for a in args:
        if type(a) is Tracer:
            raw.append(a.value)
            if a.tape is tape and tape is not None:
                parents.append((pos, a.node))
        else:
            raw.append(a)
        pos += 1
    ans = prim.impl(*raw, **params)
    if not parents or not prim.differentiable or (ans.dtype.kind not in "fc"
                                                  and not is_float_dtype(ans.dtype)):
        return ans
    if prim.vjp is None:
        raise NotImplementedError(f"primitive {prim.name!r} has no VJP rule; add one in spmdbatch/ad/vjps.py")
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
    else as it is (no gradient flows through what is computed from it)."""
    return x.value if isinstance(x, Tracer) else x
