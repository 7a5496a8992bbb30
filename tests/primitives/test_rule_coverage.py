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
  ones);
- one hypothesis test per primitive with a packed rule (the compact ragged layout,
  runtime/packed.py) compares it, with Packed, gathered, Ragged, per-example and uniform
  operands, with the loop in value, dtype and VJP (see "packed rules" below).
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
        with np.errstate(invalid="ignore", over="ignore"):    # (inf - inf is NaN on both sides;
            #                                                    equal infinities compare equal)
            want_ct = np.stack(lane_cts) if axes[i] == 0 else np.sum(lane_cts, axis=0)
            np.testing.assert_allclose(np.asarray(got_cts[k]), want_ct, rtol=1e-9, atol=1e-9,
                                       equal_nan=True, err_msg=f"{name}: cotangent of operand {i}")


# --- packed rules --------------------------------------------------------------------------------
# Each primitive with a packed rule (the compact ragged layout, runtime/packed.py) against the loop:
# operands drawn as Packed rows (or gathered rows, Ragged, per-example, uniform, integer indices),
# the primitive applied through dispatch (its packed rule, or the ragged rule where the packed rule
# declines), compared per example with the loop of its implementation in value and dtype; the VJP
# of the batched application against the per-example VJPs. A case that the rule must take itself
# (`fast`) also checks that the rule did not decline.
from spmdbatch.runtime import packed as PK  # noqa: E402
from spmdbatch.runtime import ragged as R  # noqa: E402
from spmdbatch.runtime.batched import Batched, Ragged  # noqa: E402
from spmdbatch.runtime.dispatch import bind  # noqa: E402
from spmdbatch.errors import UnsupportedOperation  # noqa: E402

PACKED = sorted(name for name in PACKAGE if PRIMITIVES[name].packed is not None)


class Operand:
    """One operand: `leaf` (the array autodiff differentiates, None for an integer index),
    `build(leaf)` (the batched operand), `example(leaf_i, i)` (example i's operand from its own
    leaf `lanes_of(leaf)[i]`), `combine(cts)` (per-example cotangents into the leaf's)."""

    def __init__(self, leaf, build, lanes_of, example, combine):
        self.leaf, self.build, self.lanes_of, self.example, self.combine = leaf, build, lanes_of, example, combine


class PackedDraw:
    def __init__(self, data):
        self.data = data
        self.lanes = data.draw(st.integers(1, 3))
        self.lengths = self.new_lengths()
        self.operands = []
        self.fast = True          # the packed rule must take these operands (else it may decline)

    def new_lengths(self, low=1):
        return np.array([self.data.draw(st.integers(low, 4)) for _ in range(self.lanes)], dtype=np.intp)

    def values(self, shape, elements=FLOATS, dtype=np.float64):
        size = int(np.prod(shape))
        return np.array(self.data.draw(st.lists(elements, min_size=size, max_size=size)), dtype=dtype).reshape(shape)

    def _split(self, lengths):
        ends = np.cumsum(lengths)
        return lambda leaf: [leaf[e - n:e] for e, n in zip(ends, lengths)]

    def packed(self, rest=(), elements=FLOATS, dtype=np.float64, lengths=None):
        lengths = self.lengths if lengths is None else lengths
        rows = self.values((int(lengths.sum()),) + tuple(rest), elements, dtype)
        layout = PK.layout_for(lengths)
        self._add(rows, lambda leaf: PK.Packed(leaf, layout), self._split(lengths),
                  lambda leaf, i: leaf, lambda cts: np.concatenate(cts))

    def gathered(self, rest=()):
        """Rows gathered by a per-example index from a packed source of other lengths."""
        src_lengths = self.new_lengths()
        src = self.values((int(src_lengths.sum()),) + tuple(rest))
        idx = [self.values((n,), st.integers(0, m - 1), np.int64) for n, m in zip(self.lengths, src_lengths)]
        index = PK.Packed(np.concatenate(idx), PK.layout_for(self.lengths))
        src_layout = PK.layout_for(src_lengths)
        self._add(src, lambda leaf: PK.gather(PK.Packed(leaf, src_layout), index), self._split(src_lengths),
                  lambda leaf, i: leaf[idx[i]], lambda cts: np.concatenate(cts))

    def ragged(self, rest=()):
        per = [self.values((n,) + tuple(rest)) for n in self.lengths]
        padded = R.from_examples(per).data
        lengths = self.lengths

        def combine(cts):
            out = np.zeros_like(padded)
            for i, (ct, n) in enumerate(zip(cts, lengths)):
                out[i, :n] = ct
            return out
        self._add(padded, lambda leaf: Ragged(leaf, lengths), lambda leaf: [leaf[i, :n] for i, n in enumerate(lengths)],
                  lambda leaf, i: leaf, combine)

    def per_example(self, shape, elements=FLOATS, dtype=np.float64):
        self._add(self.values((self.lanes,) + tuple(shape), elements, dtype), Batched, list,
                  lambda leaf, i: leaf, np.stack)

    def uniform(self, shape, elements=FLOATS, dtype=np.float64):
        self._add(self.values(tuple(shape), elements, dtype), lambda leaf: leaf,
                  lambda leaf: [leaf] * self.lanes, lambda leaf, i: leaf, lambda cts: np.sum(cts, axis=0))

    def index(self, n_of, lengths=None, low=0):
        """A per-example integer index (Packed) into arrays of per-example lengths `n_of`."""
        lengths = self.lengths if lengths is None else lengths
        idx = [self.values((n,), st.integers(low * m, m - 1), np.int64) for n, m in zip(lengths, n_of)]
        value = PK.Packed(np.concatenate(idx), PK.layout_for(lengths))
        self.operands.append(Operand(None, lambda leaf: value, None, lambda leaf, i: idx[i], None))

    def _add(self, leaf, build, lanes_of, example, combine):
        self.operands.append(Operand(leaf, build, lanes_of, example, combine))


