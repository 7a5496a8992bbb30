"""The same message-passing network, hand-batched: a minibatch as one disjoint union.

This is how graph models are batched by hand (and how PyTorch Geometric batches): the
molecules' atoms are concatenated into one node array, bond ends are shifted by each
molecule's first atom, and the readout adds node rows into rows per molecule. It uses the
same `model.MPNN` parameters and the library's autodiff, so it computes the same loss and
gradients as the per-molecule model batched with @spmd.

Two ways to scatter-add rows are offered, since the scatter dominates the time:
``scatter="add.at"`` is the plain numpy idiom (``h[src]`` and ``index_update(...,
mode="add")``, i.e. ``numpy.add.at``); ``scatter="plan"`` uses the kernels @spmd uses
(`spmdbatch.runtime.segments`: rows sorted once per minibatch into rounds of distinct
targets), so the comparison isolates the cost of batching by hand or by @spmd.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

import spmdbatch as sb
from spmdbatch.runtime import segments

from .model import relu


class Union(NamedTuple):
    x: np.ndarray          # (atoms, F) of all molecules
    edge: np.ndarray       # (bond directions, B)
    src: np.ndarray        # shifted bond ends
    dst: np.ndarray
    graph: np.ndarray      # molecule of each atom
    counts: np.ndarray     # atoms per molecule, (molecules, 1)
    plans: tuple           # (src, dst, graph) RowPlans, for scatter="plan"


def union(mols) -> Union:
    """The disjoint union of a list of molecules."""
    sizes = np.array([len(m.x) for m in mols])
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    src = np.concatenate([m.src + o for m, o in zip(mols, offsets)])
    dst = np.concatenate([m.dst + o for m, o in zip(mols, offsets)])
    graph = np.repeat(np.arange(len(mols)), sizes)
    atoms = int(sizes.sum())
    plans = (segments.RowPlan(src, None, atoms), segments.RowPlan(dst, None, atoms),
             segments.RowPlan(graph, None, len(mols)))
    return Union(np.concatenate([m.x for m in mols]), np.concatenate([m.edge for m in mols]),
                 src, dst, graph, sizes[:, None].astype(mols[0].x.dtype), plans)


def predict(model, u: Union, scatter="add.at"):
    """Predictions of every molecule of the union (the same function as model.predict)."""
    atoms, hidden = len(u.x), model.b_in.shape[0]
    if scatter == "plan":
        gather = lambda h, i: segments.gather_rows(h, plan=u.plans[i])  # noqa: E731
        add = lambda z, i, v: segments.scatter_add_rows(z, v, plan=u.plans[i])  # noqa: E731
    else:
        index = (u.src, u.dst, u.graph)
        gather = lambda h, i: h[index[i]]  # noqa: E731
        add = lambda z, i, v: sb.index_update(z, index[i], v, mode="add")  # noqa: E731
    h = relu(u.x @ model.W_in + model.b_in)
    for _ in range(model.rounds):
        m = relu(gather(h, 0) @ model.W_msg + u.edge @ model.W_edge + model.b_msg)
        agg = add(np.zeros((atoms, hidden), dtype=h.dtype), 1, m)
        h = h + np.tanh(agg @ model.W_agg + h @ model.W_self + model.b_upd)
    total = add(np.zeros((len(u.counts), hidden), dtype=h.dtype), 2, h)
    g = np.concatenate([total, total / u.counts], axis=1)
    return (relu(g @ model.W_head + model.b_head) @ model.w_out + model.b_out)[:, 0]


def batch_loss(model, u: Union, targets, scatter="add.at"):
    d = predict(model, u, scatter) - targets
    return (d * d).mean()
