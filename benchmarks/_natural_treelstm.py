"""The binary Tree-LSTM of examples/treelstm, written the way a user would write it.

Parameters in a plain dict, the cell inline with its own `sigmoid`, the loss summed in the
recursion through a variable (``sub = 0.0`` at a leaf, ``sub = ll + lr`` otherwise); no
library cells, no `batch_polymorphic`, no markers. The classifier's loss of a node is a
helper function (as in the example model) so the two differ only in how they are written.
No dropout (the benchmark compares it with the example model with dropout 0).
"""
from __future__ import annotations

import numpy as np

from spmdbatch import spmd


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def node_loss(params, h, label):
    scores = h @ params["Wc"].T + params["bc"]
    m = np.max(scores)
    nll = m + np.log(np.sum(np.exp(scores - m))) - scores[np.maximum(label, 0)]
    return np.where(label >= 0, nll, 0.0)


def encode(params, tree, k):
    if tree.left[k] < 0:
        x = params["embed"][tree.word[k]]
        i, o, u = np.split(x @ params["W"].T + params["b_leaf"], 3)
        c = sigmoid(i) * np.tanh(u)
        h = sigmoid(o) * np.tanh(c)
        sub = 0.0
    else:
        hl, cl, ll = encode(params, tree, tree.left[k])
        hr, cr, lr = encode(params, tree, tree.right[k])
        z = np.concatenate([hl, hr]) @ params["U"].T + params["b"]
        i, fl, fr, o, u = np.split(z, 5)
        c = sigmoid(i) * np.tanh(u) + sigmoid(fl) * cl + sigmoid(fr) * cr
        h = sigmoid(o) * np.tanh(c)
        sub = ll + lr
    nll = node_loss(params, h, tree.label[k])
    return h, c, sub + nll


def tree_loss(params, tree):
    return encode(params, tree, len(tree.word) - 1)[2]


def minibatch_loss(params, trees, keys=None):
    """Summed loss of a minibatch, `tree_loss` batched with @spmd (`keys` unused)."""
    return spmd(tree_loss, in_axes=(None, 0))(params, trees).sum()


def params_of(model) -> dict:
    """The dict of parameters equal to an example `model.TreeLSTM`'s (arrays shared)."""
    return {"embed": model.embed.table, "W": model.cell.W, "b_leaf": model.cell.b_leaf,
            "U": model.cell.U, "b": model.cell.b, "Wc": model.classify.W,
            "bc": model.classify.b}
