"""The runtime of masked (SPMD) execution that generated batch programs call into.

- `frame.Frame`: the scheduler of lane groups over a function's blocks (split on varying
  branches, merge at joins, loop reconvergence, returns);
- `lanes`: taking and merging lanes of values (compaction);
- `iterators`: `for` loops over uniform and varying iterables;
- `calls`: batched calls, recursion, builtins with batched meaning.
"""
from .calls import call, getitem, logical_not, native, set_transformer, setitem
from .frame import STATE, Frame
from .iterators import get_iter, iter_next
from .lanes import UNDEFINED, merge, take

__all__ = ["Frame", "STATE", "call", "getitem", "setitem", "logical_not", "native",
           "set_transformer", "get_iter", "iter_next", "UNDEFINED", "merge", "take"]
