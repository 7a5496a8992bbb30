"""Gather and scatter-add along a ragged axis: the graph operations of message passing.

Per example, graph code gathers node rows by a ragged edge index (``h[src]``, one row per
edge) and adds edge rows into node rows (``np.add.at(agg, dst, msg)`` or
``index_update(agg, dst, msg, mode="add")``). Batched, both run as ONE operation over all
lanes: a lane's rows live in the padded `data` of a `Ragged` (lanes, width, ...), so lane
``l``'s row ``i`` is row ``l * width + i`` of the flattened data, and a per-example index
becomes offsets into that flat buffer (the disjoint union that hand-batched graph code
builds, without copying the rows into it).

Scatter-add never calls ``numpy.add.at`` (slow on rows). With SciPy installed, a `RowPlan`
holds the scatter as a sparse matrix (CSR: one row per target, its positions in order) and
adds ``values`` into ``out`` with SciPy's CSR kernel (``out[t] += values[p]`` for each
target's positions in position order: the order of the loop's ``add.at``, so the sums are
the same to the bit). Otherwise, or for operands that kernel does not take, it sorts the
valid positions by target row once and splits them into *rounds* whose targets are
distinct, so each round is one buffered ``out[targets] += values[positions]``; molecules
need as many rounds as the largest in-degree (4 to 6). Plans are cached per index array, so
the sorting, the backward pass and the other rounds of a message-passing network reuse one
plan.
Padding positions of the index (past an example's length) are never read into a scatter
and get no gradient.

`segment_softmax` is the attention softmax over each node's incoming edges, written with
these operations (per example it is ordinary numpy).

The primitives they run (`gather_rows`, `scatter_add_rows`, `unpack_rows`) are declared in
spmdbatch/primitives/graph.py; the plans, the helpers of their VJPs and the batched
operations are here.
"""
from __future__ import annotations

import numpy as np

from ..errors import LaneError
from . import primitives as P
from .array_methods import index_update
from .backend import namespace
from .batched import Batched, Ragged
from .blame import user_frame

MAX_ROUNDS = 64
"""Above this many rounds (a node with more incoming edges), a scatter uses ``add.at``
(where the CSR kernel does not apply)."""

try:    # out += A @ values for a CSR matrix A, in place, rows of A in order (SciPy's kernel)
    from scipy.sparse._sparsetools import csr_matvecs as _csr_matvecs
except Exception:       # (SciPy is optional: absent, or a version without this kernel)
    _csr_matvecs = None


class RowPlan:
    """Where the rows of a gather come from and the rows of a scatter-add go.

    `index` (one int per position, always a valid row) is what a gather takes; `rounds`
    lists ``(positions, targets)`` for the valid positions only, each with distinct
    targets, in position order (so a later write of the same target comes later).
    """

    __slots__ = ("index", "nrows", "rounds", "valid_positions", "valid_targets", "padding", "_csr")

    def __init__(self, index, valid, nrows: int):
        xp = namespace(index)
        self.index = index
        self.nrows = int(nrows)
        positions = xp.arange(index.shape[0]) if valid is None else xp.flatnonzero(valid)
        targets = index if valid is None else index[positions]
        self.valid_positions, self.valid_targets = positions, targets
        self.padding = None if valid is None else xp.flatnonzero(~valid)
        self._csr = None
        self.rounds = None
        if targets.shape[0] == 0:
            self.rounds = ()
            return
        order = xp.argsort(targets, kind="stable")
        sorted_targets = targets[order]
        first = xp.empty(sorted_targets.shape[0], dtype=bool)
        first[0] = True
        first[1:] = sorted_targets[1:] != sorted_targets[:-1]
        starts = xp.flatnonzero(first)
        segment = xp.cumsum(first) - 1
        rank = xp.arange(sorted_targets.shape[0]) - starts[segment]
        count = int(rank.max()) + 1
        if count > MAX_ROUNDS:
            return                      # rounds stays None: scatter with add.at
        rounds = []
        for k in range(count):
            sel = order[rank == k]
            sel.sort()
            rounds.append((positions[sel], targets[sel]))
        self.rounds = tuple(rounds)

    def csr(self, dtype):
        """(indptr, indices, ones of `dtype`): the scatter as a CSR matrix (nrows, positions),
        each row's positions in increasing order."""
        if self._csr is None:
            order = np.argsort(self.valid_targets, kind="stable")
            counts = np.bincount(self.valid_targets, minlength=self.nrows)
            indptr = np.zeros(self.nrows + 1, dtype=np.intp)
            np.cumsum(counts, out=indptr[1:])
            self._csr = (indptr, np.ascontiguousarray(self.valid_positions[order], dtype=np.intp), {})
        indptr, indices, ones = self._csr
        data = ones.get(dtype)
        if data is None:
            data = ones[dtype] = np.ones(indices.shape[0], dtype=dtype)
        return indptr, indices, data

    def scatter_add(self, out, values):
        """Add ``values[p]`` into ``out[index[p]]`` for every valid position p, in place."""
        if _csr_matvecs is not None and type(out) is np.ndarray and type(values) is np.ndarray \
                and out.dtype == values.dtype and out.dtype.kind in "fc" and out.ndim >= 1 \
                and values.shape[1:] == out.shape[1:] and out.flags.c_contiguous and out.size \
                and out.shape[0] == self.nrows and values.shape[0] == self.index.shape[0] \
                and type(self.valid_targets) is np.ndarray:
            width = out.size // out.shape[0]
            indptr, indices, data = self.csr(out.dtype)
            v = np.ascontiguousarray(values)
            _csr_matvecs(self.nrows, v.shape[0], width, indptr, indices, data, v.reshape(-1), out.reshape(-1))
            return out
        if self.rounds is None:
            namespace(out).add.at(out, self.valid_targets, values[self.valid_positions])
            return out
        for positions, targets in self.rounds:
            out[targets] += values[positions]
        return out


