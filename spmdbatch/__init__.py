"""spmdbatch: batch per-example Python/numpy model code with data-dependent control flow.

Write the model for one example; `@spmd` rewrites it into a masked batch program, and
`grad` / `value_and_grad` differentiate it with spmdbatch's own reverse-mode autodiff.
"""
from .primitives import primitive  # (first: registers the primitives every layer uses)
from .ad import Tracer, check_gradients, grad, stop_gradient, value_and_grad, vjp
from .errors import (AxesError, BatchSizeError, DivergentSideEffect, GradientError, LaneError, SpmdError,
                     UnsupportedConstruct, VaryingValueError)
from .runtime import DEFAULT_FLOAT, get_backend, namespace, tree_map
from .runtime.array_methods import at, index_update
from .runtime.device import to_device
from .primitives.elementwise import sigmoid
from .primitives.reductions import log_softmax, logsumexp, softmax
from .runtime.segments import segment_softmax
from .execution.calls import batch_polymorphic, native
from .execution.stats import stats
from .spmd import show, spmd
from .custom_vjp import custom_vjp

__version__ = "0.1.0"

__all__ = [
    "spmd", "show", "stats", "native", "batch_polymorphic", "grad", "value_and_grad", "vjp", "check_gradients", "stop_gradient", "Tracer",
    "primitive", "custom_vjp",
    "sigmoid", "logsumexp", "softmax", "log_softmax", "index_update", "at", "segment_softmax",
    "SpmdError", "UnsupportedConstruct", "VaryingValueError", "BatchSizeError", "LaneError",
    "DivergentSideEffect", "GradientError", "AxesError",
    "DEFAULT_FLOAT", "get_backend", "namespace", "tree_map", "to_device",
]