PACKED_CASES = {}     # name -> draw(d: PackedDraw) -> (params, params of example i)


def packed_case(*names):
    def register(fn):
        for name in names:
            PACKED_CASES[name] = fn
        return fn
    return register


def _packed_elementwise(d, name):
    prim = PRIMITIVES[name]
    arity = prim.impl.nin if isinstance(prim.impl, np.ufunc) else {"sigmoid": 1, "where": 3, "round": 1}[name]
    rest = shape(d.data, 0, 2)
    rank = 1 + len(rest)
    first = d.data.draw(st.integers(0, arity - 1))          # the operand that is surely Packed
    for i in range(arity):
        if name in INTEGER_OPS:
            elements, dtype = st.integers(1, 7), np.int64
        elif name == "where" and i == 0:
            elements, dtype = st.booleans(), np.bool_
        else:
            elements, dtype = DOMAINS.get(name, FLOATS), np.float64
        kind = "packed" if i == first else d.data.draw(st.sampled_from(
            ["packed", "ragged", "per_example", "uniform", "uniform_row", "per_example_full"]))
        if kind == "packed":
            d.packed(rest, elements, dtype)
        elif kind == "ragged" and dtype == np.float64:
            d.ragged(rest)
        elif kind == "per_example":
            d.per_example(rest[d.data.draw(st.integers(0, len(rest))):], elements, dtype)
        elif kind == "uniform_row":                 # (1, ...): broadcasts along the ragged axis
            d.uniform((1,) + rest[d.data.draw(st.integers(0, len(rest))):], elements, dtype)
        elif kind == "per_example_full":            # of the rows' rank: the ragged rule runs
            d.per_example((1,) + rest, elements, dtype)
            d.fast = False
        else:
            d.uniform(rest[d.data.draw(st.integers(0, len(rest))):], elements, dtype)
    del rank
    params = {"decimals": d.data.draw(st.integers(0, 2))} if name == "round" else {}
    return params, lambda i: params


for _name in PACKED:
    if PRIMITIVES[_name].elementwise:
        PACKED_CASES[_name] = (lambda name: lambda d: _packed_elementwise(d, name))(_name)


@packed_case("sum")
def _packed_sum(d):
    rest = shape(d.data, 0, 2)
    d.packed(rest)
    nd = 1 + len(rest)
    axes = d.data.draw(st.none() | st.sets(st.integers(-nd, nd - 1), min_size=1, max_size=nd))
    axis = None if axes is None else tuple(sorted({a % nd for a in axes}))
    if axis is not None and len(axis) == 1 and d.data.draw(st.booleans()):
        axis = axis[0]
    params = {"axis": axis, "keepdims": d.data.draw(st.booleans())}
    return params, lambda i: params


