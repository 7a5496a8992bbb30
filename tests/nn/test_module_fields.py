"""Fields a Module's ``__init__`` sets without a class annotation are registered as fields
(as torch.nn registers sub-modules on assignment), so parameters, `grad` and `spmd` see them
(issue 15, section 7)."""
from __future__ import annotations

import sys

import numpy as np

import spmdbatch as sb
from spmdbatch import nn
from spmdbatch.runtime import pytree

sys.path.insert(0, __file__.rsplit("/", 2)[0] + "/spmd")
from oracle import check_batched, check_batched_grad  # noqa: E402

F64 = np.float64


class Unannotated(nn.Module):
    """Layers, a raw parameter array, a list of layers and hyper-parameters, none annotated."""

    def __init__(self, d=3, h=4, rng=0):
        self.scale = 0.5                  # a plain number: a hyper-parameter, as in torch
        self.name = "net"
        self.cell = nn.Linear(d, h, rng=rng, dtype=F64)
        self.extra = [nn.Linear(h, h, rng=rng + 1, dtype=F64)]
        self.bias = np.zeros(h)           # a raw array: a parameter
        self.unused = None

    def __call__(self, x):
        y = self.cell(x)
        if y.sum() > 0:
            y = np.tanh(self.extra[0](y))
        return (y + self.bias) * self.scale


class Child(Unannotated):
    """A subclass adding a field in its own __init__ (after the parent's)."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 1, rng=7, dtype=F64)

    def __call__(self, x):
        return self.head(Unannotated.__call__(self, x))


X = np.random.default_rng(1).standard_normal((6, 3))


def test_fields_set_in_init_are_parameters():
    m = Unannotated()
    assert [n for n, _ in m.parameters()] == ["cell.W", "cell.b", "extra.0.W", "extra.0.b", "bias"]
    assert m.num_parameters() == 3 * 4 + 4 + 4 * 4 + 4 + 4
    leaves, treedef = pytree.flatten(m)
    again = treedef.unflatten(leaves)
    assert again.scale == 0.5 and again.name == "net" and again.unused is None
    assert pytree.flatten(Unannotated(rng=5))[1] == treedef           # same structure
    assert pytree.flatten(m.replace(scale=2.0))[1] != treedef           # static: part of it


def test_grad_and_spmd_see_unannotated_fields():
    m = Unannotated()
    check_batched(lambda mm, x: mm(x), m, X, in_axes=(None, 0))
    g = check_batched_grad(lambda mm, x: mm(x), m, X)
    assert type(g) is Unannotated and np.abs(g.cell.W).sum() > 0 and np.abs(g.bias).sum() > 0
    assert g.scale == 0.5                 # hyper-parameters are not differentiated
    sb.check_gradients(lambda mm: sb.spmd(lambda mm, x: mm(x), in_axes=(None, 0))(mm, X).sum(), m)


def test_subclass_fields_and_later_assignment_are_registered():
    c = Child()
    assert [n for n, _ in c.parameters()][-2:] == ["head.W", "head.b"]
    check_batched_grad(lambda mm, x: mm(x), c, X)
    m = Unannotated()
    m.late = nn.Linear(2, 2, rng=3, dtype=F64)        # assigned after construction
    assert "late.W" in dict(m.parameters())
    g = sb.grad(lambda mm: (mm.late(np.ones(2)) ** 2).sum())(m)
    assert np.abs(g.late.W).sum() > 0


def test_optimizer_updates_unannotated_parameters():
    m = Unannotated()
    opt = nn.optim.SGD(lr=0.1)
    state = opt.init(m)
    g = sb.grad(lambda mm: sb.spmd(lambda mm, x: mm(x), in_axes=(None, 0))(mm, X).sum())(m)
    m2, _ = opt.update(m, g, state)
    assert not np.allclose(m2.cell.W, m.cell.W) and m2.scale == 0.5
