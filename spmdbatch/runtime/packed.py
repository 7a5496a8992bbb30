"""`Packed`: a ragged per-example value in the compact (disjoint-union) layout.

A `Ragged` pads every example to the longest one; graph models on molecules (1 to 24 atoms,
9 on average) would spend most of each elementwise operation, matmul and backward step on
padding. A `Packed` keeps only the valid rows: ``rows`` (total rows of all lanes, ...) holds
lane 0's rows, then lane 1's, and so on (how hand-batched graph code lays out a minibatch),
and a `Layout` (cached per lengths) gives each lane's length, first row and the lane of
each row. Per example it is the same value as the `Ragged` it stands for (``to_ragged``).

A primitive applied to a `Packed` operand runs its packed rule (`Primitive.packed`, declared
with the primitive in spmdbatch/primitives/: ``(T, d) @ (d, h)``, sums over any axes,
reshapes and transposes that keep the ragged axis first, ``h[idx]`` gathers and
``index_update(agg, dst, msg, mode="add")`` scatters by a per-example index, concatenation
along a trailing axis, dtype conversion). Elementwise primitives derive theirs here
(`elementwise`: uniform values, per-example values of lower rank expanded to rows, other
ragged values of the same lengths). Where a primitive has no packed rule, or its rule
returns None for these operands, the `Packed` operands become `Ragged` (one scatter of the
rows into padded data, done once per value) and the ragged rule runs, so the result and its
gradient are the same either way.

Here: the value type, its layout, the dispatch handler, the rule of elementwise primitives
and the helpers the other rules share (`expand`, `same_layout`, `gather` and `scatter_add`
by a ragged index with their cached row plans). `ragged_matmul` (here) creates `Packed`
values (a matmul on the valid rows of a padded `Ragged`), as do the gathers and scatters.
"""
from __future__ import annotations

import numpy as np

from ..errors import VaryingValueError
from . import primitives as P
from . import segments as S
from .array_methods import ArrayMethods
from .backend import namespace
from .batched import Batched, Ragged
from .blame import lane_error, user_frame
from .dispatch import bind, register_value_type
from .refusals import RefusesConcrete


class Layout:
    """Where each lane's rows are in a packed array: `lengths` (lanes,), `starts` (first row
    of each lane), `total` rows, `row_lane` (lanes of the rows), `width` (the longest lane)
    and `valid` (the RowPlan of the valid positions of the padded (lanes * width) rows)."""

    __slots__ = ("lengths", "lanes", "total", "starts", "row_lane", "width", "valid", "_expand")

    def __init__(self, lengths):
        lengths = np.asarray(lengths).astype(np.intp, copy=False)
        self.lengths = lengths
        self.lanes = lengths.shape[0]
        ends = np.cumsum(lengths)
        self.total = int(ends[-1]) if self.lanes else 0
        self.starts = ends - lengths
        self.row_lane = np.repeat(np.arange(self.lanes, dtype=np.intp), lengths)
        self.width = int(lengths.max()) if self.lanes else 0
        self.valid = S.valid_rows_plan(lengths, self.width)
        self._expand = None

    def expand_plan(self):
        """The plan that gathers one row per packed row from per-lane data (lanes, ...)."""
        if self._expand is None:
            self._expand = S.RowPlan(self.row_lane, None, self.lanes)
        return self._expand


_LAYOUTS: dict = {}
_LAST_LAYOUT: list = [None, None]       # (lengths array, its layout): the common repeat


def layout_for(lengths) -> Layout:
    """The (cached) layout of per-lane `lengths` (one object per distinct lengths)."""
    last = _LAST_LAYOUT
    if lengths is last[0]:
        return last[1]
    raw = np.asarray(lengths).astype(np.intp, copy=False)
    key = raw.tobytes()
    layout = _LAYOUTS.get(key)
    if layout is None:
        if len(_LAYOUTS) >= 256:
            _LAYOUTS.clear()
        layout = _LAYOUTS[key] = Layout(raw)
    last[0], last[1] = lengths, layout
    return layout


