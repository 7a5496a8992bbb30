"""Activation functions, written in plain numpy (they work on one example, on a batch, inside
``@spmd`` code and under ``grad``). Any function of one array works as an activation too:
``Linear(4, 3, activation=lambda x: x * spmdbatch.sigmoid(x))``.
"""
from __future__ import annotations

import functools

import numpy as np

from ..execution.calls import native
from ..primitives.reductions import log_softmax as _log_softmax
from ..primitives.elementwise import sigmoid as _sigmoid
from ..primitives.reductions import softmax as _softmax

_SQRT_2_OVER_PI = 0.7978845608028654


@native
def relu(x):
    """max(x, 0)."""
    return np.maximum(x, 0)


@native
def leakyrelu(x, a=0.01):
    """x where x > 0, else a * x (slope `a`; ``functools.partial(leakyrelu, a=0.2)`` changes it)."""
    return np.where(x > 0, x, a * x)


@native
def sigmoid(x):
    """1 / (1 + exp(-x)), computed without overflow."""
    return _sigmoid(x)


@native
def tanh(x):
    """Hyperbolic tangent."""
    return np.tanh(x)


@native
def softplus(x):
    """log(1 + exp(x)), stable for large |x|."""
    return np.logaddexp(0, x)


@native
def gelu(x):
    """Gaussian error linear unit (the tanh approximation of Hendrycks and Gimpel)."""
    return 0.5 * x * (1 + np.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))


@native
def softmax(x, axis=-1):
    """exp(x) / sum(exp(x)) along `axis` (the last by default)."""
    return _softmax(x, axis=axis)


@native
def log_softmax(x, axis=-1):
    """x - logsumexp(x) along `axis`."""
    return _log_softmax(x, axis=axis)


@native
def identity(x):
    """x unchanged."""
    return x


ACTIVATIONS = {"relu": relu, "leakyrelu": leakyrelu, "leaky_relu": leakyrelu, "sigmoid": sigmoid,
               "tanh": tanh, "softplus": softplus, "gelu": gelu, "softmax": softmax,
               "log_softmax": log_softmax, "identity": identity, "linear": identity}


def get(activation):
    """An activation from a name (``'relu'``), a callable, or None (no activation)."""
    if activation is None or callable(activation):
        return activation
    if isinstance(activation, str):
        try:
            return ACTIVATIONS[activation.lower()]
        except KeyError:
            raise ValueError(f"unknown activation {activation!r}; known: {sorted(ACTIVATIONS)}, "
                             f"or pass any function of one array") from None
    raise TypeError(f"an activation must be a name, a callable or None, not {type(activation).__name__}")


def leaky(a: float):
    """`leakyrelu` with slope `a`, as a one-argument activation (shows as ``leakyrelu(a=...)``)."""
    return functools.partial(leakyrelu, a=a)
