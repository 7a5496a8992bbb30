"""The Tree-LSTM sentiment model, written for ONE tree (Tai et al. 2015, binary/constituency).

A tree arrives as post-order node arrays (`data.Tree`: word, left, right, label; the root is
the last node). The encoder is the natural recursive function; `spmd` runs it on a whole
minibatch of trees, one batched call per tree depth:

    loss = spmd(tree_loss, in_axes=(None, 0, 0))(model, trees, keys).sum()

Every node has a softmax classifier (with dropout before it in training); the loss sums
the cross-entropy over the labelled nodes (label -1 marks a node without a label, as
neutral nodes in the binary task).
"""
from __future__ import annotations

import numpy as np

from spmdbatch import nn, spmd

MAX_NODES = 4096
"""Node keys are ``tree_key * MAX_NODES + node``: every node draws its own dropout mask."""


class TreeLSTM(nn.Module):
    """Embedding -> binary Tree-LSTM cell -> dropout -> linear classifier on every node."""

    embed: nn.Embedding
    cell: nn.BinaryTreeLSTMCell
    drop: nn.Dropout
    classify: nn.Linear

    def __init__(self, vocab_size: int, num_classes: int, embedding: int = 300, hidden: int = 150,
                 dropout: float = 0.5, rng=0, dtype=np.float32):
        rng = nn.init.as_rng(rng)
        self.embed = nn.Embedding(vocab_size, embedding, rng=rng, init=nn.init.uniform, dtype=dtype)
        self.cell = nn.BinaryTreeLSTMCell(embedding, hidden, rng=rng, dtype=dtype)
        self.drop = nn.Dropout(dropout)
        self.classify = nn.Linear(hidden, num_classes, rng=rng, dtype=dtype)


def node_loss(model, h, label, key):
    """Cross-entropy of one node's prediction (0 for a node without a label, label -1)."""
    scores = model.classify(model.drop(h, key))
    return np.where(label >= 0, nn.softmax_cross_entropy(scores, np.maximum(label, 0)), 0.0)


def encode(model, tree, k, key):
    """(h, c, summed loss) of the subtree rooted at node k."""
    node_key = key * MAX_NODES + k
    if tree.left[k] < 0:
        h, c = model.cell(model.embed(tree.word[k]))
        return h, c, node_loss(model, h, tree.label[k], node_key)
    hl, cl, loss_l = encode(model, tree, tree.left[k], key)
    hr, cr, loss_r = encode(model, tree, tree.right[k], key)
    h, c = model.cell((hl, cl), (hr, cr))
    return h, c, loss_l + loss_r + node_loss(model, h, tree.label[k], node_key)


def tree_loss(model, tree, key):
    """Cross-entropy summed over the labelled nodes of one tree."""
    return encode(model, tree, len(tree.word) - 1, key)[2]


def node_result(model, h, label):
    """(loss, correct, labelled) of one node, dropout off (for evaluation)."""
    scores = model.classify(h)
    labelled = label >= 0
    loss = np.where(labelled, nn.softmax_cross_entropy(scores, np.maximum(label, 0)), 0.0)
    correct = labelled & (np.argmax(scores) == label)
    return loss, correct.astype(np.int64), labelled.astype(np.int64)


def evaluate_subtree(model, tree, k):
    """(h, c, loss, correct, labelled) summed over the subtree rooted at node k."""
    if tree.left[k] < 0:
        h, c = model.cell(model.embed(tree.word[k]))
        return (h, c) + node_result(model, h, tree.label[k])
    hl, cl, loss_l, correct_l, count_l = evaluate_subtree(model, tree, tree.left[k])
    hr, cr, loss_r, correct_r, count_r = evaluate_subtree(model, tree, tree.right[k])
    h, c = model.cell((hl, cl), (hr, cr))
    loss, correct, count = node_result(model, h, tree.label[k])
    return h, c, loss_l + loss_r + loss, correct_l + correct_r + correct, count_l + count_r + count


def tree_metrics(model, tree):
    """(loss, correct nodes, labelled nodes, root correct) of one tree."""
    root = len(tree.word) - 1
    h, c, loss, correct, count = evaluate_subtree(model, tree, root)
    _, root_correct, _ = node_result(model, h, tree.label[root])
    return loss, correct, count, root_correct


def minibatch_loss(model, trees, keys):
    """The summed loss of a minibatch: `tree_loss` batched over trees with @spmd."""
    return spmd(tree_loss, in_axes=(None, 0, 0))(model, trees, keys).sum()


def per_example_loss(model, trees, keys):
    """The same loss, one tree at a time (the unbatched reference)."""
    total = 0.0
    for tree, key in zip(trees, keys):
        total = total + tree_loss(model, tree, int(key))
    return total


def minibatch_metrics(model, trees):
    """Summed (loss, correct, labelled, root correct) over trees, batched with @spmd."""
    loss, correct, count, root = spmd(tree_metrics, in_axes=(None, 0))(model.eval(), trees)
    return float(loss.sum()), int(correct.sum()), int(count.sum()), int(root.sum())
