"""Strings of per-example values: f-strings, str() and exceptions raised with them.

``f"{x}"`` of a varying `x` is a varying string: a `Batched` whose data is an object array
of each lane's own text (each example formats its own value, as the per-example loop does).
An exception built from such strings is raised with the text of the example that raises it
(`example_exception`), so no internal wrapper ever shows up in a message.
"""
from __future__ import annotations

import numpy as np

from ..ad.tracer import untraced
from ..runtime.batched import Batched, Ragged
from ..runtime.ragged import to_examples
from .lane_list import _one
from .lanes import is_varying, lane_count, take

_CONVERT = {"s": str, "r": repr, "a": ascii}


def _raw(leaf, batch):
    """A one-lane leaf's data with its lane axis (as the caller of @spmd would see it)."""
    if hasattr(leaf, "materialize"):            # (LaneMapped, Packed)
        leaf = leaf.materialize()
    if type(leaf) is Ragged:
        return to_examples(Ragged(untraced(leaf.data), leaf.lengths))
    if isinstance(leaf, Batched):
        data = leaf.data
        return untraced(data)
    return [leaf]


def example_value(value, i):
    """Example (lane) `i`'s own value of a varying value, as plain Python/numpy objects."""
    return _one(take(value, np.array([i])), _raw)


def _lanes(value) -> list:
    n = lane_count(value)
    return [example_value(value, i) for i in range(n)]


def format_value(value, conversion, spec):
    """``f"{value!conversion:spec}"``: per lane when `value` or `spec` varies."""
    if not is_varying(value) and not is_varying(spec):
        if conversion is not None:
            value = _CONVERT[conversion](value)
        return format(value, spec)
    n = lane_count(value) if is_varying(value) else lane_count(spec)
    out = np.empty(n, dtype=object)
    for i in range(n):
        v = example_value(value, i) if is_varying(value) else value
        s = example_value(spec, i) if is_varying(spec) else spec
        if conversion is not None:
            v = _CONVERT[conversion](v)
        out[i] = format(v, s)
    return Batched(out)


def build_string(parts):
    """``"".join(parts)`` of an f-string's pieces: per lane when a piece varies."""
    varying = [p for p in parts if type(p) is Batched]
    if not varying:
        return "".join(parts)
    n = varying[0].data.shape[0]
    out = np.empty(n, dtype=object)
    for i in range(n):
        out[i] = "".join(p.data[i] if type(p) is Batched else p for p in parts)
    return Batched(out)


def lane_strings(fn):
    """`str`/`repr`/`format` of a varying value: each lane's own text."""
    def convert(value, *args):
        if is_varying(value) or any(is_varying(a) for a in args):
            n = lane_count(value, *args)
            out = np.empty(n, dtype=object)
            for i in range(n):
                out[i] = fn(example_value(value, i) if is_varying(value) else value,
                            *[example_value(a, i) if is_varying(a) else a for a in args])
            return Batched(out)
        return fn(value, *args)
    return convert


def example_exception(exc, i):
    """`exc` as example `i` raises it: varying arguments replaced by that example's values."""
    args = getattr(exc, "args", ())
    if not any(is_varying(a) for a in args):
        return exc
    try:
        new = type(exc)(*[example_value(a, i) if is_varying(a) else a for a in args])
    except Exception:
        return exc
    new.__cause__ = exc.__cause__
    return new
