"""Transform levels: the stack of active transforms of this thread, outermost first.

Every running transform is a level: each `spmd` call (a batch program) and each `grad` /
`value_and_grad` / `vjp` call (a tape). A level's `depth` is its position in the stack;
a transform that starts while others run is one level deeper. Values of a level know it
(a tracer knows its tape, whose `depth` says where it stands), so `bind` can send an
operation to the deepest level among its operands, whose handler unwraps only its own
level's values and re-binds on their contents, which may be values of outer levels.

A level stays in the stack while its transform runs; a value of a level that has left the
stack is a constant (a tracer of a finished tape).
"""
from __future__ import annotations

import threading


class _Levels(threading.local):
    def __init__(self):
        self.stack: list = []


LEVELS = _Levels()
"""`LEVELS.stack`: this thread's active levels (threads transform independently)."""


class Level:
    """A level in the stack: `depth` is set while it is active, -1 otherwise."""

    __slots__ = ("depth", "__weakref__")

    def __init__(self):
        self.depth = -1

    def is_active(self) -> bool:
        stack = LEVELS.stack
        d = self.depth
        return 0 <= d < len(stack) and stack[d] is self


class BatchLevel(Level):
    """The level of one running `spmd` call (its values are the batch program's `Batched`).

    `call(fn, *args, **kwargs)` calls `fn` from the running batch program (as a call in the
    program's code would: a user function with per-example arguments runs as its own batch
    program). `lanes()` is the number of lanes of the group of lanes running now (None
    before the program starts). Transforms that run inside the batch program (`grad` inside
    `spmd`) call the user's function through `call` and trace one value per lane."""

    __slots__ = ("name", "call", "lanes")

    def __init__(self, name: str, call, lanes):
        super().__init__()
        self.name = name
        self.call = call
        self.lanes = lanes


def innermost(kind):
    """The innermost active level of type `kind` in this thread, or None."""
    for level in reversed(LEVELS.stack):
        if type(level) is kind:
            return level
    return None


def push(level: Level) -> Level:
    """Make `level` the innermost active level of this thread."""
    stack = LEVELS.stack
    level.depth = len(stack)
    stack.append(level)
    return level


def pop(level: Level) -> None:
    """End `level` (and any level it left running inside it, after an exception)."""
    stack = LEVELS.stack
    d = level.depth
    if 0 <= d < len(stack) and stack[d] is level:
        for inner in stack[d:]:
            inner.depth = -1
        del stack[d:]
    level.depth = -1


def depth() -> int:
    """The number of active levels of this thread."""
    return len(LEVELS.stack)
