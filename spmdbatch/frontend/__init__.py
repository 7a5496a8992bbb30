"""Frontend of spmdbatch: bytecode -> three-address IR -> CFG analyses.

Entry point: :func:`lower_function` (decode + lower).  Analyses: :mod:`.cfg`
(dominators, post-dominators, control dependence, natural loops), :mod:`.liveness` and
:mod:`.uniformity`.  :func:`compile_plain` turns the IR back into an equivalent,
un-batched Python function (the round-trip oracle).
"""
from __future__ import annotations

from . import cfg, ir, liveness, uniformity
from .cfg import (EXIT, Loop, control_dependence, dominators, immediate_dominators,
                  immediate_post_dominators, natural_loops, post_dominators, predecessors,
                  reverse_postorder, successors)
from .decode import decode
from .emit_plain import PlainEmitter, compile_plain, emit_source
from .ir import FunctionIR, PyNames, format_ir
from .liveness import Liveness
from .liveness import analyze as analyze_liveness
from .lower import HANDLERS, lower_function
from .uniformity import UniformityInfo
from .uniformity import analyze as analyze_uniformity

__all__ = [
    "lower_function", "decode", "FunctionIR", "format_ir", "PyNames", "ir",
    "cfg", "successors", "predecessors", "reverse_postorder", "dominators",
    "immediate_dominators", "post_dominators", "immediate_post_dominators",
    "control_dependence", "natural_loops", "Loop", "EXIT",
    "liveness", "Liveness", "analyze_liveness",
    "uniformity", "UniformityInfo", "analyze_uniformity",
    "PlainEmitter", "compile_plain", "emit_source", "HANDLERS",
]
