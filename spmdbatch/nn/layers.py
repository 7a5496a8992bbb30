"""Feed-forward components: Linear/Dense, Embedding, Chain, Fn, Dropout, ResidualBlock.

Components compute on ONE example (``Linear(4, 3)(x)`` with x of shape (4,)); called
directly they also accept leading batch axes, and inside ``@spmd`` code they batch.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from . import activations as _act
from . import init as _init
from . import random as _random
from ..execution.calls import batch_polymorphic
from .module import Module, static


_PER_EXAMPLE_ACTIVATIONS = frozenset(_act.ACTIVATIONS.values())
"""Activations that act on each example alone (elementwise, or along the last axis)."""


class Linear(Module):
    """``activation(x @ W.T + b)``: W has shape (out_features, in_features).

    ``Linear(in_features, out_features, activation=None, *, bias=True, rng=None,
    init='glorot_uniform', bias_init='zeros', dtype=DEFAULT_FLOAT)``; `activation` is a
    name (``'relu'``), any function of one array, or None.
    """

    W: Any
    b: Any = None
    activation: Callable | None = static(None)

    def __init__(self, in_features: int, out_features: int, activation=None, *, bias: bool = True,
                 rng=None, init="glorot_uniform", bias_init="zeros", dtype=None):
        rng = _init.as_rng(rng)
        self.W = _init.get(init)(rng, (out_features, in_features), dtype)
        self.b = _init.get(bias_init)(rng, (out_features,), dtype) if bias else None
        self.activation = _act.get(activation)

    @property
    def in_features(self) -> int:
        return self.W.shape[1]

    @property
    def out_features(self) -> int:
        return self.W.shape[0]

    @batch_polymorphic(when=lambda self, x: self.activation is None
                       or self.activation in _PER_EXAMPLE_ACTIVATIONS)
    def __call__(self, x):
        y = x @ self.W.T
        if self.b is not None:
            y = y + self.b
        if self.activation is not None:
            y = self.activation(y)
        return y


Dense = Linear
"""Another name for `Linear` (a linear layer with an optional activation)."""


class Embedding(Module):
    """A lookup table: ``Embedding(num, dim)(ids) == table[ids]`` (ids: an int or int array)."""

    table: Any

    def __init__(self, num_embeddings: int, dim: int, *, rng=None, init="normal", dtype=None):
        init = _init.get(init)
        if init is _init.normal:
            self.table = _init.normal(rng, (num_embeddings, dim), dtype, std=1.0 / np.sqrt(dim))
        else:
            self.table = init(_init.as_rng(rng), (num_embeddings, dim), dtype)

    @property
    def num_embeddings(self) -> int:
        return self.table.shape[0]

    @property
    def dim(self) -> int:
        return self.table.shape[1]

    @batch_polymorphic
    def __call__(self, ids):
        return self.table[ids]


class Fn(Module):
    """A plain function (or lambda, or any callable) as a component without parameters."""

    fn: Callable = static(None)

    def __init__(self, fn: Callable):
        if not callable(fn):
            raise TypeError(f"Fn needs a callable, got {type(fn).__name__}")
        self.fn = fn

    def __call__(self, x):
        return self.fn(x)

    def _repr_inline(self):
        from .module import _describe_static
        return f"Fn({_describe_static(self.fn)})"


class Dropout(Module):
    """Zero each entry with probability `rate` and scale the rest by 1 / (1 - rate).

    ``drop(x, key)``: the mask is a function of the per-example `key` (see
    `spmdbatch.nn.random`), so examples of a batch get different masks and a run is
    reproducible from its keys. In evaluation mode (``module.eval()``) it is the identity
    and needs no key.
    """

    rate: float = static(0.5)
    training: bool = static(True)
    takes_key = True

    def __init__(self, rate: float = 0.5, training: bool = True):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"Dropout rate must be in [0, 1), got {rate}")
        self.rate = float(rate)
        self.training = bool(training)

    def __call__(self, x, key=None):
        if not self.training or self.rate == 0.0:
            return x
        if key is None:
            raise ValueError("Dropout in training mode needs a per-example key: call it as "
                             "drop(x, key) (an int per example, see spmdbatch.nn.random), or "
                             "use model.eval() to turn dropout off")
        keep = _random.keep_mask(key, np.shape(x), self.rate)
        # one multiply by a raw (untraced) mask: kept entries scaled, the others zero
        return x * (keep * (1.0 / (1.0 - self.rate))).astype(x.dtype)


class Chain(Module):
    """Sequential composition: ``Chain(f, g, h)(x) == h(g(f(x)))``.

    Entries are components or plain callables (functions, lambdas, numpy ufuncs), which are
    wrapped in `Fn`. ``chain(x, key)`` hands each component that takes a key (Dropout,
    nested Chains) its own key ``fold_in(key, position)``.
    """

    layers: tuple = ()
    takes_key = True

    def __init__(self, *layers):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        wrapped = []
        for i, layer in enumerate(layers):
            if isinstance(layer, Module):
                wrapped.append(layer)
            elif callable(layer):
                wrapped.append(Fn(layer))
            else:
                raise TypeError(f"Chain entry {i} is not callable: {type(layer).__name__}")
        self.layers = tuple(wrapped)

    def __call__(self, x, key=None):
        for i, layer in enumerate(self.layers):
            if layer.takes_key and key is not None:
                x = layer(x, key=_random.fold_in(key, i))
            else:
                x = layer(x)
        return x

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)


class ResidualBlock(Module):
    """``activation(x + f(x))`` where f is a stack of Linear layers (size -> size) with
    `activation` between them: a component holding a tuple of sub-components and looping
    over them, like the residual blocks of a ResNet.
    """

    layers: tuple = ()
    activation: Callable | None = static(None)

    def __init__(self, size: int, depth: int = 2, activation="relu", *, rng=None, init="he_normal",
                 dtype=None):
        if depth < 1:
            raise ValueError(f"ResidualBlock depth must be at least 1, got {depth}")
        rng = _init.as_rng(rng)
        self.layers = tuple(Linear(size, size, rng=rng, init=init, dtype=dtype) for _ in range(depth))
        self.activation = _act.get(activation)

    def __call__(self, x):
        h = x
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < last and self.activation is not None:
                h = self.activation(h)
        h = x + h
        if self.activation is not None:
            h = self.activation(h)
        return h
