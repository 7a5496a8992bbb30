"""Rejected constructs: errors name the user's file and line and say what to do."""
import os

import pytest

from spmdbatch.errors import HasExceptionHandling, UnsupportedConstruct
from spmdbatch.frontend import lower_function

HERE = os.path.basename(__file__)


def gen(n):
    for i in range(n):
        yield i          # GEN_LINE


async def coro(x):
    return x


async def agen(x):
    yield x


def with_try(x):
    try:                 # TRY_LINE
        return 1 / x
    except ZeroDivisionError:
        return 0


def with_finally(x):
    try:
        x += 1
    finally:
        x -= 1
    return x


def with_with(path):
    with open(path) as fh:
        return fh.read()


def with_class(x):
    class A:             # CLASS_LINE
        pass
    return A


def _line(marker):
    with open(__file__) as fh:
        for i, ln in enumerate(fh, 1):
            if marker in ln and "def _line" not in ln and "_line(" not in ln:
                return i
    raise AssertionError(marker)


def test_generator_rejected():
    with pytest.raises(UnsupportedConstruct) as ei:
        lower_function(gen)
    e = ei.value
    assert not isinstance(e, HasExceptionHandling)
    assert e.filename == __file__ and e.lineno == _line("# GEN_LINE")
    assert HERE in str(e) and f":{e.lineno}:" in str(e)
    assert "generator" in str(e) and "yield" in str(e)


@pytest.mark.parametrize("fn", [coro, agen])
def test_async_rejected(fn):
    with pytest.raises(UnsupportedConstruct) as ei:
        lower_function(fn)
    assert HERE in str(ei.value) and ei.value.lineno is not None
    assert f":{ei.value.lineno}:" in str(ei.value)


def test_try_except_rejected():
    with pytest.raises(HasExceptionHandling) as ei:
        lower_function(with_try)
    e = ei.value
    assert HERE in str(e)
    assert e.lineno in (_line("# TRY_LINE"), _line("# TRY_LINE") + 1)
    assert "try" in str(e) and "natively" in str(e)


@pytest.mark.parametrize("fn", [with_finally, with_with])
def test_finally_and_with_rejected(fn):
    with pytest.raises(HasExceptionHandling) as ei:
        lower_function(fn)
    assert HERE in str(ei.value) and ei.value.lineno is not None


def test_unknown_opcode_named():
    with pytest.raises(UnsupportedConstruct) as ei:
        lower_function(with_class)
    msg = str(ei.value)
    assert "LOAD_BUILD_CLASS" in msg and HERE in msg
    assert ei.value.lineno == _line("# CLASS_LINE")


def test_not_a_function():
    with pytest.raises(UnsupportedConstruct):
        lower_function(len)


def test_comprehension_alone_is_not_exception_handling():
    def f(xs):
        return [x for x in xs]
    assert lower_function(f).blocks
