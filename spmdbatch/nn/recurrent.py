"""Recurrent cells: LSTMCell, GRUCell, BinaryTreeLSTMCell, ChildSumTreeLSTMCell.

A cell computes one step for one example (vectors of shape (H,)); called directly it also
accepts leading batch axes. Input weights W have shape (gates * H, input_size), recurrent
weights U (gates * H, H), initialised with orthogonal blocks.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..execution.calls import batch_polymorphic
from ..primitives.elementwise import sigmoid
from . import init as _init
from .module import Module


def _weights(rng, gates, input_size, hidden_size, init, recurrent_init, dtype, gates_recurrent=None,
             recurrent_in=None):
    rng = _init.as_rng(rng)
    W = _init.get(init)(rng, (gates * hidden_size, input_size), dtype)
    U = _init.get(recurrent_init)(rng, ((gates_recurrent or gates) * hidden_size, recurrent_in or hidden_size),
                                  dtype)
    return rng, W, U


class LSTMCell(Module):
    """Long short-term memory: ``(h, c) = cell(x, (h, c))``.

    Gates in the order input, forget, cell candidate, output; the forget bias starts at
    `forget_bias` (1.0).
    """

    W: Any
    U: Any
    b: Any

    def __init__(self, input_size: int, hidden_size: int, *, rng=None, init="glorot_uniform",
                 recurrent_init="orthogonal_blocks", forget_bias: float = 1.0, dtype=None):
        rng, self.W, self.U = _weights(rng, 4, input_size, hidden_size, init, recurrent_init, dtype)
        b = np.zeros(4 * hidden_size, dtype=self.W.dtype)
        b[hidden_size:2 * hidden_size] = forget_bias
        self.b = b

    @property
    def hidden_size(self) -> int:
        return self.U.shape[1]

    def initial_state(self):
        """Zero (h, c) for one example."""
        z = np.zeros(self.hidden_size, dtype=self.W.dtype)
        return z, z

    @batch_polymorphic
    def __call__(self, x, state):
        h, c = state
        i, f, g, o = np.split(x @ self.W.T + h @ self.U.T + self.b, 4, axis=-1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        return h, c

    def run(self, xs, state=None):
        """The final (h, c) after reading the sequence `xs` (rows) from `state` (zeros)."""
        if state is None:
            state = self.initial_state()
        for x in xs:
            state = self(x, state)
        return state


class GRUCell(Module):
    """Gated recurrent unit: ``h = cell(x, h)``.

    r = σ(W_r x + U_r h + b_r), z = σ(W_z x + U_z h + b_z),
    n = tanh(W_n x + b_n + r * (U_n h + c_n)), h' = (1 - z) * n + z * h.
    """

    W: Any
    U: Any
    b: Any
    c: Any

    def __init__(self, input_size: int, hidden_size: int, *, rng=None, init="glorot_uniform",
                 recurrent_init="orthogonal_blocks", dtype=None):
        rng, self.W, self.U = _weights(rng, 3, input_size, hidden_size, init, recurrent_init, dtype)
        self.b = np.zeros(3 * hidden_size, dtype=self.W.dtype)
        self.c = np.zeros(hidden_size, dtype=self.W.dtype)

    @property
    def hidden_size(self) -> int:
        return self.U.shape[1]

    def initial_state(self):
        """Zero h for one example."""
        return np.zeros(self.hidden_size, dtype=self.W.dtype)

    @batch_polymorphic
    def __call__(self, x, h):
        xr, xz, xn = np.split(x @ self.W.T + self.b, 3, axis=-1)
        hr, hz, hn = np.split(h @ self.U.T, 3, axis=-1)
        r = sigmoid(xr + hr)
        z = sigmoid(xz + hz)
        n = np.tanh(xn + r * (hn + self.c))
        return (1 - z) * n + z * h

    def run(self, xs, h=None):
        """The final h after reading the sequence `xs` (rows) from `h` (zeros)."""
        if h is None:
            h = self.initial_state()
        for x in xs:
            h = self(x, h)
        return h


class BinaryTreeLSTMCell(Module):
    """The N-ary Tree-LSTM of Tai et al. (2015) with N = 2.

    ``cell(x)`` (or ``cell.leaf(x)``): (h, c) of a leaf from its input vector x.
    ``cell(left, right)`` (or ``cell.node(left, right)``): (h, c) of an inner node from its
    children's (h, c) pairs, with a separate forget gate per child:
    [i, f_l, f_r, o, u] = U [h_l; h_r] + b, c = σ(i) u' + σ(f_l) c_l + σ(f_r) c_r,
    h = σ(o) tanh(c), with u' = tanh(u).
    """

    W: Any
    b_leaf: Any
    U: Any
    b: Any

    def __init__(self, input_size: int, hidden_size: int, *, rng=None, init="glorot_uniform",
                 recurrent_init="glorot_uniform", forget_bias: float = 1.0, dtype=None):
        rng, self.W, self.U = _weights(rng, 3, input_size, hidden_size, init, recurrent_init, dtype,
                                       gates_recurrent=5, recurrent_in=2 * hidden_size)
        self.b_leaf = np.zeros(3 * hidden_size, dtype=self.W.dtype)
        b = np.zeros(5 * hidden_size, dtype=self.W.dtype)
        b[hidden_size:3 * hidden_size] = forget_bias
        self.b = b

    @property
    def hidden_size(self) -> int:
        return self.U.shape[1] // 2

    @batch_polymorphic
    def leaf(self, x):
        i, o, u = np.split(x @ self.W.T + self.b_leaf, 3, axis=-1)
        c = sigmoid(i) * np.tanh(u)
        return sigmoid(o) * np.tanh(c), c

    @batch_polymorphic
    def node(self, left, right):
        hl, cl = left
        hr, cr = right
        z = np.concatenate([hl, hr], axis=-1) @ self.U.T + self.b
        i, fl, fr, o, u = np.split(z, 5, axis=-1)
        c = sigmoid(i) * np.tanh(u) + sigmoid(fl) * cl + sigmoid(fr) * cr
        return sigmoid(o) * np.tanh(c), c

    @batch_polymorphic
    def __call__(self, *args):
        if len(args) == 1:
            return self.leaf(args[0])
        if len(args) == 2:
            return self.node(args[0], args[1])
        raise TypeError(f"BinaryTreeLSTMCell takes x (a leaf) or left, right (an inner node), "
                        f"got {len(args)} arguments")


class ChildSumTreeLSTMCell(Module):
    """The Child-Sum Tree-LSTM of Tai et al. (2015), for any number of children.

    ``(h, c) = cell(x, child_h, child_c)`` with child_h, child_c of shape (K, H) (K >= 0
    children; None or K = 0 for a leaf). With h~ = Σ_k h_k:
    i, o, u = σ/σ/tanh(W x + U h~ + b), f_k = σ(W_f x + U_f h_k + b_f),
    c = i u + Σ_k f_k c_k, h = o tanh(c).
    """

    W: Any
    U: Any
    U_f: Any
    b: Any

    def __init__(self, input_size: int, hidden_size: int, *, rng=None, init="glorot_uniform",
                 recurrent_init="orthogonal_blocks", forget_bias: float = 1.0, dtype=None):
        rng, self.W, self.U = _weights(rng, 4, input_size, hidden_size, init, recurrent_init, dtype)
        self.U_f = self.U[3 * hidden_size:].copy()
        self.U = self.U[:3 * hidden_size].copy()
        b = np.zeros(4 * hidden_size, dtype=self.W.dtype)
        b[3 * hidden_size:] = forget_bias
        self.b = b

    @property
    def hidden_size(self) -> int:
        return self.U.shape[1]

    @batch_polymorphic
    def __call__(self, x, child_h=None, child_c=None):
        wi, wo, wu, wf = np.split(x @ self.W.T + self.b, 4, axis=-1)
        if child_h is None:
            c = sigmoid(wi) * np.tanh(wu)
            return sigmoid(wo) * np.tanh(c), c
        ui, uo, uu = np.split(child_h.sum(axis=-2) @ self.U.T, 3, axis=-1)
        f = sigmoid(np.expand_dims(wf, -2) + child_h @ self.U_f.T)
        c = sigmoid(wi + ui) * np.tanh(wu + uu) + (f * child_c).sum(axis=-2)
        return sigmoid(wo + uo) * np.tanh(c), c
