"""Pytrees: nested containers whose leaves are arrays or numbers.

Containers: dict, list, tuple, NamedTuple, dataclass (every field, unless the field's metadata
says ``{"static": True}``: static fields are kept in the tree structure, not as leaves), and
any type registered with `register_node`. ``None`` is an empty container (no leaves).
Everything else is a leaf.

`flatten(tree) -> (leaves, treedef)` and `treedef.unflatten(leaves)` are inverses;
two trees have the same structure when their treedefs compare equal.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable

import numpy as np

_NODE_TYPES: dict[type, tuple[Callable, Callable]] = {}


def register_node(cls: type, flatten_fn: Callable, unflatten_fn: Callable) -> None:
    """Make `cls` a container: ``flatten_fn(obj) -> (children, aux)`` and
    ``unflatten_fn(aux, children) -> obj``; `aux` is static data compared with ==."""
    _NODE_TYPES[cls] = (flatten_fn, unflatten_fn)


def _flatten_dict(d):
    keys = tuple(d.keys())
    if isinstance(d, collections.defaultdict):  # its constructor takes the factory first
        return [d[k] for k in keys], (type(d), keys, d.default_factory)
    return [d[k] for k in keys], (type(d), keys)


def _unflatten_dict(aux, children):
    cls, keys = aux[0], aux[1]
    out = dict(zip(keys, children))
    if cls is dict:
        return out
    return cls(aux[2], out) if len(aux) == 3 else cls(out)


def _flatten_dataclass(obj):
    dynamic, static = [], []
    for f in dataclasses.fields(obj):
        if f.metadata.get("static", False):
            static.append((f.name, getattr(obj, f.name)))
        else:
            dynamic.append(f.name)
    return [getattr(obj, n) for n in dynamic], (type(obj), tuple(dynamic), tuple(static))


def _unflatten_dataclass(aux, children):
    cls, dynamic, static = aux
    obj = object.__new__(cls)
    for name, value in zip(dynamic, children):
        object.__setattr__(obj, name, value)
    for name, value in static:
        object.__setattr__(obj, name, value)
    return obj


_LEAF_TYPES = {float, int, bool, complex, str, bytes, np.ndarray, np.float32, np.float64,
               np.int64, np.int32, np.bool_}


def register_leaf_type(cls: type) -> None:
    """Declare `cls` a leaf type (a fast path: leaves are the common case)."""
    _LEAF_TYPES.add(cls)


def _node_kind(tree):
    """(flatten_fn, unflatten_fn) for a container, or None for a leaf."""
    cls = type(tree)
    if cls in _LEAF_TYPES:
        return None
    if cls in _NODE_TYPES:
        return _NODE_TYPES[cls]
    if cls is tuple or cls is list:
        return _SEQ
    if isinstance(tree, tuple) and hasattr(cls, "_fields"):
        return _NAMEDTUPLE
    if isinstance(tree, dict):
        return _DICT
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        return _DATACLASS
    if tree is None:
        return _NONE
    for base, kind in _NODE_TYPES.items():
        if isinstance(tree, base):
            return kind
    return None


_SEQ = (lambda s: (list(s), type(s)), lambda aux, ch: aux(ch))
_NAMEDTUPLE = (lambda s: (list(s), type(s)), lambda aux, ch: aux(*ch))
_DICT = (_flatten_dict, _unflatten_dict)
_DATACLASS = (_flatten_dataclass, _unflatten_dataclass)
_NONE = (lambda s: ([], None), lambda aux, ch: None)


class TreeDef:
    """The structure of a pytree: container kinds, static data and leaf positions."""

    __slots__ = ("kind", "aux", "children", "num_leaves")

    def __init__(self, kind, aux, children):
        self.kind = kind
        self.aux = aux
        self.children = children
        self.num_leaves = 1 if kind is None else sum(c.num_leaves for c in children)

    def unflatten(self, leaves):
        leaves = list(leaves)
        if len(leaves) != self.num_leaves:
            raise ValueError(f"tree structure expects {self.num_leaves} leaves, got {len(leaves)}")
        return self._build(iter(leaves))

    def _build(self, it):
        if self.kind is None:
            return next(it)
        return self.kind[1](self.aux, [c._build(it) for c in self.children])

    def __eq__(self, other):
        return (isinstance(other, TreeDef) and self.kind is other.kind and _aux_equal(self.aux, other.aux)
                and self.children == other.children)

    def __hash__(self):
        return hash((id(self.kind), self.num_leaves))

    def __repr__(self):
        if self.kind is None:
            return "*"
        name = getattr(self.aux, "__name__", None) or type(self.aux).__name__
        if isinstance(self.aux, tuple) and self.aux and isinstance(self.aux[0], type):
            name = self.aux[0].__name__
        return f"{name}({', '.join(map(repr, self.children))})"


def _aux_equal(a, b):
    try:
        return bool(a == b)
    except Exception:  # aux holding arrays: compare by identity
        return a is b


LEAF = TreeDef(None, None, ())


def flattens_to_items(tree) -> bool:
    """True for a tuple or NamedTuple (not a registered type) whose leaves are its own items."""
    kind = _node_kind(tree)
    return (kind is _SEQ or kind is _NAMEDTUPLE) and isinstance(tree, tuple) and \
        all(_node_kind(item) is None for item in tree)


def flatten(tree) -> tuple[list, TreeDef]:
    """Leaves in a deterministic order (container order) and the structure."""
    leaves: list = []
    return leaves, _flatten_into(tree, leaves)


def _flatten_into(tree, leaves) -> TreeDef:
    kind = _node_kind(tree)
    if kind is None:
        leaves.append(tree)
        return LEAF
    children, aux = kind[0](tree)
    return TreeDef(kind, aux, tuple(_flatten_into(c, leaves) for c in children))


def leaves(tree) -> list:
    return flatten(tree)[0]


def tree_map(fn: Callable, tree, *rest) -> Any:
    """Apply `fn` leaf-wise over trees of the same structure."""
    flat, treedef = flatten(tree)
    others = []
    for other in rest:
        o_flat, o_def = flatten(other)
        if o_def != treedef:
            raise ValueError(f"tree structures differ: {treedef} vs {o_def}")
        others.append(o_flat)
    return treedef.unflatten([fn(*xs) for xs in zip(flat, *others)])


def is_leaf(tree) -> bool:
    return _node_kind(tree) is None


def leaf_paths(tree, prefix: str = "") -> list[str]:
    """A readable path for every leaf, in `flatten` order: ``['w']``, ``[0].b``, ``.cell.W``."""
    kind = _node_kind(tree)
    if kind is None:
        return [prefix]
    children, aux = kind[0](tree)
    if kind is _DICT:
        names = [f"[{k!r}]" for k in aux[1]]
    elif kind is _DATACLASS:
        names = [f".{n}" for n in aux[1]]
    elif kind is _NAMEDTUPLE:
        names = [f".{n}" for n in type(tree)._fields]
    elif hasattr(tree, "_spmd_child_names"):
        names = [f".{n}" for n in tree._spmd_child_names()]
    else:
        names = [f"[{i}]" for i in range(len(children))]
    out: list[str] = []
    for name, child in zip(names, children):
        out.extend(leaf_paths(child, prefix + name))
    return out
