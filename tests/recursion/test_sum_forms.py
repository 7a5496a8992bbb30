"""Sums over a recursion in the forms users write them (frontend/reduction.py's dataflow
analysis): the natural Tree-LSTM of benchmarks/natural_code.py, and a reproducer per form.
Each is taken for a sum (its classifier deferred into one batched call) and equals the
per-example loop, values and gradients; forms that are no sum are left as written."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import spmdbatch as sb
from spmdbatch.frontend.transform import program_of
from trees import random_tree

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "spmd"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from oracle import check_batched, check_batched_grad  # noqa: E402

import _natural_treelstm as natural  # noqa: E402
from examples.treelstm import model as M  # noqa: E402

H, V = 4, 20


def forest(seed, sizes):
    rng = np.random.default_rng(seed)
    return [random_tree(rng, n, vocab=V, classes=3) for n in sizes]


def example_model():
    return M.TreeLSTM(V, 3, embedding=5, hidden=H, dropout=0.0, rng=0, dtype=np.float64)


# --- the natural Tree-LSTM ------------------------------------------------------------------

def test_natural_treelstm_sum_is_recognised():
    assert program_of(natural.encode).sum_positions == (2,)


def test_natural_treelstm_equals_the_loop_and_the_example_model():
    model, trees = example_model(), forest(0, [1, 5, 9, 3, 12])
    params = natural.params_of(model)
    got = check_batched(natural.tree_loss, params, trees, in_axes=(None, 0))
    example = sb.spmd(M.tree_loss, in_axes=(None, 0, 0))(model, trees, np.arange(len(trees)))
    np.testing.assert_allclose(got, example, rtol=1e-10)


def test_natural_treelstm_gradients_equal_the_loop():
    check_batched_grad(natural.tree_loss, natural.params_of(example_model()),
                       forest(1, [4, 1, 7, 2]), in_axes=(0,))


def test_natural_treelstm_defers_its_classifier_as_the_example_does():
    model, trees = example_model(), forest(2, [6, 2, 10, 1])
    nodes = sum(len(t.word) for t in trees)
    with sb.stats() as s:
        natural.minibatch_loss(natural.params_of(model), trees)
    with sb.stats() as e:
        M.minibatch_loss(model, trees, np.arange(len(trees)))
    assert s.lanes["node_loss"] == [nodes]           # one batched call over every node
    assert e.lanes["node_loss"] == s.lanes["node_loss"]
    assert s.calls_by_function["encode"] == e.calls_by_function["encode"]


# --- one reproducer per accumulation form ------------------------------------------------------

def term(p, h, label):
    return -sb.log_softmax(p["S"] @ h)[label]


def params(seed=0):
    rng = np.random.default_rng(seed)
    return {"E": rng.standard_normal((V, H)), "U": rng.standard_normal((H, 2 * H)) * 0.5,
            "S": rng.standard_normal((3, H)) * 0.5}


def leaf_variable(p, tree, k):                 # sub = 0.0 / sub = ll + lr, then sub + term
    if tree.left[k] < 0:
        h = np.tanh(p["E"][tree.word[k]])
        sub = 0.0
    else:
        hl, ll = leaf_variable(p, tree, tree.left[k])
        hr, lr = leaf_variable(p, tree, tree.right[k])
        h = np.tanh(p["U"] @ np.concatenate([hl, hr]))
        sub = ll + lr
    nll = term(p, h, tree.label[k])
    return h, sub + nll


def augmented(p, tree, k):                     # +=, terms first
    if tree.left[k] < 0:
        h = np.tanh(p["E"][tree.word[k]])
        return h, term(p, h, tree.label[k])
    hl, ll = augmented(p, tree, tree.left[k])
    hr, lr = augmented(p, tree, tree.right[k])
    h = np.tanh(p["U"] @ np.concatenate([hl, hr]))
    total = ll
    total += term(p, h, tree.label[k])
    total += 0.5 * h.sum()
    total += lr
    return h, total


def temporaries(p, tree, k):                   # temporaries, terms in any order
    if tree.left[k] < 0:
        h = np.tanh(p["E"][tree.word[k]])
        own = term(p, h, tree.label[k])
        return h, own
    hl, ll = temporaries(p, tree, tree.left[k])
    hr, lr = temporaries(p, tree, tree.right[k])
    h = np.tanh(p["U"] @ np.concatenate([hl, hr]))
    children = lr + ll
    own = term(p, h, tree.label[k]) + 1.0
    total = own + children
    return h, total


def in_a_loop(p, tree, k):                     # terms added in a loop after the join
    if tree.left[k] < 0:
        h = np.tanh(p["E"][tree.word[k]])
        s = 0.0
    else:
        hl, ll = in_a_loop(p, tree, tree.left[k])
        hr, lr = in_a_loop(p, tree, tree.right[k])
        h = np.tanh(p["U"] @ np.concatenate([hl, hr]))
        s = ll + lr
    for j in range(2):
        s = s + h[j]
    return h, s


FORMS = [leaf_variable, augmented, temporaries, in_a_loop]


def _root(fn):
    def loss(p, tree):
        return fn(p, tree, len(tree.word) - 1)[1]
    return loss


@pytest.mark.parametrize("fn", FORMS, ids=lambda f: f.__name__)
def test_accumulation_forms_are_sums_equal_to_the_loop(fn):
    assert program_of(fn).sum_positions == (1,)
    trees = forest(3, [1, 6, 11, 3])
    with sb.stats() as s:
        check_batched(_root(fn), params(), trees, in_axes=(None, 0))
    if "term" in s.lanes and fn is not in_a_loop:
        assert len(s.lanes["term"]) == 1                 # deferred: one batched call
    check_batched_grad(_root(fn), params(), trees, in_axes=(0,))


# --- forms that are no sum: left as written, still equal to the loop ---------------------------

def doubled(p, tree, k):                       # a part added twice
    if tree.left[k] < 0:
        h = np.tanh(p["E"][tree.word[k]])
        sub = 0.0
    else:
        hl, ll = doubled(p, tree, tree.left[k])
        hr, lr = doubled(p, tree, tree.right[k])
        h = np.tanh(p["U"] @ np.concatenate([hl, hr]))
        sub = ll + lr
        sub = sub + ll
    return h, sub + term(p, h, tree.label[k])


def read_after_adding(p, tree, k):             # a part read again after it was added
    if tree.left[k] < 0:
        h = np.tanh(p["E"][tree.word[k]])
        return h, 1.0
    hl, ll = read_after_adding(p, tree, tree.left[k])
    hr, lr = read_after_adding(p, tree, tree.right[k])
    s = ll + lr
    h = np.tanh(p["U"] @ np.concatenate([hl, hr])) * np.tanh(ll)
    return h, s


def shared_accumulator(p, tree, k):            # `+=` onto an array another name refers to
    if tree.left[k] < 0:
        h = np.tanh(p["E"][tree.word[k]])
        acc = h
    else:
        hl, al = shared_accumulator(p, tree, tree.left[k])
        hr, ar = shared_accumulator(p, tree, tree.right[k])
        h = np.tanh(p["U"] @ np.concatenate([hl, hr]))
        acc = al + ar
    acc += 1.0                                  # per example this changes the leaf's h too
    return h * 2.0, acc


@pytest.mark.parametrize("fn", [doubled, read_after_adding], ids=lambda f: f.__name__)
def test_forms_that_are_no_sum_run_as_written(fn):
    assert program_of(fn).sum_positions == ()
    check_batched(lambda p, t: fn(p, t, len(t.word) - 1), params(), forest(4, [1, 5, 8]),
                  in_axes=(None, 0))


def test_an_in_place_add_onto_a_shared_value_is_no_sum():
    # (taking it for one would drop the change `+=` makes to the leaf's `h`; the values are
    # not compared here: `+=` onto an array another variable refers to differs from the
    # loop under @spmd with or without sums, a separate limitation)
    assert program_of(shared_accumulator).sum_positions == ()
