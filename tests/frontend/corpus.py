"""Small per-example functions covering every construct the lowering must handle.

``CASES`` maps each function to a list of argument tuples for the round-trip tests.
"""
import math

import numpy as np

G_SCALE = 3
G_COUNTER = [0]


def tozero(x):
    if x < 0:
        x += 1
    else:
        x -= 1
    return x


def arith(a, b):
    return a + b * 2 - a / (b or 1) + a // 3 - a % 5 + (a ** 2) - (b << 1) + (a >> 1), a & b, a | b, a ^ b


def augassign(a, b):
    a += b
    a -= 1
    a *= 2
    a //= 3
    a **= 2
    a %= 7
    a |= b
    a &= 255
    a ^= 3
    a <<= 1
    a >>= 1
    return a


def unary(a):
    return -a, +a, ~a, not a


def compare_all(a, b):
    return a < b, a <= b, a == b, a != b, a > b, a >= b, a is b, a is not b


def contains(x, seq):
    return x in seq, x not in seq


def chained(x):
    return 0 < x < 10


def chained3(a, b, c):
    if a < b <= c != 7:
        return 1
    return 2


def and_or(a, b, c):
    return a and b or c


def and_or_branch(a, b, c):
    if a and (b or not c):
        return "yes"
    return "no"


def cond_expr(x):
    y = x * 2 if x > 0 else -x
    return y + (1 if y else 0)


def swap(x, y):
    x, y = y, x
    return x - y


def rotate3(a, b, c):
    a, b, c = c, a, b
    return a, b, c


def unpack_seq(t):
    a, b, c = t
    return a * 100 + b * 10 + c


def unpack_star(t):
    first, *mid, last = t
    return first, mid, last


def unpack_star_head(t):
    *init, last = t
    return init, last


def nested_unpack(t):
    (a, b), c = t
    return a + b + c


def subscripts(x):
    return x[0], x[-1], x[1:3], x[::2], x[:-1], x[1:]


def store_subscr(h, i, v):
    h = list(h)
    h[i] = v
    h[i] += v
    h[0:1] = [v, v]
    del h[-1]
    return h


def numpy_item(h, i, v):
    h = np.array(h, dtype=float)
    h[i] = v
    h[i] += v
    h[1:3] *= 2
    return h


def attrs(z):
    return z.real, z.imag, z.conjugate()


class Box:
    def __init__(self, v):
        self.v = v


def store_attr(v):
    b = Box(v)
    b.v += 1
    b.w = b.v * 2
    del b.w
    return b.v, hasattr(b, "w")


def method_kwargs(s):
    return s.split(",", maxsplit=1), " ".join(sorted([s, "a"], key=len, reverse=True))


def call_star(args, kw):
    def f(*a, **k):
        return a, sorted(k.items())
    return f(*args, **kw), f(1, *args, 2, x=3, **kw), max(*args) if args else None


def call_kwonly(x):
    return sorted([x, 1, 2], reverse=True), round(x * 1.2345, ndigits=2)


def globals_use(x):
    return x * G_SCALE + len(G_COUNTER)


def store_global(x):
    global G_SCALE
    old = G_SCALE
    G_SCALE = x
    r = G_SCALE * 2
    G_SCALE = old
    return r


def closure_read(x):
    k = x + 1

    def inner(y):
        return y * k
    return inner(2) + inner(3)


def closure_write(x):
    total = 0

    def add(v):
        nonlocal total
        total += v
    for i in range(x):
        add(i)
    return total


def lambda_defaults(x):
    f = lambda a, b=2, *, c=3: a + b * c
    return f(x), f(x, 1), f(x, c=x)


def nested_def_kwdefaults(x):
    def g(a, *, scale=x, shift: int = 1) -> int:
        return a * scale + shift
    return g(2), g(2, scale=1), g.__annotations__


def arg_cell(x):
    def get():
        return x
    x = x * 2
    return get()


def make_adders(n):
    return [(lambda v, i=i: v + i)(10) for i in range(n)]


def list_comp(xs):
    return [x * 2 for x in xs if x % 2]


def nested_comp(n):
    return [[i * j for j in range(i)] for i in range(n)]


def dict_set_comp(xs):
    return {x: x * x for x in xs}, {x % 3 for x in xs}


