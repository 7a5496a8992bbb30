"""`Module`: a component that couples parameters with the functions that use them.

A Module subclass is a dataclass (made one automatically) and a pytree: its fields are the
leaves (parameter arrays) and sub-components (modules, or tuples/lists/dicts of them);
fields declared with ``static(...)`` (sizes, activation choices, flags) are hyper-parameters
kept in the tree structure, never leaves. So a Module can be passed to ``grad`` (the
gradient is a Module of the same structure), to ``spmd`` as a uniform (``in_axes=None``)
argument, and to the optimisers of `spmdbatch.nn.optim`.

Modules are values: methods that change something (`load_state_dict`, `load`, `eval`,
`train`, `replace`, `astype`) return a new module and leave the original unchanged.

A subclass with no ``__init__`` of its own gets the dataclass constructor (one keyword per
field); one with an ``__init__`` builds its fields there. An attribute assigned without a
class annotation (``self.cell = nn.LSTMCell(...)`` in ``__init__``, or later) becomes a field
on assignment, as torch.nn registers sub-modules: one holding arrays or modules (or
containers of them, or None) is a parameter field, anything else (numbers, strings,
functions) a static one. ``cls.from_fields(**fields)``
always builds one from ready field values. Inside ``@spmd`` code, ``module(x)`` runs the
class's ``__call__`` as a batch program, so data-dependent ``if``/``while`` work in it.
"""
from __future__ import annotations

import ast
import dataclasses
import re
import types
from typing import Any

import numpy as np

from .. import files
from ..ad.tracer import untraced
from ..execution import calls as _calls
from ..runtime import pytree
from ..runtime.backend import is_floating, to_numpy

_META_KEY = "__spmdbatch_module__"


def static(default=dataclasses.MISSING, **kwargs):
    """A dataclass field that is a hyper-parameter (part of the tree structure, not a leaf)."""
    return dataclasses.field(default=default, metadata={"static": True}, **kwargs)


def _wrap_call(impl):
    """`__call__` that dispatches through spmdbatch's call machinery (batch program if varying)."""
    def __call__(self, *args, **kwargs):
        return _calls.call(types.MethodType(impl, self), *args, **kwargs)
    __call__._spmd_native = True
    __call__.__doc__ = impl.__doc__
    __call__.__wrapped__ = impl
    __call__.__qualname__ = impl.__qualname__
    return __call__


