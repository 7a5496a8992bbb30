"""Losses (values, stability for large scores, gradients, @spmd) and CTC against brute force."""
from __future__ import annotations

import itertools
import sys
import warnings

import numpy as np
import pytest

import spmdbatch as sb
from spmdbatch import nn

sys.path.insert(0, __file__.rsplit("/", 2)[0] + "/spmd")
from oracle import check_batched, check_batched_grad  # noqa: E402

rng = np.random.default_rng(2)
S = rng.standard_normal((6, 4)) * 3
Y = np.array([0, 3, 1, 2, 3, 0])
T = rng.standard_normal((6, 4))


def ref_xent(s, y):
    s = s - s.max()
    return np.log(np.exp(s).sum()) - s[y]


def test_softmax_cross_entropy_and_nll():
    for s, y in zip(S, Y):
        np.testing.assert_allclose(nn.softmax_cross_entropy(s, y), ref_xent(s, y))
        np.testing.assert_allclose(nn.nll(nn.log_softmax(s), y), ref_xent(s, y))
    np.testing.assert_allclose(nn.softmax_cross_entropy(S, Y), [ref_xent(s, y) for s, y in zip(S, Y)])
    check_batched(nn.softmax_cross_entropy, S, Y)
    check_batched(lambda s, y: nn.nll(nn.log_softmax(s), y), S, Y)
    check_batched_grad(lambda w, s, y: nn.softmax_cross_entropy(s * w, y), np.ones(4), S, Y)
    sb.check_gradients(lambda s: nn.softmax_cross_entropy(s, 2), S[0])
    sb.check_gradients(lambda s: nn.nll(s, 1), S[1])
    g = sb.grad(lambda s: nn.softmax_cross_entropy(s, 1))(S[0])
    np.testing.assert_allclose(g, np.exp(S[0]) / np.exp(S[0]).sum() - np.eye(4)[1])


