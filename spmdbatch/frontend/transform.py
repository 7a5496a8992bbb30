"""From a Python function to its batch program: lower, emit, compile, cache.

`batched_version(fn)` returns the batch program of `fn` (built once per code object,
instantiated once per function object, since closures and defaults differ). The generated
code is compiled under the user's file name with the user's line numbers, so tracebacks
and spmdbatch's error messages point at the user's own source lines.

Functions with try/except/with blocks are not rewritten (`HasExceptionHandling`): they run
natively on batched values, which is right as long as their control flow does not depend
on a varying value; if it does, the error says so.
"""
from __future__ import annotations

import ast
import re
import types

from ..errors import HasExceptionHandling, UnsupportedConstruct, VaryingValueError
from ..execution import (calls, child_loops, formatting, frame, iterators, lane_list, lanes, raising,
                       recursion, stats, sums)
from ..runtime.batched import Batched
from .emit_batched import BatchedEmitter
from .emit_plain import _HELPERS as PLAIN_HELPERS
from .child_loops import parallelize_child_loops
from .fusion import fuse_calls
from .lower import lower_function
from .recursion import split_recursive_calls
from .reduction import may_defer, recognize_sums

BATCH_HELPERS = {
    **PLAIN_HELPERS,
    "call": calls.call, "getitem": calls.getitem, "setitem": calls.setitem,
    "logical_not": calls.logical_not, "get_iter": iterators.get_iter,
    "iter_next": iterators.iter_next, "Frame": frame.Frame, "UNDEFINED": lanes.UNDEFINED,
    "lane_count": lanes.lane_count, "store_attr": calls.store_attr, "del_attr": calls.del_attr,
    "store_global": calls.store_global, "del_global": calls.del_global,
    "store_nonlocal": calls.store_nonlocal, "call_fused": calls.call_fused,
    "recurse": recursion.recurse, "Sums": sums.Sums,
    "inplace": calls.inplace, "contains": calls.contains, "raise_all_lanes": raising.raise_all_lanes,
    "raise_in_lanes": raising.raise_in_lanes, "count_call": stats.count_call, "Batched": Batched,
    "LaneList": lane_list.LaneList, "LaneDict": lane_list.LaneDict, "RaggedList": lane_list.RaggedList,
    "list_truth": lane_list.truth, "format_value": formatting.format_value,
    "build_string": formatting.build_string, "Cell": lanes.owned_cell,
    "parallel_for": child_loops.parallel_for, "end_iteration": child_loops.end_iteration,
    "select_env": frame.select_env,
}

_LINE_COMMENT = re.compile(r"^\s*# (\d+): ")


class CompiledProgram:
    """The batch program of one code object: IR, emitter output and a factory."""

    def __init__(self, fn):
        self.fn_ir = lower_function(fn)
        # The program is shared by every function of this code object (cached in _PROGRAMS
        # for good): holding the first of them would keep it and its closure alive.
        self.fn_ir.func = None
        self.fusions = fuse_calls(self.fn_ir)
        self.recursion_sites = split_recursive_calls(self.fn_ir)
        self.sum_positions = recognize_sums(self.fn_ir)
        self.parallel_loops = parallelize_child_loops(self.fn_ir)
        self.emitter = BatchedEmitter(self.fn_ir, sums=self.sum_positions)
        self.source = self.emitter.source()
        code = _compile_with_user_lines(self.source, self.fn_ir.filename, self.fn_ir.firstlineno)
        namespace: dict = {}
        exec(code, namespace)
        self.factory = namespace[self.emitter.names.helper("factory")]
        self.helper_values = [BATCH_HELPERS[h] for h in sorted(self.emitter.used_helpers)]
        self.extras = self.emitter.factory_extras()
        # no branches, loops or recursion: execution/staging.py may replay it as staged code
        self.straight = (self.emitter.straight and not self.recursion_sites
                         and not self.sum_positions and not self.parallel_loops)

    def instantiate(self, fn):
        values = ([fn.__globals__] + list(self.emitter.consts) + self.helper_values
                  + list(fn.__closure__ or ()) + self.extras)
        inner = self.factory(*values)
        code = inner.__code__.replace(co_name=fn.__name__, co_qualname=fn.__qualname__)
        out = types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__,
                                 inner.__closure__)
        out.__kwdefaults__ = fn.__kwdefaults__
        out.__qualname__ = fn.__qualname__
        out.__doc__ = fn.__doc__
        out.__wrapped_spmd__ = fn
        out.__spmd_straight__ = self.straight
        return out


