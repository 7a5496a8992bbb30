"""Moving lanes between groups: take a subset of lanes of a value, merge lane groups.

Values in a batch program are uniform (shared by all lanes of a group) or varying
(`Batched`, or a container holding one, or an object with the lane protocol below).

- `take(value, idx)` keeps lanes `idx` (an int array without repeats) of a value;
- `merge(values, counts)` concatenates the lanes of several groups, each holding
  `counts[i]` lanes: uniform values that agree stay uniform, others become `Batched`.

Objects that carry per-lane state (batched iterators) implement
``_spmd_take_lanes(idx)`` and ``_spmd_merge_lanes(others, counts)``.
"""
from __future__ import annotations

import threading
from types import BuiltinMethodType, CellType, FunctionType, MethodType

import numpy as np

from ..errors import UnmergeableGroups, UnsupportedConstruct
from ..runtime import primitives as P
from ..runtime import pytree, views
from ..ad.tracer import Tracer, untraced
from ..runtime.batched import Batched, Ragged
from ..runtime.blame import user_frame
from ..runtime.mapped import MIN_MAPPED_SIZE, LaneMapped, as_mapped, identity_index, mappable

_VIEWS = views.RECORDS


class _Undefined:
    """A local variable with no value yet (reading it in Python would raise)."""

    __slots__ = ()

    def __repr__(self):
        return "<undefined>"


UNDEFINED = _Undefined()
_CONTAINERS = (tuple, list, dict)
_SCALARS = (int, float, bool, complex, str, bytes, type(None), np.integer, np.floating, np.bool_)


_PLAIN_LEAVES = (float, int, bool, str, np.ndarray, type(None), np.float32, np.float64, np.int64)
_NDARRAY = np.ndarray


class _UniformObjects(threading.local):
    """`objects`, id -> object: parameter containers (dataclass-like objects) found uniform
    during the running @spmd call of this thread, so they are walked once per call. Only
    filled while an @spmd call runs (`active`); emptied when one starts and ends and when
    batch code assigns or deletes an attribute (`forget_uniform_objects`)."""
    active = 0

    def __init__(self):
        self.objects = {}
        self.cells = set()   # ids of the closure cells batch programs made during this call
        self.made = set()    # ids of the objects batch programs constructed during this call


def owned_cell(*contents):
    """A closure cell made by a batch program (its `MakeCell`, or a copy for some lanes): one
    the program may fill with per-example values, unlike the cells of the caller's closures
    (`calls.store_nonlocal`). Remembered until the outermost @spmd call of the thread ends."""
    cell = CellType(*contents)
    UNIFORM_OBJECTS.cells.add(id(cell))
    return cell


def is_owned_cell(cell) -> bool:
    return id(cell) in UNIFORM_OBJECTS.cells


def own_object(obj):
    """Remember `obj`, an instance a batch program constructed (`Cls(...)`), as the program's
    own: its attributes may hold per-example values (`calls.store_attr`), unlike those of
    objects the caller can see. Remembered until the outermost @spmd call of the thread ends
    (an id cannot be reused by an object older than the call while both are alive)."""
    if UNIFORM_OBJECTS.active:
        UNIFORM_OBJECTS.made.add(id(obj))
    return obj


def is_owned_object(obj) -> bool:
    return id(obj) in UNIFORM_OBJECTS.made


UNIFORM_OBJECTS = _UniformObjects()

# Lists and dicts built by batch programs (execution/lane_list.py registers them): type ->
# (merge(values, counts, name, disjoint), is_varying(value)). Each group of lanes owns its
# own copy of such a container, so `take` copies them even when they hold no varying value.
OWNED_CONTAINERS: dict = {}


def forget_uniform_objects():
    UNIFORM_OBJECTS.objects.clear()


