"""Array backends, pytrees, the primitive registry and the numpy API over primitives."""
from .backend import DEFAULT_FLOAT, get_backend, namespace, to_numpy
from .dispatch import PRIMITIVES, Primitive, bind
from .pytree import flatten, leaves, register_node, tree_map

__all__ = ["DEFAULT_FLOAT", "get_backend", "namespace", "to_numpy", "PRIMITIVES", "Primitive",
           "bind", "flatten", "leaves", "register_node", "tree_map"]
