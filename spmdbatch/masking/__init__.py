"""The runtime of masked (SPMD) execution that generated batch programs call into.

- `frame.Frame`: the scheduler of lane groups over a function's blocks (split on varying
  branches, merge at joins, loop reconvergence, returns);
- `lanes`: taking and merging lanes of values (compaction);
- `iterators`: `for` loops over uniform and varying iterables;
- `calls`: batched calls, builtins with batched meaning;
- `recursion`: a function's calls to itself, run by height (parked lanes, returned chunks);
- `child_loops`: loops around such calls whose iterations run side by side (iteration lanes);
- `sums`: sums over a recursion (recorded terms, deferred calls, per-example totals);
- `stats`: counting batched calls (`spmdbatch.stats()`).
"""
from .calls import batch_polymorphic, call, getitem, logical_not, native, set_transformer, setitem
from .frame import STATE, Frame
from .iterators import get_iter, iter_next
from .lanes import UNDEFINED, merge, take

__all__ = ["Frame", "STATE", "call", "getitem", "setitem", "logical_not", "native", "batch_polymorphic",
           "set_transformer", "get_iter", "iter_next", "UNDEFINED", "merge", "take"]
