"""`raise` in batch programs: the exception of some examples, or of all.

A `raise` that only some examples reach (under a varying condition, in a call made by some
lanes) is raised as a `LaneError` naming those examples (batch indices of the outermost
@spmd call); one that every example reaches is raised as it is. An exception built from
per-example values (an f-string of a varying value) carries the text of the first example
that raises it.
"""
from __future__ import annotations

import numpy as np

from ..errors import LaneError
from ..runtime.blame import user_frame
from .formatting import example_exception
from .lanes import is_varying
from .state import STATE


def raise_all_lanes(exc):
    """`raise exc` in straight-line code: every lane of the call raises it; that is only some
    examples of the batch when the call was made under a varying condition."""
    if isinstance(exc, type):
        exc = exc()
    frame = STATE.frame
    if frame is None:
        exc = _own_exception(exc, None, 0)
    else:
        exc = _own_exception(exc, frame, STATE.lanes if STATE.lanes is not None else frame.n)
    if not STATE.partial or frame is None:
        raise exc
    lanes = STATE.lanes if STATE.lanes is not None else np.arange(frame.n)
    which = frame.batch_indices(lanes)
    filename, lineno = user_frame(2)
    raise LaneError(f"{type(exc).__name__}{': ' + str(exc) if str(exc) else ''} (raised in "
                    f"examples {which} of the batch only)", which, filename, lineno) from exc


def _own_exception(exc, frame, lanes):
    """`exc` with the message of the first example that raises it, when it was built from
    per-example values (an f-string of a varying value): `lanes` are the raising group's lanes
    of `frame` (or their count)."""
    if not any(is_varying(a) for a in getattr(exc, "args", ())):
        return exc
    local = np.arange(lanes) if isinstance(lanes, int) else np.asarray(lanes)
    if frame is None or not len(local):
        return example_exception(exc, 0)
    first = min(range(len(local)), key=lambda p: frame.batch_indices(local[p:p + 1])[0])
    return example_exception(exc, first)


def raise_in_lanes(frame, exc, lanes, n):
    """Raise `exc` for the running group of `frame`: as a LaneError naming the examples (batch
    indices of the outermost @spmd call) when only some examples raise it."""
    if isinstance(exc, type):
        exc = exc()
    exc = _own_exception(exc, frame, np.arange(n) if lanes is None else lanes)
    if not frame.base_partial and (
            n == frame.n if frame.extension is None else
            len(np.unique(frame.extension.origin[np.arange(n) if lanes is None else lanes])) == frame.n):
        raise exc                         # every example raises it
    which = frame.batch_indices(np.arange(n) if lanes is None else lanes)
    filename, lineno = user_frame(2)
    raise LaneError(f"{type(exc).__name__}{': ' + str(exc) if str(exc) else ''} (raised in "
                    f"examples {which} of the batch only)", which, filename, lineno) from exc
