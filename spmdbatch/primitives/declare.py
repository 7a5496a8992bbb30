"""`primitive`: declare an array operation once, with every rule the transforms need.

    softplus = spmdbatch.primitive(
        "softplus", lambda x: np.logaddexp(0.0, x), elementwise=True,
        vjp=(lambda g, ans, x: g * spmdbatch.sigmoid(x),))

or as a decorator (the name defaults to the function's):

    @spmdbatch.primitive(vjp=(lambda g, ans, x, axis: ..., ), numpy=my_numpy_like_function)
    def my_op(x, *, axis): ...

The declaration gives the primitive its

- implementation ``impl(*operands, **params)`` on raw arrays: positional arguments are
  operands (arrays, which may arrive traced or per example), keyword arguments are static
  parameters (axis, shape, ...);
- batching rule ``batch(args, **params)``, called when some operands are per-example
  (`Batched`: ``a.data`` holds every example's value along a leading axis; other operands
  are shared by all examples), returning a `Batched`. Without one, an `elementwise`
  primitive gets the elementwise rule (align the examples' ranks, one call on the data) and
  any other primitive the per-example loop (runtime/derived.py: one call per example,
  correct but slow);
- ragged rule ``ragged(args, **params)`` for operands whose examples differ in length
  (`Ragged`), or a string saying why the primitive refuses them. Without one, likewise
  the elementwise rule or the per-example loop over each example's own length;
- packed rule ``packed(args, **params)`` for operands in the compact ragged layout
  (`Packed`: the valid rows of all examples one after another), returning the result or
  None where it does not apply (the operands then run the ragged rule as `Ragged`). Without
  one, an `elementwise` primitive gets the elementwise rule (one call on the rows) and any
  other primitive none;
- VJP: a tuple with one rule ``rule(g, ans, *operands, **params)`` per operand (the
  cotangent of that operand given the cotangent `g` of the result `ans`; None for an
  operand without gradient), or one callable ``rule(position, g, ans, *operands,
  **params)`` for primitives with any number of operands. Rules compute on raw arrays. A
  primitive without gradient says ``differentiable=False`` (autodiff then passes its raw
  result through, as for comparisons);
- numpy functions it implements (`numpy=`): ``np.foo(x)`` on a traced or per-example value
  then applies the primitive (positional arguments as operands, keywords as params).

A rule shared by several primitives that needs the primitive it serves is given as
``family(factory, *args)``: the declaration calls ``factory(prim, *args)``.

The primitive is a callable: ``softplus(x)`` works on raw arrays, under `grad` and in
`@spmd` code alike.
"""
from __future__ import annotations

import sys
from typing import Callable

from ..runtime import batching, derived, packed as packed_values, ragged as ragged_values
from ..runtime.dispatch import Primitive, register
from ..runtime.numpy_api import register_numpy


class family:
    """A rule made for the primitive being declared: ``factory(prim, *args)``.

    Rules shared by several primitives refer to the primitive they belong to (a reduction's
    batching rule applies that reduction to the data), which does not exist yet where it is
    declared: ``primitive("sum", _sum, batch=family(reduction), ragged=family(ragged_reduction,
    "zero"), ...)`` builds each rule once the primitive does."""

    __slots__ = ("factory", "args")

    def __init__(self, factory: Callable, *args):
        self.factory = factory
        self.args = args

    def build(self, prim):
        return self.factory(prim, *self.args)


