"""Reverse-mode autodiff: tracer, tape, VJP table, grad / value_and_grad / vjp, check_gradients."""
from . import vjps  # noqa: F401  (fills the VJP table)
from .api import grad, stop_gradient, value_and_grad, vjp
from .check import check_gradients
from .tracer import Tracer

__all__ = ["grad", "value_and_grad", "vjp", "stop_gradient", "check_gradients", "Tracer"]