class Module:
    """Base class of components; see the module docstring."""

    takes_key = False
    """True for components whose ``__call__`` accepts a ``key=`` (random per-example key)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        impl = cls.__dict__.get("__call__")
        if isinstance(impl, types.FunctionType) and not getattr(impl, "_spmd_native", False):
            cls.__call__ = _wrap_call(impl)
        custom_init = "__init__" in cls.__dict__ or getattr(cls, "_nn_custom_init", False)
        cls._nn_custom_init = custom_init
        dataclasses.dataclass(cls, init=not custom_init, repr=False, eq=False)

    def __setattr__(self, name, value):
        object.__setattr__(self, name, value)
        field = type(self).__dataclass_fields__.get(name)
        if field is None or (field.metadata.get("auto", False) and value is not None
                             and field.metadata["static"] == _holds_parameters(value)):
            _register_field(type(self), name, value)

    # --- construction ------------------------------------------------------------------------
    @classmethod
    def from_fields(cls, **fields):
        """A module of this class from its field values (bypassing ``__init__``)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(fields) - names
        if unknown:
            raise TypeError(f"{cls.__name__} has no field(s) {sorted(unknown)}; fields: {sorted(names)}")
        obj = object.__new__(cls)
        for f in dataclasses.fields(cls):
            if f.name in fields:
                value = fields[f.name]
            elif f.default is not dataclasses.MISSING:
                value = f.default
            elif f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
            else:
                raise TypeError(f"{cls.__name__}.from_fields: missing field {f.name!r}")
            object.__setattr__(obj, f.name, value)
        return obj

    def replace(self, **changes):
        """A copy with some fields replaced."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values.update(changes)
        return type(self).from_fields(**values)

    # --- parameters --------------------------------------------------------------------------
    def parameters(self) -> list[tuple[str, Any]]:
        """``[(dotted name, leaf), ...]`` in flatten order, e.g. ``('layers.0.W', array)``."""
        return named_leaves(self)

    def num_parameters(self) -> int:
        """The total number of scalar parameters (elements of floating leaves)."""
        return int(sum(np.size(untraced(v)) for _, v in self.parameters() if is_floating(untraced(v))))

    def state_dict(self) -> dict:
        """``{dotted name: numpy array}`` (host copies of the leaves)."""
        return {name: np.array(to_numpy(untraced(leaf))) for name, leaf in self.parameters()}

    def load_state_dict(self, state: dict, strict: bool = True):
        """A new module with the leaves taken from `state` (as made by `state_dict`).

        Each array must have its leaf's shape; it is cast to the leaf's dtype. With `strict`,
        missing and unexpected names are errors; without, missing leaves keep their values.
        """
        leaves, treedef = pytree.flatten(self)
        names = [n for n, _ in self.parameters()]
        state = {k: v for k, v in state.items() if k != _META_KEY}
        if strict:
            missing = [n for n in names if n not in state]
            unexpected = sorted(set(state) - set(names))
            if missing or unexpected:
                raise KeyError(f"load_state_dict for {type(self).__name__}: missing {missing}, "
                               f"unexpected {unexpected}")
        out = []
        for name, leaf in zip(names, leaves):
            if name not in state:
                out.append(leaf)
                continue
            value = np.asarray(state[name])
            if np.shape(value) != np.shape(untraced(leaf)):
                raise ValueError(f"load_state_dict for {type(self).__name__}: {name!r} has shape "
                                 f"{np.shape(value)} in the state, {np.shape(untraced(leaf))} in the module")
            if isinstance(leaf, (int, float, bool)):
                out.append(type(leaf)(value))
            else:
                out.append(value.astype(np.asarray(untraced(leaf)).dtype, copy=True))
        return treedef.unflatten(out)

    def save(self, path) -> None:
        """Write the parameters to an ``.npz`` file (``.npz`` is appended if missing).

        The write is atomic (`spmdbatch.files.atomic_write`): an interrupted or failed save
        leaves the previous file at `path` as it was."""
        state = self.state_dict()
        if _META_KEY in state:
            raise ValueError(f"a parameter is named {_META_KEY!r}, which save() reserves")
        files.save_npz(path, {**state, _META_KEY: np.array(type(self).__qualname__)})

    def load(self, path, strict: bool = True):
        """A new module with this one's structure and the parameters saved at `path`.

        Names and shapes are checked from the archive's headers before any array is read
        (`spmdbatch.files.read_npz`), so a foreign or hostile file is refused with a
        `spmdbatch.files.CheckpointError` (a ValueError) instead of being loaded; without
        `strict`, unknown arrays are skipped unread and missing ones keep their values."""
        saved_as = files.read_npz(path, {_META_KEY: None}, strict=False,
                                  max_member_bytes=4096).get(_META_KEY)
        if strict and saved_as is not None and str(saved_as) != type(self).__qualname__:
            raise ValueError(f"{path} holds the parameters of a {saved_as}, not a {type(self).__qualname__}")
        expected = {name: np.shape(untraced(leaf)) for name, leaf in self.parameters()}
        if saved_as is not None:
            expected[_META_KEY] = None
        state = files.read_npz(path, expected, strict=strict, max_member_bytes=4096)
        state.pop(_META_KEY, None)
        return self.load_state_dict(state, strict=strict)

    def astype(self, dtype):
        """A copy with every floating leaf cast to `dtype`."""
        return pytree.tree_map(
            lambda x: np.asarray(x).astype(dtype) if is_floating(untraced(x)) and not isinstance(x, float) else x,
            self)

    # --- modes -------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        """A copy with every sub-component's ``training`` flag set to `mode` (Dropout)."""
        return map_modules(self, lambda m: m.replace(training=mode)
                           if "training" in {f.name for f in dataclasses.fields(m)} else m)

    def eval(self):
        """A copy in evaluation mode (dropout off)."""
        return self.train(False)

    # --- display -----------------------------------------------------------------------------
    def __repr__(self):
        return _format(self, 0)


def _holds_parameters(value) -> bool:
    """True for what an unannotated attribute keeps as parameters: arrays, modules,
    containers of them, None (an empty container); numbers, strings and functions are
    hyper-parameters."""
    if value is None or isinstance(value, Module):
        return True
    return any(hasattr(leaf, "dtype") and hasattr(leaf, "shape") or isinstance(leaf, Module)
               for leaf in pytree.leaves(value))


