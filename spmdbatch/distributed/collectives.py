"""All-reduce and broadcast of pytrees across the ranks of a job.

`allreduce(tree, op)` combines every rank's tree leaf by leaf ('sum' or 'mean'):

- dense leaves (numpy arrays, numpy scalars, Python numbers; CuPy arrays are staged through
  host memory) are packed into one contiguous buffer per dtype and reduced with one
  all-reduce per buffer;
- row-sparse leaves (`SparseRows`, the embedding gradients of ``value_and_grad(...,
  sparse=True)``) stay row-sparse: each rank coalesces its rows, the ranks gather every
  rank's (row indices, rows) and each adds them up in rank order, so all ranks get the same
  bits. Only when the gathered rows would be larger than a dense all-reduce of the table
  (and a byte per row for which rows were touched) is the table reduced densely; the result
  is still a `SparseRows` over the touched rows, so a row-sparse optimiser step (Adagrad)
  stays row-sparse and leaves the other rows alone;
- a rank whose shard of the minibatch is empty passes `NO_GRADIENT` leaves (see
  `zeros_like_leaves`) and contributes nothing;
- a leaf dense on some ranks and row-sparse on others is reduced densely (as adding a dense
  and a row-sparse gradient in one process gives a dense one).

Before the data move, every rank learns every rank's leaf kinds, shapes and dtypes (one small
gather of descriptors), so ranks whose trees disagree all raise the same `DistributedError`
instead of exchanging mismatched buffers or waiting for each other.

`broadcast(tree, root)` gives every rank root's leaves (initial parameters), into trees of
the same structure on every rank.
"""
from __future__ import annotations

import numpy as np

from ..ad.sparse import SparseRows
from ..ad.tracer import is_traced
from ..runtime import pytree
from ..runtime.backend import _is_cupy_array, cupy_module
from .comm import DistributedError, get_comm

OPS = ("sum", "mean")


class _NoGradient:
    """The leaf a rank without examples contributes: zeros of the other ranks' kind."""

    __slots__ = ()

    def __repr__(self):
        return "NO_GRADIENT"


NO_GRADIENT = _NoGradient()
"""A leaf meaning 'nothing from this rank' (zeros), whatever the other ranks send."""


def zeros_like_leaves(tree):
    """`tree` with every leaf replaced by `NO_GRADIENT` (the gradient of an empty shard)."""
    leaves, treedef = pytree.flatten(tree)
    return treedef.unflatten([NO_GRADIENT] * len(leaves))


# --- describing leaves -------------------------------------------------------------------------
def _reduction_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype == np.float16 else dtype


def _host(x):
    return x.get() if _is_cupy_array(x) else np.asarray(x)


class _Leaf:
    """One leaf made ready for a collective: its kind, host data and what to rebuild.

    `tag` says what the leaf was, so every rank rebuilds the same type: 'int', 'float',
    'complex' (Python numbers), 'scalar' (numpy scalar), 'array' or 'cupy'."""

    __slots__ = ("kind", "shape", "dtype", "data", "rows", "tag")

    def __init__(self, kind, shape, dtype, data=None, rows=None, tag=None):
        self.kind, self.shape = kind, tuple(shape)
        self.dtype = None if dtype is None else np.dtype(dtype)
        self.data, self.rows, self.tag = data, rows, tag

    def descriptor(self):
        return (self.kind, self.shape, None if self.dtype is None else self.dtype.str,
                0 if self.rows is None else len(self.rows), self.tag)

    def rebuild(self, value):
        """`value` (a host array of the leaf's shape) as the kind of object the leaf was."""
        if self.tag in ("int", "float", "complex"):
            return {"int": int, "float": float, "complex": complex}[self.tag](value.reshape(()).item())
        if self.tag == "scalar":
            return self.dtype.type(value.reshape(()))
        value = value.astype(self.dtype, copy=False)
        return cupy_module().asarray(value) if self.tag == "cupy" else value


def _tag(x) -> str:
    if isinstance(x, np.generic):
        return "scalar"
    for t in (int, float, complex):
        if isinstance(x, t):
            return t.__name__
    return "cupy" if _is_cupy_array(x) else "array"


