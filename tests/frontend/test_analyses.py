"""CFG analyses, liveness and uniformity on known shapes (block ids are found by
structure and source line, since they differ between CPython versions)."""
import inspect

from spmdbatch.frontend import (EXIT, analyze_liveness, analyze_uniformity, control_dependence,
                                dominators, format_ir, immediate_dominators,
                                immediate_post_dominators, lower_function, natural_loops,
                                post_dominators, predecessors, reverse_postorder)
from spmdbatch.frontend import ir

from . import corpus


def line_of(fn, text):
    """Absolute line number of the first source line of ``fn`` containing ``text``."""
    src, start = inspect.getsourcelines(fn)
    for i, ln in enumerate(src):
        if text in ln:
            return start + i
    raise AssertionError(text)


def blocks_at(fn_ir, lineno):
    """Blocks with a statement (or terminator) on source line ``lineno``."""
    out = []
    for bid, blk in fn_ir.blocks.items():
        lines = [s.lineno for s in blk.stmts] + [blk.term.lineno]
        if lineno in lines:
            out.append(bid)
    return out


def assigning(fn_ir, name):
    return [b for b, blk in fn_ir.blocks.items() if any(name in s.defs() for s in blk.stmts)]


def branches(fn_ir):
    return [b for b, blk in fn_ir.blocks.items() if isinstance(blk.term, (ir.Branch, ir.ForIter))]


# ----------------------------------------------------------------------------- shapes

def diamond(x):
    if x < 0:
        y = 1
    else:
        y = 2
    y = y + 1
    y = y * 2
    y = y - 3
    return y


def while_loop(n):
    i = 0
    while i < n:
        i += 1
    return i


def loop_break(xs):
    r = 0
    for x in xs:
        if x < 0:
            break
        r += x
    return r


def nested(n):
    t = 0
    for i in range(n):
        for j in range(i):
            t += j
    return t


def test_rpo_starts_at_entry_and_covers_blocks():
    f = lower_function(nested)
    order = reverse_postorder(f)
    assert order[0] == f.entry
    assert set(order) == set(f.blocks)
    assert f.order == order


def test_diamond():
    f = lower_function(diamond)
    (a,) = branches(f)
    t, e = f.successors(a)
    assert assigning(f, "y")
    dom = dominators(f)
    idom = immediate_dominators(f)
    ipdom = immediate_post_dominators(f)
    j = ipdom[a]
    assert j != EXIT and j not in (t, e)
    assert set(predecessors(f)[j]) == {t, e}
    assert idom[j] == a and idom[t] == a and idom[e] == a
    assert a in dom[j] and f.entry in dom[j]
    pdom = post_dominators(f)
    assert j in pdom[a] and j in pdom[t] and EXIT in pdom[a]
    assert ipdom[t] == j and ipdom[e] == j
    cd = control_dependence(f)
    assert cd[t] == {a} and cd[e] == {a}
    assert cd[j] == set() and cd[a] == set()
    assert natural_loops(f) == []


def test_while_loop():
    f = lower_function(while_loop)
    loops = natural_loops(f)
    assert len(loops) == 1
    lp = loops[0]
    body_line = line_of(while_loop, "i += 1")
    (b,) = blocks_at(f, body_line)
    assert b in lp.body
    ret = [k for k, blk in f.blocks.items() if isinstance(blk.term, ir.Return)]
    assert all(r not in lp.body for r in ret)
    dom = dominators(f)
    assert all(lp.header in dom[x] for x in lp.body)
    assert lp.exits and all(dst not in lp.body for _, dst in lp.exits)
    assert lp.latches <= lp.body and lp.depth == 1
    cd = control_dependence(f)
    # the body runs depending on the loop test (CPython may also duplicate the test in
    # front of the loop, which is then a second branch the body depends on)
    assert cd[b] & lp.body
    assert all(isinstance(f.blocks[a].term, ir.Branch) for a in cd[b])


def test_loop_with_break():
    f = lower_function(loop_break)
    (lp,) = natural_loops(f)
    brk = blocks_at(f, line_of(loop_break, "if x < 0"))
    brk = [b for b in brk if isinstance(f.blocks[b].term, ir.Branch)]
    assert len(brk) == 1 and brk[0] in lp.body
    exit_srcs = {src for src, _ in lp.exits}
    assert isinstance(f.blocks[lp.header].term, ir.ForIter)
    assert len(exit_srcs) >= 2           # the for exhaustion and the break
    cd = control_dependence(f)
    # the header runs again only if the break was not taken
    assert brk[0] in cd[lp.header]
    add = blocks_at(f, line_of(loop_break, "r += x"))
    assert any(brk[0] in cd[b] for b in add)


