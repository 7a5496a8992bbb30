"""Error types of spmdbatch.

Every error that points at user code carries the user's source file and line, so the
message reads ``file.py:12: <what is wrong>. <how to fix it>``.
"""
from __future__ import annotations


class SpmdError(Exception):
    """Base class of every error raised by the @spmd transform and its runtime."""

    def __init__(self, message: str, filename: str | None = None, lineno: int | None = None,
                 hint: str | None = None):
        self.message = message
        self.filename = filename
        self.lineno = lineno
        self.hint = hint
        super().__init__(self._format())

    def _format(self) -> str:
        where = ""
        if self.filename is not None:
            where = f"{self.filename}:{self.lineno if self.lineno is not None else '?'}: "
        text = where + self.message
        if self.hint:
            text += ("" if text.endswith((".", ":", "!", "?")) else ".") + " " + self.hint
        return text


class UnsupportedConstruct(SpmdError):
    """The per-example code uses a construct that cannot be batched (generators, async, ...)."""


class UnsupportedOperation(UnsupportedConstruct, NotImplementedError):
    """An array operation spmdbatch has no rule for on traced, batched or ragged values (a
    numpy function without an implementation, a ragged operation that would move the ragged
    axis). Also a NotImplementedError, as numpy's own refusals are."""


class HasExceptionHandling(UnsupportedConstruct):
    """The function contains try/except/finally or with blocks.

    Such functions are not rewritten; they run natively on batched values, which is correct
    as long as their control flow never depends on a varying value.
    """


class VaryingValueError(SpmdError):
    """A varying (per-example) value was used where Python needs one concrete value."""


class UnmergeableGroups(VaryingValueError):
    """Lane groups meeting at one point hold values that cannot become one batched value
    (different non-array objects, loops at different positions). The scheduler then runs the
    groups separately; where they must become one value (a return), the message says why."""


class BatchSizeError(SpmdError):
    """Batched arguments disagree on the batch size, or a ragged list is inconsistent."""


class AxesError(SpmdError, ValueError):
    """`in_axes` / `out_axes` do not fit the arguments or results: a structure that does not
    match, an axis out of range, a non-zero axis for values that are not arrays (a list of
    per-example values, a ragged result), or `out_axes=None` for a result that differs per
    example. Also a ValueError, as before it had its own class."""


class DivergentSideEffect(SpmdError):
    """I/O or mutation of shared state (globals, nonlocals, attributes, containers) under a
    varying condition: only some examples reach it, but its effect would be shared by all."""


class GradientError(SpmdError, TypeError):
    """A gradient would be silently lost: `grad` of an object that is not a pytree (its arrays
    are hidden from autodiff), or a traced value leaving the tracer (`float(x)`, `x.item()`,
    `x.tolist()`, `numpy.asarray(x)`) while its gradient is being recorded."""


class LaneError(SpmdError):
    """An exception was raised in some lanes (examples) only; names them by batch index."""

    def __init__(self, message: str, lanes, filename=None, lineno=None, hint=None):
        self.lanes = list(lanes)
        super().__init__(message, filename, lineno, hint)


class UnsupportedPythonVersion(SpmdError):
    """The running Python's bytecode is not one the rewriter knows (it covers CPython
    3.11-3.13); raised when a function is given to ``spmd``, not at import."""
