"""The primitive registry and the one dispatch function every operation goes through.

A `Primitive` is a named array operation with a forward implementation on raw arrays
(numpy or CuPy). Other layers attach their rules to it:

- `ad/vjps.py` sets `prim.vjp` (reverse-mode rules, one per operand);
- `runtime/batching.py` sets `prim.batch` (how the op runs on batched values).

`bind(prim, args, params)` applies a primitive: positional `args` are operands (raw arrays,
numbers or wrapped values such as autodiff tracers and batched values), keyword `params`
are static (axis, shape, index, ...). Wrapped value types register a handler with a
priority; the operand type with the highest priority handles the call and typically
re-binds the primitive on its unwrapped contents (a batched value of tracers first
applies the batching rule, which binds on tracers, which record on the tape).
"""
from __future__ import annotations

from typing import Any, Callable


class Primitive:
    """A named operation. `impl(*raw_operands, **params)` computes it on raw arrays."""

    __slots__ = ("name", "impl", "differentiable", "broadcasting", "vjp", "batch", "__weakref__")

    def __init__(self, name: str, impl: Callable, *, differentiable: bool = True,
                 broadcasting: bool = False):
        self.name = name
        self.impl = impl
        self.differentiable = differentiable
        # Elementwise ops whose operands broadcast: autodiff sums cotangents back to each
        # operand's shape generically, so their VJP rules need not.
        self.broadcasting = broadcasting
        self.vjp = None      # tuple of per-operand rules, or a callable for variadic operands
        self.batch = None    # batching rule (runtime/batching.py)

    def __call__(self, *args, **params):
        return bind(self, args, params)

    def __repr__(self) -> str:
        return f"<primitive {self.name}>"


PRIMITIVES: dict[str, Primitive] = {}


def primitive(name: str, impl: Callable, **options) -> Primitive:
    """Create and register a primitive under a unique name."""
    if name in PRIMITIVES:
        raise ValueError(f"primitive {name!r} is already registered")
    prim = Primitive(name, impl, **options)
    PRIMITIVES[name] = prim
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
