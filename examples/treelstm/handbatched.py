"""The same Tree-LSTM, hand-batched: the nodes of a minibatch grouped by height.

This is how tree models are batched by hand: all leaves first (height 0), then every node
of height 1, 2, ... whose children are done, gathering children's states by index. It uses
the same `model.TreeLSTM` parameters, the library's arrays and autodiff, and the same
per-node dropout masks as the per-example model, so all implementations give the same loss.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

import spmdbatch as sb
from spmdbatch import nn

from .model import MAX_NODES


class HeightPlan(NamedTuple):
    """Index arrays of a minibatch's nodes in *state order* (by height, leaves first)."""
    leaf_words: np.ndarray      # word ids of the leaves
    levels: list                # per height >= 1: (left child positions, right child positions)
    labels: np.ndarray          # label of every node (-1: none)
    node_keys: np.ndarray       # dropout key of every node
    roots: np.ndarray           # positions of the roots


def plan_by_height(trees, keys) -> HeightPlan:
    heights, offsets, total = [], [], 0
    for t in trees:
        h = np.zeros(len(t.word), dtype=np.int64)
        for k in range(len(t.word)):
            if t.left[k] >= 0:
                h[k] = 1 + max(h[t.left[k]], h[t.right[k]])
        heights.append(h)
        offsets.append(total)
        total += len(t.word)
    height = np.concatenate(heights)
    left = np.concatenate([np.where(t.left >= 0, t.left + o, -1) for t, o in zip(trees, offsets)])
    right = np.concatenate([np.where(t.right >= 0, t.right + o, -1) for t, o in zip(trees, offsets)])
    words = np.concatenate([t.word for t in trees])
    labels = np.concatenate([t.label for t in trees])
    node_keys = np.concatenate([int(k) * MAX_NODES + np.arange(len(t.word)) for t, k in zip(trees, keys)])
    order = np.argsort(height, kind="stable")
    position = np.empty(total, dtype=np.int64)
    position[order] = np.arange(total)
    levels = []
    for h in range(1, int(height.max()) + 1 if total else 1):
        nodes = order[height[order] == h]
        levels.append((position[left[nodes]], position[right[nodes]]))
    leaves = order[height[order] == 0]
    roots = position[np.array([o + len(t.word) - 1 for t, o in zip(trees, offsets)], dtype=np.int64)]
    return HeightPlan(words[leaves], levels, labels[order], node_keys[order], roots)


def node_states(model, plan):
    """(h of every node in state order): leaves in one step, then one step per height."""
    cell = model.cell
    h, c = cell.leaf(model.embed.table[plan.leaf_words])
    hs, cs = [h], [c]
    for left, right in plan.levels:
        all_h = np.concatenate(hs) if len(hs) > 1 else hs[0]
        all_c = np.concatenate(cs) if len(cs) > 1 else cs[0]
        h, c = cell.node((all_h[left], all_c[left]), (all_h[right], all_c[right]))
        hs.append(h)
        cs.append(c)
    return np.concatenate(hs) if len(hs) > 1 else hs[0]


def node_scores(model, plan, states):
    drop = model.drop
    if drop.training and drop.rate > 0:
        keep = nn.random.uniform_many(plan.node_keys, states.shape[1:]) >= drop.rate
        states = states * (keep * (1.0 / (1.0 - drop.rate))).astype(states.dtype)
    return model.classify(states)


def minibatch_loss(model, trees, keys, plan: HeightPlan | None = None):
    """The summed loss over the labelled nodes of a minibatch."""
    plan = plan_by_height(trees, keys) if plan is None else plan
    scores = node_scores(model, plan, node_states(model, plan))
    labels = plan.labels
    picked = scores[np.arange(len(labels)), np.maximum(labels, 0)]
    losses = sb.logsumexp(scores, axis=1) - picked
    return np.where(labels >= 0, losses, 0.0).sum()


def minibatch_metrics(model, trees):
    """Summed (loss, correct, labelled, root correct) with dropout off."""
    model = model.eval()
    plan = plan_by_height(trees, np.zeros(len(trees), dtype=np.int64))
    scores = node_scores(model, plan, node_states(model, plan))
    labels = plan.labels
    labelled = labels >= 0
    losses = sb.logsumexp(scores, axis=1) - scores[np.arange(len(labels)), np.maximum(labels, 0)]
    predicted = np.argmax(scores, axis=1)
    correct = labelled & (predicted == labels)
    return (float(np.where(labelled, losses, 0.0).sum()), int(correct.sum()), int(labelled.sum()),
            int(correct[plan.roots].sum()))
