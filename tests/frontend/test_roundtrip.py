"""Round trip: lower every corpus function, emit plain code, compare with the original."""
import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spmdbatch.frontend import compile_plain, format_ir, lower_function

from . import corpus


def same(a, b) -> bool:
    """Deep equality that understands numpy arrays and NaN."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
                and a.shape == b.shape and np.allclose(a, b, equal_nan=True))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    if callable(a) and callable(b):
        return True
    return type(a) is type(b) and a == b


def run(fn, args):
    try:
        return ("ok", fn(*copy.deepcopy(args)))
    except Exception as e:          # noqa: BLE001 - compare exception types
        return ("err", type(e))


def check(fn, args):
    plain = compile_plain(lower_function(fn))
    want, got = run(fn, args), run(plain, args)
    assert want[0] == got[0] and same(want[1], got[1]), (
        f"{fn.__name__}{args}: original {want!r}, round trip {got!r}\n{plain.__spmd_source__}")


@pytest.mark.parametrize("fn,arglist", corpus.CASES, ids=[f.__name__ for f, _ in corpus.CASES])
def test_roundtrip(fn, arglist):
    for args in arglist:
        check(fn, args)


def test_corpus_size():
    assert len(corpus.CASES) >= 60


def test_signature_and_defaults_preserved():
    plain = compile_plain(lower_function(corpus.posonly_kwonly))
    assert plain(1, 2, c=3, d=5, e=1) == corpus.posonly_kwonly(1, 2, c=3, d=5, e=1)
    with pytest.raises(TypeError):
        plain(a=1)
    assert plain.__name__ == "posonly_kwonly"


def test_varargs_kwargs_call():
    plain = compile_plain(lower_function(corpus.varargs_fn))
    assert plain(1, 2, 3, a=1, b=2) == corpus.varargs_fn(1, 2, 3, a=1, b=2)


def test_closure_of_original_is_shared():
    k = [10]

    def f(x):
        return x + k[0]
    plain = compile_plain(lower_function(f))
    assert plain(1) == 11
    k[0] = 20
    assert plain(1) == 21


def test_free_var_rebinding_visible():
    def outer():
        v = 1

        def f(x):
            return x + v

        def set_v(n):
            nonlocal v
            v = n
        return f, set_v
    f, set_v = outer()
    plain = compile_plain(lower_function(f))
    set_v(5)
    assert plain(1) == 6


def test_name_clash_with_generated_prefix():
    def f(_t1, _blk):
        _g = _t1 + _blk
        return _g * 2 if _g else _blk
    plain = compile_plain(lower_function(f))
    assert plain(1, 2) == f(1, 2)
    assert plain(_t1=0, _blk=0) == 0


def test_comprehension_var_does_not_leak_or_clobber():
    def f(xs):
        x = 5
        a = [x * 2 for x in xs]
        return a, x
    plain = compile_plain(lower_function(f))
    assert plain([1, 2]) == f([1, 2])


def test_format_ir_smoke():
    fn_ir = lower_function(corpus.nested_break_continue)
    text = format_ir(fn_ir)
    assert "nested_break_continue" in text


ints = st.integers(min_value=-1000, max_value=1000)
floats = st.floats(allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=30, deadline=None)
@given(ints | floats)
def test_hyp_tozero(x):
    check(corpus.tozero, (x,))


@settings(max_examples=30, deadline=None)
@given(ints, ints, ints)
def test_hyp_branchy(a, b, c):
    for f in (corpus.and_or, corpus.and_or_branch, corpus.chained3, corpus.nested_ifs,
              corpus.compare_all, corpus.swap, corpus.rotate3):
        args = (a, b, c)[:f.__code__.co_argcount]
        check(f, args)


@settings(max_examples=30, deadline=None)
@given(ints, st.integers(min_value=0, max_value=20))
def test_hyp_loops(x, n):
    for f in (corpus.chained, corpus.cond_expr, corpus.ternary_chain, corpus.closure_read,
              corpus.power_neg):
        check(f, (x,))
    for f in (corpus.for_range, corpus.while_loop, corpus.nested_break_continue,
              corpus.early_return_while, corpus.swap_in_loop, corpus.deep_loops,
              corpus.nonlocal_counter, corpus.comp_in_loop, corpus.while_true_break):
        check(f, (n,))


@settings(max_examples=30, deadline=None)
@given(st.lists(ints, max_size=8), ints)
def test_hyp_lists(xs, t):
    check(corpus.early_return_loop, (xs, t))
    for f in (corpus.list_comp, corpus.dict_set_comp, corpus.for_else, corpus.not_in_loop,
              corpus.lambda_in_sort, corpus.unpack_star, corpus.comp_shadows_local):
        check(f, (xs,))


@settings(max_examples=20, deadline=None)
@given(st.lists(floats, min_size=3, max_size=3), st.lists(floats, min_size=9, max_size=9))
def test_hyp_numpy(x, w):
    x = np.array(x, dtype=float)
    W = np.array(w, dtype=float).reshape(3, 3)
    with np.errstate(all="ignore"):
        check(corpus.numpy_rnn, (W, x))
        check(corpus.numpy_masked, (x,))
        check(corpus.for_array, (x,))