def _prepare(leaf, name, op, allow_sparse=True, shallow=False) -> _Leaf:
    """The leaf ready for a collective (`shallow`: only checked, no data prepared)."""
    if leaf is NO_GRADIENT:
        return _Leaf("none", (), None)
    if is_traced(leaf):
        raise TypeError(f"leaf {name} is a traced value: reduce gradients, not values being "
                        f"differentiated")
    if type(leaf) is SparseRows:
        if not allow_sparse:
            raise TypeError(f"leaf {name} is row-sparse (SparseRows): broadcast dense arrays")
        if shallow:
            _check_dtype(leaf.dtype, name, op)
            return _Leaf("sparse", leaf.shape, leaf.dtype)
        if not leaf.parts:
            rows, values = np.zeros(0, np.int64), np.zeros((0,) + leaf.shape[1:], dtype=leaf.dtype)
            tag = "array"
        else:
            rows, values = leaf.coalesce()
            tag = _tag(values)
            rows, values = _host(rows).astype(np.int64, copy=False), _host(values)
        _check_dtype(values.dtype, name, op)
        return _Leaf("sparse", leaf.shape, values.dtype, values, rows, tag)
    if isinstance(leaf, (bool, np.bool_)) or getattr(leaf, "dtype", None) == np.bool_:
        raise TypeError(f"leaf {name} is boolean: reduce numbers (convert it with astype(int))")
    if isinstance(leaf, (int, float, complex)):
        data = np.asarray(leaf)
    elif isinstance(leaf, (np.ndarray, np.generic)) or _is_cupy_array(leaf):
        data = leaf if shallow else _host(leaf)
    else:
        raise TypeError(f"leaf {name} is a {type(leaf).__name__}: the leaves of a reduced tree must "
                        f"be numbers, numpy (or CuPy) arrays or row-sparse gradients")
    _check_dtype(data.dtype, name, op)
    return _Leaf("dense", data.shape, data.dtype, data, None, _tag(leaf))


def _check_dtype(dtype, name, op):
    kind = np.dtype(dtype).kind
    if kind not in "iufc":
        raise TypeError(f"leaf {name} has dtype {dtype}: reduce numeric arrays")
    if op == "mean" and kind in "iu":
        raise TypeError(f"leaf {name} has integer dtype {dtype}: op='mean' would change its dtype; "
                        f"use op='sum' for counts")


def _names(tree):
    from ..nn.module import named_leaves  # noqa: PLC0415  (only for error messages)
    try:
        return [repr(n) if n else "<root>" for n, _ in named_leaves(tree)]
    except Exception:
        return None


def _prepare_all(tree, op, allow_sparse=True, shallow=False):
    """(leaves, treedef, prepared leaves, error): a leaf that cannot be reduced gives an
    error message (raised after the ranks have compared notes, so that all of them raise)."""
    leaves, treedef = pytree.flatten(tree)
    prepared = []
    for i, leaf in enumerate(leaves):
        try:
            prepared.append(_prepare(leaf, f"#{i}", op, allow_sparse, shallow))
        except TypeError as exc:
            names = _names(tree)
            message = str(exc).replace(f"leaf #{i}", f"leaf {names[i]}", 1) if names else str(exc)
            return leaves, treedef, None, message
    return leaves, treedef, prepared, None


def _exchange(comm, prepared, error, what):
    """Every rank's descriptors; raises TypeError on every rank when one rank's tree has a
    leaf that cannot be reduced."""
    if comm.size == 1:
        if error:
            raise TypeError(error)
        return None
    all_descriptors = comm.allgather_object(error or [p.descriptor() for p in prepared])
    for r, d in enumerate(all_descriptors):
        if isinstance(d, str):
            raise TypeError(d if r == comm.rank else f"rank {r}'s {what}: {d}")
    return all_descriptors


def _agree(all_descriptors, what, tree, reference=0):
    """Check every rank's descriptors against the reference rank's; since every rank checks
    the same gathered list, every rank reaches the same verdict."""
    first = all_descriptors[reference]
    for r, descs in enumerate(all_descriptors):
        if len(descs) != len(first):
            raise DistributedError(f"rank {r}'s {what} has {len(descs)} leaves, rank {reference}'s "
                                   f"{len(first)}: every rank must pass a tree of the same structure")
    names = None
    for i in range(len(first)):
        seen = [(r, d[i]) for r, d in enumerate(all_descriptors) if d[i][0] != "none"]
        seen.sort(key=lambda item: item[0] != reference)
        for r, d in seen[1:]:
            r0, d0 = seen[0]
            if d[1] != d0[1] or d[2] != d0[2]:
                names = names or _names(tree) or [f"#{k}" for k in range(len(first))]
                raise DistributedError(
                    f"leaf {names[i]} of the {what}: rank {r} has shape {d[1]} and dtype {d[2]}, "
                    f"rank {r0} shape {d0[1]} and dtype {d0[2]}")


