"""`RefusesConcrete`: how a varying value refuses to become one Python value.

A per-example value stored in a wrapped form (`LaneMapped`, `Packed`) holds one value per
example, so ``if x:``, ``int(x)``, ``float(x)``, ``range(x)`` and ``numpy.asarray(x)``
outside the batch program have no single answer; each raises a `VaryingValueError` naming
the user's line (and a hint, where the class gives one).
"""
from __future__ import annotations

from ..errors import VaryingValueError
from .blame import user_frame


class RefusesConcrete:
    """Mixin: truth value, int(), index, float() and numpy.asarray() of a varying value raise
    `VaryingValueError` at the user's line. `_refusal_hint` is the hint they carry (None: no
    hint)."""

    __slots__ = ()
    _refusal_hint: str | None = None

    def _refuse(self, what, hint=None):
        """The error for `what` (called from the refusing method: the user's frame is the
        caller of that method or further out)."""
        filename, lineno = user_frame(3)
        return VaryingValueError(f"{what} of a varying (per-example) value", filename, lineno,
                                 hint if hint is not None else self._refusal_hint)

    def __bool__(self):
        raise self._refuse("truth value")

    def __int__(self):
        raise self._refuse("int()")

    __index__ = __int__

    def __float__(self):
        raise self._refuse("float()")

    def __array__(self, dtype=None, copy=None):
        raise self._refuse("numpy.asarray()")