def genexpr_sum(xs):
    return sum(x * x for x in xs)


def comp_shadows_local(xs):
    x = "outer"
    ys = [x + 1 for x in xs]
    return x, ys


def comp_closure(xs):
    k = 3
    return [x + k for x in xs]


def for_range(n):
    s = 0
    for i in range(n):
        s += i
    return s


def for_array(x):
    acc = 0.0
    for v in x:
        acc += v * v
    return acc


def while_loop(n):
    i, s = 0, 0
    while i < n:
        s += i
        i += 1
    return s


def while_true_break(n):
    i = 0
    while True:
        i += 1
        if i >= n:
            break
    return i


def nested_break_continue(n):
    out = []
    for i in range(n):
        if i % 2:
            continue
        for j in range(n):
            if j > i:
                break
            if j == 1:
                continue
            out.append((i, j))
    return out


def early_return_loop(xs, target):
    for i, x in enumerate(xs):
        if x == target:
            return i
    return -1


def early_return_while(n):
    i = 0
    while i < 100:
        if i * i > n:
            return i
        i += 1
    return None


def for_else(xs):
    for x in xs:
        if x < 0:
            break
    else:
        return "none negative"
    return "found"


def while_else(n):
    i = 0
    while i < n:
        i += 2
    else:
        i = -i
    return i


def list_append_loop(n):
    h = []
    for i in range(n):
        h.append(i * i)
    return h


def fstrings(x, name):
    return f"{name}: {x}", f"{x!r:>8}", f"{x:.2f}" if isinstance(x, float) else f"{x!s}", f"{name!a}"


def fstring_nested_spec(x, w):
    return f"{x:>{w}}"


def numpy_rnn(W, x):
    return np.tanh(W @ x)


def numpy_loop(W, xs):
    h = np.zeros(W.shape[0])
    for x in xs:
        h = np.tanh(W @ h + x)
    return h


def numpy_masked(x):
    if x.sum() > 0:
        y = np.maximum(x, 0)
    else:
        y = -x
    return y.mean()


def assert_ok(x):
    assert x >= 0, "negative"
    assert x < 1000
    return x


def raise_value(x):
    if x < 0:
        raise ValueError(f"bad {x}")
    return x


def raise_from(x):
    if x:
        raise KeyError(x) from None
    return 0


def build_containers(a, b):
    t = (a, b)
    lst = [a, b, *t]
    s = {a, b}
    d = {"a": a, "b": b, **{"c": 1}}
    d2 = {a: b}
    return t, lst, s, sorted(d.items()), d2


def tuple_star(xs):
    return (*xs, 1), [*xs, *xs]


def is_none(x):
    if x is None:
        return 0
    if x is not None:
        return x + 1


def delete_local(x):
    y = x + 1
    del y
    y = 5
    return y


def import_inside(x):
    import math as m
    from math import sqrt
    return m.floor(x) + sqrt(abs(x))


def string_methods(s):
    parts = s.strip().split()
    return "-".join(p.upper() for p in parts)


def slice_obj(x, a, b):
    return x[a:b], x[a:b:2], x[slice(a, b)]


def multi_assign(x):
    a = b = x
    a += 1
    return a, b


def walrus(xs):
    if (n := len(xs)) > 2:
        return n
    return -n


def nested_ifs(a, b):
    if a > 0:
        if b > 0:
            r = 1
        elif b < 0:
            r = 2
        else:
            r = 3
    else:
        r = 4
    return r


def bool_ops_values(a, b):
    x = a or b
    y = a and b
    z = not (a or b)
    return x, y, z


def loop_with_tuple_target(pairs):
    total = 0
    for a, b in pairs:
        total += a * b
    return total


def posonly_kwonly(a, b=2, /, c=3, *, d=4, **rest):
    return a + b + c + d + len(rest)


def varargs_fn(*args, **kwargs):
    return len(args), sorted(kwargs)


