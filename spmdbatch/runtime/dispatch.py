"""The primitive registry and the one dispatch function every operation goes through.

A `Primitive` is a named array operation together with everything the transforms need to
know about it, declared in one place with `spmdbatch.primitive` (spmdbatch/primitives/):

- `impl(*raw_operands, **params)`: the operation on raw arrays (numpy or CuPy);
- `batch(args, **params)`: how it runs when some operands are `Batched` (one value per
  example, runtime/batching.py);
- `ragged(args, **params)`: how it runs when some operands are `Ragged` (examples of
  different lengths, runtime/ragged.py);
- `packed(args, **params)`: how it runs when some operands are `Packed` (examples of
  different lengths stored as their rows one after another, runtime/packed.py), or None
  where this layout gives nothing better (the operands then run the ragged rule as
  `Ragged`); a rule may also return None for operands it does not handle;
- `vjp`: its reverse-mode rules (ad/tape.py), or `differentiable=False`.

`bind(prim, args, params)` applies a primitive: positional `args` are operands (raw arrays,
numbers or wrapped values such as autodiff tracers and batched values), keyword `params`
are static (axis, shape, index, ...). Wrapped value types register a handler with a
priority; the operand type with the highest priority handles the call and typically
re-binds the primitive on its unwrapped contents (a batched value of tracers first
applies the batching rule, which binds on tracers, which record on the tape).

Runtime and autodiff code reach the primitives by name through `runtime/primitives.py`
(``P.add``): the primitives are declared above them, and registered when spmdbatch is
imported.
"""
from __future__ import annotations

from typing import Any, Callable


class Primitive:
    """A named operation and its rules (see the module docstring). Build one with
    `spmdbatch.primitive`, which derives the rules that are not given."""

    __slots__ = ("name", "impl", "differentiable", "broadcasting", "elementwise", "vjp", "batch",
                 "ragged", "packed", "origin", "__weakref__")
    _spmd_native = True     # spmd(prim) applies it to the batched values (its batching rule)

    def __init__(self, name: str, impl: Callable, *, differentiable: bool = True,
                 broadcasting: bool = False, elementwise: bool = False, vjp=None, batch=None,
                 ragged=None, packed=None, origin: str = ""):
        self.name = name
        self.impl = impl
        self.differentiable = differentiable
        # Elementwise ops whose operands broadcast: autodiff sums cotangents back to each
        # operand's shape generically, so their VJP rules need not.
        self.broadcasting = broadcasting
        self.elementwise = elementwise  # applies to each element on its own (operands broadcast)
        self.vjp = vjp          # tuple of per-operand rules, or a callable for variadic operands
        self.batch = batch      # batching rule: rule(args, **params) with Batched operands
        self.ragged = ragged    # ragged rule: rule(args, **params) with Ragged operands
        self.packed = packed    # packed rule: rule(args, **params) with Packed operands, or None
        self.origin = origin    # the module that declared it

    def __call__(self, *args, **params):
        return bind(self, args, params)

    def __repr__(self) -> str:
        return f"<primitive {self.name}>"


PRIMITIVES: dict[str, Primitive] = {}
"""Every registered primitive by name (`runtime/primitives.py` looks names up here)."""


def register(prim: Primitive) -> Primitive:
    """Add `prim` to the registry under its name, which must be new."""
    if prim.name in PRIMITIVES:
        raise ValueError(f"primitive {prim.name!r} is already registered")
    PRIMITIVES[prim.name] = prim
    return prim


# type -> (priority, handler(prim, args, params))
_HANDLERS: dict[type, tuple[int, Callable]] = {}


def register_value_type(cls: type, priority: int, handler: Callable) -> None:
    """Route every primitive applied to an operand of type `cls` to `handler`.

    Higher priority wins when operands of several wrapped types meet (batched > traced).
    """
    _HANDLERS[cls] = (priority, handler)


def bind(prim: Primitive, args: tuple, params: dict) -> Any:
    """Apply `prim` to operands `args` with static `params` (see module docstring)."""
    best = 0
    handler = None
    for a in args:
        entry = _HANDLERS.get(type(a))
        if entry is not None and entry[0] > best:
            best, handler = entry
    if handler is None:
        return prim.impl(*args, **params)
    return handler(prim, args, params)


def handler_priority(value) -> int:
    """0 for raw values, else the priority of the value's registered type."""
    entry = _HANDLERS.get(type(value))
    return 0 if entry is None else entry[0]
