"""Differential fuzzing of dtypes: random programs on per-example inputs of mixed dtypes
(program_gen.mixed_dtype_inputs), and ragged integer examples of mixed widths.

The batched result has exactly the dtype the per-example results make together (`loop_dtype`,
`dtype_matches`: numpy's promotion over the examples' own result types, Python numbers weak,
NEP 50), and each lane the loop's value at the precision of that example's own result type
(`lane_tolerance`: a lane computed in float32 where the loop kept a Python float fails). Set
SPMD_FUZZ_DTYPE_EXAMPLES to run more programs (default 150), SPMD_FUZZ_DTYPE_FLOAT32=1 to
draw float32 batches too.
"""
from __future__ import annotations

import os
import sys
import traceback
import warnings

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from program_gen import dtype_matches, lane_tolerance, loop_dtype, mixed_dtype_inputs, programs  # noqa: E402
from test_fuzz_programs import FLOATS, FUZZ_SETTINGS, load_program  # noqa: E402

import spmdbatch as sb  # noqa: E402
from spmdbatch.errors import UnmergeableGroups  # noqa: E402
from spmdbatch.execution.lanes import HELPER_RETURN_VALUE  # noqa: E402

EXAMPLES = int(os.environ.get("SPMD_FUZZ_DTYPE_EXAMPLES", 150))
FLOAT32 = os.environ.get("SPMD_FUZZ_DTYPE_FLOAT32") == "1"
"""Also draw float32 batches (see program_gen.mixed_dtype_inputs), off by default."""


@st.composite
def dtype_batches(draw):
    B = draw(st.sampled_from([1, 2, 5, 9]))
    xs = draw(st.lists(FLOATS, min_size=B, max_size=B))
    ns = draw(st.lists(st.integers(0, 6), min_size=B, max_size=B))
    vs = draw(st.lists(st.tuples(FLOATS, FLOATS, FLOATS), min_size=B, max_size=B))
    return B, draw(mixed_dtype_inputs(B, xs, ns, vs, float32=FLOAT32))


def _leaves(value):
    return list(value) if isinstance(value, tuple) else [value]


@settings(max_examples=EXAMPLES, **FUZZ_SETTINGS)
@given(program=programs(), batch=dtype_batches())
def test_batched_dtypes_and_values_equal_per_example(program, batch):
    B, (x, n, v) = batch
    f = load_program(program.source)
    inputs = f"x={x!r}\nn={n!r}\nv={v!r}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with np.errstate(all="raise", under="ignore"):
                expected = [f(x[i], n[i], v[i].copy()) for i in range(B)]
    except Exception:
        pytest.fail(f"the per-example program failed (generator bug):\n{traceback.format_exc()}\n"
                    f"{program.source}", pytrace=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with np.errstate(all="raise", under="ignore"):
                got = sb.spmd(f)(x, n, v)
    except UnmergeableGroups as err:
        # the one refusal a float32 program may meet: a helper whose returns differ in numpy
        # dtype per example (its caller would compute on in each dtype in the loop)
        if HELPER_RETURN_VALUE not in str(err) or err.filename is None \
                or "spmd_fuzz_prog" not in err.filename:
            pytest.fail(f"spmd raised on\n{inputs}\n{traceback.format_exc()}\n{program.source}",
                        pytrace=False)
        event("refused: a helper's returns differ in numpy dtype per example")
        return
    except Exception:
        pytest.fail(f"spmd raised on\n{inputs}\n{traceback.format_exc()}\n{program.source}", pytrace=False)
    for j, g in enumerate(_leaves(got)):
        column = [_leaves(e)[j] for e in expected]
        g = np.asarray(g)
        if not dtype_matches(g.dtype, column):
            pytest.fail(f"leaf {j}: dtype {g.dtype}, the loop's {loop_dtype(column)} "
                        f"(per example: {[type(c).__name__ + ':' + str(np.asarray(c).dtype) for c in column]})"
                        f"\n{inputs}\n{program.source}", pytrace=False)
        for i, c in enumerate(column):
            # each lane against its own example, at the precision of that example's own type
            # (the batch's dtype when that is narrower: it holds the lane rounded)
            rtol, atol = max(lane_tolerance(c), lane_tolerance(g.dtype.type(0)))
            try:
                np.testing.assert_allclose(g[i].astype(np.float64), np.asarray(c, dtype=np.float64),
                                           rtol=rtol, atol=atol)
            except AssertionError as err:
                pytest.fail(f"leaf {j}, example {i} (the loop's {type(c).__name__}): {err}\n"
                            f"{inputs}\n{program.source}", pytrace=False)


INT_WIDTHS = (np.int8, np.int16, np.int32, np.int64)
RAGGED_FUNCTIONS = {
    "first": lambda a: a[0],
    "last": lambda a: a[len(a) - 1],
    "sum": lambda a: a.sum(),
    "max": lambda a: a.max(),
    "scaled": lambda a: a * 2,
    "len_times_first": lambda a: len(a) * a[0],
    "mean": lambda a: a.mean(),
    "plus_python": lambda a: a[0] + 1,
}


@settings(max_examples=EXAMPLES, **FUZZ_SETTINGS)
@given(data=st.data(), name=st.sampled_from(sorted(RAGGED_FUNCTIONS)))
def test_ragged_integer_examples_of_mixed_widths(data, name):
    fn = RAGGED_FUNCTIONS[name]
    B = data.draw(st.integers(1, 5))
    examples = []
    for _ in range(B):
        dtype = data.draw(st.sampled_from(INT_WIDTHS))
        info = np.iinfo(dtype)
        length = data.draw(st.integers(1, 4))
        # (small enough that no function overflows the example's own width)
        values = data.draw(st.lists(st.integers(max(info.min // 8, -3000), min(info.max // 8, 3000)),
                                    min_size=length, max_size=length))
        examples.append(np.array(values, dtype=dtype))
    promoted = np.result_type(*examples)
    loop = [fn(e.astype(promoted)) for e in examples]   # each example in the batch's dtype
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = sb.spmd(fn)(examples)
    if isinstance(got, list):                          # ragged results: per example
        assert all(g.dtype == loop_dtype(loop) for g in got)
        for g, e in zip(got, loop):
            np.testing.assert_array_equal(g, e)
    else:
        assert got.dtype == loop_dtype(loop), (got.dtype, [np.asarray(e).dtype for e in loop])
        np.testing.assert_allclose(got, np.stack(loop), rtol=1e-12)