def is_varying(value, _seen=None) -> bool:
    """True if `value` holds per-lane data anywhere (containers, closure cells included)."""
    kind = type(value)
    if kind is Batched or kind is LaneMapped:
        return True
    if kind in _PLAIN_LEAVES or kind is Tracer:
        return False
    if kind is MethodType:                  # `v.sum` of a per-example v
        return is_varying(value.__self__, _seen)
    if kind is tuple or kind is list or (isinstance(value, tuple) and hasattr(kind, "_fields")):
        return any(is_varying(v, _seen) for v in value)
    if kind is dict:
        return any(is_varying(v, _seen) for v in value.values())
    owned = OWNED_CONTAINERS.get(kind)
    if owned is not None:                   # a list or dict built by the batch program
        return owned[1](value)
    if hasattr(value, "_spmd_take_lanes"):
        return True
    if hasattr(kind, "__dataclass_fields__") and hasattr(value, "__dict__"):
        known = UNIFORM_OBJECTS.objects
        if id(value) in known:
            return False
        fields = vars(value).values()
        if any(is_varying(v, _seen) for v in fields):   # modules: no tree walk
            return True
        # only objects of arrays, numbers and such objects are remembered: a list or dict
        # field could change in place without an attribute assignment
        if UNIFORM_OBJECTS.active and all(type(v) in _PLAIN_LEAVES or type(v) is Tracer
                                          or id(v) in known for v in fields):
            known[id(value)] = value
        return False
    if kind is CellType or kind is FunctionType:
        _seen = set() if _seen is None else _seen
        if id(value) in _seen:
            return False
        _seen.add(id(value))
        if kind is CellType:
            try:
                return is_varying(value.cell_contents, _seen)
            except ValueError:  # empty cell
                return False
        return any(is_varying(c, _seen) for c in value.__closure__ or ())
    if isinstance(value, _CONTAINERS) or _is_struct(value):
        return any(is_varying(leaf, _seen) for leaf in pytree.leaves(value) if leaf is not value)
    return False


def _is_struct(value) -> bool:
    return (hasattr(type(value), "__dataclass_fields__") and not isinstance(value, type)) or \
        (isinstance(value, tuple) and hasattr(type(value), "_fields"))


def take(value, idx, memo=None):
    """`value` restricted to lanes `idx`.

    Closure cells and the functions that close over them are copied with their varying
    contents taken; `memo` makes a cell shared by several values (a local variable's cell
    and a lambda reading it) stay shared in the result.
    """
    kind = type(value)
    if kind is Batched:
        data = value.data
        if type(data) is np.ndarray:
            if data.size >= MIN_MAPPED_SIZE * max(1, data.shape[0]):
                return LaneMapped(data, idx)    # large raw per-lane data: map, do not copy
            return Batched(data.take(idx, axis=0), value.weak)
        return Batched(P.take_lanes(data, idx), value.weak)
    if kind is tuple:                       # (environments are tuples: the common case)
        items = [take(v, idx, memo) for v in value]
        for a, b in zip(items, value):
            if a is not b:
                return tuple(items)
        return value
    if kind in _PLAIN_LEAVES or kind is Tracer:
        return value
    if kind in OWNED_CONTAINERS:            # (two names of one list stay one list)
        if memo is None:
            return value._spmd_take_lanes(idx, {})
        hit = memo.get(id(value))
        if hit is None:
            hit = memo[id(value)] = value._spmd_take_lanes(idx, memo)
        return hit
    if isinstance(value, tuple) and hasattr(kind, "_fields"):    # NamedTuple: no tree walk
        return _take_record(value, kind, idx, memo)
    if kind is MethodType:
        obj = take(value.__self__, idx, memo)
        return value if obj is value.__self__ else MethodType(value.__func__, obj)
    if kind is BuiltinMethodType and type(value.__self__) in OWNED_CONTAINERS:
        # (`lst.append` loaded before its argument is computed: bound to this group's copy)
        return getattr(take(value.__self__, idx, memo), value.__name__)
    if kind is LaneMapped:
        index = value.index
        if memo is None:
            return LaneMapped(value.base, index[idx], value.lengths)
        key = ("index", id(index))            # fields on one lane map move together
        hit = memo.get(key)
        if hit is None or hit[0] is not index:
            hit = memo[key] = (index, index[idx])
        return LaneMapped(value.base, hit[1], value.lengths)
    if kind is Ragged:
        data = value.data
        if type(data) is np.ndarray:
            return LaneMapped(data, idx, value.lengths)     # raw per-lane data: map, do not copy
        return Ragged(P.take_lanes(data, idx), value.lengths[idx])
    hook = getattr(value, "_spmd_take_lanes", None)
    if hook is not None:
        return hook(idx)
    if kind is CellType or kind is FunctionType:
        if not is_varying(value) and not _holds_owned(value):
            return value
        memo = {} if memo is None else memo
        if id(value) in memo:
            return memo[id(value)]
        if kind is CellType:
            new = owned_cell()
            memo[id(value)] = new
            new.cell_contents = take(value.cell_contents, idx, memo)
            return new
        cells = tuple(take(c, idx, memo) for c in value.__closure__)
        new = _rebuild_function(value, cells)
        memo[id(value)] = new
        return new
    if kind is list:
        items = [take(v, idx, memo) for v in value]
        return value if all(a is b for a, b in zip(items, value)) else items
    if kind is dict:
        items = {k: take(v, idx, memo) for k, v in value.items()}
        return value if all(items[k] is v for k, v in value.items()) else items
    if (isinstance(value, _CONTAINERS) or _is_struct(value)) and is_varying(value):
        leaves, treedef = pytree.flatten(value)
        return treedef.unflatten([take(leaf, idx, memo) for leaf in leaves])
    if id(value) in UNIFORM_OBJECTS.made:
        _refuse_split_object(value)
    return value


