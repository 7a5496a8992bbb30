"""Losses for one example, numerically stable for large scores.

Each takes the model output and the target of ONE example (batch them with ``@spmd``, or
call them directly on arrays with leading batch axes: class axes are the last axis, and
``reduction='none'`` keeps per-element values).
"""
from __future__ import annotations

import numpy as np

from ..execution.calls import native
from ..primitives.reductions import logsumexp

_REDUCTIONS = ("mean", "sum", "none")


@native
def _pick(v, label):
    """v[..., label] for an integer label (or an array of labels, one per row of v)."""
    if np.ndim(v) == 1 and np.ndim(label) == 0:
        return v[label]                                   # one gather
    if np.ndim(v) == 2 and np.ndim(label) == 1:
        return v[np.arange(v.shape[0]), label]
    onehot = np.arange(v.shape[-1]) == np.expand_dims(label, -1)
    return np.where(onehot, v, 0.0 * v).sum(axis=-1)


@native
def _reduce(values, reduction):
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be one of {_REDUCTIONS}, not {reduction!r}")


@native
def softmax_cross_entropy(scores, label):
    """-log softmax(scores)[label]: categorical cross-entropy on unnormalised scores."""
    return logsumexp(scores, axis=-1) - _pick(scores, label)


@native
def nll(log_probs, label):
    """Negative log-likelihood -log_probs[label] (log_probs from log_softmax)."""
    return -_pick(log_probs, label)


@native
def mse(prediction, target, reduction="mean"):
    """Mean (or summed) squared error."""
    d = prediction - target
    return _reduce(d * d, reduction)


@native
def binary_cross_entropy_with_logits(logits, target, reduction="mean"):
    """-[t log σ(x) + (1 - t) log(1 - σ(x))] computed as softplus(x) - t x."""
    return _reduce(np.logaddexp(0.0, logits) - target * logits, reduction)
