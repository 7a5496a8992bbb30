"""The tape: a linear record of differentiable operations, replayed backwards.

Operations are appended in execution order, which is a topological order of the
computation, so the backward pass is one reverse sweep with no graph sort. Leaves (the
inputs being differentiated) are entries of `None`. A tape lives for one `grad` /
`value_and_grad` / `vjp` call and is dropped afterwards, releasing every intermediate.

A tape is a transform level (runtime/levels.py). Under an outer tape (`grad` of `grad`),
the recorded operands and results are tracers of the outer tape, and the backward pass runs
the VJP rules on them while the outer tape is active, so the outer tape records the backward
pass itself and can differentiate it (second order).
"""
from __future__ import annotations

import numpy as np

from ..runtime.backend import namespace
from ..runtime.levels import Level
from .sparse import SparseRows


class Tape(Level):
    """Entries ``(primitive, raw_operands, params, result, parents)``, appended to `nodes` by
    `tracer.trace_apply` (inline: it is the hot path); parents are ``(operand_position,
    parent_node)`` pairs for the operands that are traced."""

    __slots__ = ("nodes",)

    def __init__(self):
        super().__init__()
        self.nodes: list = []

    def new_leaf(self) -> int:
        self.nodes.append(None)
        return len(self.nodes) - 1


    def backward(self, seeds: dict[int, object]) -> dict[int, object]:
        """Cotangents of the leaves, given cotangents `seeds` of some nodes.

        A node's cotangent takes the dtype of its (floating) value before its rules run: a
        rule that mixes in a wider constant (``g / n`` with a Python int n gives float64
        for float32 g) would otherwise turn the rest of a float32 backward pass into float64
        products and conversions."""
        grads = dict(seeds)
        owned: dict[int, object] = {}   # id -> sums this sweep allocated (updated in place)
        leaf_grads: dict[int, object] = {}
        nodes = self.nodes
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            for idx in range(max(seeds, default=-1), -1, -1):
                g = grads.pop(idx, None)
                if g is None:
                    continue
                owned.pop(id(g), None)
                entry = nodes[idx]
                if entry is None:
                    leaf_grads[idx] = g
                    continue
                if type(g) is SparseRows:    # rules take dense cotangents
                    g = g.dense()
                prim, raw, params, ans, parents = entry
                gdt = getattr(g, "dtype", None)
                if gdt is not None:
                    adt = getattr(ans, "dtype", gdt)
                    if gdt is not adt and gdt != adt and gdt.kind == "f" and adt.kind == "f":
                        g = g.astype(adt)       # a cotangent has its value's dtype (see above)
                rules = prim.vjp
                for pos, parent in parents:
                    if type(rules) is tuple:
                        rule = rules[pos] if pos < len(rules) else None
                        if rule is None:
                            continue
                        c = rule(g, ans, *raw, **params)
                    else:
                        c = rules(pos, g, ans, *raw, **params)
                    if c is None:
                        continue
                    if prim.broadcasting:
                        c = unbroadcast(c, raw[pos])
                    prev = grads.get(parent)
                    grads[parent] = c if prev is None else accumulate(prev, c, owned)
        return leaf_grads


def accumulate(prev, c, owned):
    """``prev + c`` for cotangents of one node; a sum this sweep allocated itself (in `owned`,
    held by no one else) is updated in place instead of copied."""
    if owned.get(id(prev)) is prev and (type(c) is type(prev) or type(c) is SparseRows) \
            and c.dtype == prev.dtype and tuple(c.shape) == prev.shape:
        if type(c) is SparseRows:
            return c._add_into(prev)
        prev += c
        return prev
    out = prev + c
    if getattr(out, "ndim", 0) and hasattr(out, "flags"):     # a fresh array (not a scalar)
        owned[id(out)] = out
    return out


def unbroadcast(c, x):
    """Sum cotangent `c` down to the shape of operand `x` (undoing numpy broadcasting)."""
    shape = x.shape if type(x) is np.ndarray else np.shape(x)
    cshape = c.shape if type(c) is np.ndarray else np.shape(c)
    if cshape == shape:
        return c
    lead = len(cshape) - len(shape)
    if lead > 0:
        c = c.sum(axis=tuple(range(lead)))
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and c.shape[i] != 1)
    if axes:
        c = c.sum(axis=axes, keepdims=True)
    if np.shape(c) != shape:  # c was a scalar and x is not: broadcast up
        c = namespace(c).broadcast_to(c, shape)
    return c
