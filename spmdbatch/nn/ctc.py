"""Connectionist Temporal Classification (Graves et al., 2006) for one example.

`ctc_loss` is ordinary per-example code (loops over the time steps and over the extended
label sequence, whose lengths vary between examples), so ``@spmd`` batches it over examples
with different input and label lengths, given as Python lists of arrays:

    losses = spmd(ctc_loss)(log_probs_list, labels_list)
"""
from __future__ import annotations

import numpy as np

from ..runtime.array_methods import index_update

NEG = -1e30
"""Log-probability standing for log(0): finite, so no inf - inf = NaN in values or gradients."""


def ctc_loss(log_probs, labels, blank=0, zero_infinity=False):
    """-log p(labels | log_probs): the sum over all alignments of the per-step probabilities.

    `log_probs` (T, C): per-step log-probabilities (e.g. log_softmax of scores; -inf allowed).
    `labels` (L,): ints in [0, C), without `blank`. An impossible target (T too short for
    the labels and their repeats) gives inf, or 0 with `zero_infinity`; gradients are
    finite (zero where a log-probability is -inf).
    """
    if np.any(labels == blank):
        raise ValueError(f"ctc_loss: labels must not contain the blank index {blank}")
    T = log_probs.shape[0]
    S = 2 * len(labels) + 1
    lp = np.maximum(log_probs, NEG)
    # the extended label sequence: blank, l1, blank, l2, ..., blank
    ext = np.full(S, blank, dtype=np.int64)
    for s in range(1, S, 2):
        ext = index_update(ext, s, labels[(s - 1) // 2])
    alpha = np.full(S, NEG, dtype=lp.dtype)
    alpha = index_update(alpha, 0, lp[0, blank])
    if S > 1:
        alpha = index_update(alpha, 1, lp[0, ext[1]])
    for t in range(1, T):
        step = np.full(S, NEG, dtype=lp.dtype)
        for s in range(S):
            a = alpha[s]
            if s >= 1:
                a = np.logaddexp(a, alpha[s - 1])
            if s >= 2 and ext[s] != blank and ext[s] != ext[s - 2]:
                a = np.logaddexp(a, alpha[s - 2])
            step = index_update(step, s, a + lp[t, ext[s]])
        alpha = step
    if S > 1:
        log_likelihood = np.logaddexp(alpha[S - 1], alpha[S - 2])
    else:
        log_likelihood = alpha[0]
    impossible = log_likelihood < NEG / 2
    return np.where(impossible, 0.0 if zero_infinity else np.inf, -log_likelihood)
