"""Packed and LaneMapped (one shared mixin, runtime/refusals.py) refuse to become one Python
value: truth value, int(), index, float() and numpy.asarray() raise VaryingValueError naming
the user's line; Packed also refuses len() and hash(), and carries its hint."""
from __future__ import annotations

import operator

import numpy as np
import pytest

import spmdbatch  # noqa: F401  (registers the primitives)
from spmdbatch.errors import VaryingValueError
from spmdbatch.runtime.mapped import LaneMapped
from spmdbatch.runtime.packed import Packed, layout_for
from spmdbatch.runtime.refusals import RefusesConcrete

REFUSALS = {"truth value": bool, "int()": int, "float()": float, "numpy.asarray()": np.asarray,
            "int()#index": operator.index}


def _values():
    packed = Packed(np.arange(6.0).reshape(3, 2), layout_for(np.array([1, 2])))
    mapped = LaneMapped(np.arange(12.0).reshape(3, 4), np.array([2, 0]))
    return {"packed": packed, "mapped": mapped}


@pytest.mark.parametrize("kind", ["packed", "mapped"])
@pytest.mark.parametrize("what", sorted(REFUSALS))
def test_refusals_name_the_line(kind, what):
    value = _values()[kind]
    assert isinstance(value, RefusesConcrete)
    with pytest.raises(VaryingValueError) as info:
        REFUSALS[what](value)
    err = info.value
    assert err.message == f"{what.split('#')[0]} of a varying (per-example) value"
    assert err.filename == __file__ and err.lineno is not None
    if kind == "packed":
        assert err.hint == "Branch on it inside the @spmd function, or keep it an array."
    else:
        assert err.hint is None


def test_packed_refuses_len_and_hash():
    value = _values()["packed"]
    with pytest.raises(VaryingValueError, match="len"):
        len(value)
    with pytest.raises(VaryingValueError, match="hash"):
        hash(value)