def _refuse_split_object(value):
    """An object the program constructed that holds per-example values cannot follow the
    lanes of a split (it is one object for all of them): refused, naming the line."""
    fields = getattr(value, "__dict__", None)
    if fields and any(is_varying(v) for v in fields.values()):
        filename, lineno = user_frame()
        raise UnsupportedConstruct(
            f"a {type(value).__name__} object holding per-example values, where examples take "
            f"different paths (it is one object for all of them)", filename, lineno,
            "Keep per-example state in local variables, or make the class a dataclass (its "
            "fields then follow each example's path; assign them outside data-dependent "
            "branches).")


def _take_once(value, idx, memo):
    """`take` of a per-example array once per environment: two names of one array (``u = w``)
    stay one array, as in the loop, where an update through one is seen through the other
    (runtime/views.py)."""
    key = ("array", id(value))
    hit = memo.get(key)
    if hit is None or hit[0] is not value:
        hit = memo[key] = (value, take(value, idx, memo))
    return hit[1]


def take_env(env, idx):
    """`take` of an environment tuple (one memo for all its slots): the values most slots hold,
    batched lane vectors of numpy data and plain uniform leaves, without `take`'s dispatch."""
    items = []
    memo = None
    aliases = None       # (whether one array is held by two slots: taken once, see _take_once)
    for v in env:
        kind = type(v)
        if kind is Batched:
            data = v.data
            if type(data) is _NDARRAY and data.ndim == 1:
                v = Batched(data.take(idx), v.weak)
            else:
                if aliases is None:
                    aliases = len({id(x) for x in env}) < len(env)
                if aliases:
                    if memo is None:
                        memo = {}
                    v = _take_once(v, idx, memo)
                else:
                    v = take(v, idx, memo)
        elif kind not in _PLAIN_LEAVES and kind is not Tracer:
            if memo is None:
                memo = {}
            if kind is LaneMapped:
                if aliases is None:
                    aliases = len({id(x) for x in env}) < len(env)
                v = _take_once(v, idx, memo) if aliases else take(v, idx, memo)
            else:
                v = take(v, idx, memo)
        items.append(v)
    if _VIEWS.bases or _VIEWS.stale:
        views.follow_take(env, items)    # (views and out-of-date values stay so in the groups)
    return tuple(items)


def _holds_owned(value) -> bool:
    """True for a cell (or a function's closure) holding a list or dict of the batch program."""
    if type(value) is CellType:
        try:
            return type(value.cell_contents) in OWNED_CONTAINERS
        except ValueError:
            return False
    return any(_holds_owned(c) for c in value.__closure__ or ())


def _shared_lane_map(record):
    """The one lane map all fields of a NamedTuple record are on, or None."""
    if not len(record) or type(record[0]) is not LaneMapped:
        return None
    index = record[0].index
    for v in record:
        if type(v) is not LaneMapped or v.index is not index:
            return None
    return index