class Packed(RefusesConcrete, ArrayMethods):
    """Per-example arrays of different lengths along their first axis, stored as the rows of
    all lanes one after another (see the module docstring)."""

    __slots__ = ("rows", "layout", "_ragged", "gathered_from")

    def __init__(self, rows, layout, gathered_from=None):
        self.rows = rows
        self.layout = layout
        self._ragged = None
        # (source rows, RowPlan) when rows == gather_rows(source, plan): a product with a
        # uniform matrix then multiplies the (fewer) source rows and gathers the result
        self.gathered_from = gathered_from

    lengths = property(lambda self: self.layout.lengths)
    ndim = property(lambda self: self.rows.ndim)
    dtype = property(lambda self: self.rows.dtype)
    xp = property(lambda self: namespace(getattr(self.rows, "value", self.rows)))

    @property
    def shape(self):
        return (Batched(self.layout.lengths, weak=True),) + tuple(self.rows.shape[1:])

    def to_ragged(self):
        """The same value as a (padded) `Ragged` (computed once)."""
        if self._ragged is None:
            lay = self.layout
            rest = tuple(self.rows.shape[1:])
            padded = S.unpack_rows(self.rows, plan=lay.valid)
            self._ragged = Ragged(P.reshape(padded, shape=(lay.lanes, lay.width) + rest), lay.lengths)
        return self._ragged

    materialize = to_ragged        # (what the execution runtime calls to get an array value)

    # --- the execution runtime's protocol -------------------------------------------------
    def _spmd_lane_count(self):
        return self.layout.lanes

    def _spmd_take_lanes(self, idx):
        idx = np.asarray(idx)
        if idx.shape[0] == self.layout.lanes and np.array_equal(idx, np.arange(idx.shape[0])):
            return Packed(self.rows, self.layout, self.gathered_from)
        return self.to_ragged()._spmd_take_lanes(idx)

    def _spmd_merge_lanes(self, others, counts):
        return self.to_ragged()._spmd_merge_lanes([as_padded(o) for o in others], counts)

    def _spmd_stop_gradient(self):
        return Packed(getattr(self.rows, "value", self.rows), self.layout)

    def _spmd_assign(self, other):
        """Stand for `other` (an in-place update such as numpy.add.at)."""
        other = as_packed(other)
        if type(other) is not Packed:
            filename, lineno = user_frame()
            raise VaryingValueError(f"an in-place update that turns a ragged array into a "
                                    f"{type(other).__name__}", filename, lineno,
                                    "Write `out = spmdbatch.index_update(out, idx, values, mode='add')`.")
        self.rows, self.layout, self._ragged = other.rows, other.layout, None

    def _spmd_examples(self):
        """The per-example arrays, for spmd's return value."""
        rows = getattr(self.rows, "value", self.rows)
        lay = self.layout
        return [rows[s:s + n] for s, n in zip(lay.starts.tolist(), lay.lengths.tolist())]

    # --- Python needs one value (the rest: RefusesConcrete) ----------------------------------
    _refusal_hint = "Branch on it inside the @spmd function, or keep it an array."

    def __len__(self):
        raise self._refuse("len() as a Python int", "Inside @spmd code len(x) works (it is varying).")

    def __hash__(self):
        raise self._refuse("hash (dict key / set member)")

    def __repr__(self):
        return f"Packed(lanes={self.layout.lanes}, rows={self.rows.shape}, dtype={self.dtype})"


def as_padded(x):
    """`x` with Packed turned into Ragged (anything else as it is)."""
    return x.to_ragged() if type(x) is Packed else x


def pack(r, layout=None):
    """The `Packed` of a `Ragged` (its valid rows, one gather)."""
    layout = layout or layout_for(r.lengths)
    data = r.data
    lanes, width = data.shape[0], data.shape[1]
    rest = tuple(data.shape[2:])
    if width == layout.width:
        plan = layout.valid
    else:
        plan = S.valid_rows_plan(layout.lengths, width)
    rows = S.gather_rows(P.reshape(data, shape=(lanes * width,) + rest), plan=plan)
    return Packed(rows, layout)


def as_packed(x):
    """A Ragged (or Packed) as Packed; anything else unchanged."""
    if type(x) is Ragged:
        return pack(x)
    return x


def same_layout(a: Layout, b: Layout) -> bool:
    """True when two layouts have the same lengths."""
    return a is b or np.array_equal(a.lengths, b.lengths)


