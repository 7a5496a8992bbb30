"""Differential fuzzing of `@spmd`: random per-example programs, batched vs. one by one.

The contract: ``spmd(f, in_axes)(xs, ns, vs)`` equals ``stack([f(x, n, v) for each example])``
(uniform arguments, in_axes None, are shared by every example), with no floating-point
warning (inactive lanes never compute), and `spmdbatch.grad` through the batch program
equals the per-example gradients.

The programs come from `program_gen.programs()` (see there for what they cover); programs
with possibly out-of-range indices (`faulty=True`) must raise a `LaneError` naming only
examples whose per-example run raises IndexError, or match the loop where none does. Each is
written to a real .py file and imported, since the transform reads the function's bytecode
and source lines. Set SPMD_FUZZ_EXAMPLES to run more programs (default 200).
"""
from __future__ import annotations

import os
import sys
import traceback
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from program_gen import programs  # noqa: E402
from source_module import import_source  # noqa: E402

import spmdbatch as sb  # noqa: E402

EXAMPLES = int(os.environ.get("SPMD_FUZZ_EXAMPLES", 200))
GRAD_EXAMPLES = int(os.environ.get("SPMD_FUZZ_GRAD_EXAMPLES", max(50, EXAMPLES // 4)))
FAULTY_EXAMPLES = int(os.environ.get("SPMD_FUZZ_FAULTY_EXAMPLES", max(50, EXAMPLES // 2)))

FUZZ_SETTINGS = dict(deadline=None, print_blob=True,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def load_program(source: str):
    """Import `source` from a real file; returns its function `f`."""
    return import_source(source, "spmd_fuzz_prog").f


FLOATS = st.floats(-3.0, 3.0, allow_nan=False, allow_infinity=False)


@st.composite
def batches(draw):
    """``(B, in_axes, xs, ns, vs)``: a batch of inputs; some arguments may be uniform."""
    B = draw(st.sampled_from([1, 2, 5, 17]))
    axes = draw(st.sampled_from([(0, 0, 0), (0, 0, 0), (0, None, 0), (0, 0, None),
                                 (None, 0, 0), (0, None, None)]))
    xs = np.array(draw(st.lists(FLOATS, min_size=B, max_size=B)), dtype=np.float64)
    ns = np.array(draw(st.lists(st.integers(0, 6), min_size=B, max_size=B)), dtype=np.int64)
    vs = np.array(draw(st.lists(st.tuples(FLOATS, FLOATS, FLOATS), min_size=B, max_size=B)),
                  dtype=np.float64).reshape(B, 3)
    args = [xs, ns, vs]
    for j, ax in enumerate(axes):
        if ax is None:   # uniform: one value shared by every example
            args[j] = float(xs[0]) if j == 0 else int(ns[0]) if j == 1 else vs[0].copy()
    return B, axes, args


def example_args(args, axes, i):
    """The per-example arguments of example `i` (Python float/int, a fresh vector)."""
    x, n, v = [a if ax is None else a[i] for a, ax in zip(args, axes)]
    return float(x), int(n), np.array(v, dtype=np.float64, copy=True)


def _fail(program, message):
    pytest.fail(f"{message}\n--- program ---\n{program.source}", pytrace=False)


def _structure(value):
    if isinstance(value, tuple):
        return tuple(_structure(v) for v in value)
    return "leaf"


def _compare(program, expected_list, got, what):
    expected_struct = _structure(expected_list[0])
    if _structure(got) != expected_struct:
        _fail(program, f"{what}: structure {_structure(got)!r}, expected {expected_struct!r}")
    leaves_exp = ([tuple(e[j] for e in expected_list) for j in range(len(expected_list[0]))]
                  if isinstance(expected_list[0], tuple) else [expected_list])
    leaves_got = list(got) if isinstance(got, tuple) else [got]
    for j, (exp, g) in enumerate(zip(leaves_exp, leaves_got)):
        exp = np.stack([np.asarray(e, dtype=np.float64) for e in exp])
        g = np.asarray(g)
        if g.shape != exp.shape:
            _fail(program, f"{what}, leaf {j}: shape {g.shape}, expected {exp.shape}\n"
                           f"expected {exp!r}\ngot {g!r}")
        try:
            np.testing.assert_allclose(g, exp, rtol=1e-9, atol=1e-12)
        except AssertionError as err:
            _fail(program, f"{what}, leaf {j}: {err}")


def _oracle(f, args, axes, B):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise", under="ignore"):
            return [f(*example_args(args, axes, i)) for i in range(B)]


@settings(max_examples=EXAMPLES, **FUZZ_SETTINGS)
@given(program=programs(), batch=batches())
def test_batched_equals_per_example(program, batch):
    check_program(program, batch)


@settings(max_examples=EXAMPLES, **FUZZ_SETTINGS)
@given(program=programs(lists=True), batch=batches())
def test_batched_equals_per_example_with_lists(program, batch):
    """Programs with per-example lists (append/pop/insert/extend/indexing/len/truth/iteration/
    stack under divergence)."""
    check_program(program, batch)


def check_program(program, batch):
    B, axes, args = batch
    f = load_program(program.source)
    try:
        expected = _oracle(f, args, axes, B)
    except Exception:  # the generator must only make programs that run per example
        _fail(program, "the per-example program itself failed (generator bug):\n"
                       + traceback.format_exc())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with np.errstate(all="raise", under="ignore"):
                got = sb.spmd(f, in_axes=axes)(*args)
    except Exception:
        _fail(program, f"spmd(f, in_axes={axes}) raised on inputs\n  x={args[0]!r}\n  n={args[1]!r}\n"
                       f"  v={args[2]!r}\n{traceback.format_exc()}")
    _compare(program, expected, got, f"spmd(f, in_axes={axes}) on x={args[0]!r}, n={args[1]!r}, "
                                     f"v={args[2]!r}")


@settings(max_examples=GRAD_EXAMPLES, **FUZZ_SETTINGS)
@given(program=programs(smooth=True), batch=batches())
def test_batched_gradient_equals_per_example(program, batch):
    check_program_gradient(program, batch)


@settings(max_examples=GRAD_EXAMPLES, **FUZZ_SETTINGS)
@given(program=programs(smooth=True, lists=True), batch=batches())
def test_batched_gradient_equals_per_example_with_lists(program, batch):
    check_program_gradient(program, batch)


def check_program_gradient(program, batch):
    B, axes, args = batch
    if axes[0] is None:   # differentiate w.r.t. a batched x
        axes = (0,) + axes[1:]
        args = [np.full(B, args[0]) if not isinstance(args[0], np.ndarray) else args[0]] + args[1:]
    f = load_program(program.source)
    xs, ns, vs = args
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with np.errstate(all="raise", under="ignore"):
                per = [sb.grad(f, argnums=(0, 2))(*example_args(args, axes, i)) for i in range(B)]
    except Exception:
        _fail(program, "per-example grad failed:\n" + traceback.format_exc())
    exp_gx = np.array([g[0] for g in per], dtype=np.float64)
    exp_gv = np.stack([np.asarray(g[1], dtype=np.float64) for g in per])
    if axes[2] is None:
        exp_gv = exp_gv.sum(axis=0)
    batched = sb.spmd(f, in_axes=axes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with np.errstate(all="raise", under="ignore"):
                gx, gv = sb.grad(lambda a, c: batched(a, ns, c).sum(), argnums=(0, 1))(xs, vs)
    except Exception:
        _fail(program, f"grad through spmd(f, in_axes={axes}) raised on inputs\n  x={xs!r}\n  n={ns!r}\n"
                       f"  v={vs!r}\n{traceback.format_exc()}")
    where = f"grad through spmd(f, in_axes={axes}) on x={xs!r}, n={ns!r}, v={vs!r}"
    for name, got, exp in (("d/dx", gx, exp_gx), ("d/dv", gv, exp_gv)):
        got = np.asarray(got)
        if got.shape != exp.shape:
            _fail(program, f"{where}: {name} shape {got.shape}, expected {exp.shape}")
        try:
            np.testing.assert_allclose(got, exp, rtol=1e-9, atol=1e-12)
        except AssertionError as err:
            _fail(program, f"{where}: {name}: {err}")


@settings(max_examples=FAULTY_EXAMPLES, **FUZZ_SETTINGS)
@given(program=programs(faulty=True), batch=batches())
def test_out_of_range_indices_raise_like_the_loop(program, batch):
    B, axes, args = batch
    f = load_program(program.source)
    expected, raising = [], []
    for i in range(B):
        try:
            expected.extend(_oracle(f, [a if ax is None else a[i:i + 1] for a, ax in zip(args, axes)],
                                    axes, 1))
        except IndexError:
            raising.append(i)
        except Exception:
            _fail(program, "the per-example program failed other than by IndexError (generator bug):\n"
                           + traceback.format_exc())
    where = f"spmd(f, in_axes={axes}) on x={args[0]!r}, n={args[1]!r}, v={args[2]!r}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with np.errstate(all="raise", under="ignore"):
                got = sb.spmd(f, in_axes=axes)(*args)
    except sb.LaneError as err:
        if not err.lanes or not set(err.lanes) <= set(raising) or "IndexError" not in str(err):
            _fail(program, f"{where}: LaneError names examples {err.lanes}, but the loop raises "
                           f"IndexError in examples {raising}:\n{err}")
        if "spmd_fuzz_prog" not in str(err):
            _fail(program, f"{where}: the LaneError does not name the program's line: {err}")
        return
    except IndexError:
        if len(raising) != B:     # (uniform indexing that fails for every example: the loop's error)
            _fail(program, f"{where}: a raw IndexError, the loop raises in examples {raising}:\n"
                           + traceback.format_exc())
        return
    except Exception:
        _fail(program, f"{where} raised:\n{traceback.format_exc()}")
    if raising:
        _fail(program, f"{where}: no error, but the loop raises IndexError in examples {raising}")
    _compare(program, expected, got, where)