def _take_record(value, kind, idx, memo):
    """`take` of a NamedTuple; the fields of a per-example record on one lane map (ragged
    arguments) move with one index operation."""
    hook = getattr(value, "_spmd_take_lanes", None)
    if hook is not None:
        return hook(idx)
    index = _shared_lane_map(value)
    if index is not None:
        key = ("index", id(index))
        hit = None if memo is None else memo.get(key)
        if hit is None or hit[0] is not index:
            hit = (index, index[idx])
            if memo is not None:
                memo[key] = hit
        return kind(*[LaneMapped(v.base, hit[1], v.lengths) for v in value])
    items = [take(v, idx, memo) for v in value]
    return value if all(a is b for a, b in zip(items, value)) else kind(*items)


def repeat_lanes(value, m, n):
    """One value (of `n` lanes) passed to `m` fused calls: its lanes repeated `m` times
    (uniform values stay as they are). The common cases skip `merge`'s general walk: batched
    data, and records whose fields share one lane map (ragged per-example arguments)."""
    kind = type(value)
    if kind is Batched:
        data = value.data
        if type(data) is not np.ndarray or data.size < MIN_MAPPED_SIZE * max(1, data.shape[0]):
            return Batched(P.concatenate(*[data] * m, axis=0), value.weak)
    elif kind in _PLAIN_LEAVES or kind is Tracer:
        return value
    elif isinstance(value, tuple) and hasattr(kind, "_fields"):
        index = _shared_lane_map(value)
        if index is not None:
            repeated = np.concatenate([index] * m)
            return kind(*[LaneMapped(v.base, repeated, v.lengths) for v in value])
    return merge([value] * m, [n] * m, "an argument", disjoint=False)


def merge_calls(args, kwargs, counts):
    """The arguments of several calls of one function as those of ONE call over all their
    lanes: call i passes ``args[i]``, ``kwargs[i]`` (the same keys) for ``counts[i]`` lanes.
    The calls may be made by the same lanes (fused calls), so an object that every call
    passes is repeated for each (`repeat_lanes`), never taken as uniform."""
    m, n = len(args), counts[0]
    same_counts = all(c == n for c in counts)

    def one(values, name):
        first = values[0]
        if same_counts:
            for v in values:
                if v is not first:
                    break
            else:
                return repeat_lanes(first, m, n)
        return merge(values, counts, name, disjoint=False)

    merged = [one([a[i] for a in args], f"argument {i}") for i in range(len(args[0]))]
    merged_kw = {key: one([k[key] for k in kwargs], f"argument {key!r}") for key in kwargs[0]}
    return merged, merged_kw


def fresh(value):
    """`value` with new objects wherever it holds per-lane data (the same lanes, the same
    arrays): a group of new lanes may then hold it without sharing objects with the group
    it came from."""
    kind = type(value)
    if kind is Batched:
        return Batched(value.data, value.weak)
    if kind is Ragged:
        return Ragged(value.data, value.lengths)
    if kind is LaneMapped:
        return LaneMapped(value.base, value.index, value.lengths)
    if kind in OWNED_CONTAINERS:       # (a list passed to a recursive call: read-only there)
        return value._spmd_freeze()
    if kind in _PLAIN_LEAVES or kind is Tracer or not is_varying(value):
        return value
    if kind is tuple or kind is list:
        return kind(fresh(v) for v in value)
    if isinstance(value, tuple) and hasattr(kind, "_fields"):
        return kind(*[fresh(v) for v in value])
    if kind is dict:
        return {k: fresh(v) for k, v in value.items()}
    return take(value, np.arange(lane_count(value)), {})


def _rebuild_function(fn, closure):
    new = FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, closure)
    new.__kwdefaults__ = fn.__kwdefaults__
    new.__qualname__ = fn.__qualname__
    new.__dict__.update(fn.__dict__)
    return new


def _same(a, b) -> bool:
    if a is b:
        return True
    if type(a) is not type(b) or not isinstance(a, _SCALARS):
        return False
    try:
        return bool(a == b) or (a != a and b != b)  # NaN == NaN here
    except Exception:
        return False


