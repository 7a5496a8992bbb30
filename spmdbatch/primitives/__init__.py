"""The primitive operations, each declared once with its implementation, batching rule,
ragged rule and VJP (`declare.primitive`, public as `spmdbatch.primitive`), grouped by family:

- `elementwise`: numpy's ufuncs, sigmoid, where, round;
- `reductions`: sum, max, min, logsumexp, any, all, argmax, argmin; softmax, log_softmax,
  cumsum, sort, argsort;
- `linalg`: matmul, matmul_t, einsum;
- `shapes`: reshape, transpose, broadcast_to, concatenate, astype, roll, pad, full_like;
- `indexing`: getitem, index_update;
- `lanes`: take_lanes, gather_lanes, rows_of_sources (the execution runtime's lane moves);
- `graph`: gather_rows, scatter_add_rows, unpack_rows (runtime/segments.py).

This package sits above `runtime` and `ad` (it uses their values, batching helpers and
cotangent types); importing spmdbatch imports it, which registers every primitive, and
code below it reaches them by name (`runtime/primitives.py`: ``P.add``).
"""
from .declare import family, primitive
from . import elementwise, reductions, linalg, shapes, indexing, lanes, graph  # noqa: F401,E401
from ..runtime.batched import install_operators

install_operators()   # (Batched's operators on lane vectors call the ufuncs directly)

__all__ = ["primitive", "family"]