# --- all-reduce ----------------------------------------------------------------------------------
def allreduce(tree, op: str = "mean", *, comm=None):
    """The leaf-wise sum or mean of `tree` over all ranks (the same result on every rank).

    Every rank must call it with a tree of the same structure, leaf shapes and dtypes
    (`NO_GRADIENT` leaves excepted). Integer leaves may be summed, not averaged; boolean
    and other leaves are refused with TypeError. Python numbers come back as Python numbers,
    numpy scalars as numpy scalars, row-sparse gradients as `SparseRows`."""
    if op not in OPS:
        raise ValueError(f"op must be 'sum' or 'mean', not {op!r}")
    comm = comm or get_comm()
    leaves, treedef, prepared, error = _prepare_all(tree, op, shallow=comm.size == 1)
    all_descriptors = _exchange(comm, prepared, error, "reduced tree")
    if comm.size == 1:
        if any(p.kind == "none" for p in prepared):
            raise DistributedError("allreduce in a single process of a tree with NO_GRADIENT leaves: "
                                   "no rank has examples")
        return tree
    _agree(all_descriptors, "reduced tree", tree)
    return treedef.unflatten(_reduce(prepared, all_descriptors, op, comm, tree))


def _reduce(prepared, all_descriptors, op, comm, tree):
    n = comm.size
    out = [None] * len(prepared)
    dense_groups: dict = {}     # reduction dtype -> [(leaf index, host contribution or None, shape)]
    masked = []                 # (leaf index, union mask) of row-sparse leaves reduced densely
    gathered = []               # leaf indices of row-sparse leaves reduced by gathering rows
    for i, p in enumerate(prepared):
        kinds = [d[i][0] for d in all_descriptors]
        real = next(d[i] for d in all_descriptors if d[i][0] != "none") if set(kinds) != {"none"} else None
        if real is None:
            names = _names(tree) or [f"#{k}" for k in range(len(prepared))]
            raise DistributedError(f"leaf {names[i]}: no rank has a gradient (NO_GRADIENT on every rank)")
        kind, shape, dtype_str, _, tag = real
        if p.kind == "none":    # take the shape, dtype and type the others send
            p.shape, p.dtype, p.tag = tuple(shape), np.dtype(dtype_str), tag
        if "dense" in kinds:
            contribution = p.data
            if p.kind != "dense":
                contribution = _scatter(p)
                # a dense result: the type of a rank's dense leaf
                p.tag = next(d[i][4] for d in all_descriptors if d[i][0] == "dense")
            dense_groups.setdefault(_reduction_dtype(p.dtype), []).append((i, contribution, p.shape))
            continue
        total_rows = sum(d[i][3] for d in all_descriptors)
        row_size = int(np.prod(shape[1:], dtype=np.int64))
        itemsize = np.dtype(dtype_str).itemsize
        gathered_bytes = total_rows * (row_size * itemsize + 8)
        dense_bytes = 2 * shape[0] * row_size * itemsize + shape[0]
        if gathered_bytes <= dense_bytes:
            gathered.append(i)
        else:
            dense_groups.setdefault(_reduction_dtype(p.dtype), []).append((i, _scatter(p), p.shape))
            mask = np.zeros(shape[0], np.uint8)
            if p.rows is not None:
                mask[p.rows] = 1
            masked.append((i, mask))

    for dtype, entries in dense_groups.items():
        sizes = [int(np.prod(shape, dtype=np.int64)) for _, _, shape in entries]
        buf = np.zeros(sum(sizes), dtype=dtype)
        offset = 0
        for (i, data, shape), size in zip(entries, sizes):
            if data is not None:
                buf[offset:offset + size] = np.asarray(data).reshape(-1)
            offset += size
        comm.allreduce_(buf, "sum")
        if op == "mean":
            buf /= n
        offset = 0
        for (i, data, shape), size in zip(entries, sizes):
            out[i] = buf[offset:offset + size].reshape(shape)
            offset += size
    if masked:
        masks = np.concatenate([m for _, m in masked])
        comm.allreduce_(masks, "max")
        offset = 0
        for i, m in masked:
            rows = np.flatnonzero(masks[offset:offset + len(m)])
            offset += len(m)
            p = prepared[i]
            out[i] = _sparse_result(p, rows, out[i][rows])
    for i in gathered:
        p = prepared[i]
        counts = [d[i][3] for d in all_descriptors]
        row_shape = p.shape[1:]
        row_size = int(np.prod(row_shape, dtype=np.int64))
        rows = np.zeros(0, np.int64) if p.rows is None else p.rows
        values = np.zeros(0, p.dtype) if p.data is None else p.data
        dtype = _reduction_dtype(p.dtype)
        all_rows = comm.allgatherv(np.ascontiguousarray(rows, dtype=np.int64), counts)
        all_values = comm.allgatherv(np.ascontiguousarray(values, dtype=dtype).reshape(-1),
                                     [c * row_size for c in counts]).reshape((-1,) + row_shape)
        union, summed = combine_rows(all_rows, all_values, counts)
        if op == "mean":
            summed /= n
        out[i] = _sparse_result(p, union, summed)
    for i, p in enumerate(prepared):
        if type(out[i]) is not SparseRows:
            out[i] = p.rebuild(out[i])
    return out