@packed_case("matmul")
def _packed_matmul(d):
    k = d.data.draw(st.integers(1, 3))
    d.data.draw(st.sampled_from([d.packed, d.gathered]))((k,))
    right = d.data.draw(st.sampled_from(["matrix", "vector", "per_example"]))
    if right == "per_example":
        d.per_example((k, d.data.draw(st.integers(1, 3))))
        d.fast = False
    else:
        d.uniform((k, d.data.draw(st.integers(1, 3)))[:2 if right == "matrix" else 1])
    return {}, lambda i: {}


@packed_case("reshape")
def _packed_reshape(d):
    a, b = d.data.draw(st.integers(1, 3)), d.data.draw(st.integers(1, 3))
    d.packed((a, b))
    form = d.data.draw(st.sampled_from(["minus_one", "lengths", "flat"]))
    if form == "flat":
        d.fast = False
        lengths = d.lengths
        return {"shape": (-1,)}, lambda i: {"shape": (-1,)}
    target = d.data.draw(st.sampled_from([(a * b,), (b, a), (a * b, 1)]))
    if form == "minus_one":
        return {"shape": (-1,) + target}, lambda i: {"shape": (-1,) + target}
    lengths = d.lengths
    return ({"shape": (Batched(lengths, weak=True),) + target},
            lambda i: {"shape": (int(lengths[i]),) + target})


@packed_case("transpose")
def _packed_transpose(d):
    rest = shape(d.data, 0, 2)
    d.packed(rest)
    nd = 1 + len(rest)
    axes = d.data.draw(st.none() | st.permutations(range(nd)))
    if (axes is None and nd > 1) or (axes is not None and axes[0] != 0):
        d.fast = False
    params = {"axes": None if axes is None else tuple(axes)}
    return params, lambda i: params


@packed_case("concatenate")
def _packed_concatenate(d):
    rest = shape(d.data, 1, 2)
    nd = 1 + len(rest)
    axis = d.data.draw(st.integers(-nd, nd - 1))
    if axis % nd == 0:
        d.fast = False
    for _ in range(d.data.draw(st.integers(1, 3))):
        own = list(rest)
        if axis % nd:
            own[axis % nd - 1] = d.data.draw(st.integers(1, 3))
        if axis % nd == 0 and d.data.draw(st.booleans()):
            d.packed(own, lengths=d.new_lengths())      # along the ragged axis: other lengths too
        else:
            d.packed(own)
    return {"axis": axis}, lambda i: {"axis": axis}


@packed_case("astype")
def _packed_astype(d):
    d.packed(shape(d.data, 0, 2))
    params = {"dtype": np.dtype(d.data.draw(st.sampled_from(["float32", "int64", "float64"])))}
    return params, lambda i: params


@packed_case("getitem")
def _packed_getitem(d):
    rest = shape(d.data, 0, 2)
    d.data.draw(st.sampled_from([d.packed, d.gathered]))(rest)
    d.index(d.lengths, d.new_lengths(), low=d.data.draw(st.sampled_from([0, -1])))
    params = {"index": (P.ARRAY_SLOT,)}
    return params, lambda i: params


@packed_case("index_update")
def _packed_index_update(d):
    rest = shape(d.data, 0, 2)
    d.packed(rest)                                              # x
    edges = d.new_lengths()
    value = d.data.draw(st.sampled_from(["packed", "per_example", "uniform"]))
    if value == "packed":
        d.packed(rest, lengths=edges)
    elif value == "per_example":
        d.per_example(rest[d.data.draw(st.integers(0, len(rest))):])
    else:
        d.uniform(rest[d.data.draw(st.integers(0, len(rest))):])
    d.index(d.lengths, edges, low=d.data.draw(st.sampled_from([0, -1])))
    params = {"index": (P.ARRAY_SLOT,), "mode": "add"}     # (mode="set" by a ragged index is refused)
    return params, lambda i: params


