"""Decode a function's bytecode into a ``bytecode.ControlFlowGraph``, rejecting what cannot be rewritten.

Rejected with :class:`~spmdbatch.errors.UnsupportedConstruct`: generators, coroutines and
async generators (checked on the code flags; the message points at the first ``yield``
or ``await``), and objects that are not plain Python functions.  Rejected with
:class:`~spmdbatch.errors.HasExceptionHandling`: code with an exception table coming from
try/except/finally/with, so the caller can run the function natively instead.  The only
exception-table entries accepted are the ones CPython 3.12+ adds around inlined
comprehensions (a handler that just restores the comprehension variable and re-raises).
"""
from __future__ import annotations

import inspect
import sys
import types
from dataclasses import dataclass

from bytecode import Bytecode, ControlFlowGraph, Instr, TryBegin

from ..errors import HasExceptionHandling, UnsupportedConstruct, UnsupportedPythonVersion

PY312 = sys.version_info >= (3, 12)
PY313 = sys.version_info >= (3, 13)
#: The CPython versions whose bytecode the rewriter handles (first, last), as in pyproject.toml.
SUPPORTED_PYTHON = ((3, 11), (3, 13))


def check_python_version(fn=None) -> None:
    """Raise `UnsupportedPythonVersion` (pointing at `fn`'s definition, if given) unless the
    running Python is one of `SUPPORTED_PYTHON`: each CPython release changes the bytecode
    that the rewriter reads, so an unknown one is refused up front, not half rewritten."""
    version = tuple(sys.version_info[:2])
    first, last = SUPPORTED_PYTHON
    if first <= version <= last:
        return
    code = getattr(getattr(fn, "__func__", fn), "__code__", None)
    raise UnsupportedPythonVersion(
        f"spmdbatch rewrites the bytecode of CPython {first[0]}.{first[1]} to {last[0]}.{last[1]}; "
        f"this is Python {version[0]}.{version[1]}",
        getattr(code, "co_filename", None), getattr(code, "co_firstlineno", None),
        hint=f"Run under Python {first[0]}.{first[1]}-{last[0]}.{last[1]} (the rest of spmdbatch, "
             f"grad and nn outside @spmd, works on this one).")

_GEN_FLAGS = {
    inspect.CO_GENERATOR: "generator function",
    inspect.CO_COROUTINE: "coroutine (async def)",
    inspect.CO_ITERABLE_COROUTINE: "coroutine",
    inspect.CO_ASYNC_GENERATOR: "async generator",
}
_SUSPEND_OPS = {"YIELD_VALUE", "GET_AWAITABLE", "SEND", "RETURN_GENERATOR", "GET_AITER",
                "GET_ANEXT", "BEFORE_ASYNC_WITH"}
#: Instructions allowed in the handler of an inlined comprehension (3.12+).
_COMPREHENSION_HANDLER_OPS = {"SWAP", "POP_TOP", "STORE_FAST", "RERAISE", "NOP"}


@dataclass
class Decoded:
    """A decoded function: its code object, the function (if any) and the CFG."""
    code: types.CodeType
    func: object
    cfg: ControlFlowGraph
    filename: str


def get_code(fn) -> tuple[types.CodeType, object]:
    """Return ``(code, function_or_None)`` for a function, bound method or code object."""
    if isinstance(fn, types.CodeType):
        return fn, None
    if isinstance(fn, types.MethodType):
        fn = fn.__func__
    code = getattr(fn, "__code__", None)
    if not isinstance(code, types.CodeType):
        raise UnsupportedConstruct(
            f"{fn!r} is not a Python function, so its bytecode cannot be rewritten.",
            hint="Pass a function defined with def or lambda.")
    return code, fn


def _first_line(instrs, names) -> int | None:
    for ins in instrs:
        if isinstance(ins, Instr) and ins.name in names and ins.lineno is not None:
            return ins.lineno
    return None


def check_supported(code: types.CodeType, bc: Bytecode) -> None:
    """Raise if ``code`` is a generator/coroutine (UnsupportedConstruct)."""
    for flag, what in _GEN_FLAGS.items():
        if code.co_flags & flag:
            line = _first_line(bc, _SUSPEND_OPS - {"RETURN_GENERATOR"}) or code.co_firstlineno
            raise UnsupportedConstruct(
                f"'{code.co_qualname}' is a {what} (it uses yield/await), which cannot be "
                f"rewritten into a batched program.",
                code.co_filename, line,
                hint="Make it a plain function that returns a list/array instead of "
                     "yielding, or call it outside the batched function.")


def _handler_is_comprehension_cleanup(handler) -> bool:
    """True if the handler block only restores a saved local and re-raises."""
    blk = handler
    while blk is not None:
        for ins in blk:
            if not isinstance(ins, Instr):
                continue
            if ins.name not in _COMPREHENSION_HANDLER_OPS:
                return False
            if ins.name == "RERAISE":
                return True
        blk = blk.next_block
    return False


def check_exception_table(code: types.CodeType, cfg: ControlFlowGraph) -> None:
    """Raise HasExceptionHandling if the code has try/except/finally/with handlers."""
    if not code.co_exceptiontable:
        return
    for blk in cfg:
        for i, ins in enumerate(blk):
            if isinstance(ins, TryBegin):
                if PY312 and _handler_is_comprehension_cleanup(ins.target):
                    continue
                line = None
                for later in list(blk)[i + 1:]:
                    if isinstance(later, Instr) and later.lineno is not None:
                        line = later.lineno
                        break
                raise HasExceptionHandling(
                    f"'{code.co_qualname}' contains exception handling "
                    f"(try/except/finally or with), which cannot be rewritten into a "
                    f"masked batch program; it will run natively on batched values.",
                    code.co_filename, line or code.co_firstlineno,
                    hint="Move the try/with block into a helper function, or make sure "
                         "its control flow never depends on a per-example value.")


def decode(fn) -> Decoded:
    """Get the code of ``fn``, check it can be rewritten and build its ControlFlowGraph."""
    check_python_version(fn)
    code, func = get_code(fn)
    bc = Bytecode.from_code(code)
    check_supported(code, bc)
    cfg = ControlFlowGraph.from_bytecode(bc)
    check_exception_table(code, cfg)
    return Decoded(code=code, func=func, cfg=cfg, filename=code.co_filename)
