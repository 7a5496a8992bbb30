"""Reverse-mode autodiff: tracer, tape, grad / value_and_grad / vjp, check_gradients.

The VJP rules are declared with the primitives (spmdbatch/primitives/).
"""
from .api import grad, stop_gradient, value_and_grad, vjp
from .check import check_gradients
from .tracer import Tracer

__all__ = ["grad", "value_and_grad", "vjp", "stop_gradient", "check_gradients", "Tracer"]
