"""Pytrees: flatten / unflatten round trips, static dataclass fields, leaf paths, tree_map."""
from __future__ import annotations

import collections
import dataclasses
from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spmdbatch.runtime import pytree
from spmdbatch.runtime.pytree import flatten, leaf_paths, leaves, register_node, tree_map


class Point(NamedTuple):
    x: object
    y: object


@dataclasses.dataclass
class Cell:
    W: object
    b: object
    activation: str = dataclasses.field(default="tanh", metadata={"static": True})
    size: int = dataclasses.field(default=3, metadata={"static": True})


@dataclasses.dataclass(frozen=True)
class Frozen:
    a: object
    b: object = None


class Pair:
    """A user container registered with register_node."""

    def __init__(self, left, right, tag):
        self.left, self.right, self.tag = left, right, tag

    def __eq__(self, other):
        return (type(other) is Pair and self.tag == other.tag and same(self.left, other.left)
                and same(self.right, other.right))


# the node functions of a registered class also serve its subclasses (found by isinstance)
register_node(Pair, lambda p: ([p.left, p.right], (type(p), p.tag)),
              lambda aux, ch: aux[0](ch[0], ch[1], aux[1]))


class SubPair(Pair):
    pass


def same(a, b):
    """Structural equality of trees whose leaves may be arrays."""
    la, ta = flatten(a)
    lb, tb = flatten(b)
    return ta == tb and len(la) == len(lb) and all(
        type(x) is type(y) and np.array_equal(x, y) for x, y in zip(la, lb))


EXAMPLES = {
    "leaf array": np.arange(3.0),
    "leaf float": 2.5,
    "leaf string": "not a container",
    "none": None,
    "list": [1.0, np.ones(2), 3],
    "tuple": (np.zeros(1), 2.0),
    "empty containers": [[], (), {}, None],
    "dict": {"w": np.ones((2, 2)), "b": 0.5, "n": 4},
    "ordered dict": collections.OrderedDict([("z", 1.0), ("a", np.ones(1))]),
    "defaultdict": collections.defaultdict(list, {"k": np.ones(2), "j": 1.0}),
    "namedtuple": Point(np.ones(2), Point(1.0, 2.0)),
    "dataclass": Cell(W=np.ones((3, 2)), b=np.zeros(3), activation="relu"),
    "frozen dataclass": Frozen(a=[1.0, 2.0]),
    "registered": Pair(np.ones(1), {"r": 2.0}, tag="t"),
    "registered subclass": SubPair(1.0, 2.0, tag="s"),
    "nested": {"layers": [Cell(np.ones(2), (1.0, Point(np.ones(1), None))),
                          Cell(np.zeros(2), np.ones(1), size=5)],
               "opt": Point(x={"m": np.ones(3)}, y=(0, np.arange(2)))},
}


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_flatten_unflatten_round_trip(name):
    tree = EXAMPLES[name]
    flat, treedef = flatten(tree)
    rebuilt = treedef.unflatten(flat)
    assert type(rebuilt) is type(tree)
    assert same(rebuilt, tree)
    assert treedef.num_leaves == len(flat)
    assert flatten(rebuilt)[1] == treedef
    # fresh leaves go where the old ones were
    marked = treedef.unflatten(list(range(len(flat))))
    assert leaves(marked) == list(range(len(flat)))