def _register_field(cls, name, value):
    """Make attribute `name` (assigned without a class annotation) a field of `cls`: a
    parameter field or a static one, by its value (see the module docstring)."""
    meta = {"static": not _holds_parameters(value), "auto": True}
    made = dataclasses.make_dataclass(
        "_Field", [(name, Any, dataclasses.field(default=None, metadata=meta))])
    cls.__dataclass_fields__ = {**cls.__dataclass_fields__, name: made.__dataclass_fields__[name]}
    if not hasattr(cls, name):        # instances that never set it read None
        setattr(cls, name, None)


# --- dotted names ----------------------------------------------------------------------------
_TOKEN = re.compile(r"\.([A-Za-z_]\w*)|\[(-?\d+)\]|\[(.+?)\](?=\.|\[|$)")


def _dotted(path: str) -> str:
    parts = []
    for m in _TOKEN.finditer(path):
        if m.group(1) is not None:
            parts.append(m.group(1))
        elif m.group(2) is not None:
            parts.append(m.group(2))
        else:
            try:
                parts.append(str(ast.literal_eval(m.group(3))))
            except (ValueError, SyntaxError):
                parts.append(m.group(3))
    return ".".join(parts)


def named_leaves(tree) -> list[tuple[str, Any]]:
    """``(dotted name, leaf)`` for every leaf of any pytree, in flatten order."""
    leaves = pytree.leaves(tree)
    return [(_dotted(p), leaf) for p, leaf in zip(pytree.leaf_paths(tree), leaves)]


# --- traversal -------------------------------------------------------------------------------
def map_modules(tree, fn):
    """Rebuild `tree` bottom-up with ``fn(module)`` applied to every Module in it."""
    if isinstance(tree, Module):
        fields = {f.name: map_modules(getattr(tree, f.name), fn) for f in dataclasses.fields(tree)}
        return fn(type(tree).from_fields(**fields))
    if type(tree) in (tuple, list):
        return type(tree)(map_modules(t, fn) for t in tree)
    if isinstance(tree, tuple) and hasattr(type(tree), "_fields"):
        return type(tree)(*(map_modules(t, fn) for t in tree))
    if type(tree) is dict:
        return {k: map_modules(v, fn) for k, v in tree.items()}
    return tree


# --- repr ------------------------------------------------------------------------------------
def _describe_leaf(x) -> str:
    raw = untraced(x)
    if hasattr(raw, "shape") and hasattr(raw, "dtype"):
        prefix = "traced " if raw is not x else ""
        return f"{prefix}{raw.dtype}[{', '.join(map(str, raw.shape))}]"
    return repr(x)


def _describe_static(v) -> str:
    if isinstance(v, (types.FunctionType, types.BuiltinFunctionType, np.ufunc)):
        return getattr(v, "__name__", repr(v))
    name = getattr(v, "__name__", None)
    if callable(v) and name:
        return name
    if hasattr(v, "func") and callable(v):  # functools.partial
        args = ", ".join([*map(repr, v.args), *(f"{k}={a!r}" for k, a in v.keywords.items())])
        return f"{_describe_static(v.func)}({args})"
    return repr(v)


def _format(value, indent: int) -> str:
    pad = "  " * (indent + 1)
    if isinstance(value, Module):
        custom = getattr(value, "_repr_inline", None)
        if custom is not None:
            return custom()
        items = []
        nested = False
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if f.metadata.get("static", False):
                items.append(f"{f.name}={_describe_static(v)}")
            else:
                text = _format(v, indent + 1)
                nested = nested or "\n" in text or isinstance(v, (Module, tuple, list, dict))
                items.append(f"{f.name}={text}")
        name = type(value).__name__
        if not nested:
            return f"{name}({', '.join(items)})"
        return f"{name}(\n" + "".join(f"{pad}{it},\n" for it in items) + "  " * indent + ")"
    if type(value) in (tuple, list) and value:
        open_, close = ("(", ")") if type(value) is tuple else ("[", "]")
        return open_ + "\n" + "".join(f"{pad}{_format(v, indent + 1)},\n" for v in value) + \
            "  " * indent + close
    if type(value) is dict and value:
        return "{\n" + "".join(f"{pad}{k!r}: {_format(v, indent + 1)},\n" for k, v in value.items()) + \
            "  " * indent + "}"
    if value is None:
        return "None"
    return _describe_leaf(value)
