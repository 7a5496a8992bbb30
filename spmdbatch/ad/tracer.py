"""`Tracer`: an array whose operations are recorded on the active tape.

A tracer behaves like an ndarray (operators, methods, numpy functions through
`__array_ufunc__` / `__array_function__`). Every primitive applied to a tracer of the active
tape computes on raw arrays and records one tape entry; non-differentiable primitives and
integer results return raw arrays. Tracers of a finished tape act as constants.
"""
from __future__ import annotations

import threading

from ..runtime.array_methods import ArrayMethods
from ..runtime.backend import namespace
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
        updated = index_update(self, index, value, mode="set")
        self._transposed = None
        if type(updated) is Tracer:
            self.value, self.tape, self.node = updated.value, updated.tape, updated.node
        else:
            self.value = updated

    # concrete views of the value (Python control flow on traced values is allowed)
    def __bool__(self): return bool(self.value)
    def __float__(self):
        raise TypeError(
            "float() of a traced value would drop its gradient (numpy also calls it when a traced "
            "scalar is written into an array element). Use spmdbatch.index_update(a, i, x) to build "
            "arrays, or x.item() when no gradient is wanted.")
    def __int__(self): return int(self.value)
    def __index__(self): return int(self.value)
    def __complex__(self):
        raise TypeError("complex() of a traced value would drop its gradient; use x.item() "
                        "when no gradient is wanted")
    def item(self, *args): return self.value.item(*args)
    def tolist(self): return self.value.tolist()

    def __array__(self, dtype=None, copy=None):
        raise TypeError(
            "converting a traced array to a numpy array (numpy.asarray / numpy.array) would drop "
            "its gradient. Use numpy.stack / numpy.concatenate to build arrays from traced values, "
            "or spmdbatch.stop_gradient(x) when no gradient is wanted.")

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
    if not parents or not prim.differentiable or ans.dtype.kind not in "fc":
        return ans
    if prim.vjp is None:
        raise NotImplementedError(f"primitive {prim.name!r} has no VJP rule; add one in spmdbatch/ad/vjps.py")
    nodes = tape.nodes
    nodes.append((prim, raw, params, ans, parents))
    return Tracer(ans, tape, len(nodes) - 1)


register_value_type(Tracer, 1, trace_apply)

from ..runtime.pytree import register_leaf_type  # noqa: E402

register_leaf_type(Tracer)