_PLANS: dict = {}


def _equal(a, b) -> bool:
    """Whether two index arrays (or Nones) hold the same values (quickly for numpy's)."""
    if a is b:
        return True
    if a is None or b is None or a.shape != b.shape:
        return False
    if type(a) is np.ndarray and type(b) is np.ndarray and a.dtype == b.dtype:
        return a.tobytes() == b.tobytes()
    return bool(namespace(a).array_equal(a, b))


def _cached(cache, key, arrays, build):
    """A cache of plans by `key` (shapes), each entry checked against the `arrays` it was
    built from (their contents, not their identity: a caller may reuse a buffer)."""
    entries = cache.setdefault(key, [])
    for entry in entries:
        if all(_equal(a, b) for a, b in zip(entry[0], arrays)):
            return entry[1]
    plan = build()
    if len(entries) >= 8:
        entries.pop(0)
    if len(cache) > 64:
        cache.clear()
        entries = cache.setdefault(key, [])
    entries.append((arrays, plan))
    return plan


def plan_for(index, valid, nrows: int) -> RowPlan:
    """The (cached) plan of a flat index and its valid positions."""
    key = (index.shape[0], nrows, None if valid is None else valid.shape)
    return _cached(_PLANS, key, (index, valid), lambda: RowPlan(index, valid, nrows))


_ROWS: dict = {}


def valid_rows_plan(lengths, width: int) -> RowPlan:
    """The plan whose index lists the valid rows of a padded (lanes, width, ...) array,
    flattened to (lanes * width, ...): each example's rows one after another."""
    lengths = np.asarray(lengths)

    def build():
        valid = (np.arange(width)[None, :] < lengths[:, None]).reshape(-1)
        return RowPlan(np.flatnonzero(valid), None, lengths.shape[0] * width)
    return _cached(_ROWS, (lengths.shape[0], width), (lengths,), build)


def scatter_rows(g, plan, shape, dtype):
    """Zeros of `shape` with the rows of `g` added at the plan's valid positions (raw): the
    cotangent of `gather_rows`."""
    out = namespace(g).zeros(shape, dtype=dtype)
    return plan.scatter_add(out, g)


def take_valid_rows(g, plan, dtype):
    """``g[plan.index]`` with zero rows at padding positions (raw): the cotangent of the
    values of `scatter_add_rows`."""
    out = g.take(plan.index, axis=0)
    if out.dtype != dtype:
        out = out.astype(dtype)
    if plan.padding is not None and plan.padding.shape[0]:
        out[plan.padding] = 0
    return out


# --- batched (ragged) gather and scatter-add ---------------------------------------------------
def _raw(a):
    return getattr(a, "value", a)