def merge(values, counts, name: str = "a value", disjoint: bool = True, _memo=None):
    """Concatenate lane groups; `counts[i]` is the number of lanes of `values[i]`.

    Groups of one scheduler are `disjoint` (different lanes), so one object held by all of
    them is uniform. Fused calls merge groups of the same lanes (`disjoint=False`): there,
    a varying object held by all of them is repeated for each group.
    """
    first = values[0]
    kind = type(first)
    # the common cases first: lane-mapped data of one base, batched arrays
    if kind is LaneMapped and all(type(v) is LaneMapped and v.base is first.base for v in values):
        if disjoint and all(v is first for v in values[1:]):
            return first
        if _memo is None:
            return LaneMapped(first.base, np.concatenate([v.index for v in values]), first.lengths)
        key = tuple(id(v.index) for v in values)      # fields on one lane map move together
        hit = _memo.get(key)
        if hit is None or any(a is not v.index for a, v in zip(hit[0], values)):
            indexes = [v.index for v in values]
            hit = _memo[key] = (indexes, np.concatenate(indexes))
        return LaneMapped(first.base, hit[1], first.lengths)
    if kind is Batched and all(type(v) is Batched for v in values):
        if not all(v is first for v in values[1:]) or not (disjoint or mappable(first)):
            # (one small value held by the calls of a fused site: repeated for each call)
            for v in values:
                if v.weak:
                    return _merge_numbers(values, counts, name, disjoint)
            if disjoint:
                _check_one_dtype(values, name)
            return Batched(P.concatenate(*[v.data for v in values], axis=0))
    owned = OWNED_CONTAINERS.get(kind)
    if owned is None and first is UNDEFINED:
        for v in values:
            owned = OWNED_CONTAINERS.get(type(v))
            if owned is not None:
                break
    if owned is not None:                  # lists and dicts of the batch program
        return owned[0](values, counts, name, disjoint, _memo)
    if all(_same(first, v) for v in values[1:]) and (disjoint or not is_varying(first)):
        return first                       # (the same object stays the same object)
    if (kind is tuple or kind is list) and all(type(v) is kind and len(v) == len(first) for v in values):
        # tuples of results: merge position by position (no tree walk)
        memo = {} if _memo is None else _memo
        items = [merge([v[i] for v in values], counts, name, disjoint, memo) for i in range(len(first))]
        return kind(items)
    if isinstance(first, tuple) and hasattr(kind, "_fields") and all(type(v) is kind for v in values):
        # NamedTuples (per-example records such as trees): field by field
        memo = {} if _memo is None else _memo
        return kind(*[merge([v[i] for v in values], counts, name, disjoint, memo)
                      for i in range(len(first))])
    if type(first) is Batched and mappable(first) and all(v is first for v in values[1:]):
        # one lane's data for several groups: map it (the identity maps of one lane count are
        # one shared array, so the fields of a record keep sharing their lane map)
        return merge([as_mapped(first)] * len(values), counts, name, disjoint, _memo)
    elif type(first) is Ragged and type(first.data) is np.ndarray and all(v is first for v in values[1:]):
        mapped = LaneMapped(first.data, identity_index(first.data.shape[0]), first.lengths)
        return merge([mapped] * len(values), counts, name, disjoint, _memo)   # the same, ragged
    defined = [v for v in values if v is not UNDEFINED]
    if len(defined) < len(values):
        # Lanes where the variable is unbound never read it (else Python would have raised):
        # give them a copy of a defined lane so no garbage (NaN) is ever computed on.
        filler = defined[0]
        values = [_broadcast_one_lane(filler, n) if v is UNDEFINED else v for v, n in zip(values, counts)]
        if all(_same(values[0], v) for v in values[1:]):
            return values[0]
    if any(type(v) is LaneMapped for v in values):
        values = _as_mapped_like(values)
        if all(type(v) is LaneMapped and v.base is values[0].base for v in values):
            # (through the fast path above, so fields of a record keep sharing one lane map)
            return merge(values, counts, name, disjoint, _memo)
        values = [v.materialize() if type(v) is LaneMapped else v for v in values]
    hook = getattr(values[0], "_spmd_merge_lanes", None)
    if hook is not None:
        return hook(values[1:], counts)
    if all(type(v) is CellType for v in values):
        return _merge_cells(values, counts, name)
    if all(type(v) is MethodType and v.__func__ is first.__func__ for v in values):
        return MethodType(first.__func__, merge([v.__self__ for v in values], counts, name, disjoint,
                                                _memo))
    if all(type(v) is BuiltinMethodType and type(v.__self__) in OWNED_CONTAINERS
           and v.__name__ == first.__name__ for v in values):
        return getattr(merge([v.__self__ for v in values], counts, name, disjoint, _memo), first.__name__)
    if all(type(v) is FunctionType for v in values) and \
            all(v.__code__ is values[0].__code__ for v in values):
        closures = [v.__closure__ or () for v in values]
        cells = tuple(_merge_cells([c[i] for c in closures], counts, name)
                      for i in range(len(closures[0])))
        return _rebuild_function(values[0], cells)
    if any(type(v) is Batched for v in values) or all(_is_array_like(v) for v in values):
        return _merge_numbers(values, counts, name, disjoint)
    if all(isinstance(v, _CONTAINERS) or _is_struct(v) for v in values):
        flat = [pytree.flatten(v) for v in values]
        treedef = flat[0][1]
        if any(f[1] != treedef for f in flat[1:]):
            filename, lineno = user_frame()
            raise UnmergeableGroups(
                f"{name} holds containers of different structure in different examples where "
                f"control flow joins", filename, lineno,
                hint="Give it the same structure (length, keys) on every path.")
        return treedef.unflatten([merge([f[0][i] for f in flat], counts, name, disjoint)
                                  for i in range(len(flat[0][0]))])
    kinds = sorted({type(v).__name__ for v in values})
    filename, lineno = user_frame()
    raise UnmergeableGroups(
        f"{name} holds different non-array objects ({', '.join(kinds)}) in different examples "
        f"where control flow joins", filename, lineno,
        hint="Only numbers and arrays can differ between examples.")


