"""Random binary trees as post-order node arrays (word, left, right, label), for tests."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Tree(NamedTuple):
    word: np.ndarray    # word id of a leaf (0 for internal nodes)
    left: np.ndarray    # left child index, -1 for a leaf
    right: np.ndarray   # right child index, -1 for a leaf
    label: np.ndarray   # class of every node


def random_tree(rng, n_leaves: int, vocab: int = 20, classes: int = 5, shape: str = "random") -> Tree:
    """A binary tree with `n_leaves` leaves in post-order (the root is the last node)."""
    word, left, right = [], [], []

    def build(n):
        if n == 1:
            word.append(int(rng.integers(vocab)))
            left.append(-1)
            right.append(-1)
            return len(word) - 1
        if shape == "left":
            m = n - 1
        elif shape == "right":
            m = 1
        else:
            m = int(rng.integers(1, n))
        lc = build(m)
        rc = build(n - m)
        word.append(0)
        left.append(lc)
        right.append(rc)
        return len(word) - 1

    build(n_leaves)
    n = len(word)
    return Tree(np.array(word), np.array(left), np.array(right), rng.integers(classes, size=n))


def depth(tree: Tree, k: int | None = None) -> int:
    k = len(tree.word) - 1 if k is None else k
    if tree.left[k] < 0:
        return 1
    return 1 + max(depth(tree, tree.left[k]), depth(tree, tree.right[k]))