def _lane_lengths(x):
    """Each lane's length along the first per-example axis (x: Ragged or Batched)."""
    lengths = getattr(x, "lengths", None)
    if lengths is not None:
        return np.asarray(lengths)
    return np.full(x.data.shape[0], x.data.shape[1], dtype=np.intp)


def _flat_index(x, idx, depth):
    """(flat index, valid mask or None) of per-example index `idx` (Ragged or Batched, of
    rank >= 1 per example; ragged along its first axis) into the flattened rows of `x`, with
    negative indices counted from each example's end and out-of-range indices reported as a
    LaneError."""
    lanes, width = x.data.shape[0], x.data.shape[1]
    raw = np.asarray(_raw(idx.data))
    if raw.dtype.kind not in "iu":
        raise IndexError("arrays used as indices must be of integer type")
    trailing = (1,) * (raw.ndim - 2)
    lengths = _lane_lengths(x).reshape((-1, 1) + trailing)
    idx_lengths = getattr(idx, "lengths", None)
    valid = None
    if idx_lengths is not None:
        valid = np.broadcast_to((np.arange(raw.shape[1])[None, :] < np.asarray(idx_lengths)[:, None])
                                .reshape(raw.shape[:2] + trailing), raw.shape)
    adjusted = np.where(raw < 0, raw + lengths, raw)
    bad_pos = (adjusted < 0) | (adjusted >= lengths)
    if valid is not None:
        bad_pos &= valid
    if bad_pos.any():
        bad = np.flatnonzero(bad_pos.reshape(lanes, -1).any(axis=1)).tolist()
        filename, lineno = user_frame(depth)
        raise LaneError(f"IndexError: index out of range for the first axis (length varies per "
                        f"example) in examples {bad}", bad, filename, lineno)
    if valid is not None:
        adjusted = np.where(valid, adjusted, 0)
    flat = (adjusted + (np.arange(lanes) * width).reshape((-1, 1) + trailing)).reshape(-1)
    return flat, (None if valid is None else valid.reshape(-1))


def _with_width(x):
    """x's data, padded to width >= 1 along the first per-example axis (so a clamped
    padding index always names a row)."""
    data = x.data
    if data.shape[1] > 0:
        return data
    raw = _raw(data)
    return P.concatenate(data, np.zeros((data.shape[0], 1) + tuple(data.shape[2:]), dtype=raw.dtype),
                         axis=1)


def applies(idx, rank=1) -> bool:
    """True when `idx` is a per-example integer index array these operations take: of
    per-example rank 1 (a scatter), or of rank >= 1 when `rank` is None (a gather)."""
    return isinstance(idx, Batched) and (idx.data.ndim == 2 if rank == 1 else idx.data.ndim >= 2) \
        and _raw(idx.data).dtype.kind in "iu"


def gather(x, idx):
    """``x[idx]`` per example (x: Ragged or Batched with >= 1 per-example axes; idx: a
    Ragged or Batched integer array, such as edges (E,) or (E, 2)): one take over the
    flattened rows of all lanes. The result is ragged like `idx`."""
    data = _with_width(x)
    lanes, width = data.shape[0], data.shape[1]
    flat, valid = _flat_index(x, idx, 4)
    rest = tuple(data.shape[2:])
    plan = plan_for(flat, valid, lanes * width)
    rows = P.gather_rows(P.reshape(data, shape=(lanes * width,) + rest), plan=plan)
    out = P.reshape(rows, shape=tuple(idx.data.shape) + rest)
    lengths = getattr(idx, "lengths", None)
    return Batched(out) if lengths is None else Ragged(out, lengths)


