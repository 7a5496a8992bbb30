"""The runtime of masked (SPMD) execution that generated batch programs call into.

- `frame.Frame`: the scheduler of lane groups over a function's blocks (split on varying
  branches, merge at joins, loop reconvergence, returns); `state`: the running frame and
  group of each thread;
- `lanes`: taking and merging lanes of values (compaction);
- `iterators`: `for` loops over uniform and varying iterables;
- `calls`: batched calls, builtins with batched meaning;
- `recursion`: a function's calls to itself, run by height (parked lanes, returned chunks):
  the frame's `extension`;
- `child_loops`: loops around such calls whose iterations run side by side (iteration lanes);
- `sums`: sums over a recursion (recorded terms, deferred calls, per-example totals): the
  frame's `finisher`;
- `lane_list`, `formatting`, `return_rows`: lists and dicts the program builds, strings of
  per-example values, per-lane buffers of returned rows;
- `raising`: `raise` in batch programs (a LaneError naming the examples that raise);
- `stats`: counting batched calls (`spmdbatch.stats()`).
"""
from .calls import batch_polymorphic, call, getitem, logical_not, native, set_transformer, setitem
from .frame import Frame
from .iterators import get_iter, iter_next
from .lanes import UNDEFINED, merge, take
from .state import STATE

__all__ = ["Frame", "STATE", "call", "getitem", "setitem", "logical_not", "native", "batch_polymorphic",
           "set_transformer", "get_iter", "iter_next", "UNDEFINED", "merge", "take"]