def check_row_shapes(datas, name):
    """Raise `UnmergeableGroups` unless the lane-major arrays `datas` have one row shape (the
    groups then run on separately, or a value that must be one, a return, says why)."""
    tail = datas[0].shape[1:]
    for d in datas[1:]:
        if d.shape[1:] != tail:
            shapes = sorted({str(tuple(x.shape[1:])) for x in datas})
            filename, lineno = user_frame()
            raise UnmergeableGroups(
                f"{name} holds arrays of different shapes in different examples "
                f"({', '.join(shapes)}) where control flow joins", filename, lineno,
                hint="Give it one shape on every path (for example broadcast a number: "
                     "np.zeros(n) + 1).")


def merge_envs(envs, counts, names=None):
    """Environment tuples of lane groups merged slot by slot (`names`: the slots' variables,
    for error messages)."""
    memo: dict = {}       # (one list held by two variables stays one list)
    out = []
    first_env = envs[0]
    aliases = len({id(x) for x in first_env}) < len(first_env)   # (one array in two slots)
    for i, values in enumerate(zip(*envs)):
        first = values[0]
        for v in values:
            if v is not first:
                break
        else:
            if type(first) not in OWNED_CONTAINERS:
                out.append(first)     # (one object in every group: uniform)
                continue
        if type(first) is Batched:
            # (the common case: lane vectors of numpy data, weak or not alike)
            data, weak = first.data, first.weak
            if type(data) is _NDARRAY and data.ndim == 1:
                datas = [data]
                for v in values[1:]:
                    if type(v) is not Batched or v.weak != weak or type(v.data) is not _NDARRAY \
                            or v.data.ndim != 1 or v.data.dtype != data.dtype:
                        break
                    datas.append(v.data)
                else:
                    if len({id(d) for d in datas}) > 1:     # (one shared object: uniform)
                        out.append(Batched(np.concatenate(datas, axis=0), weak))
                        continue
        if aliases and (type(first) is Batched or type(first) is LaneMapped):
            # (two names of one array in every group stay one array: runtime/views.py)
            key = ("array",) + tuple(id(v) for v in values)
            hit = memo.get(key)
            if hit is not None and all(a is b for a, b in zip(hit[0], values)):
                out.append(hit[1])
                continue
            merged = merge(values, counts, f"variable {names[i]!r}" if names else "a variable", True, memo)
            memo[key] = (values, merged)
            out.append(merged)
            continue
        out.append(merge(values, counts, f"variable {names[i]!r}" if names else "a variable", True, memo))
    if _VIEWS.bases or _VIEWS.stale:
        views.follow_merge(envs, out)    # (views and out-of-date values stay so where they join)
    return tuple(out)


