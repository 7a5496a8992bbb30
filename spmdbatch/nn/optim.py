"""Optimisers over pytrees of parameters (Modules, dicts, lists, ...), functional and explicit.

    opt = Adam(lr=1e-3, weight_decay=0.0, clip_norm=1.0, groups={"embed": dict(lr=1e-2)})
    state = opt.init(params)
    for batch in data:
        grads = spmdbatch.grad(loss)(params, batch)
        params, state = opt.update(params, grads, state)   # new params, new state

Nothing is mutated: `update` returns new parameters and a new `OptState` (a NamedTuple
pytree: `step` and `slots`, one tree per slot such as ``'m'``/``'v'``); a training loop
that drops the old ones passes ``donate=True`` so row-sparse steps (an embedding table's)
write in place instead of copying whole tables. There is no
gradient to zero: each step uses the gradient it is given; to combine several losses,
add their gradients (`add_grads`) or differentiate their sum, then take one step.

Options common to all optimisers:

- `lr`: a number, or a function ``step -> lr`` (step counts from 0) for a schedule;
- `weight_decay`: L2 penalty ``wd * p`` added to the gradient (AdamW: decoupled decay);
- `clip_norm`: rescale the whole gradient when its global L2 norm exceeds this;
- `groups`: ``{pattern: {hyper-parameter: value}}``, per-parameter-group overrides of any
  hyper-parameter. A pattern matches a leaf's dotted name (``'embed.table'``, see
  `Module.parameters`) when it equals it or a prefix of it ending at a dot (``'embed'``),
  or as a glob with ``*``/``?``; the longest matching pattern wins. A pattern that matches
  nothing is an error.

Only floating leaves are updated; integer and boolean leaves are left as they are.
"""
from __future__ import annotations

import fnmatch
import math
from collections import Counter
from typing import NamedTuple

import numpy as np

from ..ad.sparse import SparseRows, densify
from ..ad.tracer import untraced
from ..runtime import pytree
from ..runtime.backend import is_floating, namespace
from .module import named_leaves


class OptState(NamedTuple):
    """Optimiser state: the number of updates done and the slot trees (like the params)."""

    step: int
    slots: dict


def global_norm(tree) -> float:
    """The L2 norm of all floating leaves of `tree` together."""
    total = 0.0
    for leaf in pytree.leaves(tree):
        if is_floating(leaf):
            a = np.asarray(untraced(leaf), dtype=np.float64)
            total += float((a * a).sum())
    return math.sqrt(total)


def clip_by_global_norm(tree, max_norm: float):
    """``(clipped tree, norm)``: the tree scaled by ``max_norm / norm`` when norm > max_norm."""
    norm = global_norm(tree)
    if norm <= max_norm or norm == 0.0:
        return tree, norm
    scale = max_norm / norm
    return pytree.tree_map(lambda g: g * scale if is_floating(g) else g, tree), norm


def add_grads(*trees):
    """The leaf-wise sum of gradient trees of the same structure (several losses, one step)."""
    if not trees:
        raise ValueError("add_grads needs at least one gradient tree")
    return pytree.tree_map(lambda *xs: sum(xs[1:], xs[0]), *trees)


def _matches(pattern: str, name: str) -> bool:
    if any(ch in pattern for ch in "*?["):
        return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern + ".*")
    return name == pattern or name.startswith(pattern + ".") or pattern == ""


