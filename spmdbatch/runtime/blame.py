"""Blame for an error: the user's line (the innermost frame outside spmdbatch and numpy) and
the examples whose lanes raised it.

Every layer's errors name these, so this module sits below them all: it imports nothing of
the package but the error types and the array backend.
"""
from __future__ import annotations

import os
import sys

from ..errors import LaneError
from .backend import namespace

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_NUMPY_DIR = os.path.dirname(os.path.abspath(namespace().__file__)) + os.sep


def user_frame(depth: int = 2):
    """(filename, lineno) of the innermost calling frame outside spmdbatch and numpy.

    Generated batch programs are compiled with the user's file name and line numbers, so
    their frames count as user code.
    """
    frame = sys._getframe(depth)
    while frame is not None:
        name = frame.f_code.co_filename
        if not (name.startswith(_PACKAGE_DIR) or name.startswith(_NUMPY_DIR)):
            return name, frame.f_lineno
        frame = frame.f_back
    return None, None


def _local_lanes(lanes):
    return sorted({int(i) for i in lanes})


_EXAMPLES_OF_LANES = [_local_lanes]


def set_lane_namer(fn) -> None:
    """Install ``fn(local_lanes) -> batch indices``: the examples that the running group's
    lanes (positions along the lane axis of the values being computed) belong to. The
    execution runtime installs it; without it, lanes are batch indices."""
    _EXAMPLES_OF_LANES[0] = fn


def lane_error(exc: BaseException, lanes, depth: int = 3) -> LaneError:
    """A `LaneError` for `exc` raised by the examples of the running group's `lanes` (local
    positions), naming those examples (batch indices) and the user's line."""
    which = _EXAMPLES_OF_LANES[0](lanes)
    filename, lineno = user_frame(depth)
    text = str(exc)
    return LaneError(f"{type(exc).__name__}{': ' + text if text else ''} (raised in examples "
                     f"{which} of the batch)", which, filename, lineno)