def _compile_with_user_lines(source: str, filename: str, firstlineno: int):
    """Compile generated source so each statement carries the user line it came from."""
    line_map = {}
    current = firstlineno
    for i, text in enumerate(source.splitlines(), start=1):
        m = _LINE_COMMENT.match(text)
        if m:
            current = int(m.group(1))
        line_map[i] = current
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if hasattr(node, "lineno"):
            node.lineno = line_map.get(node.lineno, firstlineno)
            node.end_lineno = node.lineno
            node.col_offset = 0
            node.end_col_offset = 0
    return compile(tree, filename, "exec")


_PROGRAMS: dict = {}        # id(code object) -> (code, CompiledProgram): by identity, since
                            # equal code objects of two modules compare equal
_INSTANCE_ATTR = "__spmd_batched__"
"""Where `batched_version` keeps a function's batch program: in the function's own
``__dict__``, as ``(code, batch program)``. The batch program refers back to the function
(``__wrapped_spmd__``, closure cells), so a global table (even a WeakKeyDictionary) would keep
every function and what its closure holds alive forever; kept on the function, the pair is a
reference cycle that the garbage collector frees with the function."""


def program_of(fn) -> CompiledProgram:
    """The compiled batch program of `fn`'s code (raises the frontend's errors)."""
    code = fn.__code__
    entry = _PROGRAMS.get(id(code))
    if entry is None or entry[0] is not code:
        entry = _PROGRAMS[id(code)] = (code, CompiledProgram(fn))
    return entry[1]


def batched_version(fn):
    """The batch program of Python function `fn` (cached on `fn`, see `_INSTANCE_ATTR`)."""
    entry = fn.__dict__.get(_INSTANCE_ATTR)
    # (functools.wraps copies __dict__ to a wrapper: an entry made for another function, or
    # for a replaced __code__, is rebuilt)
    if entry is not None and entry[0] is fn.__code__ and entry[1].__wrapped_spmd__ is fn \
            and entry[1].__defaults__ is fn.__defaults__ \
            and entry[1].__kwdefaults__ is fn.__kwdefaults__:      # (defaults can be rebound)
        return entry[1]
    try:
        out = program_of(fn).instantiate(fn)
    except HasExceptionHandling as exc:
        out = _native_with_exception_handling(fn, exc)
    fn.__dict__[_INSTANCE_ATTR] = (fn.__code__, out)
    return out


def forget(fn) -> None:
    """Drop the cached batch programs of `fn` and of its code (the next `batched_version(fn)`
    transforms from scratch; benchmarks/transform_time.py times that)."""
    _PROGRAMS.pop(id(fn.__code__), None)
    fn.__dict__.pop(_INSTANCE_ATTR, None)


def _native_with_exception_handling(fn, reason):
    def run_natively(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except VaryingValueError as err:
            raise UnsupportedConstruct(
                f"{fn.__qualname__} has try/except/finally or with blocks, so it is not rewritten, "
                f"and its control flow depends on a varying value: {err.message}",
                err.filename, err.lineno,
                "Move the data-dependent branch or loop out of the function that has the "
                "try/with block (the code inside it runs natively, unbatched).") from err
    run_natively.__wrapped_spmd__ = fn
    return run_natively


calls.set_transformer(batched_version)
sums.set_deferral_check(may_defer)