def scatter_add(x, idx, value):
    """``x`` with ``value`` rows added at ``x[idx]`` per example, repeated indices
    accumulating (numpy.add.at): one scatter over all lanes. `value` is a per-example
    array of shape ``idx.shape + x.shape[1:]`` (ragged like idx), or broadcasts to it."""
    data = x.data
    lanes, width = data.shape[0], data.shape[1]
    rest = tuple(data.shape[2:])
    flat, valid = _flat_index(x, idx, 4)
    m = idx.data.shape[1]
    if isinstance(value, Batched):
        v = value.data
        if type(value) is Ragged and getattr(idx, "lengths", None) is not None and \
                not np.array_equal(np.asarray(value.lengths), np.asarray(idx.lengths)):
            raise ValueError("shape mismatch: the values of a scatter have a different length "
                             "than its index in some example")
        if v.ndim == 1:
            v = P.reshape(v, shape=(lanes,) + (1,) * (1 + len(rest)))
        elif type(value) is not Ragged and v.ndim - 1 <= len(rest):
            v = P.reshape(v, shape=(lanes, 1) + tuple(v.shape[1:]))
        if v.shape[1] != m:
            if v.shape[1] < m and type(value) is Ragged:   # padded less wide than the index
                raw = _raw(v)
                v = P.concatenate(v, np.zeros((lanes, m - v.shape[1]) + tuple(v.shape[2:]), raw.dtype), axis=1)
            elif v.shape[1] != 1:
                raise ValueError(f"shape mismatch: values of per-example shape {tuple(value.shape)} "
                                 f"cannot be added at an index of length {m}")
    else:
        # a uniform value broadcasts against each example's (m, *rest) from the right
        v = value if np.ndim(value) else np.asarray(value, dtype=_raw(data).dtype)
        if np.ndim(v) > 1 + len(rest):
            raise ValueError(f"shape mismatch: values of shape {tuple(np.shape(v))} cannot be "
                             f"added at an index of length {m} into rows of shape {rest}")
        v = P.reshape(v, shape=(1,) * (2 + len(rest) - np.ndim(v)) + tuple(np.shape(v)))
    target = (lanes, m) + rest
    if tuple(v.shape) != target:
        v = P.broadcast_to(P.reshape(v, shape=tuple(v.shape) + (1,) * (len(target) - v.ndim))
                           if v.ndim < len(target) else v, shape=target)
    plan = plan_for(flat, valid, lanes * width)
    out = P.scatter_add_rows(P.reshape(data, shape=(lanes * width,) + rest),
                           P.reshape(v, shape=(lanes * m,) + rest), plan=plan)
    out = P.reshape(out, shape=(lanes, width) + rest)
    return Ragged(out, x.lengths) if type(x) is Ragged else Batched(out)


# --- attention over incoming edges ---------------------------------------------------------------
def segment_softmax(scores, segment_ids, num_segments):
    """Softmax of `scores` (one per edge: shape (E,) or (E, heads)) over the edges that share
    a segment id (the edges into one node): ``exp(s) / (sum of exp over the segment)``.

    Written for ONE example and batched like any per-example code: `scores` and
    `segment_ids` may be numpy arrays, tracers or per-example (ragged) values, and
    `num_segments` (the number of nodes) an int or ``len(h)`` inside @spmd code. The scores
    are shifted by their maximum over all edges (per example and head) before `exp`, which
    changes neither the result nor its gradient; scores of one example that spread over
    more than about 80 (float32) or 700 (float64) underflow in segments far below it.
    """
    raw = scores.data if isinstance(scores, Batched) else getattr(scores, "rows", scores)   # (Packed)
    if raw.shape[-scores.ndim] == 0:
        return scores * 1.0                              # no edges (in any example)
    peak = scores.max(axis=0, keepdims=True)
    shift = np.where(np.isfinite(peak), _stop(peak), 0)   # (examples without edges: -inf)
    d = scores - shift
    e = np.exp(np.where(d <= 0, d, 0))                   # (padding may hold anything)
    den = index_update(_zeros(num_segments, tuple(scores.shape[1:]), e.dtype), segment_ids, e, mode="add")
    per_edge = den[segment_ids]
    return e / np.where(per_edge > 0, per_edge, 1)


def _zeros(n, rest, dtype):
    """Zeros of shape (n,) + rest, where n may be varying (a Batched of lengths)."""
    if isinstance(n, Batched):
        lengths = np.asarray(_raw(n.data)).astype(np.intp)
        width = max(int(lengths.max()) if lengths.size else 0, 1)
        return Ragged(np.zeros((lengths.shape[0], width) + rest, dtype=dtype), lengths)
    return np.zeros((int(n),) + rest, dtype=dtype)


def _stop(x):
    """x without its gradient (batched, traced or raw)."""
    hook = getattr(x, "_spmd_stop_gradient", None)
    if hook is not None:
        return hook()
    value = getattr(x, "value", None)
    return x if value is None else value


def __getattr__(name: str):
    # the row primitives (declared in spmdbatch/primitives/graph.py) by their old names here
    if name in ("gather_rows", "scatter_add_rows", "unpack_rows"):
        return getattr(P, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