def swap_in_loop(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def matmul_chain(A, B, x):
    return (A @ B) @ x + A @ (B @ x)


def ternary_chain(x):
    return "neg" if x < 0 else "zero" if x == 0 else "pos"


def inplace_matmul(A, B):
    C = A.copy()
    C @= B
    return C


def mutate_arg_in_place(xs):
    xs = list(xs)
    for i in range(len(xs)):
        xs[i] *= 2
    return xs


def call_method_on_result(x):
    return str(x).upper().lower().count("1")


def nonlocal_counter(n):
    count = 0

    def bump():
        nonlocal count
        count += 1
        return count
    while count < n:
        bump()
    return count


def lambda_in_sort(xs):
    return sorted(xs, key=lambda v: -v)


def deep_loops(n):
    t = 0
    i = 0
    while i < n:
        for j in range(i):
            k = 0
            while k < j:
                if (i + j + k) % 3 == 0:
                    t += 1
                k += 1
        i += 1
    return t


def comp_in_loop(n):
    res = []
    for i in range(n):
        res.append([j for j in range(i) if j != 2])
    return res


def conditional_call(f, x):
    return f(x) if callable(f) else x


def power_neg(x):
    return x ** -1 if x else 0


def empty_return():
    return


def constant_containers():
    return (1, 2, (3, 4)), frozenset({1, 2}), [1.5, float("inf")], None, ..., b"x"


def with_docstring(x):
    """Docstring."""
    return x


def modify_while_on_stack(x):
    y = [x, (x := x + 1), x]
    return y


def not_in_loop(xs):
    seen = []
    for x in xs:
        if x not in seen:
            seen.append(x)
    return seen


def big_int_const(x):
    return x * 10 ** 30 + 123456789012345678901234567890


def float_special(x):
    return x * math.pi, x > float("-inf")


def del_cell(x):
    y = x
    f = lambda: y
    r = f()
    del y
    return r


def del_global(x):
    global G_TMP
    G_TMP = x
    r = G_TMP * 2
    del G_TMP
    return r, "G_TMP" in globals()


def set_update(a, b):
    return {*a, *b}, {**{1: 2}, **{3: 4}}


def while_not_none(n):
    node = None
    for i in range(n):
        node = (i, node)
    s = 0
    while node is not None:
        s += node[0]
        node = node[1]
    return s


def while_is_none(n):
    x = None
    i = 0
    while x is None:
        i += 1
        if i > n:
            x = i
    return x


def while_not(n):
    done = False
    i = 0
    while not done:
        i += 1
        done = i >= n
    return i


def comp_cell(n):
    fs = [lambda: i for i in range(n)]
    return [f() for f in fs]


def comp_cell_outer(n):
    i = 100
    fs = [lambda: i * j for j in range(n)]
    return [f() for f in fs], i


def comp_cell_shadows_outer_cell(xs):
    x = 1
    g = lambda: x
    fs = [lambda: x for x in xs]
    x = x + 10
    return g(), x, [f() for f in fs]


INTS = [(-5,), (0,), (3,), (12,)]
SMALL = [(0,), (1,), (4,), (7,)]
rng = np.random.default_rng(0)
W = rng.normal(size=(3, 3))
XV = rng.normal(size=3)

CASES = [
    (tozero, [(-3,), (0,), (2.5,), (-0.5,)]),
    (arith, [(7, 3), (-4, 0), (10, 5)]),
    (augassign, [(7, 3), (100, 9)]),
    (unary, [(5,), (0,), (-3,)]),
    (compare_all, [(1, 2), (2, 2), (3, 1)]),
    (contains, [(1, [1, 2]), (5, (1, 2))]),
    (chained, [(-1,), (0,), (5,), (10,), (11,)]),
    (chained3, [(1, 2, 3), (1, 2, 7), (3, 2, 1), (1, 1, 1)]),
    (and_or, [(0, 1, 2), (1, 0, 2), (1, 3, 2), (0, 0, 0)]),
    (and_or_branch, [(1, 0, 0), (1, 0, 1), (0, 1, 1), (1, 1, 0)]),
    (cond_expr, INTS),
    (swap, [(1, 2), (5, -3)]),
    (rotate3, [(1, 2, 3)]),
    (unpack_seq, [((1, 2, 3),), ([4, 5, 6],)]),
    (unpack_star, [((1, 2, 3, 4),), ((1, 2),)]),
    (unpack_star_head, [((1, 2, 3),), ((9,),)]),
    (nested_unpack, [(((1, 2), 3),)]),
    (subscripts, [([1, 2, 3, 4, 5],), ("hello",)]),
    (store_subscr, [([1, 2, 3], 1, 10), ([5, 6], 0, 1)]),
    (numpy_item, [([1, 2, 3, 4], 1, 10.0)]),
    (attrs, [(1 + 2j,), (3.0,)]),
    (store_attr, [(1,), (2.5,)]),
    (method_kwargs, [("a,b,c",), ("xyz",)]),
    (call_star, [((1, 2), {"z": 1}), ((), {})]),
    (call_kwonly, [(1.5,), (3,)]),
    (globals_use, INTS),
    (store_global, [(2,), (5,)]),
    (closure_read, INTS),
    (closure_write, SMALL),
    (lambda_defaults, INTS),
    (nested_def_kwdefaults, INTS),
    (arg_cell, INTS),
    (make_adders, SMALL),
    (list_comp, [([1, 2, 3, 4, 5],), ([],)]),
    (nested_comp, SMALL),
    (dict_set_comp, [([1, 2, 3, 4],)]),
    (genexpr_sum, [([1, 2, 3],)]),
    (comp_shadows_local, [([1, 2],), ([],)]),
    (comp_closure, [([1, 2],)]),
    (for_range, SMALL),
    (for_array, [(np.arange(5.0),), (np.zeros(0),)]),
    (while_loop, SMALL),
    (while_true_break, [(1,), (5,)]),
    (nested_break_continue, [(4,), (6,)]),
    (early_return_loop, [([3, 4, 5], 4), ([3, 4, 5], 9)]),
    (early_return_while, [(0,), (50,), (100000,)]),
    (for_else, [([1, 2],), ([1, -2],)]),
    (while_else, SMALL),
    (list_append_loop, SMALL),
    (fstrings, [(3.14159, "pi"), (7, "sé")]),
    (fstring_nested_spec, [(5, 4), ("ab", 6)]),
    (numpy_rnn, [(W, XV)]),
    (numpy_loop, [(W, [XV, XV * 2])]),
    (numpy_masked, [(XV,), (-np.abs(XV),)]),
    (assert_ok, [(3,), (-1,), (5000,)]),
    (raise_value, [(1,), (-1,)]),
    (raise_from, [(0,), (1,)]),
    (build_containers, [(1, 2), ("x", "y")]),
    (tuple_star, [([1, 2],)]),
    (is_none, [(None,), (3,)]),
    (delete_local, INTS),
    (import_inside, [(2.5,), (-9.0,)]),
    (string_methods, [("  hello big world ",)]),
    (slice_obj, [(list(range(10)), 2, 8)]),
    (multi_assign, INTS),
    (walrus, [([1, 2, 3, 4],), ([1],)]),
    (nested_ifs, [(1, 1), (1, -1), (1, 0), (-1, 5)]),
    (bool_ops_values, [(0, 2), (1, 2), (0, 0)]),
    (loop_with_tuple_target, [([(1, 2), (3, 4)],)]),
    (posonly_kwonly, [(1,), (1, 2, 3)]),
    (varargs_fn, [(), (1, 2)]),
    (swap_in_loop, SMALL),
    (matmul_chain, [(W, W.T, XV)]),
    (ternary_chain, INTS),
    (inplace_matmul, [(W, W.T)]),
    (mutate_arg_in_place, [([1, 2, 3],)]),
    (call_method_on_result, [(1121,)]),
    (nonlocal_counter, SMALL),
    (lambda_in_sort, [([3, 1, 2],)]),
    (deep_loops, SMALL),
    (comp_in_loop, SMALL),
    (conditional_call, [(abs, -3), (None, 4)]),
    (power_neg, [(2.0,), (0,)]),
    (empty_return, [()]),
    (constant_containers, [()]),
    (with_docstring, INTS),
    (modify_while_on_stack, INTS),
    (not_in_loop, [([1, 2, 1, 3, 2],)]),
    (big_int_const, INTS),
    (float_special, INTS),
    (del_cell, INTS),
    (del_global, INTS),
    (set_update, [((1, 2), [2, 3])]),
    (while_not_none, SMALL),
    (while_is_none, SMALL),
    (while_not, SMALL),
    (comp_cell, SMALL),
    (comp_cell_outer, SMALL),
    (comp_cell_shadows_outer_cell, [([1, 2],), ([],)]),
]