class Optimizer:
    """Base class: subclasses set `SLOTS`, `DEFAULTS` and implement `_step`."""

    SLOTS: tuple = ()
    DEFAULTS: dict = {}
    ROW_SPARSE = False
    """True when a step leaves rows with zero gradient unchanged (without weight decay), so a
    row-sparse gradient (`value_and_grad(..., sparse=True)`) updates only its rows."""

    def __init__(self, lr, *, weight_decay: float = 0.0, clip_norm: float | None = None,
                 groups: dict | None = None, **hyper):
        unknown = set(hyper) - set(self.DEFAULTS)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown hyper-parameter(s) {sorted(unknown)}; "
                            f"known: {sorted(['lr', 'weight_decay', *self.DEFAULTS])}")
        if clip_norm is not None and not clip_norm > 0:
            raise ValueError(f"clip_norm must be positive, got {clip_norm}")
        self.hyper = {"lr": lr, "weight_decay": weight_decay, **self.DEFAULTS, **hyper}
        self.clip_norm = clip_norm
        self.groups = dict(groups or {})
        for pattern, overrides in self.groups.items():
            if not isinstance(overrides, dict):
                raise TypeError(f"group {pattern!r}: overrides must be a dict, not {type(overrides).__name__}")
            bad = set(overrides) - set(self.hyper)
            if bad:
                raise ValueError(f"group {pattern!r} sets unknown hyper-parameter(s) {sorted(bad)}; "
                                 f"known: {sorted(self.hyper)}")
        for name, value in self.hyper.items():
            self._validate(name, value)
        self._cache = None

    def __repr__(self):
        items = [f"{k}={v!r}" for k, v in self.hyper.items()]
        if self.clip_norm is not None:
            items.append(f"clip_norm={self.clip_norm!r}")
        if self.groups:
            items.append(f"groups={self.groups!r}")
        return f"{type(self).__name__}({', '.join(items)})"

    def _validate(self, name, value):
        if name == "lr" and not callable(value) and value < 0:
            raise ValueError(f"learning rate must be non-negative, got {value}")

    # --- groups --------------------------------------------------------------------------------
    def leaf_hyper(self, params) -> list[dict]:
        """The hyper-parameters of every leaf of `params` (flatten order), groups applied."""
        treedef = pytree.flatten(params)[1]
        if self._cache is not None and self._cache[0] == treedef:
            return self._cache[1]
        names = [n for n, _ in named_leaves(params)]
        used = set()
        out = []
        for name in names:
            best = None
            for pattern in self.groups:
                if _matches(pattern, name) and (best is None or len(pattern) > len(best)):
                    best = pattern
            hp = dict(self.hyper)
            if best is not None:
                used.add(best)
                hp.update(self.groups[best])
            out.append(hp)
        unused = [p for p in self.groups if p not in used]
        if unused:
            raise ValueError(f"parameter group(s) {unused} match no parameter; names are {names}")
        self._cache = (treedef, out)
        return out

    # --- the API -------------------------------------------------------------------------------
    def init(self, params) -> OptState:
        """The initial state for `params`."""
        leaves, treedef = pytree.flatten(params)
        self.leaf_hyper(params)   # validates the groups early
        slots = {s: treedef.unflatten([self._init_slot(s, leaf) for leaf in leaves]) for s in self.SLOTS}
        return OptState(0, slots)

    def _init_slot(self, slot, leaf):
        if not is_floating(leaf):
            return np.zeros(())
        value = untraced(leaf)
        return namespace(value).zeros(np.shape(value), dtype=getattr(value, "dtype", np.float64))

    def update(self, params, grads, state: OptState, *, donate: bool = False):
        """``(new params, new state)`` after one step along `grads` (same structure as params).

        With ``donate=True`` the caller gives up `params` and `state` (as in
        ``params, state = opt.update(params, grads, state, donate=True)``): a row-sparse step
        then writes its rows into their arrays in place instead of copying every table to
        keep the old one intact. Donated arrays must not be read afterwards."""
        if not isinstance(state, OptState):
            raise TypeError(f"update(params, grads, state) needs the state from {type(self).__name__}.init "
                            f"(or the last update), got {type(state).__name__}")
        p_leaves, p_def = pytree.flatten(params)
        g_leaves, g_def = pytree.flatten(grads)
        if g_def != p_def:
            raise ValueError(f"grads have structure {g_def}, params {p_def}: pass the gradient of "
                             f"the loss with respect to these params")
        slot_leaves = {}
        for s in self.SLOTS:
            leaves, s_def = pytree.flatten(state.slots[s])
            if s_def != p_def:
                raise ValueError(f"optimiser state slot {s!r} does not match the params' structure; "
                                 f"was the state made by init() for these params?")
            slot_leaves[s] = leaves
        if self.clip_norm is not None:
            grads, _ = clip_by_global_norm(pytree.tree_map(densify, grads), self.clip_norm)
            g_leaves = pytree.leaves(grads)
        hps = self.leaf_hyper(params)
        t = state.step + 1
        # (an array two leaves share is not written in place: each gets a copy)
        uses = Counter(id(untraced(p)) for p in p_leaves) if donate else None
        new_p, new_slots = [], {s: [] for s in self.SLOTS}
        for i, (p, g, hp) in enumerate(zip(p_leaves, g_leaves, hps)):
            if not is_floating(p):
                new_p.append(p)
                for s in self.SLOTS:
                    new_slots[s].append(slot_leaves[s][i])
                continue
            p_raw = untraced(p)
            g_raw = untraced(g)
            if type(g_raw) is SparseRows:
                hp = dict(hp)
                if callable(hp["lr"]):
                    hp["lr"] = float(hp["lr"](state.step))
                if self.ROW_SPARSE and not hp["weight_decay"] and self.clip_norm is None:
                    out, slots = self._sparse_step(p_raw, g_raw, {s: slot_leaves[s][i] for s in self.SLOTS},
                                                   hp, t, donate and uses[id(p_raw)] == 1)
                    new_p.append(out)
                    for s in self.SLOTS:
                        new_slots[s].append(slots[s])
                    continue
                g_raw = g_raw.dense()
            if np.shape(g_raw) != np.shape(p_raw):
                raise ValueError(f"gradient of shape {np.shape(g_raw)} for a parameter of shape "
                                 f"{np.shape(p_raw)} (leaf {i})")
            hp = dict(hp)
            if callable(hp["lr"]):
                hp["lr"] = float(hp["lr"](state.step))
            out, slots = self._step(p_raw, g_raw, {s: slot_leaves[s][i] for s in self.SLOTS}, hp, t)
            if isinstance(p, float):
                out = float(out)
            else:
                out = out.astype(p_raw.dtype, copy=False)
            new_p.append(out)
            for s in self.SLOTS:
                new_slots[s].append(slots[s])
        return p_def.unflatten(new_p), OptState(t, {s: p_def.unflatten(v) for s, v in new_slots.items()})

    def _step(self, p, g, slots, hp, t):
        raise NotImplementedError

    def _sparse_step(self, p, g, slots, hp, t, donate=False):
        """`_step` on the rows a SparseRows gradient touches; other rows are unchanged (in
        place in donated arrays, else in copies)."""
        rows, values = g.coalesce()
        new_rows, new_slot_rows = self._step(p[rows], values, {s: v[rows] for s, v in slots.items()}, hp, t)
        out = p if donate and _writable(p) else p.copy()
        out[rows] = new_rows
        new_slots = {}
        for s, v in slots.items():
            v = v if donate and _writable(v) else v.copy()
            v[rows] = new_slot_rows[s]
            new_slots[s] = v
        return out, new_slots


