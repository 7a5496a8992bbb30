"""`SparseRows`: a cotangent that is zero except on some rows of axis 0.

The gradient of a row gather (``E[word]``, ``h[lanes]``) is zero outside the gathered rows.
Building it densely costs a zero array of the whole table for every gather: for an
embedding table read at every level of a tree, that is most of the backward pass. A
`SparseRows` keeps the (row indices, row values) parts instead; adding cotangents
concatenates parts, and the dense array is built once, where a rule or a leaf needs it.

A sum of two `SparseRows` only refers to its two operands; their parts are listed once, when
something reads `parts` (so a cotangent that gets a row-sparse term at every level of a deep
tree costs time linear in the number of terms, not quadratic).
"""
from __future__ import annotations

import numpy as np

from ..runtime.array_methods import index_update
from ..runtime.backend import namespace


class SparseRows:
    """Sum over parts of ``values`` scattered (added) at ``indices`` of a zero array."""

    __slots__ = ("shape", "dtype", "_parts", "_operands")
    __array_ufunc__ = None   # ndarray + SparseRows defers to SparseRows.__radd__

    def __init__(self, shape, dtype, parts):
        self.shape = tuple(shape)
        self.dtype = dtype
        self._parts = parts     # list of (indices, values, unique_indices)
        self._operands = None   # (a, b) of a sum whose parts are not listed yet

    @property
    def parts(self):
        """The (indices, values, unique_indices) parts, the operands' parts in order."""
        if self._operands is not None:
            out, stack = [], [self]
            while stack:                # (iterative: sums nest as deep as the tree)
                node = stack.pop()
                if node._operands is None:
                    out.extend(node._parts)
                else:
                    stack.extend(reversed(node._operands))
            self._parts, self._operands = out, None
        return self._parts

    @classmethod
    def rows(cls, shape, indices, values, unique):
        """The cotangent with `values` added at rows `indices`. Values that are tracers of an
        outer tape (the backward pass of `grad` inside `grad`) give a dense traced array,
        built by a differentiable scatter-add, so the outer tape follows it."""
        if hasattr(values, "tape"):
            zeros = namespace(values.value).zeros(shape, dtype=values.dtype)
            return index_update(zeros, indices, values, mode="add")
        return cls(shape, values.dtype, [(indices, values, unique)])

    def coalesce(self):
        """(unique rows, summed values): the gradient restricted to the rows it touches."""
        xp = namespace(self.parts[0][1])
        if len(self.parts) == 1 and self.parts[0][2]:     # already one value per row
            indices, values, _ = self.parts[0]
            indices = xp.asarray(indices).reshape(-1)
            return indices, values.reshape((len(indices),) + self.shape[1:])
        indices = xp.concatenate([xp.asarray(i).reshape(-1) for i, _, _ in self.parts])
        values = xp.concatenate([v.reshape((-1,) + self.shape[1:]) for _, v, _ in self.parts])
        rows, inverse = xp.unique(indices, return_inverse=True)
        summed = xp.zeros((len(rows),) + self.shape[1:], dtype=values.dtype)
        xp.add.at(summed, inverse.reshape(-1), values)
        return rows, summed

    def dense(self):
        values = self.parts[0][1]
        xp = namespace(values)
        out = xp.zeros(self.shape, dtype=np.result_type(*[v.dtype for _, v, _ in self.parts]))
        self._add_into(out)
        return out

    def _add_into(self, out):
        xp = namespace(out)
        for indices, values, unique in self.parts:
            if unique:
                out[indices] += values
            else:
                xp.add.at(out, indices, values)
        return out

    def __add__(self, other):
        if type(other) is SparseRows:
            out = SparseRows(self.shape, self.dtype, None)
            out._operands = (self, other)
            return out
        out = namespace(other).array(other, dtype=np.result_type(other, self.dtype), copy=True)
        if out.shape != self.shape:
            out = namespace(other).array(np.broadcast_to(out, self.shape))
        return self._add_into(out)

    __radd__ = __add__


def densify(g):
    """A dense cotangent (SparseRows become arrays; anything else is returned as is)."""
    return g.dense() if type(g) is SparseRows else g