def _as_mapped_like(values):
    """Values that are a LaneMapped's own base data (the lanes it was mapped from) viewed
    through the identity map, so merging them with it maps instead of copying."""
    lm = next(v for v in values if type(v) is LaneMapped)
    out = []
    for v in values:
        kind = type(v)
        if (kind is Batched and lm.lengths is None or kind is Ragged and v.lengths is lm.lengths) \
                and v.data is lm.base:
            v = LaneMapped(lm.base, identity_index(lm.base.shape[0]), lm.lengths)
        out.append(v)
    return out


def _merge_cells(cells, counts, name):
    if all(c is cells[0] for c in cells[1:]):
        return cells[0]
    contents = []
    for c in cells:
        try:
            contents.append(c.cell_contents)
        except ValueError:
            contents.append(UNDEFINED)
    merged = merge(contents, counts, name)
    return owned_cell() if merged is UNDEFINED else owned_cell(merged)


def _is_array_like(value) -> bool:
    return isinstance(value, (int, float, bool, np.generic, np.ndarray)) or hasattr(value, "dtype")


_PYTHON_NUMBERS = (int, float, bool, complex)
_WEAK_EXAMPLE = {"b": False, "i": 0, "u": 0, "f": 0.0, "c": 0j}
_PYTHON_DEFAULT = {bool: np.dtype(bool), int: np.dtype(np.int64), float: np.dtype(np.float64),
                   complex: np.dtype(np.complex128), "b": np.dtype(bool), "i": np.dtype(np.int64),
                   "u": np.dtype(np.int64), "f": np.dtype(np.float64), "c": np.dtype(np.complex128)}
"""The dtype of the numpy scalar each kind of Python number stands for (weak: NEP 50)."""


def _is_weak(v) -> bool:
    """A Python number, or a varying value that is a Python number in each example."""
    return type(v) in _PYTHON_NUMBERS or (type(v) is Batched and v.weak)


RETURN_VALUE = "the return value"
"""The `name` of the merge of the batch function's returns: there groups of different dtypes
are promoted (numpy's promotion, as stacking the loop's results does), not kept apart."""

HELPER_RETURN_VALUE = "the value a called function returns"
"""The `name` of the merge of a called function's returns: its caller cannot run apart on
groups of different dtypes (it is in the middle of a block), so they are refused."""


def _check_one_dtype(values, name):
    """Groups whose arrays (not Python numbers) differ in dtype where control flow joins (a
    variable float32 in some examples and float64 in others) stay apart: each example's later
    arithmetic has its own dtype in the loop, so one promoted array would compute other lanes'
    results in another dtype. `UnmergeableGroups` makes the scheduler run them separately; a
    function's return promotes them (`RETURN_VALUE`)."""
    if name == RETURN_VALUE:
        return
    dtype = None
    number_dtypes = set()
    for v in values:
        if v is UNDEFINED:
            continue
        if _is_weak(v):
            number_dtypes.add(_PYTHON_DEFAULT[v.dtype.kind if type(v) is Batched else type(v)])
            continue
        d = getattr(v, "dtype", None)
        if d is None:
            continue
        if dtype is None:
            dtype = d
        elif d != dtype:
            filename, lineno = user_frame()
            raise UnmergeableGroups(f"{name} has dtype {dtype} in some examples and {d} in others "
                                    f"where control flow joins", filename, lineno,
                                    hint=_hint(name, "one dtype", "(numpy.float32(...))"))
    if number_dtypes and dtype is not None and number_dtypes != {dtype} \
            and not name.startswith(HELPER_RETURN_VALUE):
        # A Python number in some examples and a numpy value of another dtype than the
        # number's own (float32 and 0.1, int8 and 3) in others: the loop keeps each example's
        # own type (0.1 stays a Python float, a float64 with the weak promotion of NEP 50), so
        # one array, of either dtype, would compute some lanes' later results in another
        # dtype or precision. (A Python float with numpy float64 lanes, a Python int with
        # int64 ones, do merge, as float64 / int64; so do a called function's returns, which
        # cannot run apart and are common (`return 0.0` beside float32 arrays): the promotion
        # as before. See docs/DESIGN.md, Dtypes.)
        filename, lineno = user_frame()
        raise UnmergeableGroups(f"{name} is a Python number in some examples and a numpy {dtype} "
                                f"in others where control flow joins", filename, lineno,
                                hint=_hint(name, "one type", "(numpy.float32(...) or float(...))"))