def primitive(name=None, impl: Callable | None = None, *, batch: Callable | None = None,
              ragged: Callable | str | None = None, packed: Callable | None = None, vjp=None,
              differentiable: bool = True, elementwise: bool = False, broadcasting: bool | None = None, numpy=(),
              register_name: bool = True, origin: str | None = None):
    """Declare a primitive (see the module docstring); as a function, or as a decorator of
    its implementation (``@primitive``, ``@primitive("name", vjp=...)``, ``@primitive(vjp=...)``).

    `elementwise`: the operation applies to each element on its own, its operands
    broadcasting as numpy's do (gives fast derived batching and ragged rules).
    `broadcasting` (default: `elementwise`): autodiff sums each operand's cotangent back to
    the operand's shape, so VJP rules may return it at the broadcast shape.
    `numpy`: a numpy function or ufunc (or a tuple of them) that the primitive computes.
    `register_name=False` makes an anonymous primitive (custom_vjp does), not reachable by
    name and free to share one. `origin`: the declaring module (default: the caller's).
    """
    if origin is None:
        origin = sys._getframe(1).f_globals.get("__name__", "")
    options = dict(batch=batch, ragged=ragged, packed=packed, vjp=vjp,
                   differentiable=differentiable, elementwise=elementwise, broadcasting=broadcasting, numpy=numpy,
                   register_name=register_name, origin=origin)
    if callable(name) and impl is None:           # @primitive
        return _declare(name.__name__, name, **options)
    if impl is None:                               # @primitive(...), @primitive("name", ...)
        return lambda fn: _declare(name if name is not None else fn.__name__, fn, **options)
    if not isinstance(name, str):
        raise TypeError(f"spmdbatch.primitive: the name must be a string, got {name!r}")
    return _declare(name, impl, **options)


def _declare(name, impl, *, batch, ragged, packed, vjp, differentiable, elementwise, broadcasting,
             numpy, register_name, origin) -> Primitive:
    where = f"spmdbatch.primitive({name!r})"
    if not callable(impl):
        raise TypeError(f"{where}: the implementation must be callable, got {impl!r}")
    if differentiable and vjp is None:
        raise TypeError(f"{where}: give its VJP (vjp=(rule, ...) with one rule per operand, or "
                        f"vjp=rule(position, g, ans, *operands, **params)), or say "
                        f"differentiable=False")
    if not differentiable and vjp is not None:
        raise TypeError(f"{where}: a primitive with differentiable=False takes no VJP")
    if isinstance(vjp, list):
        vjp = tuple(vjp)
    if vjp is not None and not (callable(vjp) or (type(vjp) is tuple and all(
            r is None or callable(r) for r in vjp))):
        raise TypeError(f"{where}: vjp must be a tuple of per-operand rules (None for an operand "
                        f"without gradient) or one callable, got {vjp!r}")
    prim = Primitive(name, impl, differentiable=differentiable,
                     broadcasting=elementwise if broadcasting is None else broadcasting,
                     elementwise=elementwise, vjp=vjp, origin=origin)
    if type(batch) is family:
        batch = batch.build(prim)
    if type(ragged) is family:
        ragged = ragged.build(prim)
    if type(packed) is family:
        packed = packed.build(prim)
    if batch is not None and not callable(batch):
        raise TypeError(f"{where}: batch must be a rule batch(args, **params), got {batch!r}")
    if ragged is not None and not (callable(ragged) or isinstance(ragged, str)):
        raise TypeError(f"{where}: ragged must be a rule ragged(args, **params) or a string "
                        f"saying why ragged operands are refused, got {ragged!r}")
    if packed is not None and not callable(packed):
        raise TypeError(f"{where}: packed must be a rule packed(args, **params), got {packed!r}")
    if batch is None:
        batch = batching.elementwise(prim) if elementwise else derived.per_lane_batch(prim)
    if ragged is None:
        ragged = ragged_values.elementwise(prim) if elementwise else derived.per_lane_ragged(prim)
    elif isinstance(ragged, str):
        ragged = derived.refusal(prim, ragged)
    if packed is None and elementwise:
        packed = packed_values.elementwise(prim)
    prim.batch, prim.ragged, prim.packed = batch, ragged, packed
    if register_name:
        register(prim)
    for fn in (numpy if isinstance(numpy, (tuple, list)) else (numpy,)):
        register_numpy(fn, prim)
    return prim