# --- dispatch --------------------------------------------------------------------------------
def _packed_apply(prim, args, params):
    """Run `prim`'s packed rule; without one, or where it returns None, run the ragged rule
    on the Ragged forms of the Packed operands."""
    rule = prim.packed
    if rule is not None:
        out = rule(args, **params)
        if out is not None:
            return out
    return bind(prim, tuple(as_padded(a) for a in args), params)


def expand(b, layout, rank):
    """A per-lane Batched `b` of per-example rank < `rank` as one row per packed row,
    right-aligned against rows of rank `rank` (per-example broadcasting)."""
    data = b.data
    rows = S.gather_rows(data, plan=layout.expand_plan())
    k = data.ndim - 1
    if k < rank - 1:
        rows = P.reshape(rows, shape=(layout.total,) + (1,) * (rank - 1 - k) + tuple(data.shape[1:]))
    return rows


# --- elementwise ------------------------------------------------------------------------------
def elementwise(prim):
    """The packed rule of an elementwise primitive: one call on the rows when every ragged
    operand has the same lengths (Packed, or Ragged of the packed rank), the per-example
    operands have lower rank (expanded to rows) and the uniform ones do not span the ragged
    axis; None otherwise (the ragged rule runs)."""
    def rule(args, **params):
        return _elementwise(prim, args, params)
    rule.__qualname__ = f"elementwise({prim.name})"
    return rule


# --- dispatch --------------------------------------------------------------------------------
def _elementwise(prim, args, params):
    layout = None
    rank = 0
    for a in args:
        if type(a) is Packed:
            if layout is None:
                layout = a.layout
            elif not same_layout(layout, a.layout):
                bad = np.flatnonzero(layout.lengths != a.layout.lengths)
                raise lane_error(ValueError(f"operands could not be broadcast together ({prim.name} "
                                            f"of sequences of different lengths)"), bad)
            rank = max(rank, a.rows.ndim)
    operands = []
    for a in args:
        kind = type(a)
        if kind is Packed:
            operands.append(a.rows)
        elif kind is Ragged:
            if a.data.ndim - 1 != rank or not np.array_equal(a.lengths, layout.lengths):
                return None
            operands.append(pack(a, layout).rows)
        elif isinstance(a, Batched):
            if kind is not Batched or a.weak or a.data.ndim - 1 >= rank:
                return None
            operands.append(expand(a, layout, rank))
        elif hasattr(a, "_spmd_take_lanes") or hasattr(a, "_spmd_lane_count"):
            return None                           # another per-example kind: the general path
        else:
            nd = getattr(a, "ndim", None)
            if nd is None:
                nd = np.ndim(a)
            if nd > rank or (nd == rank and a.shape[0] != 1):
                return None                       # a uniform value spanning the ragged axis
            operands.append(a)
    # (no padding here: a warning, such as an overflow, comes from an example's own values)
    return Packed(bind(prim, tuple(operands), params), layout)


_INDEX: dict = {}       # id(Ragged index) -> (index, its data, lengths, rows, layout)


def _index_rows(idx):
    """(values, layout) of a ragged integer index (Packed or Ragged; an index is used in
    every round of message passing, so a Ragged index is packed once), else (None, None)."""
    if type(idx) is Ragged:
        hit = _INDEX.get(id(idx))
        if hit is not None and hit[0] is idx and hit[1] is idx.data and hit[2] is idx.lengths:
            return hit[3], hit[4]
        data = idx.data
        if type(data) is not np.ndarray or data.dtype.kind not in "iu" or data.ndim != 2:
            return None, None
        layout = layout_for(idx.lengths)
        plan = layout.valid if data.shape[1] == layout.width else S.valid_rows_plan(layout.lengths, data.shape[1])
        rows = data.reshape(-1)[plan.index]
        if len(_INDEX) >= 64:
            _INDEX.clear()
        _INDEX[id(idx)] = (idx, data, idx.lengths, rows, layout)
        return rows, layout
    if type(idx) is Packed:
        rows = getattr(idx.rows, "value", idx.rows)
        if rows.dtype.kind in "iu":
            return rows, idx.layout
    return None, None


_TARGETS: dict = {}     # (id(index rows), id(x layout)) -> (rows, layout, plan)