def test_losses_are_stable_for_large_scores():
    big = np.array([1e4, -1e4, 5e3, 0.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert nn.softmax_cross_entropy(big, 0) == 0.0
        np.testing.assert_allclose(nn.softmax_cross_entropy(big, 2), 5e3)
        np.testing.assert_allclose(nn.softmax_cross_entropy(big.astype(np.float32), 3), 1e4)
        g = sb.grad(lambda s: nn.softmax_cross_entropy(s, 2))(big)
        np.testing.assert_allclose(g, [1, 0, -1, 0])
        np.testing.assert_allclose(nn.binary_cross_entropy_with_logits(np.array([1e4, -1e4]),
                                                                       np.array([0.0, 1.0]), "none"), [1e4, 1e4])
        assert nn.binary_cross_entropy_with_logits(np.array(1e4), 1.0) == 0.0
        gb = sb.grad(lambda x: nn.binary_cross_entropy_with_logits(x, np.array([1.0, 0.0]), "sum"))(
            np.array([-800.0, 800.0]))
        np.testing.assert_allclose(gb, [-1.0, 1.0])


def test_mse_and_bce():
    p, t = S[0], T[0]
    np.testing.assert_allclose(nn.mse(p, t), ((p - t) ** 2).mean())
    np.testing.assert_allclose(nn.mse(p, t, reduction="sum"), ((p - t) ** 2).sum())
    np.testing.assert_allclose(nn.mse(p, t, reduction="none"), (p - t) ** 2)
    probs = 1 / (1 + np.exp(-S))
    targets = (T > 0).astype(float)
    ref = -(targets * np.log(probs) + (1 - targets) * np.log(1 - probs))
    np.testing.assert_allclose(nn.binary_cross_entropy_with_logits(S, targets, "none"), ref)
    np.testing.assert_allclose(nn.binary_cross_entropy_with_logits(S[1], targets[1]), ref[1].mean())
    check_batched(nn.mse, S, T)
    check_batched(nn.binary_cross_entropy_with_logits, S, targets)
    check_batched_grad(lambda w, s, t: nn.mse(s * w, t) + nn.binary_cross_entropy_with_logits(s * w, t > 0),
                       np.ones(4), S, T)
    sb.check_gradients(lambda s, t: nn.mse(s, t) + nn.binary_cross_entropy_with_logits(s, t * t), S[2], T[2])
    with pytest.raises(ValueError, match="reduction"):
        nn.mse(p, t, reduction="avg")


# --- CTC ------------------------------------------------------------------------------------
def collapse(path, blank=0):
    out, prev = [], None
    for c in path:
        if c != prev and c != blank:
            out.append(c)
        prev = c
    return out


def brute_force_ctc(lp, labels):
    """-log of the sum over every path of length T that collapses to `labels`."""
    T, C = lp.shape
    total = 0.0
    for path in itertools.product(range(C), repeat=T):
        if collapse(path) == list(labels):
            total += np.exp(sum(lp[t, c] for t, c in enumerate(path)))
    return -np.log(total) if total > 0 else np.inf


def log_softmax_rows(x):
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


C = 3
CASES = [(4, [1, 2]), (3, [1]), (5, [2, 2]), (2, []), (4, [1, 1, 2]), (1, [2]), (5, [1, 2, 1]), (3, [2, 2])]
LPS = [log_softmax_rows(np.random.default_rng(10 + i).standard_normal((t, C)) * 2) for i, (t, _) in enumerate(CASES)]
LABELS = [np.array(lab, dtype=np.int64) for _, lab in CASES]


def test_ctc_matches_brute_force():
    for lp, lab in zip(LPS, LABELS):
        np.testing.assert_allclose(nn.ctc_loss(lp, lab), brute_force_ctc(lp, lab), rtol=1e-12)
    lp4 = log_softmax_rows(np.random.default_rng(0).standard_normal((6, 4)))
    for lab in ([3, 1, 3], [2], [1, 1], [3, 2, 1]):
        np.testing.assert_allclose(nn.ctc_loss(lp4, np.array(lab)), brute_force_ctc(lp4, lab), rtol=1e-12)


def test_ctc_batched_over_varying_input_and_label_lengths():
    got = check_batched(nn.ctc_loss, LPS, LABELS)
    np.testing.assert_allclose(got, [brute_force_ctc(lp, lab) for lp, lab in zip(LPS, LABELS)], rtol=1e-12)


def test_ctc_gradients():
    for lp, lab in zip(LPS[:3], LABELS[:3]):
        sb.check_gradients(lambda x: nn.ctc_loss(x, lab), lp)
    # through a model: per-step scores from a linear map, batched over ragged inputs
    xs = [np.random.default_rng(i).standard_normal((t, 2)) for i, (t, _) in enumerate(CASES)]
    model = nn.Linear(2, C, rng=0, dtype=np.float64)

    def loss(m, x, lab):
        return nn.ctc_loss(nn.log_softmax(m(x)), lab)
    check_batched(loss, model, xs, LABELS, in_axes=(None, 0, 0))
    check_batched_grad(loss, model, xs, LABELS)
    sb.check_gradients(lambda m: sb.spmd(loss, in_axes=(None, 0, 0))(m, xs, LABELS).sum(), model)


def test_ctc_handles_minus_inf_and_impossible_targets():
    lp = LPS[0].copy()
    lp[1, 2] = -np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = nn.ctc_loss(lp, LABELS[0])
        np.testing.assert_allclose(value, brute_force_ctc(np.where(np.isinf(lp), -1e300, lp), LABELS[0]))
        g = sb.grad(lambda x: nn.ctc_loss(x, LABELS[0]))(lp)
        assert np.all(np.isfinite(g)) and g[1, 2] == 0.0
        short = LPS[5]                                   # T = 1
        assert nn.ctc_loss(short, np.array([1, 1])) == np.inf
        assert nn.ctc_loss(short, np.array([1, 1]), zero_infinity=True) == 0.0
        gi = sb.grad(lambda x: nn.ctc_loss(x, np.array([1, 1]), zero_infinity=True))(short)
        np.testing.assert_array_equal(gi, 0.0)
    out = sb.spmd(nn.ctc_loss)([LPS[0], short], [LABELS[0], np.array([1, 1])])
    assert np.isfinite(out[0]) and out[1] == np.inf


def test_ctc_rejects_blank_labels():
    with pytest.raises(ValueError, match="blank"):
        nn.ctc_loss(LPS[0], np.array([1, 0]))
