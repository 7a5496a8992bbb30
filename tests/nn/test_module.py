"""Module base: pytree behaviour, names, repr, state dicts, .npz files, modes."""
from __future__ import annotations

import sys

import numpy as np
import pytest

import spmdbatch as sb
from spmdbatch import nn
from spmdbatch.runtime import pytree

sys.path.insert(0, __file__.rsplit("/", 2)[0] + "/spmd")
from oracle import check_batched, check_batched_grad  # noqa: E402

F64 = np.float64


class Gated(nn.Module):
    """A user component with dataclass fields, a static hyper-parameter and a data branch."""

    enc: nn.Linear
    dec: nn.Linear
    threshold: float = nn.static(0.0)

    def __call__(self, x):
        h = self.enc(x)
        if h.sum() > self.threshold:
            h = np.tanh(h)
        else:
            h = -h
        return self.dec(h)


def gated(seed=0):
    return Gated(enc=nn.Linear(3, 4, rng=seed, dtype=F64), dec=nn.Linear(4, 2, rng=seed + 1, dtype=F64),
                 threshold=0.5)


X = np.random.default_rng(5).standard_normal((7, 3))


def test_parameters_are_named_leaves_in_flatten_order():
    m = gated()
    names = [n for n, _ in m.parameters()]
    assert names == ["enc.W", "enc.b", "dec.W", "dec.b"]
    assert [id(v) for _, v in m.parameters()] == [id(v) for v in pytree.leaves(m)]
    assert m.num_parameters() == 3 * 4 + 4 + 4 * 2 + 2


def test_static_fields_are_not_leaves_but_structure():
    a, b = gated(), gated()
    assert pytree.flatten(a)[1] == pytree.flatten(b)[1]
    assert pytree.flatten(a)[1] != pytree.flatten(b.replace(threshold=1.0))[1]
    assert len(pytree.leaves(nn.Dropout(0.3))) == 0
    assert len(pytree.leaves(nn.Linear(2, 2, activation="relu"))) == 2


def test_user_module_with_data_branch_batches_and_differentiates():
    m = gated()
    check_batched(lambda mm, x: mm(x), m, X, in_axes=(None, 0))
    check_batched_grad(lambda mm, x: mm(x), m, X)
    g = sb.grad(lambda mm: sb.spmd(lambda mm, x: mm(x).sum(), in_axes=(None, 0))(mm, X).sum())(m)
    assert type(g) is Gated and g.threshold == 0.5 and g.enc.W.shape == (4, 3)
    sb.check_gradients(lambda mm: sb.spmd(lambda mm, x: mm(x), in_axes=(None, 0))(mm, X).sum(), m)


def test_dataclass_constructor_and_from_fields():
    W = np.ones((2, 3))
    lin = nn.Linear.from_fields(W=W, b=np.zeros(2), activation=nn.relu)
    np.testing.assert_allclose(lin(np.array([1.0, -2.0, 0.5])), [0.0, 0.0])
    assert nn.Linear.from_fields(W=W).b is None
    with pytest.raises(TypeError, match="no field"):
        nn.Linear.from_fields(W=W, weights=1)
    with pytest.raises(TypeError, match="missing field"):
        nn.Linear.from_fields(b=np.zeros(2))


def test_repr_is_readable():
    text = repr(nn.Chain(nn.Linear(3, 4, "relu", rng=0), np.tanh, nn.Dropout(0.25)))
    assert "Linear(W=float32[4, 3], b=float32[4], activation=relu)" in text
    assert "Fn(tanh)" in text and "Dropout(rate=0.25, training=True)" in text
    assert repr(nn.Linear(2, 2, activation=nn.leaky(0.2))).endswith("activation=leakyrelu(a=0.2))")


def test_state_dict_round_trip_and_errors():
    m = gated()
    state = m.state_dict()
    assert set(state) == {"enc.W", "enc.b", "dec.W", "dec.b"}
    other = gated(seed=10)
    loaded = other.load_state_dict(state)
    for (n1, v1), (n2, v2) in zip(loaded.parameters(), m.parameters()):
        assert n1 == n2
        np.testing.assert_array_equal(v1, v2)
    assert not np.array_equal(other.enc.W, m.enc.W)        # the original is unchanged
    with pytest.raises(KeyError, match="missing"):
        other.load_state_dict({k: v for k, v in state.items() if k != "dec.b"})
    partial = other.load_state_dict({"dec.b": state["dec.b"]}, strict=False)
    np.testing.assert_array_equal(partial.dec.b, m.dec.b)
    np.testing.assert_array_equal(partial.enc.W, other.enc.W)
    with pytest.raises(KeyError, match="unexpected"):
        other.load_state_dict({**state, "extra": np.zeros(1)})
    with pytest.raises(ValueError, match="shape"):
        other.load_state_dict({**state, "enc.W": np.zeros((3, 3))})


def test_save_and_load_npz(tmp_path):
    m = nn.Chain(nn.Embedding(10, 4, rng=0), nn.Linear(4, 3, rng=1), nn.ResidualBlock(3, rng=2))
    path = tmp_path / "model.npz"
    m.save(path)
    template = nn.Chain(nn.Embedding(10, 4, rng=7), nn.Linear(4, 3, rng=8), nn.ResidualBlock(3, rng=9))
    loaded = template.load(path)
    for (_, a), (_, b) in zip(loaded.parameters(), m.parameters()):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    np.testing.assert_array_equal(loaded(np.array(3)), m(np.array(3)))
    with pytest.raises(ValueError, match="holds the parameters of a Chain"):
        nn.Linear(4, 3).load(path)


def test_eval_and_train_switch_dropout_everywhere():
    m = nn.Chain(nn.Linear(3, 3, rng=0), nn.Chain(nn.Dropout(0.5), nn.Fn(np.tanh)))
    e = m.eval()
    assert e.layers[1].layers[0].training is False and m.layers[1].layers[0].training is True
    assert e.train().layers[1].layers[0].training is True
    x = np.ones(3, np.float32)
    np.testing.assert_array_equal(e(x), np.tanh(m.layers[0](x)))


def test_module_as_uniform_spmd_argument_with_float32_params():
    m = nn.Chain(nn.Linear(3, 5, "tanh", rng=0), nn.Linear(5, 2, rng=1))
    xs = X.astype(np.float32)
    out = sb.spmd(lambda mm, x: mm(x), in_axes=(None, 0))(m, xs)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, np.stack([m(x) for x in xs]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m(xs), out, rtol=1e-5, atol=1e-6)   # direct call on a batch


def test_astype_and_named_leaves_of_plain_pytrees():
    m = nn.Linear(2, 2, rng=0).astype(np.float64)
    assert m.W.dtype == np.float64 and m.b.dtype == np.float64
    names = [n for n, _ in nn.named_leaves({"embed": [np.zeros(1), {"w": np.ones(2)}]})]
    assert names == ["embed.0", "embed.1.w"]