def combine_rows(rows, values, counts):
    """(union of the rows, their summed values) of the ranks' gathered (rows, values), rank
    r's part being the next counts[r] entries with unique rows: each part is added with one
    indexed add, in rank order, so every rank computes the same bits."""
    union, inverse = np.unique(rows, return_inverse=True)
    inverse = inverse.reshape(-1)
    summed = np.zeros((len(union),) + values.shape[1:], dtype=values.dtype)
    offset = 0
    for count in counts:
        part = slice(offset, offset + count)
        summed[inverse[part]] += values[part]     # unique rows within a part: no add.at needed
        offset += count
    return union, summed


def _scatter(p):
    """The dense table of a row-sparse leaf's rows on this rank (None: nothing from here)."""
    if p.kind != "sparse":
        return None
    table = np.zeros(p.shape, dtype=_reduction_dtype(p.dtype))
    table[p.rows] = p.data
    return table


def _sparse_result(p, rows, values):
    values = values.astype(p.dtype, copy=False)
    if p.tag == "cupy":
        cp = cupy_module()
        rows, values = cp.asarray(rows), cp.asarray(values)
    return SparseRows.rows(p.shape, rows, values, True)


# --- broadcast -----------------------------------------------------------------------------------
def broadcast(tree, root: int = 0, *, comm=None):
    """Root's `tree` on every rank (initial parameters): each rank passes a tree of the same
    structure, leaf shapes and dtypes (its own values are replaced); root gets its tree back."""
    comm = comm or get_comm()
    if not 0 <= root < comm.size:
        raise ValueError(f"root {root} is not a rank of this job of {comm.size}")
    leaves, treedef, prepared, error = _prepare_all(tree, "sum", allow_sparse=False,
                                                    shallow=comm.size == 1)
    if error is None and any(p.kind == "none" for p in prepared):
        error = "broadcast of NO_GRADIENT leaves: pass the tree to fill"
    all_descriptors = _exchange(comm, prepared, error, "broadcast tree")
    if comm.size == 1:
        return tree
    _agree(all_descriptors, "broadcast tree", tree, reference=root)
    groups: dict = {}
    for i, p in enumerate(prepared):
        groups.setdefault(_reduction_dtype(p.dtype), []).append(i)
    out = list(leaves)
    for dtype, indices in groups.items():
        sizes = [prepared[i].data.size for i in indices]
        buf = np.empty(sum(sizes), dtype=dtype)
        if comm.rank == root:
            offset = 0
            for i, size in zip(indices, sizes):
                buf[offset:offset + size] = prepared[i].data.reshape(-1)
                offset += size
        comm.bcast_(buf, root)
        if comm.rank != root:
            offset = 0
            for i, size in zip(indices, sizes):
                value = buf[offset:offset + size].reshape(prepared[i].shape)
                out[i] = prepared[i].rebuild(value.copy() if value.dtype == prepared[i].dtype else value)
                offset += size
    return tree if comm.rank == root else treedef.unflatten(out)
