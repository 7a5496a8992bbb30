"""RowPlan.scatter_add (runtime/segments.py) adds every valid position's row into its target
in position order, as numpy.add.at does: the same sums to the bit, with SciPy's CSR kernel
(when installed) and with the rounds of distinct targets, for float32 and float64, repeated
targets, padding positions and a non-zero base."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from spmdbatch.runtime import segments


def _reference(base, index, valid, values):
    out = base.copy()
    keep = np.ones(index.shape[0], bool) if valid is None else valid
    np.add.at(out, index[keep], values[keep])       # sequential in position order
    return out


@pytest.mark.parametrize("kernel", ["csr", "rounds"])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_scatter_add_equals_add_at_bitwise(kernel, data):
    if kernel == "csr" and segments._csr_matvecs is None:
        pytest.skip("SciPy is not installed")
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1)))
    nrows = data.draw(st.integers(1, 6))
    n = data.draw(st.integers(0, 20))
    rest = tuple(data.draw(st.lists(st.integers(1, 3), max_size=2)))
    dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    index = rng.integers(0, nrows, n)
    valid = None if data.draw(st.booleans()) else rng.random(n) < 0.7
    values = (rng.standard_normal((n,) + rest) * 10.0 ** rng.integers(-3, 4, (n,) + rest)).astype(dtype)
    base = (rng.standard_normal((nrows,) + rest) if data.draw(st.booleans())
            else np.zeros((nrows,) + rest)).astype(dtype)
    plan = segments.RowPlan(index, valid, nrows)
    saved = segments._csr_matvecs
    if kernel == "rounds":
        segments._csr_matvecs = None
    try:
        got = plan.scatter_add(base.copy(), values)
    finally:
        segments._csr_matvecs = saved
    want = _reference(base, index, valid, values)
    assert got.dtype == want.dtype
    assert np.array_equal(got, want), np.abs(got - want).max()
