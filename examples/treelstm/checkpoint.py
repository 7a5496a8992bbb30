"""The run folder of `train.py`: what ``--resume DIR`` needs, written so that no interrupt loses it.

Files in the folder (``--out``):

- ``train_state.npz``: after every epoch, the whole training state in one file
  (`spmdbatch.nn.save_tree`): the model's parameters, the optimiser state, and as metadata
  the number of epochs done, the state of the shuffling RNG, the best dev root accuracy so
  far (and its epoch), the per-epoch log entries and the run's configuration. It is replaced
  atomically, so its pieces always belong to the same epoch.
- ``vocab.json``: the vocabulary the trees were encoded with (written once, atomically).
- ``best.npz``: the parameters of the best dev model (`Module.save`, atomic).
- ``log.jsonl``: one JSON line per finished epoch, appended and flushed (fsynced) as the epoch
  ends. On resume it is rewritten from ``train_state.npz``, so it never holds an epoch that
  the state does not.
- ``log.json`` and ``curves.png``: the summary and the plot, written at the end.

Every JSON value written is strict JSON: a non-finite float is written as ``null``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np

from spmdbatch import files, nn
from spmdbatch.files import CheckpointError, write_text_atomic

STATE_FILE = "train_state.npz"
VOCAB_FILE = "vocab.json"
BEST_FILE = "best.npz"
LOG_LINES_FILE = "log.jsonl"
LOG_FILE = "log.json"
PLOT_FILE = "curves.png"
FORMAT = "spmdbatch.treelstm.train_state"


@dataclasses.dataclass
class Progress:
    """Where a run stands after `epoch` finished epochs (the metadata of ``train_state.npz``)."""

    epoch: int                 # epochs finished
    rng_state: dict            # numpy bit generator state of the shuffling RNG
    best: float                # best dev root accuracy so far (-1.0: none yet)
    best_epoch: int            # the epoch that reached it (0: none)
    log: list                  # one entry per finished epoch
    config: dict               # the run's options (vars(args))


def json_safe(value):
    """`value` with every non-finite float replaced by None (JSON has no NaN/Infinity) and
    numpy scalars made Python numbers."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(value, **kwargs) -> str:
    """Strict JSON text of `value` (non-finite floats as null)."""
    return json.dumps(json_safe(value), allow_nan=False, **kwargs)


def save_state(out: Path, model, opt_state, progress: Progress) -> Path:
    """Write ``train_state.npz`` (host copies of `model` and `opt_state`) atomically."""
    meta = {"format": FORMAT, "version": 1, **dataclasses.asdict(progress)}
    return nn.save_tree(Path(out) / STATE_FILE, {"model": model, "opt": opt_state}, json_safe(meta))


def has_state(out: Path) -> bool:
    """Whether `out` holds a ``train_state.npz``."""
    return (Path(out) / STATE_FILE).is_file()


def read_config(out: Path) -> dict:
    """The configuration saved in ``out/train_state.npz`` (without loading the arrays)."""
    arrays = files.read_npz(Path(out) / STATE_FILE, {"__meta__": None}, strict=False,
                            max_member_bytes=64 * 2**20)
    if "__meta__" not in arrays:
        raise files.CheckpointError(f"{Path(out) / STATE_FILE}: no metadata (not written by train.py)")
    meta = files.decode_json(arrays["__meta__"], f"{Path(out) / STATE_FILE}: metadata")
    _check_format(meta, out)
    return meta["config"]


def saved_epoch(out: Path) -> int:
    """The number of epochs done in ``out/train_state.npz`` (0 when there is none or it is
    unreadable)."""
    try:
        arrays = files.read_npz(Path(out) / STATE_FILE, {"__meta__": None}, strict=False,
                                max_member_bytes=64 * 2**20)
        return int(files.decode_json(arrays["__meta__"])["epoch"])
    except (CheckpointError, OSError, KeyError, TypeError, ValueError):
        return 0


def _check_format(meta, out):
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise files.CheckpointError(f"{Path(out) / STATE_FILE}: not a training state written by "
                                    f"examples.treelstm.train")


def load_state(out: Path, model_like, opt_state_like):
    """``(model, opt_state, progress)`` from ``out/train_state.npz``; the templates give the
    structure, shapes and dtypes (a mismatch is a `spmdbatch.files.CheckpointError`)."""
    tree, meta = nn.load_tree(Path(out) / STATE_FILE, {"model": model_like, "opt": opt_state_like})
    _check_format(meta, out)
    fields = {f.name for f in dataclasses.fields(Progress)}
    progress = Progress(**{k: v for k, v in meta.items() if k in fields})
    return tree["model"], tree["opt"], progress


def make_rng(seed: int, state: dict | None = None) -> np.random.Generator:
    """The shuffling RNG: seeded, or restored to a saved bit generator `state`."""
    rng = np.random.default_rng(seed)
    if state is not None:
        rng.bit_generator.state = state
    return rng


def append_log_line(out: Path, entry: dict) -> None:
    """Append one epoch's entry to ``log.jsonl`` and make it durable before returning."""
    with open(Path(out) / LOG_LINES_FILE, "a", encoding="utf-8") as fh:
        fh.write(dumps(entry) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def rewrite_log_lines(out: Path, entries: list) -> None:
    """Replace ``log.jsonl`` by `entries` (on resume: exactly the epochs of the state)."""
    write_text_atomic(Path(out) / LOG_LINES_FILE, "".join(dumps(e) + "\n" for e in entries))


def write_summary(out: Path, log: dict) -> Path:
    """Write ``log.json`` (strict JSON, atomically)."""
    path = Path(out) / LOG_FILE
    write_text_atomic(path, dumps(log, indent=2) + "\n")
    return path
