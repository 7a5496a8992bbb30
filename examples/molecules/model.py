"""A message-passing network written for ONE molecule, batched with @spmd.

Per molecule (a `data.Mol`: atom features x, bond-direction features edge, ends src/dst):

    h = relu(x W_in + b_in)                                     atoms embedded
    repeat `rounds` times (weights shared between rounds):
        m   = relu(h[src] W_msg + edge W_edge + b_msg)          one message per bond direction,
                                                                 conditioned on the bond
        agg = zeros like h, with m added at dst                 (index_update, mode="add")
        h   = h + tanh(agg W_agg + h W_self + b_upd)            residual node update
              (update="gru": a GRU cell, gates z and r from agg and h, candidate
               tanh(agg W_agg + (r*h) W_self + b_upd), h = z*h + (1-z)*candidate)
    g = [sum of h over atoms, mean of h over atoms]             readout
              (readout="sum-mean-max": and the maximum over atoms)
    y = relu(g W_head + b_head) w_out + b_out                   MLP head -> one number

A molecule of one atom has no bonds: its messages are empty and only the update's
self term acts. `spmd(predict, in_axes=(None, 0))(model, mols)` runs a minibatch of
molecules of different sizes as one batch program (runtime/segments.py does the gathers
and scatters over all molecules at once).
"""
from __future__ import annotations

import numpy as np

import spmdbatch as sb
from spmdbatch import nn
from spmdbatch.nn.module import static


class MPNN(nn.Module):
    W_in: np.ndarray
    b_in: np.ndarray
    W_msg: np.ndarray
    W_edge: np.ndarray
    b_msg: np.ndarray
    W_agg: np.ndarray
    W_self: np.ndarray
    b_upd: np.ndarray
    W_head: np.ndarray
    b_head: np.ndarray
    w_out: np.ndarray
    b_out: np.ndarray
    gru: dict | None = None
    rounds: int = static(3)
    readout: str = static("sum-mean")

    def __init__(self, atom_features: int, bond_features: int, hidden: int = 64, head: int = 64,
                 rounds: int = 3, rng=0, dtype=np.float32, update: str = "residual",
                 readout: str = "sum-mean"):
        if update not in ("residual", "gru"):
            raise ValueError(f"update must be 'residual' or 'gru', got {update!r}")
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {', '.join(READOUTS)}, got {readout!r}")
        rng = nn.init.as_rng(rng)
        g = nn.init.glorot_uniform
        self.W_in, self.b_in = g(rng, (atom_features, hidden), dtype), np.zeros(hidden, dtype)
        self.W_msg, self.W_edge = g(rng, (hidden, hidden), dtype), g(rng, (bond_features, hidden), dtype)
        self.b_msg = np.zeros(hidden, dtype)
        self.W_agg, self.W_self = g(rng, (hidden, hidden), dtype), g(rng, (hidden, hidden), dtype)
        self.b_upd = np.zeros(hidden, dtype)
        self.W_head = g(rng, (READOUTS[readout] * hidden, head), dtype)
        self.b_head = np.zeros(head, dtype)
        self.w_out, self.b_out = g(rng, (head, 1), dtype), np.zeros(1, dtype)
        self.rounds, self.readout = rounds, readout
        # GRU gates (update z, reset r) over [agg, h]; W_agg, W_self, b_upd are its candidate
        self.gru = None if update == "residual" else {
            "W_z": g(rng, (hidden, hidden), dtype), "U_z": g(rng, (hidden, hidden), dtype),
            "b_z": np.zeros(hidden, dtype),
            "W_r": g(rng, (hidden, hidden), dtype), "U_r": g(rng, (hidden, hidden), dtype),
            "b_r": np.zeros(hidden, dtype)}


READOUTS = {"sum-mean": 2, "sum-mean-max": 3}     # readout -> its width in hidden sizes


def relu(x):
    return np.maximum(x, 0)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def update(model, h, agg):
    """The new atom states from the old ones and their incoming messages."""
    if model.gru is None:
        return h + np.tanh(agg @ model.W_agg + h @ model.W_self + model.b_upd)
    p = model.gru
    z = sigmoid(agg @ p["W_z"] + h @ p["U_z"] + p["b_z"])
    r = sigmoid(agg @ p["W_r"] + h @ p["U_r"] + p["b_r"])
    n = np.tanh(agg @ model.W_agg + (r * h) @ model.W_self + model.b_upd)
    return z * h + (1 - z) * n


def predict(model, mol):
    """The predicted (standardised) target of ONE molecule."""
    h = relu(mol.x @ model.W_in + model.b_in)
    for _ in range(model.rounds):
        m = relu(h[mol.src] @ model.W_msg + mol.edge @ model.W_edge + model.b_msg)
        agg = sb.index_update(np.zeros(h.shape, dtype=h.dtype), mol.dst, m, mode="add")
        h = update(model, h, agg)
    if model.readout == "sum-mean":
        g = np.concatenate([h.sum(axis=0), h.mean(axis=0)])
    else:
        g = np.concatenate([h.sum(axis=0), h.mean(axis=0), h.max(axis=0)])
    return (relu(g @ model.W_head + model.b_head) @ model.w_out + model.b_out)[0]


def batch_predict(model, mols):
    """Predictions of a list of molecules: `predict` batched with @spmd."""
    return sb.spmd(predict, in_axes=(None, 0))(model, mols)


def batch_loss(model, mols, targets):
    """Mean squared error of a minibatch (targets standardised)."""
    d = batch_predict(model, mols) - targets
    return (d * d).mean()


def per_example_loss(model, mols, targets):
    """The same loss, one molecule at a time (the unbatched reference)."""
    total = 0.0
    for mol, t in zip(mols, targets):
        d = predict(model, mol) - t
        total = total + d * d
    return total / len(mols)
