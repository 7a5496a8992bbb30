"""Native consumers of per-example lists (issue 15, section 4): `in`, `sorted`, builtin
`min`/`max` over lists whose length or items differ between examples give each example its
own answer (compared with the per-example loop); lists of arrays, where Python would compare
arrays, are refused with the user's line."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import spmdbatch as sb
from spmdbatch.errors import SpmdError

from oracle import check_batched

THIS_FILE = __file__
NS = np.array([0, 1, 3, 4, 2])


def countdown(n):
    out = []
    for k in range(n):
        out.append((k * 7) % 5 - 2)
    return out


def membership(n):
    out = countdown(n)
    return 1 in out, (n - 3) not in out, n in (1, 3, 7), n not in [0, 4]


def sorted_first_and_last(n):
    s = sorted(countdown(n))
    r = sorted(countdown(n), reverse=True)
    return (s[0] if s else 99), (r[0] if r else -99), len(s)


def extremes(n):
    out = countdown(n)
    lo = min(out, default=-50)
    hi = max(out) if out else 50
    return lo, hi


def floats_extremes(n):
    out = [0.5]
    for k in range(n):
        out.append(np.sin(k * 1.0))
    return max(out), min(out)


@pytest.mark.parametrize("fn", [membership, sorted_first_and_last, extremes, floats_extremes])
def test_list_builtins_match_the_loop(fn):
    check_batched(fn, NS)


def sorted_values(n):
    return sorted(countdown(n))


def test_sorted_list_of_per_example_length_comes_back_per_example():
    got = sb.spmd(sorted_values)(NS)
    assert got == [sorted_values(int(n)) for n in NS]


def arrays_in_list(n):
    out = []
    for k in range(n):
        out.append(np.ones(2) * k)
    return max(out)


def test_builtins_that_compare_arrays_are_refused_with_the_line():
    with pytest.raises(SpmdError) as err:
        sb.spmd(arrays_in_list)(np.array([1, 2]))
    assert err.value.filename == THIS_FILE


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=6), st.integers(-3, 4),
       st.sampled_from(["in", "not in", "sorted0", "sortedrev", "min", "max"]))
def test_random_list_consumers_match_the_loop(ns, probe, op):
    expr = {"in": f"{probe} in out", "not in": f"{probe} not in out",
            "sorted0": "sorted(out)[0] if out else 9", "sortedrev": "sorted(out, reverse=True)[-1] if out else 9",
            "min": "min(out, default=-9)", "max": "max(out, default=9)"}[op]
    src = f"def f(n):\n    out = []\n    for k in range(n):\n        out.append((k * 3 + n) % 4)\n    return {expr}\n"
    namespace = {}
    exec(compile(src, THIS_FILE, "exec"), namespace)
    check_batched(namespace["f"], np.array(ns))
