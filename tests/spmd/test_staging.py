"""Staged straight-line regions (execution/staging.py) against the unstaged path and the loop.

A straight-line function is recorded once per key and replayed as generated code; these
tests check that replays (at the recorded lane count, at another one, generalised) give
what the unstaged batch program gives (values and dtypes bit for bit, gradients) and what the
per-example loop gives, that guard misses (a dtype change, a uniform argument becoming
varying, a global rebound) re-specialise, and that what a replay could not repeat (I/O,
random numbers, item assignment, a branch in a callee) falls back to the general path.
Random straight-line programs come from program_gen (``straight=True``).
"""
from __future__ import annotations

import os
import sys
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from program_gen import programs  # noqa: E402
from source_module import import_source  # noqa: E402

import spmdbatch as sb  # noqa: E402
from spmdbatch import nn  # noqa: E402
from spmdbatch.execution import staging  # noqa: E402

EXAMPLES = int(os.environ.get("SPMD_FUZZ_EXAMPLES", 200)) // 2
SETTINGS = dict(deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FLOATS = st.floats(-3.0, 3.0, allow_nan=False, allow_infinity=False)


def staged_entries(fn):
    """The staged code cached for `fn` (Staged objects), empty when it was never staged."""
    cache = fn.__dict__.get(staging._CACHE_ATTR)
    if cache is None:
        return []
    out = []
    for entry in cache[1].entries.values():
        out += [s for s in [entry.generic, *entry.by_lanes.values()] if s is not None]
    return out


def leaves(value):
    return list(value) if isinstance(value, tuple) else [value]


def assert_same(got, expected, what):
    """Equal values (NaN-aware) and equal dtypes, leaf by leaf."""
    got, expected = leaves(got), leaves(expected)
    assert len(got) == len(expected), what
    for g, e in zip(got, expected):
        g, e = np.asarray(g), np.asarray(e)
        assert g.dtype == e.dtype, f"{what}: dtype {g.dtype} != {e.dtype}"
        np.testing.assert_array_equal(g, e, err_msg=what)


def loop(f, args, axes, B):
    outs = [f(*[a if ax is None else a[i] for a, ax in zip(args, axes)]) for i in range(B)]
    if isinstance(outs[0], tuple):
        return tuple(np.stack([np.asarray(o[j]) for o in outs]) for j in range(len(outs[0])))
    return np.stack([np.asarray(o) for o in outs])


def make_args(draw, B, dtype=np.float64):
    xs = np.array(draw(st.lists(FLOATS, min_size=B, max_size=B)), dtype=dtype)
    ns = np.array(draw(st.lists(st.integers(0, 6), min_size=B, max_size=B)), dtype=np.int64)
    vs = np.array(draw(st.lists(st.tuples(FLOATS, FLOATS, FLOATS), min_size=B, max_size=B)),
                  dtype=dtype).reshape(B, 3)
    return [xs, ns, vs]


def run(f, args, axes, stage=True):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise", under="ignore"):
            if stage:
                return sb.spmd(f, in_axes=axes)(*args)
            with staging.disabled():
                return sb.spmd(f, in_axes=axes)(*args)


# --------------------------------------------------------------------------- generated programs

@settings(max_examples=EXAMPLES, **SETTINGS)
@given(program=programs(straight=True), data=st.data())
def test_staged_straight_programs_equal_unstaged_and_loop(program, data):
    """Record, replay at the same and at other lane counts (generalised code), then guard
    misses: float32 arguments and a uniform argument that becomes varying."""
    f = import_source(program.source, "spmd_staging_prog").f
    axes = data.draw(st.sampled_from([(0, 0, 0), (0, None, 0), (0, 0, None)]))
    for B, dtype in [(5, np.float64), (5, np.float64), (3, np.float64), (17, np.float64),
                     (5, np.float32), (3, np.float32)]:
        args = make_args(data.draw, B, dtype)
        args = [a if ax is not None else (a[0] if a.ndim > 1 else a[0].item())
                for a, ax in zip(args, axes)]
        try:
            with np.errstate(all="raise", under="ignore"):
                expected = loop(f, args, axes, B)
        except FloatingPointError:
            return          # float32 overflow of a generated program: nothing to compare
        unstaged = run(f, args, axes, stage=False)
        staged = run(f, args, axes)
        assert_same(staged, unstaged, f"B={B} {np.dtype(dtype).name} in_axes={axes}\n{program.source}")
        for s, e in zip(leaves(staged), leaves(expected)):
            np.testing.assert_allclose(np.asarray(s, dtype=np.float64), np.asarray(e, dtype=np.float64),
                                       rtol=1e-4 if dtype == np.float32 else 1e-9, atol=1e-6)
    varying = (0, 0, 0)                      # uniform -> varying: a new key, re-specialised
    args = make_args(data.draw, 4)
    assert_same(run(f, args, varying), run(f, args, varying, stage=False), program.source)


@settings(max_examples=EXAMPLES // 2, **SETTINGS)
@given(program=programs(straight=True, smooth=True), data=st.data())
def test_staged_gradients_equal_unstaged_and_loop(program, data):
    """One tape node per staged call: gradients equal the unstaged path's and the loop's."""
    f = import_source(program.source, "spmd_staging_grad_prog").f
    axes = data.draw(st.sampled_from([(0, 0, 0), (0, 0, None)]))
    for B in (5, 3, 5):
        xs, ns, vs = make_args(data.draw, B)
        if axes[2] is None:
            vs = vs[0]

        def total(x, v):
            out = sb.spmd(f, in_axes=axes)(x, ns, v)
            return sum(o.sum() for o in leaves(out))
        with np.errstate(all="raise", under="ignore"):
            with staging.disabled():
                ref = sb.grad(total, argnums=(0, 1))(xs, vs)
            got = sb.grad(total, argnums=(0, 1))(xs, vs)
            per = [sb.grad(lambda x, v: sum(np.sum(o) for o in leaves(f(x, ns[i], v))), argnums=(0, 1))(
                float(xs[i]), vs if axes[2] is None else vs[i].copy()) for i in range(B)]
        for g, r in zip(got, ref):
            np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-14, err_msg=program.source)
        np.testing.assert_allclose(got[0], [p[0] for p in per], rtol=1e-8, atol=1e-10)
        gv = np.stack([np.asarray(p[1]) for p in per])
        np.testing.assert_allclose(got[1], gv.sum(0) if axes[2] is None else gv, rtol=1e-8, atol=1e-10)


# --------------------------------------------------------------------------- a model written inline

def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def cell(p, x, h, c):
    """An LSTM cell written inline with a dict of parameters and its own sigmoid."""
    z = p["W"] @ x + p["U"] @ h + p["b"]
    i, f, o, u = np.split(z, 4)
    c = sigmoid(i) * np.tanh(u) + sigmoid(f) * c
    h = sigmoid(o) * np.tanh(c)
    return h, c


def lstm_params(d, hdim, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return {"W": (0.3 * rng.standard_normal((4 * hdim, d))).astype(dtype),
            "U": (0.3 * rng.standard_normal((4 * hdim, hdim))).astype(dtype),
            "b": (0.1 * rng.standard_normal(4 * hdim)).astype(dtype)}


def test_inline_cell_is_staged_and_matches_unstaged_values_gradients_and_fd():
    p = lstm_params(3, 4)
    rng = np.random.default_rng(1)
    spmd_cell = sb.spmd(cell, in_axes=(None, 0, 0, 0))
    for B in (6, 9, 6):
        x, h, c = rng.standard_normal((B, 3)), rng.standard_normal((B, 4)), rng.standard_normal((B, 4))

        def loss(p, x=x, h=h, c=c):
            hh, cc = spmd_cell(p, x, h, c)
            return (hh * hh).sum() + (cc * np.arange(4.0)).sum()
        with staging.disabled():
            ref_v, ref_g = sb.value_and_grad(loss)(p)
            ref_out = spmd_cell(p, x, h, c)
        with sb.stats() as s_staged:
            v, g = sb.value_and_grad(loss)(p)
            out = spmd_cell(p, x, h, c)
        assert_same(out, ref_out, f"B={B}")
        assert v == ref_v
        for k in p:
            np.testing.assert_allclose(g[k], ref_g[k], rtol=1e-13, atol=1e-15)
        loop_out = loop(lambda xi, hi, ci: cell(p, xi, hi, ci), [x, h, c], (0, 0, 0), B)
        for a, b in zip(out, loop_out):
            np.testing.assert_allclose(a, b, rtol=1e-12)
    assert staged_entries(cell), "the inline cell was not staged"
    assert any(s.trace.lanes is None for s in staged_entries(cell)), "no code generalised over lanes"
    with staging.disabled(), sb.stats() as s_unstaged:
        sb.value_and_grad(loss)(p)
        spmd_cell(p, x, h, c)
    assert s_staged.calls_by_function == s_unstaged.calls_by_function   # stats() unchanged
    sb.check_gradients(loss, p)   # finite differences (raises when they disagree)


def test_float32_stays_float32_through_staged_forward_and_backward():
    p = lstm_params(3, 4, np.float32)
    x = np.random.default_rng(2).standard_normal((5, 3)).astype(np.float32)
    h = np.zeros((5, 4), np.float32)

    def loss(p):
        hh, cc = sb.spmd(cell, in_axes=(None, 0, 0, 0))(p, x, h, h)
        return hh.sum() + cc.sum()
    for _ in range(2):
        v, g = sb.value_and_grad(loss)(p)
        assert np.asarray(v).dtype == np.float32
        assert all(g[k].dtype == np.float32 for k in g)
    with staging.disabled():
        v0, g0 = sb.value_and_grad(loss)(p)
    assert v == v0
    for k in p:
        np.testing.assert_array_equal(g[k], g0[k])


# --------------------------------------------------------------------------- guards and fallback

SCALE = 2.0


def scaled(x):
    return np.tanh(x) * SCALE


def test_rebinding_a_global_respecialises():
    global SCALE
    x = np.linspace(-1, 1, 6)
    f = sb.spmd(scaled)
    try:
        for value in (2.0, 3.0, 2.0):
            SCALE = value
            for _ in range(2):
                np.testing.assert_array_equal(f(x), np.tanh(x) * value)
    finally:
        SCALE = 2.0
    assert staged_entries(scaled)


def test_dtype_change_of_a_uniform_argument_respecialises():
    def affine(w, x):
        return w * x + 1
    x = np.arange(4.0)
    f = sb.spmd(affine, in_axes=(None, 0))
    for w in (np.float64(2.0), np.float32(2.0), 2, np.arange(4, dtype=np.int32)[1]):
        for _ in range(2):
            with staging.disabled():
                ref = f(w, x)
            assert_same(f(w, x), ref, repr(w))


def draws(key, x):
    return x + np.random.default_rng(0).standard_normal() * 0 + np.random.random() * 0


def with_print(x):
    y = np.tanh(x)
    print("value", y)
    return y


def with_setitem(x):
    h = np.zeros(3)
    h[1] = x
    return h


def adds_at(x):
    h = x * 1.0
    np.add.at(h, np.array([0, 0]), np.array([1.0, 2.0]))
    return h


def calls_branchy(x):
    return branchy(x) + 1.0


def branchy(x):
    if x > 0:
        return x * 2.0
    return -x


@pytest.mark.parametrize("fn", [with_print, with_setitem, calls_branchy, adds_at])
def test_what_a_replay_cannot_repeat_falls_back(fn, capsys):
    x = np.array([-1.0, 0.5, 2.0])
    if fn is adds_at:
        x = np.arange(6.0).reshape(3, 2)
    for _ in range(3):
        got = sb.spmd(fn)(x)
        if fn is with_print:        # every call prints its lanes (a replay would print nothing)
            assert capsys.readouterr().out.count("value") == 3
        np.testing.assert_array_equal(got, loop(fn, [x], (0,), 3))
        capsys.readouterr()
    assert not staged_entries(fn)


def test_an_index_error_in_a_replay_raises_the_lane_error():
    def pick(v, k):
        return v[k] * 2.0
    v = np.arange(12.0).reshape(4, 3)
    f = sb.spmd(pick)
    for _ in range(2):
        np.testing.assert_array_equal(f(v, np.array([0, 1, 2, 1])), [0.0, 8.0, 16.0, 20.0])
    assert staged_entries(pick)
    with pytest.raises(sb.LaneError) as err:
        f(v, np.array([0, 5, 2, 1]))
    assert "1" in str(err.value)


def test_stop_gradient_inside_a_staged_region():
    def g(x):
        return x * sb.stop_gradient(x) + x
    x = np.array([1.0, 2.0, 3.0])
    for _ in range(3):
        np.testing.assert_allclose(sb.grad(lambda x: sb.spmd(g)(x).sum())(x), x + 1.0)
    assert staged_entries(g)


def test_an_error_while_recording_raises_the_programs_error_and_staging_goes_on():
    def pick2(v, k):
        return v[k] + 1.0
    v = np.arange(12.0).reshape(4, 3)
    f = sb.spmd(pick2)
    with pytest.raises(sb.LaneError):
        f(v, np.array([0, 3, 2, 1]))        # the first call, recorded, raises
    for _ in range(2):
        np.testing.assert_array_equal(f(v, np.array([0, 1, 2, 1])), [1.0, 5.0, 9.0, 11.0])
    assert staged_entries(pick2)


# --------------------------------------------------------------------------- the guard: every outside read

def staged_and_unstaged(f, *args, in_axes=0):
    """(staged result, unstaged result) of two calls each (the second staged call replays)."""
    g = sb.spmd(f, in_axes=in_axes)
    g(*args)
    got = g(*args)
    with staging.disabled():
        ref = g(*args)
    return got, ref


CONFIG_MODULE = '''
import numpy as np

SCALE = 2.0
PARAMS = {"w": 2.0}
W = np.array([1.0, 2.0, 3.0])


def act(x):
    return np.tanh(x)


class Cfg:
    scale = 2.0

    @staticmethod
    def act(x):
        return np.tanh(x)
'''

REGIONS_MODULE = '''
import numpy as np
import {cfg} as cfg
from {cfg} import Cfg


def by_attribute(x):
    return cfg.act(x) * cfg.SCALE


def by_class_attribute(x):
    return Cfg.act(x) * Cfg.scale


def by_dict(x):
    return x * cfg.PARAMS["w"]


def by_array(x):
    return x * cfg.W


def by_alias(x):
    m = cfg
    return x * m.SCALE


def by_getattr(x):
    return x * getattr(cfg, "SCALE")


def scale_of():
    return cfg.SCALE


def by_native_helper(x):
    return np.tanh(x) * scale_of()


def by_default(x, s=2.0):
    return np.tanh(x) * s
'''


@pytest.fixture
def regions():
    import importlib
    cfg = import_source(CONFIG_MODULE, "spmd_staging_cfg")
    mod = import_source(REGIONS_MODULE.format(cfg=cfg.__name__), "spmd_staging_regions")
    importlib.invalidate_caches()
    return cfg, mod


def test_rebinding_a_module_attribute_records_again(regions):
    cfg, mod = regions
    x = np.linspace(-1.0, 1.0, 5)
    for act, scale in [(np.tanh, 2.0), (np.tanh, 3.0), (np.sin, 3.0), (np.tanh, 2.0)]:
        cfg.act = act
        cfg.SCALE = scale
        got, ref = staged_and_unstaged(mod.by_attribute, x)
        assert_same(got, ref, f"{act.__name__} {scale}")
        np.testing.assert_allclose(got, act(x) * scale)
    assert staged_entries(mod.by_attribute), "reads of module attributes are guarded, not refused"


def test_rebinding_a_function_the_region_calls_through_a_module_records_again(regions):
    cfg, mod = regions
    x = np.linspace(-1.0, 1.0, 5)
    got, _ = staged_and_unstaged(mod.by_attribute, x)
    np.testing.assert_allclose(got, np.tanh(x) * 2.0)

    def doubled(v):
        return 2.0 * v
    cfg.act = doubled
    got, ref = staged_and_unstaged(mod.by_attribute, x)
    assert_same(got, ref, "rebound cfg.act")
    np.testing.assert_allclose(got, 2.0 * x * 2.0)
    cfg.SCALE_OF_DOUBLED = 1.0
    doubled.__code__ = (lambda v: 3.0 * v).__code__     # (a new code object: a new batch program)
    got, ref = staged_and_unstaged(mod.by_attribute, x)
    np.testing.assert_allclose(got, 3.0 * x * 2.0)


def test_rebinding_a_class_attribute_records_again(regions):
    cfg, mod = regions
    x = np.linspace(-1.0, 1.0, 5)
    for scale in (2.0, 5.0):
        cfg.Cfg.scale = scale
        got, ref = staged_and_unstaged(mod.by_class_attribute, x)
        np.testing.assert_allclose(got, np.tanh(x) * scale)
    cfg.Cfg.act = staticmethod(np.sin)
    got, ref = staged_and_unstaged(mod.by_class_attribute, x)
    np.testing.assert_allclose(got, np.sin(x) * 5.0)
    assert staged_entries(mod.by_class_attribute)


def test_a_global_read_by_a_helper_run_natively_is_guarded(regions):
    cfg, mod = regions
    x = np.linspace(-1.0, 1.0, 5)
    for scale in (2.0, 7.0):
        cfg.SCALE = scale
        got, ref = staged_and_unstaged(mod.by_native_helper, x)
        np.testing.assert_allclose(got, np.tanh(x) * scale)
    assert staged_entries(mod.by_native_helper)


@pytest.mark.parametrize("name", ["by_dict", "by_array", "by_alias", "by_getattr"])
def test_outside_reads_the_guard_cannot_check_are_not_staged(regions, name):
    """A module's parameter dict or array (which can change in place), a module held in a
    variable or passed to getattr: the general path runs, and sees every change."""
    cfg, mod = regions
    f = getattr(mod, name)
    x = np.linspace(-1.0, 1.0, 3)

    def expected():
        return x[:, None] * cfg.W if name == "by_array" else \
            x * (cfg.PARAMS["w"] if name == "by_dict" else cfg.SCALE)
    got, _ = staged_and_unstaged(f, x)
    np.testing.assert_allclose(got, expected())
    cfg.PARAMS["w"] = 4.0                    # changed in place
    cfg.W *= 2.0
    cfg.SCALE = 4.0
    got, _ = staged_and_unstaged(f, x)
    np.testing.assert_allclose(got, expected())
    np.testing.assert_allclose(got[0], -4.0 if name != "by_array" else [-2.0, -4.0, -6.0])
    cfg.PARAMS = {"w": 5.0}                  # replaced
    cfg.W = np.array([5.0, 5.0, 5.0])
    cfg.SCALE = 5.0
    got, _ = staged_and_unstaged(f, x)
    np.testing.assert_allclose(got, expected())
    np.testing.assert_allclose(got[0], -5.0)
    assert staging.not_staged_because(f)
    assert not staged_entries(f)


def test_rebinding_a_default_argument_records_again(regions):
    _, mod = regions
    x = np.linspace(-1.0, 1.0, 5)
    got, _ = staged_and_unstaged(mod.by_default, x)
    np.testing.assert_allclose(got, np.tanh(x) * 2.0)
    mod.by_default.__defaults__ = (6.0,)
    got, ref = staged_and_unstaged(mod.by_default, x)
    np.testing.assert_allclose(got, np.tanh(x) * 6.0)
    np.testing.assert_allclose(ref, np.tanh(x) * 6.0)   # (the batch program is rebuilt too)
    assert staged_entries(mod.by_default)


def make_closure():
    scale = 2.0
    act = np.tanh

    def f(x):
        return act(x) * scale

    def rebind(new_scale, new_act):
        nonlocal scale, act
        scale, act = new_scale, new_act
    return f, rebind


def test_rebinding_a_closure_variable_records_again():
    f, rebind = make_closure()
    x = np.linspace(-1.0, 1.0, 5)
    for scale, act in [(2.0, np.tanh), (3.0, np.tanh), (3.0, np.sin), (2.0, np.tanh)]:
        rebind(scale, act)
        got, ref = staged_and_unstaged(f, x)
        assert_same(got, ref, f"{scale} {act.__name__}")
        np.testing.assert_allclose(got, act(x) * scale)
    assert staged_entries(f)


def closure_over_a_dict():
    params = {"w": 2.0}

    def f(x):
        return x * params["w"]
    return f, params


def test_a_closure_over_a_dict_is_not_staged():
    f, params = closure_over_a_dict()
    x = np.linspace(-1.0, 1.0, 3)
    got, _ = staged_and_unstaged(f, x)
    np.testing.assert_allclose(got, x * 2.0)
    params["w"] = 3.0
    got, _ = staged_and_unstaged(f, x)
    np.testing.assert_allclose(got, x * 3.0)
    assert not staged_entries(f)


def affine_dict(p, x):
    return np.tanh(p["W"] @ x + p["b"])


def test_a_dict_of_parameters_passed_as_an_argument_is_read_at_every_replay():
    rng = np.random.default_rng(3)
    p = {"W": rng.standard_normal((2, 3)), "b": rng.standard_normal(2)}
    x = rng.standard_normal((4, 3))
    f = sb.spmd(affine_dict, in_axes=(None, 0))
    for step in range(4):
        if step == 1:
            p["W"] = rng.standard_normal((2, 3))           # an entry replaced
        if step == 2:
            p = {"W": rng.standard_normal((5, 3)), "b": rng.standard_normal(5)}   # new shapes
        if step == 3:
            p["W"] *= 2.0                                   # changed in place
        for _ in range(2):
            np.testing.assert_allclose(f(p, x), np.tanh(x @ p["W"].T + p["b"]), rtol=1e-12)
    assert len(staged_entries(affine_dict)) >= 2


def test_shape_rank_and_dtype_changes_record_again():
    def g(v):
        return (np.tanh(v) * 2.0).sum()
    f = sb.spmd(g)
    rng = np.random.default_rng(4)
    for shape, dtype in [((4, 3), np.float64), ((4, 5), np.float64), ((4, 2, 3), np.float64),
                         ((4, 3), np.float32), ((4, 3), np.float64), ((4,), np.float64)]:
        v = rng.standard_normal(shape).astype(dtype)
        for _ in range(2):
            with staging.disabled():
                ref = f(v)
            assert_same(f(v), ref, f"{shape} {np.dtype(dtype).name}")
    assert len(staged_entries(g)) >= 5


def test_varying_uniform_pattern_changes_record_again():
    def g(a, b):
        return a * b + np.tanh(b)
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal(4), rng.standard_normal(4)
    for axes, args in [((0, 0), (a, b)), ((0, None), (a, 0.5)), ((None, 0), (0.5, b)),
                       ((0, None), (a, np.float32(0.5))), ((0, 0), (a, b))]:
        for _ in range(2):
            got, ref = staged_and_unstaged(g, *args, in_axes=axes)
            assert_same(got, ref, repr(axes))
    assert len(staged_entries(g)) >= 3


# --------------------------------------------------------------------------- nested levels

def cell_loss(x):
    return (np.tanh(x) * x).sum()


def test_grad_of_spmd_is_staged_and_correct():
    x = np.random.default_rng(6).standard_normal((5, 3))
    f = sb.spmd(cell_loss)
    for _ in range(3):
        got = sb.grad(lambda x: f(x).sum())(x)
        np.testing.assert_allclose(got, np.tanh(x) + x * (1 - np.tanh(x) ** 2), rtol=1e-12)
    assert staged_entries(cell_loss)


def cell_loss_2(x):
    return (np.tanh(x) * x).sum()


def per_example_grad(x):
    return sb.grad(cell_loss_2)(x)


def test_spmd_of_grad_takes_the_general_path_and_is_correct():
    x = np.random.default_rng(7).standard_normal((5, 3))
    f = sb.spmd(per_example_grad)
    for _ in range(3):
        np.testing.assert_allclose(f(x), np.tanh(x) + x * (1 - np.tanh(x) ** 2), rtol=1e-12)
    assert not staged_entries(cell_loss_2)
    assert not staged_entries(per_example_grad), "a region that starts a transform is not staged"


def inner_mean(x):
    return np.tanh(x) * 2.0


def outer_with_nested_spmd(xs):
    return sb.spmd(inner_mean)(xs).sum()


def test_nested_spmd_takes_the_general_path_and_is_correct():
    xs = np.random.default_rng(8).standard_normal((4, 3, 2))
    f = sb.spmd(outer_with_nested_spmd)
    for _ in range(3):
        np.testing.assert_allclose(f(xs), (np.tanh(xs) * 2.0).sum(axis=(1, 2)), rtol=1e-12)
    assert not staged_entries(inner_mean)


def test_grad_of_grad_of_spmd_is_correct():
    x = np.random.default_rng(9).standard_normal(4)

    def g(v):
        return np.sin(v) * v
    f = sb.spmd(g)

    def first(v):
        return sb.grad(lambda u: f(u).sum())(v).sum()
    for _ in range(2):
        np.testing.assert_allclose(sb.grad(first)(x), 2 * np.cos(x) - x * np.sin(x), rtol=1e-10)


def test_the_switch_turns_staging_off():
    def h(v):
        return np.tanh(v) + 1.0
    x = np.arange(3.0)
    with staging.disabled():
        for _ in range(3):
            sb.spmd(h)(x)
    assert not staged_entries(h)
    for _ in range(2):
        sb.spmd(h)(x)
    assert staged_entries(h)


# --------------------------------------------------------------------------- writes of helpers run natively

CALLS = 0


def count_calls():
    global CALLS
    CALLS += 1
    return 1.0


def counted(x):
    return x * count_calls()


def set_entry(p):
    p["seen"] = p.get("seen", 0) + 1
    return p["w"]


def sets_entry(p, x):
    return x * set_entry(p)


def bump(w):
    w += 1.0
    return w


def bumps(w, x):
    return x * bump(w)


def test_a_helper_run_natively_that_writes_outside_its_locals_is_not_staged():
    """Helpers called with uniform arguments run as plain Python: their writes (a global, an
    argument's item, an array in place) happen at every call of the loop, so the region that
    calls them is not replayed."""
    global CALLS
    x = np.arange(3.0)
    CALLS = 0
    for _ in range(3):
        np.testing.assert_array_equal(sb.spmd(counted)(x), x)
    assert CALLS == 3 and not staged_entries(counted)
    p = {"w": 2.0}
    for _ in range(3):
        np.testing.assert_array_equal(sb.spmd(sets_entry, in_axes=(None, 0))(p, x), 2.0 * x)
    assert p["seen"] == 3 and not staged_entries(sets_entry)
    w = np.array([1.0])
    for k in range(3):
        np.testing.assert_array_equal(sb.spmd(bumps, in_axes=(None, 0))(w, x)[:, 0], (k + 2.0) * x)
    assert w[0] == 4.0 and not staged_entries(bumps)


def make_nested_closure():
    scale = 2.0

    def f(x):
        g = lambda v: v * scale    # noqa: E731  (reads the outer cell from a nested function)
        return g(np.tanh(x))

    def rebind(v):
        nonlocal scale
        scale = v
    return f, rebind


def test_a_closure_variable_read_by_a_nested_function_is_guarded():
    f, rebind = make_nested_closure()
    x = np.linspace(-1.0, 1.0, 4)
    for scale in (2.0, 3.0):
        rebind(scale)
        got, ref = staged_and_unstaged(f, x)
        np.testing.assert_allclose(got, np.tanh(x) * scale)
    assert staged_entries(f)


def noisy():
    return float(np.random.random() * 0.0) + 1.0


def with_native_randomness(x):
    return x * noisy()


def logs():
    print("called")
    return 1.0


def with_native_print(x):
    return x * logs()


def test_a_helper_run_natively_with_io_or_randomness_is_not_staged(capsys):
    x = np.arange(3.0)
    for _ in range(3):
        np.testing.assert_array_equal(sb.spmd(with_native_randomness)(x), x)
        np.testing.assert_array_equal(sb.spmd(with_native_print)(x), x)
    assert capsys.readouterr().out.count("called") == 3
    assert not staged_entries(with_native_randomness)
    assert not staged_entries(with_native_print)


class Affine(nn.Module):
    """A module whose class attribute the function reads through its argument."""
    w: np.ndarray
    scale = 2.0


def apply_affine(m, x):
    return x * m.w * m.scale


def test_an_object_argument_is_not_staged_and_sees_its_class_rebound():
    """`m.scale` is read through the argument, out of the guard's sight: such calls take the
    general path, so rebinding the class attribute is seen."""
    m = Affine(w=np.ones(3))
    x = np.arange(4.0)
    f = sb.spmd(apply_affine, in_axes=(None, 0))
    for scale in (2.0, 2.0, 5.0, 5.0):
        Affine.scale = scale
        np.testing.assert_array_equal(f(m, x), x[:, None] * np.ones(3) * scale)
    assert not staged_entries(apply_affine)


def test_the_environment_switch_turns_staging_off():
    import subprocess
    code = ("import numpy as np, spmdbatch as sb\n"
            "from spmdbatch.execution import staging\n"
            "def h(v):\n    return np.tanh(v) + 1.0\n"
            "for _ in range(3):\n    sb.spmd(h)(np.arange(3.0))\n"
            "print(staging.SWITCH.enabled, staging._CACHE_ATTR in h.__dict__)\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for value, expected in (("0", "False False"), ("1", "True True")):
        env = dict(os.environ, SPMDBATCH_STAGING=value, PYTHONPATH=root)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True, cwd=root).stdout.split()
        assert " ".join(out[-2:]) == expected