def test_container_details_survive():
    d = treedef_rebuild(EXAMPLES["defaultdict"])
    assert d.default_factory is list and d["missing"] == []
    od = treedef_rebuild(EXAMPLES["ordered dict"])
    assert list(od) == ["z", "a"]
    cell = treedef_rebuild(EXAMPLES["dataclass"])
    assert cell.activation == "relu" and cell.size == 3
    frozen = treedef_rebuild(EXAMPLES["frozen dataclass"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        frozen.a = 1


def treedef_rebuild(tree):
    flat, treedef = flatten(tree)
    return treedef.unflatten(flat)


def test_leaf_order_is_container_order():
    tree = {"b": [1, 2], "a": (3, {"y": 4, "x": 5})}
    assert leaves(tree) == [1, 2, 3, 4, 5]
    assert leaves(Point(y=2, x=1)) == [1, 2]
    assert leaves(Cell(W=1, b=2)) == [1, 2]


def test_static_dataclass_fields_are_not_leaves():
    cell = Cell(W=np.ones(2), b=np.zeros(2), activation="relu", size=7)
    flat, treedef = flatten(cell)
    assert len(flat) == 2
    assert all(isinstance(leaf, np.ndarray) for leaf in flat)
    # static values are part of the structure
    assert treedef != flatten(Cell(W=np.ones(2), b=np.zeros(2), activation="tanh", size=7))[1]
    assert treedef != flatten(Cell(W=5.0, b=[], activation="relu", size=7))[1]  # b: list vs leaf
    assert treedef == flatten(Cell(W=5.0, b=6.0, activation="relu", size=7))[1]
    doubled = tree_map(lambda v: v * 2, cell)
    assert doubled.activation == "relu" and doubled.size == 7


def test_structure_equality():
    assert flatten([1, 2])[1] == flatten([3, 4])[1]
    assert flatten([1, 2])[1] != flatten((1, 2))[1]
    assert flatten({"a": 1})[1] != flatten({"b": 1})[1]
    assert flatten(Point(1, 2))[1] != flatten((1, 2))[1]
    assert flatten(None)[1] != flatten(1)[1]
    assert hash(flatten([1, 2])[1]) == hash(flatten([3, 4])[1])


def test_unflatten_with_the_wrong_number_of_leaves():
    _, treedef = flatten([1, (2, 3)])
    with pytest.raises(ValueError, match="expects 3 leaves, got 2"):
        treedef.unflatten([1, 2])


def test_tree_map_over_several_trees():
    a = {"w": np.ones(2), "s": 1.0, "p": Point(1.0, 2.0)}
    b = {"w": np.full(2, 3.0), "s": 2.0, "p": Point(10.0, 20.0)}
    out = tree_map(lambda x, y: x + y, a, b)
    np.testing.assert_array_equal(out["w"], [4.0, 4.0])
    assert out["s"] == 3.0 and out["p"] == Point(11.0, 22.0)
    with pytest.raises(ValueError, match="structures differ"):
        tree_map(lambda x, y: x, a, {"w": 1.0, "s": 2.0})


def test_leaf_paths_are_readable():
    tree = {"w": np.ones(2), "layers": [Cell(W=1.0, b=2.0), Point(x=3.0, y=(4.0, 5.0))]}
    assert leaf_paths(tree) == ["['w']", "['layers'][0].W", "['layers'][0].b", "['layers'][1].x",
                                "['layers'][1].y[0]", "['layers'][1].y[1]"]
    assert leaf_paths(np.ones(3)) == [""]
    assert leaf_paths(None) == []
    assert leaf_paths((1.0, [2.0]), prefix="params") == ["params[0]", "params[1][0]"]
    assert len(leaf_paths(EXAMPLES["nested"])) == len(leaves(EXAMPLES["nested"]))


def test_leaf_paths_use_child_names_of_registered_nodes():
    class Named:
        def __init__(self, a, b):
            self.a, self.b = a, b

        def _spmd_child_names(self):
            return ["a", "b"]
    register_node(Named, lambda n: ([n.a, n.b], None), lambda aux, ch: Named(*ch))
    try:
        assert leaf_paths({"m": Named(1.0, [2.0])}) == ["['m'].a", "['m'].b[0]"]
    finally:
        del pytree._NODE_TYPES[Named]


def test_is_leaf():
    assert pytree.is_leaf(np.ones(2)) and pytree.is_leaf(1.0) and pytree.is_leaf("s")
    assert not pytree.is_leaf([]) and not pytree.is_leaf(None) and not pytree.is_leaf(Point(1, 2))
    assert not pytree.is_leaf(Cell(1, 2))
    assert pytree.is_leaf(Cell)  # the class itself is a leaf, not a container


# --- random trees ----------------------------------------------------------------------------
LEAVES = st.one_of(st.floats(allow_nan=False), st.integers(), st.text(max_size=3),
                   st.builds(np.full, st.integers(0, 3), st.floats(-1, 1)))
KEYS = st.text("abcxyz", min_size=1, max_size=3)


def _containers(children):
    return st.one_of(
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(KEYS, children, max_size=3),
        st.builds(Point, children, children),
        st.builds(Cell, children, children, st.sampled_from(["relu", "tanh"])),
        st.builds(Pair, children, children, KEYS),
        st.none(),
    )


TREES = st.recursive(LEAVES, _containers, max_leaves=12)


@settings(max_examples=60, deadline=None)
@given(TREES)
def test_round_trip_of_random_trees(tree):
    flat, treedef = flatten(tree)
    rebuilt = treedef.unflatten(flat)
    assert same(rebuilt, tree)
    assert len(leaf_paths(tree)) == len(flat)
    assert len(set(leaf_paths(tree))) == len(flat)  # paths identify leaves
    # mapping the identity keeps the structure; mapping over leaves touches each once
    seen = []
    tree_map(lambda leaf: seen.append(leaf) or leaf, tree)
    assert len(seen) == len(flat)