def _writable(array) -> bool:
    """Whether `array` may be written in place (numpy read-only arrays and views may not)."""
    flags = getattr(array, "flags", None)
    return getattr(flags, "writeable", True) and getattr(flags, "owndata", True)


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum μ:
    g += wd p; v = μ v + g; p -= lr (g + μ v if nesterov else v) (with μ = 0: p -= lr g)."""

    SLOTS = ("velocity",)
    DEFAULTS = {"momentum": 0.0, "nesterov": False}

    def __init__(self, lr=0.01, **kwargs):
        super().__init__(lr, **kwargs)
        if self.hyper["nesterov"] and not self.hyper["momentum"] > 0:
            raise ValueError("Nesterov momentum needs momentum > 0")

    def _step(self, p, g, slots, hp, t):
        g = g + hp["weight_decay"] * p if hp["weight_decay"] else g
        mu = hp["momentum"]
        if not mu:
            return p - hp["lr"] * g, slots
        v = mu * slots["velocity"] + g
        d = g + mu * v if hp["nesterov"] else v
        return p - hp["lr"] * d, {"velocity": v}


class Adagrad(Optimizer):
    """Adagrad: g += wd p; G += g²; p -= lr g / (sqrt(G) + eps)."""

    ROW_SPARSE = True

    SLOTS = ("sum_sq",)
    DEFAULTS = {"eps": 1e-10, "initial_accumulator": 0.0}

    def __init__(self, lr=0.01, **kwargs):
        super().__init__(lr, **kwargs)

    def _init_slot(self, slot, leaf):
        z = super()._init_slot(slot, leaf)
        return z + self.hyper["initial_accumulator"] if is_floating(leaf) else z

    def _step(self, p, g, slots, hp, t):
        g = g + hp["weight_decay"] * p if hp["weight_decay"] else g
        acc = slots["sum_sq"] + g * g
        return p - hp["lr"] * g / (np.sqrt(acc) + hp["eps"]), {"sum_sq": acc}


class RMSProp(Optimizer):
    """RMSProp: g += wd p; s = ρ s + (1 - ρ) g²; d = g / (sqrt(s - m²) + eps) where
    m = ρ m + (1 - ρ) g if centered else 0; with momentum μ: b = μ b + d, p -= lr b;
    else p -= lr d."""

    SLOTS = ("mean_sq", "mean", "buffer")
    DEFAULTS = {"rho": 0.9, "eps": 1e-8, "momentum": 0.0, "centered": False}

    def __init__(self, lr=1e-3, **kwargs):
        super().__init__(lr, **kwargs)

    def _step(self, p, g, slots, hp, t):
        g = g + hp["weight_decay"] * p if hp["weight_decay"] else g
        rho = hp["rho"]
        s = rho * slots["mean_sq"] + (1 - rho) * g * g
        m = slots["mean"]
        if hp["centered"]:
            m = rho * m + (1 - rho) * g
            d = g / (np.sqrt(s - m * m) + hp["eps"])
        else:
            d = g / (np.sqrt(s) + hp["eps"])
        b = slots["buffer"]
        if hp["momentum"]:
            b = hp["momentum"] * b + d
            d = b
        return p - hp["lr"] * d, {"mean_sq": s, "mean": m, "buffer": b}


class Adam(Optimizer):
    """Adam: g += wd p; m = β1 m + (1 - β1) g; v = β2 v + (1 - β2) g²;
    p -= lr m̂ / (sqrt(v̂) + eps) with m̂ = m / (1 - β1^t), v̂ = v / (1 - β2^t)."""

    SLOTS = ("m", "v")
    DEFAULTS = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
    decoupled = False

    def __init__(self, lr=1e-3, **kwargs):
        super().__init__(lr, **kwargs)

    def _step(self, p, g, slots, hp, t):
        wd = hp["weight_decay"]
        if wd and not self.decoupled:
            g = g + wd * p
        b1, b2 = hp["beta1"], hp["beta2"]
        m = b1 * slots["m"] + (1 - b1) * g
        v = b2 * slots["v"] + (1 - b2) * g * g
        step = (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + hp["eps"])
        if wd and self.decoupled:
            step = step + wd * p
        return p - hp["lr"] * step, {"m": m, "v": v}


class AdamW(Adam):
    """Adam with decoupled weight decay: p -= lr (m̂ / (sqrt(v̂) + eps) + wd p)."""

    decoupled = True

    def __init__(self, lr=1e-3, weight_decay=0.01, **kwargs):
        super().__init__(lr, weight_decay=weight_decay, **kwargs)
