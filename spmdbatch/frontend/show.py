"""`spmdbatch.show`: the batch program of a function as text, for reading and debugging.

Blocks in schedule order with what happens to lanes there (a varying branch splits them, a
join merges them, a loop header waits for its body), the varying values by the uniformity
analysis (frontend/uniformity.py, which serves this text only: the batch program does not
use it, its values show at run time whether they vary), the IR and the generated code.
"""
from __future__ import annotations

from .ir import format_ir
from .transform import program_of
from .uniformity import analyze


def describe(fn, in_axes=0) -> str:
    """The batch program of `fn` as text, for arguments batched as `in_axes` says (an axis,
    or None, per argument or for all)."""
    prog = program_of(fn)
    fn_ir, em = prog.fn_ir, prog.emitter
    specs = in_axes
    nargs = fn_ir.argcount
    specs = specs if isinstance(specs, (tuple, list)) else (specs,) * nargs
    varying_args = {a for a, s in zip(fn_ir.argnames, specs) if s is not None}
    info = analyze(fn_ir, varying_args)
    lines = [f"batch program of {fn_ir.qualname} ({fn_ir.filename}:{fn_ir.firstlineno})",
             f"varying arguments: {', '.join(sorted(varying_args)) or '(none)'}",
             f"varying values: {', '.join(sorted(v for v in info.varying_vars if not v.startswith('$'))) or '(none)'}",
             "", "blocks in schedule order (lanes split at varying branches, merge at joins):"]
    for pos, bid in enumerate(em.sched.order):
        blk = fn_ir.blocks[bid]
        notes = []
        if bid in info.varying_branches:
            notes.append("VARYING branch: split lanes (masks pushed)")
        elif type(blk.term).__name__ in ("Branch", "ForIter"):
            notes.append("uniform branch: native")
        if em.sched.loop_end[pos] >= 0:
            notes.append(f"loop header, loop ends at #{em.sched.loop_end[pos]}")
        preds = em.preds_of.get(bid, [])
        if len(preds) > 1:
            notes.append("join: lane groups merge here")
        lines.append(f"  #{pos} (block {bid}) env={em.env[bid]} " + ("; ".join(notes)))
    source = prog.source.replace(f"def {em.names.helper('fn')}(", f"def {fn_ir.name}(", 1)
    lines += ["", "IR:", format_ir(fn_ir), "", "generated code:", source]
    return "\n".join(lines)
