"""spmdbatch.nn: components, losses and optimisers for per-example models.

Components (`Module` subclasses) couple parameters with the functions that use them and
compute on ONE example; they batch inside ``@spmd`` code and differentiate under ``grad``
(the gradient of a Module is a Module of the same structure):

    model = nn.Chain(nn.Linear(4, 16, "relu", rng=0), nn.Dropout(0.1), nn.Linear(16, 3, rng=1))
    def loss(model, x, y, key):
        return nn.softmax_cross_entropy(model(x, key), y)
    batch_loss = lambda m, xs, ys, keys: spmdbatch.spmd(loss, in_axes=(None, 0, 0, 0))(m, xs, ys, keys).mean()
    opt = nn.Adam(1e-2); state = opt.init(model)
    grads = spmdbatch.grad(batch_loss)(model, xs, ys, keys)
    model, state = opt.update(model, grads, state)

Submodules: `module` (Module base), `checkpoint` (`save_tree`/`load_tree`: a whole training
state in one atomically written file), `layers`, `recurrent`, `activations`, `init`,
`random` (per-example keys), `losses`, `ctc`, `optim`.
"""
from . import activations, init, random
from .activations import gelu, leaky, leakyrelu, log_softmax, relu, sigmoid, softmax, softplus, tanh
from .checkpoint import load_tree, save_tree
from .ctc import ctc_loss
from .layers import Chain, Dense, Dropout, Embedding, Fn, Linear, ResidualBlock
from .losses import binary_cross_entropy_with_logits, mse, nll, softmax_cross_entropy
from .module import Module, map_modules, named_leaves, static
from .optim import (SGD, Adagrad, Adam, AdamW, Optimizer, OptState, RMSProp, add_grads,
                    clip_by_global_norm, global_norm)
from .recurrent import BinaryTreeLSTMCell, ChildSumTreeLSTMCell, GRUCell, LSTMCell

__all__ = [
    "Module", "static", "named_leaves", "map_modules",
    "Linear", "Dense", "Embedding", "Chain", "Fn", "Dropout", "ResidualBlock",
    "LSTMCell", "GRUCell", "BinaryTreeLSTMCell", "ChildSumTreeLSTMCell",
    "relu", "leakyrelu", "leaky", "sigmoid", "tanh", "softplus", "gelu", "softmax", "log_softmax",
    "softmax_cross_entropy", "nll", "mse", "binary_cross_entropy_with_logits", "ctc_loss",
    "Optimizer", "OptState", "SGD", "Adagrad", "RMSProp", "Adam", "AdamW",
    "global_norm", "clip_by_global_norm", "add_grads",
    "activations", "init", "random",
    "save_tree", "load_tree",
]
