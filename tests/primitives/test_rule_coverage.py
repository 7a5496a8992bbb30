"""Every primitive of the package has its rules, and every batching rule equals the
per-example loop.

- coverage: each registered primitive has a batching rule (declared or derived), a ragged
  rule or a stated reason to refuse ragged operands, and a VJP unless it says
  differentiable=False; and each package primitive has a case below (a new primitive needs
  one);
- one hypothesis test per primitive draws a batch size, per-example shapes and values,
  params, and which operands are per example (the others shared), then compares the
  primitive on the batched operands (its batching rule, as spmd runs it) with the loop of
  its implementation over the examples, in value and dtype; for differentiable primitives
  also the VJP of the batched application (through the batching rule's operations on the
  tape) with the per-example VJPs (stacked for per-example operands, summed for shared
  ones).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spmdbatch as sb
from spmdbatch.runtime import primitives as P
from spmdbatch.runtime import segments
from spmdbatch.runtime.dispatch import PRIMITIVES

PACKAGE = sorted(name for name, p in PRIMITIVES.items() if p.origin.startswith("spmdbatch."))

# --- drawing operands ---------------------------------------------------------------------------
FLOATS = st.floats(-3, 3, allow_nan=False, width=64)
DOMAINS = {  # elements for operands of elementwise primitives with a restricted domain
    "log": st.floats(0.1, 5), "log2": st.floats(0.1, 5), "log10": st.floats(0.1, 5),
    "log1p": st.floats(-0.9, 5), "sqrt": st.floats(0.1, 5), "reciprocal": st.floats(0.5, 3),
    "arcsin": st.floats(-0.9, 0.9), "arccos": st.floats(-0.9, 0.9), "arctanh": st.floats(-0.9, 0.9),
    "arccosh": st.floats(1.1, 4), "divide": st.floats(0.5, 3), "power": st.floats(0.5, 2),
    "remainder": st.floats(0.5, 3), "floor_divide": st.floats(0.5, 3), "cbrt": st.floats(0.2, 3),
    "hypot": st.floats(0.2, 3),
}
INTEGER_OPS = {"bitwise_and", "bitwise_or", "bitwise_xor", "invert", "left_shift", "right_shift",
               "gcd", "lcm"}


class Draw:
    """Operands of one case: `arrays` (per-example ones with the batch axis first), `axes`
    (0 or None per operand), `params`."""

    def __init__(self, data, lanes):
        self.data, self.lanes = data, lanes
        self.arrays, self.axes = [], []

    def operand(self, shape, elements=FLOATS, dtype=np.float64, batched=None):
        if batched is None:
            batched = self.data.draw(st.booleans())
        full = ((self.lanes,) if batched else ()) + tuple(shape)
        size = int(np.prod(full))
        values = self.data.draw(st.lists(elements, min_size=size, max_size=size))
        self.arrays.append(np.array(values, dtype=dtype).reshape(full))
        self.axes.append(0 if batched else None)

    def finish(self):
        if 0 not in self.axes:          # at least one operand per example
            i = self.data.draw(st.integers(0, len(self.axes) - 1))
            self.arrays[i] = np.stack([self.arrays[i]] * self.lanes)
            self.axes[i] = 0
        return self


def shape(data, min_rank=0, max_rank=3, min_side=1, max_side=3):
    return tuple(data.draw(st.lists(st.integers(min_side, max_side), min_size=min_rank, max_size=max_rank)))


def axis_of(data, rank, allow_none=True):
    choices = ([None] if allow_none else []) + list(range(-rank, rank))
    return data.draw(st.sampled_from(choices))


# --- cases: name -> draw(d: Draw) -> params ------------------------------------------------------
CASES = {}


def case(*names):
    def register(fn):
        for name in names:
            CASES[name] = fn
        return fn
    return register


def _elementwise(d, name):
    prim = PRIMITIVES[name]
    arity = prim.impl.nin if isinstance(prim.impl, np.ufunc) else {"sigmoid": 1, "where": 3, "round": 1}[name]
    full = shape(d.data, 0, 3)
    for i in range(arity):
        own = full[d.data.draw(st.integers(0, len(full))):]        # a suffix: numpy broadcasting
        if name in INTEGER_OPS:
            d.operand(own, st.integers(1, 7), np.int64)
        elif name == "where" and i == 0:
            d.operand(own, st.booleans(), np.bool_)
        else:
            d.operand(own, DOMAINS.get(name, FLOATS))
    return {"decimals": d.data.draw(st.integers(0, 2))} if name == "round" else {}


@case("sum", "max", "min", "logsumexp", "any", "all")
def _reduction(d):
    s = shape(d.data, 0, 3)
    d.operand(s)
    axes = d.data.draw(st.none() | st.sets(st.integers(0, max(len(s) - 1, 0)), max_size=len(s)))
    axis = None if axes is None or not s else tuple(sorted(axes))
    return {"axis": axis, "keepdims": d.data.draw(st.booleans())}


@case("argmax", "argmin")
def _arg_reduction(d):
    s = shape(d.data, 1, 3)
    d.operand(s)
    return {"axis": axis_of(d.data, len(s)), "keepdims": d.data.draw(st.booleans())}


@case("softmax", "log_softmax", "sort", "argsort", "cumsum")
def _along_axis(d):
    s = shape(d.data, 1, 3)
    d.operand(s)
    return {"axis": axis_of(d.data, len(s), allow_none=False)}


@case("matmul")
def _matmul(d):
    n, m, k = (d.data.draw(st.integers(1, 3)) for _ in range(3))
    lead = shape(d.data, 0, 1)
    a_shape, b_shape = d.data.draw(st.sampled_from([
        ((n,), (n,)), ((m, n), (n,)), ((n,), (n, k)), ((m, n), (n, k)),
        (lead + (m, n), (n, k)), ((m, n), lead + (n, k)), (lead + (m, n), (n,)), ((n,), lead + (n, k))]))
    d.operand(a_shape)
    d.operand(b_shape)
    return {}


@case("matmul_t")
def _matmul_t(d):
    n, k = d.data.draw(st.integers(1, 3)), d.data.draw(st.integers(1, 3))
    d.operand(shape(d.data, 0, 2) + (n,))
    d.operand((k, n))
    return {}


@case("einsum")
def _einsum(d):
    spec = d.data.draw(st.sampled_from(["ij,j->i", "ij,jk->ik", "i,i->", "ij->j", "ij,ij->i", "i,j->ij"]))
    sizes = {c: d.data.draw(st.integers(1, 3)) for c in "ijk"}
    for sub in spec.split("->")[0].split(","):
        d.operand(tuple(sizes[c] for c in sub))
    return {"spec": spec}


@case("reshape")
def _reshape(d):
    s = shape(d.data, 1, 3)
    d.operand(s, batched=True)
    size = int(np.prod(s))
    target = d.data.draw(st.sampled_from([(size,), (1, size), (size, 1), tuple(reversed(s))]))
    return {"shape": target}


@case("transpose")
def _transpose(d):
    s = shape(d.data, 0, 3)
    d.operand(s, batched=True)
    axes = d.data.draw(st.none() | st.permutations(range(len(s))))
    return {"axes": None if axes is None else tuple(axes)}


@case("broadcast_to")
def _broadcast_to(d):
    s = shape(d.data, 1, 3)
    ones = tuple(1 if d.data.draw(st.booleans()) else x for x in s)
    d.operand(ones[d.data.draw(st.integers(0, len(ones))):], batched=True)
    return {"shape": shape(d.data, 0, 1) + s}


@case("concatenate")
def _concatenate(d):
    s = shape(d.data, 1, 3)
    axis = axis_of(d.data, len(s), allow_none=False)
    for _ in range(d.data.draw(st.integers(1, 3))):
        own = list(s)
        own[axis] = d.data.draw(st.integers(1, 3))
        d.operand(tuple(own))
    return {"axis": axis}


@case("astype")
def _astype(d):
    d.operand(shape(d.data, 0, 2), batched=True)
    return {"dtype": np.dtype(d.data.draw(st.sampled_from(["float32", "int64", "float64"])))}


@case("roll")
def _roll(d):
    s = shape(d.data, 1, 3)
    d.operand(s, batched=True)
    return {"shift": d.data.draw(st.integers(-4, 4)), "axis": axis_of(d.data, len(s))}


@case("pad")
def _pad(d):
    s = shape(d.data, 1, 3)
    d.operand(s, batched=True)
    widths = tuple((d.data.draw(st.integers(0, 2)), d.data.draw(st.integers(0, 2))) for _ in s)
    return {"pad_width": widths, "constant": d.data.draw(st.sampled_from([0, 1.5]))}


@case("full_like")
def _full_like(d):
    d.operand(shape(d.data, 0, 2), batched=True)
    return {"fill_value": d.data.draw(st.sampled_from([0, 1, 2.5])),
            "dtype": d.data.draw(st.sampled_from([None, np.float32]))}


@case("getitem")
def _getitem(d):
    s = shape(d.data, 1, 3, min_side=2)
    d.operand(s)
    kind = d.data.draw(st.sampled_from(["int", "slice", "array", "array2", "newaxis"]))
    if kind == "int":
        return {"index": (d.data.draw(st.integers(-s[0], s[0] - 1)),)}
    if kind == "slice":
        start = d.data.draw(st.integers(0, s[0]))
        return {"index": (slice(start, None),) + (slice(None, None, -1),) * (len(s) > 1)}
    if kind == "newaxis":
        return {"index": (None, Ellipsis)}
    d.operand((d.data.draw(st.integers(1, 3)),), st.integers(0, s[0] - 1), np.int64)
    if kind == "array2" and len(s) >= 2:
        d.operand((1,), st.integers(0, s[1] - 1), np.int64)
        return {"index": (P.ARRAY_SLOT, P.ARRAY_SLOT)}
    return {"index": (P.ARRAY_SLOT,)}


@case("index_update")
def _index_update(d):
    s = shape(d.data, 1, 2, min_side=2)
    d.operand(s)
    mode = d.data.draw(st.sampled_from(["set", "add"]))
    kind = d.data.draw(st.sampled_from(["int", "slice", "array"]))
    if kind == "int":
        d.operand(s[1:])
        return {"index": (d.data.draw(st.integers(0, s[0] - 1)),), "mode": mode}
    if kind == "slice":
        d.operand((s[0] - 1,) + s[1:])
        return {"index": (slice(1, None),), "mode": mode}
    n = d.data.draw(st.integers(1, 3))
    d.operand((n,) + s[1:])
    d.operand((n,), st.integers(0, s[0] - 1), np.int64)
    # operands: x, value, index array
    return {"index": (P.ARRAY_SLOT,), "mode": mode}


@case("take_lanes")
def _take_lanes(d):
    s = shape(d.data, 1, 2, min_side=2)
    d.operand(s)
    picks = d.data.draw(st.permutations(range(s[0])))[:d.data.draw(st.integers(1, s[0]))]
    d.arrays.append(np.array(picks))
    d.axes.append(None)
    return {}


@case("gather_lanes")
def _gather_lanes(d):
    rest = shape(d.data, 0, 1)
    sizes = [d.data.draw(st.integers(1, 3)) for _ in range(d.data.draw(st.integers(1, 3)))]
    for n in sizes:
        d.operand((n,) + rest)
    order = np.array(d.data.draw(st.permutations(range(sum(sizes)))))
    parts, start = [], 0
    for n in sizes:
        parts.append((order[start:start + n], np.array(d.data.draw(st.permutations(range(n))))))
        start += n
    return {"parts": tuple(parts)}


@case("rows_of_sources")
def _rows_of_sources(d):
    rest = shape(d.data, 0, 1)
    sizes = [d.data.draw(st.integers(1, 3)) for _ in range(2)]
    for n in sizes:
        d.operand((n,) + rest)
    count = d.data.draw(st.integers(1, 4))
    source_of = np.array([d.data.draw(st.integers(0, 1)) for _ in range(count)])
    rows = np.array([d.data.draw(st.integers(0, sizes[s] - 1)) for s in source_of])
    return {"source_of": source_of, "rows": rows}


def _plan(d, nrows):
    n = d.data.draw(st.integers(1, 5))
    index = np.array([d.data.draw(st.integers(0, nrows - 1)) for _ in range(n)])
    valid = None if d.data.draw(st.booleans()) else np.array([d.data.draw(st.booleans()) for _ in range(n)])
    return segments.plan_for(index, valid, nrows), n


@case("gather_rows")
def _gather_rows(d):
    nrows = d.data.draw(st.integers(1, 4))
    d.operand((nrows,) + shape(d.data, 0, 1))
    return {"plan": _plan(d, nrows)[0]}


@case("scatter_add_rows")
def _scatter_add_rows(d):
    nrows = d.data.draw(st.integers(1, 4))
    rest = shape(d.data, 0, 1)
    plan, n = _plan(d, nrows)
    d.operand((nrows,) + rest)
    d.operand((n,) + rest)
    return {"plan": plan}


@case("unpack_rows")
def _unpack_rows(d):
    nrows = d.data.draw(st.integers(1, 5))
    index = np.array(d.data.draw(st.permutations(range(nrows))))[:d.data.draw(st.integers(1, nrows))]
    d.operand((len(index),) + shape(d.data, 0, 1))
    return {"plan": segments.RowPlan(index, None, nrows)}


for _name in PACKAGE:
    if PRIMITIVES[_name].elementwise:
        CASES[_name] = (lambda name: lambda d: _elementwise(d, name))(_name)


# --- the tests ----------------------------------------------------------------------------------
def test_every_primitive_has_its_rules():
    for name, prim in PRIMITIVES.items():
        assert callable(prim.batch), f"{name}: no batching rule"
        assert callable(prim.ragged), f"{name}: no ragged rule and no reason to refuse"
        if prim.differentiable:
            assert prim.vjp is not None, f"{name}: differentiable without a VJP"
        else:
            assert prim.vjp is None, f"{name}: a VJP on a primitive that says it has no gradient"
    refusals = [p.name for p in PRIMITIVES.values() if p.ragged.__qualname__.startswith("refusal(")]
    assert {"matmul_t", "take_lanes", "broadcast_to"} <= set(refusals)


def test_every_package_primitive_has_a_case():
    assert len(PACKAGE) >= 100
    assert sorted(CASES) == PACKAGE


def _apply(prim, params):
    return sb.native(lambda *operands: prim(*operands, **params))


def _example(array, axis, i):
    return array if axis is None else array[i]


def _float(a):
    return np.asarray(a).dtype.kind == "f"


@pytest.mark.parametrize("name", PACKAGE)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_batching_rule_equals_the_per_example_loop(name, data):
    prim = PRIMITIVES[name]
    lanes = data.draw(st.integers(1, 3))
    d = Draw(data, lanes)
    params = CASES[name](d)
    d.finish()
    arrays, axes = d.arrays, tuple(d.axes)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        expected = [np.asarray(prim.impl(*[_example(a, ax, i) for a, ax in zip(arrays, axes)], **params))
                    for i in range(lanes)]
        got = np.asarray(sb.spmd(_apply(prim, params), in_axes=axes)(*arrays))
    want = np.stack(expected)
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
    with np.errstate(invalid="ignore", over="ignore"):        # (infinities compare as equal)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, equal_nan=True)
    if not prim.differentiable or want.dtype.kind != "f":
        return

    # the VJP of the batched application against the per-example VJPs
    wrt = [i for i, a in enumerate(arrays) if _float(a)]
    ct = np.asarray(data.draw(st.lists(FLOATS, min_size=want.size, max_size=want.size))).reshape(want.shape)

    def batched(*floats):
        ops = list(arrays)
        for i, f in zip(wrt, floats):
            ops[i] = f
        return sb.spmd(_apply(prim, params), in_axes=axes)(*ops)

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        _, pullback = sb.vjp(batched, *[arrays[i] for i in wrt])
        got_cts = pullback(ct)
        per_example = []
        for lane in range(lanes):
            ops = [_example(a, ax, lane) for a, ax in zip(arrays, axes)]

            def one(*floats, ops=ops):
                ops = list(ops)
                for i, f in zip(wrt, floats):
                    ops[i] = f
                return prim(*ops, **params)
            per_example.append(sb.vjp(one, *[ops[i] for i in wrt])[1](ct[lane]))
    for k, i in enumerate(wrt):
        lane_cts = [np.asarray(c[k]) for c in per_example]
        want_ct = np.stack(lane_cts) if axes[i] == 0 else np.sum(lane_cts, axis=0)
        with np.errstate(invalid="ignore", over="ignore"):    # (infinities compare as equal)
            np.testing.assert_allclose(np.asarray(got_cts[k]), want_ct, rtol=1e-9, atol=1e-9,
                                       err_msg=f"{name}: cotangent of operand {i}")