def test_nested_loops():
    f = lower_function(nested)
    loops = natural_loops(f)
    assert len(loops) == 2
    outer, inner = loops
    assert inner.parent is outer and outer.parent is None
    assert inner in outer.children
    assert inner.body < outer.body
    assert inner.depth == 2
    (tb,) = blocks_at(f, line_of(nested, "t += j"))
    assert tb in inner.body
    dom = dominators(f)
    assert outer.header in dom[inner.header]
    cd = control_dependence(f)
    assert inner.header in cd[tb]


def test_post_dominators_of_returns():
    f = lower_function(corpus.early_return_loop)
    ipdom = immediate_post_dominators(f)
    for b, blk in f.blocks.items():
        if isinstance(blk.term, (ir.Return, ir.Raise)):
            assert ipdom[b] == EXIT
    assert ipdom[EXIT] is None


def test_infinite_loop_has_post_dominators():
    def spin(x):
        while True:
            x += 1
    f = lower_function(spin)
    ipdom = immediate_post_dominators(f)
    assert all(b in ipdom for b in f.blocks)


# ----------------------------------------------------------------------------- liveness

def live_example(a, b):
    c = a + 1
    if b:
        return c
    return a


def test_liveness():
    f = lower_function(live_example)
    lv = analyze_liveness(f)
    assert lv.live_in[f.entry] == {"a", "b"}
    (ret_c,) = [k for k, blk in f.blocks.items()
                if isinstance(blk.term, ir.Return) and blk.term.value == ir.Var("c")]
    assert "c" in lv.live_in[ret_c] and "b" not in lv.live_in[ret_c]
    assert "c" in lv.live_out[f.entry]


def test_liveness_loop_and_params():
    f = lower_function(corpus.swap_in_loop)
    lv = analyze_liveness(f)
    assert lv.live_in[f.entry] == {"n"}
    for b, blk in f.blocks.items():
        assert not (set(blk.params) & lv.live_in[b])
    (lp,) = natural_loops(f)
    assert {"a", "b"} <= lv.live_in[lp.header]


# ----------------------------------------------------------------------------- uniformity

def test_uniformity_tozero():
    f = lower_function(corpus.tozero)
    u = analyze_uniformity(f, {"x"})
    (a,) = branches(f)
    assert u.varying_branches == {a}
    assert "x" in u.varying_vars
    u0 = analyze_uniformity(f, set())
    assert not u0.varying_branches and not u0.varying_vars


def uniform_loop(x, n):
    s = 0
    for i in range(n):
        s = s + x * i
    return s


def test_uniform_loop_stays_uniform():
    f = lower_function(uniform_loop)
    u = analyze_uniformity(f, {"x"})
    assert u.varying_branches == set()
    assert "i" not in u.varying_vars and "n" not in u.varying_vars
    assert "s" in u.varying_vars
    u2 = analyze_uniformity(f, {"n"})
    assert u2.varying_branches and "i" in u2.varying_vars and "s" in u2.varying_vars


def assigned_under_branch(x, n):
    y = 0
    z = n * 2
    if x > 0:
        y = 1
    return y + z


def test_assigned_under_varying_branch():
    f = lower_function(assigned_under_branch)
    u = analyze_uniformity(f, {"x"})
    assert "y" in u.varying_vars
    assert "z" not in u.varying_vars and "n" not in u.varying_vars
    u2 = analyze_uniformity(f, {"n"})
    assert "y" not in u2.varying_vars and "z" in u2.varying_vars
    assert not u2.varying_branches


def varying_break(x, n):
    c = 0
    k = 7
    for i in range(n):
        c = 3 + i
        if x[i] > 0:
            break
    return c, k


def test_loop_with_varying_exit():
    f = lower_function(varying_break)
    u = analyze_uniformity(f, {"x"})
    assert "c" in u.varying_vars and "i" in u.varying_vars
    assert "k" not in u.varying_vars and "n" not in u.varying_vars


def varying_store(x, n):
    h = [0] * n
    g = [0] * n
    for i in range(n):
        h[i] = x
        g.append(i)
    return h, g


def test_mutation_makes_container_varying():
    f = lower_function(varying_store)
    u = analyze_uniformity(f, {"x"})
    assert "h" in u.varying_vars and "g" not in u.varying_vars


def method_mutation(x):
    acc = []
    acc.append(x)
    return acc


def test_method_call_with_varying_arg_marks_receiver():
    f = lower_function(method_mutation)
    assert "acc" in analyze_uniformity(f, {"x"}).varying_vars


def test_short_circuit_join_params_varying():
    f = lower_function(corpus.and_or)
    u = analyze_uniformity(f, {"a"})
    params = {p for blk in f.blocks.values() for p in blk.params}
    assert params and params <= u.varying_vars


def test_format_ir_mentions_every_block():
    for fn, _ in corpus.CASES:
        f = lower_function(fn)
        text = format_ir(f)
        for bid in f.blocks:
            assert f"block {bid}" in text
        assert fn.__name__ in text
