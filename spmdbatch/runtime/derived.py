"""Rules derived from a primitive's implementation alone, for primitives that declare none.

`per_lane_batch(prim)` and `per_lane_ragged(prim)` are the per-example loop itself: each
lane's operands (its row of every batched operand's data, trimmed to its own length for a
ragged one; uniform operands as they are) go through the primitive one lane at a time, and
the lanes' results are stacked, or padded into a `Ragged` when they differ in length along
their first axis only. They are right for any primitive whose examples are independent
(which is what batching means), and differentiable (getitem, pad and concatenate record the
per-lane pieces on the tape), but they cost one call per lane: a primitive on a hot path
declares its own rules. Results that cannot be put together (different ranks, non-arrays)
raise `UnsupportedOperation` naming the primitive and the user's line.

`refusal(prim, reason)` is the ragged rule of a primitive that cannot take ragged operands,
with the reason in the error.
"""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedOperation
from . import primitives as P
from .batched import Batched
from .blame import user_frame
from .dispatch import bind
from .ragged import Ragged, RaggedT, _refusal


def _lane_operand(a, lane: int):
    """Lane `lane`'s own value of operand `a` (a uniform operand as it is)."""
    kind = type(a)
    if kind is Batched:
        data = a.data
        if a.weak and type(data) is np.ndarray:
            return data[lane].item()            # a Python number in the loop
        return P.getitem(data, index=(lane,))
    if kind is Ragged:
        return P.getitem(a.data, index=(lane, slice(0, int(a.lengths[lane]))))
    if kind is RaggedT:
        raise _refusal("a transposed ragged value (d, T) passed to a primitive that runs lane by "
                       "lane", "Transpose it back first (x.T).", depth=4)
    return a


def _shape(value) -> tuple:
    shape = getattr(value, "shape", None)
    return tuple(np.shape(value)) if shape is None else tuple(shape)


def _stack(prim, outs):
    """The lanes' results `outs` as one batched value (see the module docstring)."""
    shapes = [_shape(o) for o in outs]
    first = shapes[0]
    if all(s == first for s in shapes):
        return Batched(P.concatenate(*[P.reshape(o, shape=(1,) + first) for o in outs], axis=0))
    if len({len(s) for s in shapes}) == 1 and len(first) >= 1 and len({s[1:] for s in shapes}) == 1:
        width = max(s[0] for s in shapes)
        rest = ((0, 0),) * (len(first) - 1)
        padded = [o if s[0] == width else P.pad(o, pad_width=((0, width - s[0]),) + rest, constant=0)
                  for o, s in zip(outs, shapes)]
        data = P.concatenate(*[P.reshape(o, shape=(1, width) + first[1:]) for o in padded], axis=0)
        return Ragged(data, np.array([s[0] for s in shapes], dtype=np.intp))
    raise UnsupportedOperation(
        f"{prim.name} gives results of different ranks or trailing shapes in different examples "
        f"({sorted(set(shapes))[:3]}), so its batched result cannot be put together lane by lane",
        *user_frame(), hint="Declare a batching rule: spmdbatch.primitive(..., batch=rule).")


def _empty(prim, args, params):
    """The result of zero lanes: its per-example shape and dtype from one call on zeros."""
    probe = []
    for a in args:
        if isinstance(a, Batched):
            raw = getattr(a.data, "value", a.data)
            probe.append(np.zeros(raw.shape[1:] if type(a) is not Ragged else (0,) + raw.shape[2:],
                                  dtype=raw.dtype))
        else:
            probe.append(getattr(a, "value", a))
    try:
        out = np.asarray(prim.impl(*probe, **params))
    except Exception:
        raise UnsupportedOperation(
            f"{prim.name} on a batch of zero examples: its result shape cannot be found without "
            f"an example", *user_frame(), hint="Declare a batching rule: "
            "spmdbatch.primitive(..., batch=rule).") from None
    return Batched(np.zeros((0,) + out.shape, dtype=out.dtype))


def _lane_count(args) -> int:
    for a in args:
        if isinstance(a, Batched):
            return a.data.shape[0]
    raise AssertionError("a lane-by-lane rule called without a per-example operand")


def _per_lane(prim):
    def rule(args, **params):
        lanes = _lane_count(args)
        if lanes == 0:
            return _empty(prim, args, params)
        outs = [bind(prim, tuple(_lane_operand(a, lane) for a in args), params) for lane in range(lanes)]
        return _stack(prim, outs)
    rule.__qualname__ = f"per_lane({prim.name})"
    return rule


def per_lane_batch(prim):
    """The batching rule of a primitive that declares none: the per-example loop."""
    return _per_lane(prim)


def per_lane_ragged(prim):
    """The ragged rule of a primitive that declares none: the per-example loop over each
    example's own length."""
    return _per_lane(prim)


def refusal(prim, reason: str):
    """A ragged rule that refuses ragged operands, saying `reason`."""
    def rule(args, **params):
        raise _refusal(f"{prim.name} on a ragged per-example value (examples of different lengths) "
                       f"is not supported: {reason}")
    rule.__qualname__ = f"refusal({prim.name})"
    return rule