def _examples(value):
    if type(value) is PK.Packed or hasattr(value, "_spmd_examples"):
        return [np.asarray(v) for v in value._spmd_examples()]
    if type(value) is Ragged:
        return [np.asarray(v) for v in R.to_examples(value)]
    return list(np.asarray(value.data))


def _flat(value):
    """The batched result as one flat array, examples one after another (for the VJP)."""
    if type(value) is PK.Packed:
        return value.rows.reshape(-1)
    if type(value) is Ragged:
        return PK.pack(value).rows.reshape(-1)
    return value.data.reshape(-1)


def test_every_packed_primitive_has_a_case():
    assert {"matmul", "sum", "getitem", "index_update", "add", "tanh"} <= set(PACKED)
    assert sorted(PACKED_CASES) == PACKED


@pytest.mark.parametrize("name", PACKED)
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_packed_rule_equals_the_per_example_loop(name, data):
    prim = PRIMITIVES[name]
    d = PackedDraw(data)
    params, lane_params = PACKED_CASES[name](d)
    ops = d.operands
    leaves = [op.leaf for op in ops]
    batched_ops = tuple(op.build(leaf) for op, leaf in zip(ops, leaves))
    lane_leaves = [op.lanes_of(leaf) if op.leaf is not None else [None] * d.lanes for op, leaf in zip(ops, leaves)]

    def example_ops(i, leaves_i):
        return [op.example(leaf, i) for op, leaf in zip(ops, leaves_i)]

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        expected = [np.asarray(prim.impl(*example_ops(i, [ll[i] for ll in lane_leaves]), **lane_params(i)))
                    for i in range(d.lanes)]
        direct = prim.packed(batched_ops, **params)
        try:
            got = bind(prim, batched_ops, params)
        except UnsupportedOperation:
            if d.fast or direct is not None:
                raise
            return          # the ragged rule refuses these operands (a clear error, not a wrong value)
    if d.fast:
        assert direct is not None, f"{name}: the packed rule declined operands it should take"
    for result in ([got] if direct is None else [got, direct]):
        lanes = _examples(result)
        assert len(lanes) == d.lanes
        for g, want in zip(lanes, expected):
            assert g.shape == want.shape and g.dtype == want.dtype, (g.shape, g.dtype, want.shape, want.dtype)
            with np.errstate(invalid="ignore", over="ignore"):    # (infinities compare as equal)
                np.testing.assert_allclose(g, want, rtol=1e-12, atol=1e-12, equal_nan=True)
    if not prim.differentiable or expected[0].dtype.kind != "f" or type(got) not in (PK.Packed, Ragged, Batched):
        return

    # the VJP of the batched application against the per-example VJPs
    wrt = [k for k, op in enumerate(ops) if op.leaf is not None and op.leaf.dtype.kind == "f"]
    if not wrt:
        return
    size = sum(w.size for w in expected)
    ct = np.asarray(data.draw(st.lists(FLOATS, min_size=size, max_size=size)))

    def batched(*floats):
        current = list(leaves)
        for k, f in zip(wrt, floats):
            current[k] = f
        return _flat(bind(prim, tuple(op.build(leaf) for op, leaf in zip(ops, current)), params))

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        got_cts = sb.vjp(batched, *[leaves[k] for k in wrt])[1](ct)
        per_example, start = [], 0
        for i, want in enumerate(expected):
            piece = ct[start:start + want.size].reshape(want.shape)
            start += want.size
            leaves_i = [ll[i] for ll in lane_leaves]

            def one(*floats, i=i, leaves_i=leaves_i):
                current = list(leaves_i)
                for k, f in zip(wrt, floats):
                    current[k] = f
                return prim(*example_ops(i, current), **lane_params(i))
            per_example.append(sb.vjp(one, *[leaves_i[k] for k in wrt])[1](piece))
    for j, k in enumerate(wrt):
        with np.errstate(invalid="ignore", over="ignore"):        # (as above)
            want_ct = ops[k].combine([np.asarray(c[j]) for c in per_example])
            np.testing.assert_allclose(np.asarray(got_cts[j]), want_ct, rtol=1e-9, atol=1e-9,
                                       equal_nan=True, err_msg=f"{name}: cotangent of operand {k}")