def _plan(x_layout, index, index_layout):
    """The (cached) RowPlan of the rows of `x` that `index` names per example."""
    key = (id(index), id(x_layout))
    hit = _TARGETS.get(key)
    if hit is not None and hit[0] is index and hit[1] is x_layout:
        return hit[2]
    flat = _flat_targets(x_layout, index, index_layout)
    plan = S.plan_for(flat, None, x_layout.total)
    if len(_TARGETS) >= 64:
        _TARGETS.clear()
    _TARGETS[key] = (index, x_layout, plan)
    return plan


def _flat_targets(x_layout, index, index_layout):
    """Rows of `x` named by each example's `index` (negative: from the example's end); an
    index outside its example raises a LaneError naming the examples."""
    raw = np.asarray(index)
    lane = index_layout.row_lane
    n = x_layout.lengths[lane]
    adjusted = np.where(raw < 0, raw + n, raw)
    bad_at = (adjusted < 0) | (adjusted >= n)
    if bad_at.any():
        bad = np.unique(lane[bad_at]).tolist()
        raise lane_error(IndexError("index out of range for the first axis (length varies per "
                                    "example)"), bad)
    return adjusted + x_layout.starts[lane]


def gather(x, idx):
    """``x[idx]`` per example for a Packed `x` (T, ...) and a ragged integer index (E,): one
    take over the packed rows; Packed like the index. None when this does not apply."""
    index, index_layout = _index_rows(idx)
    if index is None or np.ndim(index) != 1:
        return None
    plan = _plan(x.layout, index, index_layout)
    return Packed(S.gather_rows(x.rows, plan=plan), index_layout, (x.rows, plan))


def scatter_add(x, idx, value):
    """``x`` (Packed or Ragged) with `value` rows added at ``x[idx]`` per example (repeated
    indices accumulate, as numpy.add.at), for a ragged integer index (E,) and values ragged
    like it (or broadcasting over its rows): one scatter over the packed rows. None when
    this does not apply."""
    index, index_layout = _index_rows(idx)
    if index is None or np.ndim(index) != 1:
        return None
    target = as_packed(x)
    if type(target) is not Packed:
        return None
    rest = tuple(target.rows.shape[1:])
    if type(value) is Ragged:
        value = pack(value)
    if type(value) is Packed:
        if not same_layout(value.layout, index_layout):
            raise ValueError("shape mismatch: the values of a scatter have a different length "
                             "than its index in some example")
        v = value.rows
    elif isinstance(value, Batched):
        if type(value) is not Batched or value.weak or value.data.ndim - 1 > len(rest):
            return None
        v = expand(value, index_layout, 1 + len(rest))
    elif hasattr(value, "_spmd_take_lanes"):
        return None
    else:
        if np.ndim(value) > len(rest):
            return None
        # (a Python or numpy number takes the target's dtype; arrays, traced ones too, broadcast)
        v = np.asarray(value, dtype=target.dtype) if isinstance(value, (int, float, complex, np.generic)) \
            else value
    shape = (index_layout.total,) + rest
    if tuple(np.shape(v)) != shape:
        v = P.broadcast_to(v, shape=shape)
    plan = _plan(target.layout, index, index_layout)
    return Packed(S.scatter_add_rows(target.rows, v, plan=plan), target.layout)


COMPACT_BELOW = 0.8
"""A ragged matmul packs its operand when the valid rows are fewer than this share of the
padded rows (else it runs one GEMM over the padded rows and stays a Ragged)."""


def ragged_matmul(a, b):
    """``a @ b`` for a ragged (T, d) `a` (a padded Ragged) and a uniform (d, h) `b`: when
    padding is a large share, one GEMM over the valid rows of all examples (their disjoint
    union), a Packed result; else None (the caller multiplies the padded rows)."""
    data = a.data
    lanes, width, _ = data.shape
    if lanes * width == 0:
        return None
    layout = layout_for(a.lengths)
    if layout.total >= COMPACT_BELOW * lanes * width:
        return None
    return Packed(P.matmul(pack(a, layout).rows, b), layout)


register_value_type(Packed, 3.7, _packed_apply)   # (before Ragged and RaggedT when they meet)

from .pytree import register_leaf_type  # noqa: E402

register_leaf_type(Packed)