def _hint(name, what, how):
    if name.startswith(HELPER_RETURN_VALUE):
        return (f"Return {what} on every path of the called function {how}: the per-example "
                f"loop's caller would compute on with each example's own type.")
    return f"Give it {what} on every path {how}."


def _merge_numbers(values, counts, name, disjoint=True):
    """Lane groups of arrays and numbers as one `Batched`: weak (Python numbers per example)
    when every group holds Python numbers, else in the dtype `weak_merge_dtype` gives.
    Groups of different array dtypes stay apart (`_check_one_dtype`)."""
    if disjoint:
        _check_one_dtype(values, name)
    weak = all(_is_weak(v) for v in values)
    dtype = None if weak else weak_merge_dtype(values)
    datas = [_lane_data(v, n, dtype) for v, n in zip(values, counts)]
    check_row_shapes(datas, name)
    return Batched(P.concatenate(*datas, axis=0), weak=weak)


def weak_merge_dtype(values):
    """The dtype Python numbers take when merged with arrays: numpy's promotion with the
    numbers weak (NEP 50), as each example's own arithmetic would treat them (a per-example
    0.0 accumulator meeting float32 values stays float32). None when no Python number meets an
    array, or when a number does not fit the promoted dtype (an integer out of its range, a
    finite float that overflows it): then it is an int64 or float64 array, as before."""
    numbers = [v for v in values if _is_weak(v)]
    if not numbers or len(numbers) == len(values):
        return None
    try:
        dtype = np.result_type(*[(v if type(v) in _PYTHON_NUMBERS else _WEAK_EXAMPLE[v.dtype.kind])
                                 if _is_weak(v) else v.dtype for v in values])
        with np.errstate(over="ignore", invalid="ignore"):
            for v in numbers:
                if type(v) is Batched:
                    v = untraced(v.data)
                cast = np.asarray(v).astype(dtype)
                if dtype.kind in "iub" and np.any(cast != v):
                    return None
                if dtype.kind in "fc" and np.any(np.isinf(cast) & ~np.isinf(v)):
                    return None
    except (OverflowError, TypeError, ValueError, AttributeError, KeyError):
        return None
    return dtype


def _lane_data(value, n, dtype=None):
    """Lane-major data of a value for a group of `n` lanes (a Python number as `dtype` when
    given: see `weak_merge_dtype`)."""
    if type(value) is Batched:
        data = value.data
        return P.astype(data, dtype=dtype) if value.weak and dtype is not None and data.dtype != dtype \
            else data
    if isinstance(value, (int, float, bool, complex)):
        value = np.asarray(value, dtype=dtype if type(value) in _PYTHON_NUMBERS else None)
    return P.broadcast_to(value, shape=(n,) + tuple(np.shape(value) if not hasattr(value, "shape")
                                                  else value.shape))


def _broadcast_one_lane(value, n):
    if type(value) is Batched:
        data = value.data
        first = P.take_lanes(data, np.zeros(1, dtype=np.intp)) if data.shape[0] else data
        return Batched(P.broadcast_to(first, shape=(n,) + tuple(data.shape[1:])), value.weak)
    return value


def lane_count(*values) -> int:
    """The number of lanes of the first varying value found (in containers too)."""
    for value in values:                 # plain batched arguments first: no tree walks
        if type(value) is Batched:
            return value.data.shape[0]
    modules = []
    for value in values:
        if hasattr(type(value), "__dataclass_fields__"):
            modules.append(value)        # parameter containers: usually uniform, look last
            continue
        n = _lanes_of(value)
        if n is not None:
            return n
    for value in modules:
        n = _lanes_of(value)
        if n is not None:
            return n
    raise AssertionError("a batch program was called without any varying argument")


def _lanes_of(value):
    if isinstance(value, Batched):
        return value.data.shape[0]
    counter = getattr(value, "_spmd_lane_count", None)
    if counter is not None:
        return counter()
    if hasattr(value, "_spmd_take_lanes"):
        for attr in getattr(type(value), "__slots__", ()):
            n = _lanes_of(getattr(value, attr))
            if n is not None:
                return n
        return None
    if isinstance(value, _CONTAINERS) or _is_struct(value):
        for leaf in pytree.leaves(value):
            if leaf is not value:
                n = _lanes_of(leaf)
                if n is not None:
                    return n
    return None
