"""Files that survive interrupts and refuse hostile input: atomic writes and checked ``.npz`` reads.

Writing: `atomic_write` writes into a temporary file in the target's own directory, flushes
and fsyncs it, then ``os.replace``-s it over the target (and fsyncs the directory), so the
target holds either its previous content or the complete new one, whatever happens in
between (SIGINT, SIGTERM, a full disk). A failed write removes its temporary file.

Reading: `read_npz` reads an ``.npz`` archive (a zip of ``.npy`` members) only after checking,
from the zip's central directory and each member's ``.npy`` header, that every member has an
expected name, shape and a plain (non-object) dtype, and that the size the zip declares is
exactly the size the header implies. So a small archive cannot make it allocate more than the
expected arrays (a "zip bomb": a few MB that inflate to GBs), nor unpickle anything.

This module needs numpy and the standard library only.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["CheckpointError", "atomic_write", "write_text_atomic", "save_npz", "read_npz",
           "encode_json", "decode_json", "MAX_MEMBER_BYTES"]

#: Default cap on one member of an archive whose shape is not known in advance (bytes).
MAX_MEMBER_BYTES = 256 * 2**20
_MAX_HEADER = 10_000          # bytes of an .npy header (numpy's own default limit)


class CheckpointError(ValueError):
    """A checkpoint or state file that cannot be used: not an archive, a member with an
    unexpected name, shape, dtype or size, or a truncated write. The message names the file."""


def _fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", encoding: str | None = None):
    """``with atomic_write(path) as fh: fh.write(...)``: `path` is replaced only when the block
    ends without an exception (content flushed and fsynced first); otherwise it is left as it
    was and the temporary file is removed. `mode` is ``"wb"`` or ``"w"`` (text, `encoding`)."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        try:                     # (mkstemp makes 0600: keep the target's mode, else 0644)
            os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o644)
        except OSError:
            pass
        with os.fdopen(fd, mode, encoding=encoding if mode == "w" else None) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_directory(directory)


def write_text_atomic(path, text: str, encoding: str = "utf-8") -> None:
    """Replace the file at `path` by `text`, atomically (see `atomic_write`)."""
    with atomic_write(path, "w", encoding=encoding) as fh:
        fh.write(text)


def save_npz(path, arrays: dict) -> Path:
    """Write ``{name: array}`` as an uncompressed ``.npz`` at `path` atomically; ``.npz`` is
    appended when `path` lacks it (as ``numpy.savez`` does). Returns the path written. An
    open binary file is written as it is (not atomically: the caller owns it)."""
    for name, value in arrays.items():
        if np.asarray(value).dtype.hasobject:
            raise TypeError(f"save_npz: {name!r} is an object array, which would need pickle")
    if hasattr(path, "write"):
        np.savez(path, **arrays)
        return path
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    with atomic_write(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def _read_header(fh, where: str):
    """``(shape, fortran_order, dtype)`` from the .npy header at the start of `fh`."""
    try:
        major, _ = np.lib.format.read_magic(fh)
        if major == 1:
            return np.lib.format.read_array_header_1_0(fh, max_header_size=_MAX_HEADER)
        if major in (2, 3):
            return np.lib.format.read_array_header_2_0(fh, max_header_size=_MAX_HEADER)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{where}: not a valid .npy header ({exc})") from None
    raise CheckpointError(f"{where}: unsupported .npy format version {major}")


def read_npz(path, expected: dict | None = None, *, strict: bool = True,
             max_member_bytes: int = MAX_MEMBER_BYTES) -> dict:
    """``{name: numpy array}`` from the ``.npz`` at `path`, checking before reading any data.

    `expected` maps each name to its shape (a tuple) or to ``None`` (any shape). With
    `strict`, a member not in `expected` or an expected name that is missing is an error;
    without, unexpected members are skipped unread and missing ones are absent from the
    result. Every member must be a ``.npy`` with a non-object dtype, whose zip entry has
    exactly the size its header implies; a member of unknown shape may not exceed
    `max_member_bytes`. Raises `CheckpointError` (naming `path` and the member) otherwise,
    and ``FileNotFoundError`` for a missing file. `path` may also be an open binary file.
    """
    if not hasattr(path, "read"):
        path = Path(path)
        if not path.is_file():
            if path.exists():
                raise CheckpointError(f"{path}: not a file")
            raise FileNotFoundError(f"{path}: no such file")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not an .npz archive ({exc}); a truncated or "
                              f"foreign file") from None
    with zf:
        members = {}
        for info in zf.infolist():
            name = info.filename
            if not name.endswith(".npy") or name[:-4] in members:
                raise CheckpointError(f"{path}: unexpected member {name!r} (an .npz holds "
                                      f".npy arrays with distinct names)")
            members[name[:-4]] = info
        if expected is not None:
            unexpected = sorted(set(members) - set(expected))
            missing = sorted(set(expected) - set(members))
            if strict and (unexpected or missing):
                raise CheckpointError(f"{path}: unexpected arrays {unexpected[:5]}"
                                      f"{' ...' if len(unexpected) > 5 else ''}, missing arrays "
                                      f"{missing[:5]}{' ...' if len(missing) > 5 else ''}")
        wanted = {n: i for n, i in members.items() if expected is None or n in expected}
        for name, info in wanted.items():
            where = f"{path}: array {name!r}"
            with zf.open(info) as fh:
                shape, _, dtype = _read_header(fh, where)
                header_bytes = fh.tell()
            if dtype.hasobject:
                raise CheckpointError(f"{where} has an object dtype (refused: it would unpickle)")
            want = expected.get(name) if expected is not None else None
            if want is not None and tuple(shape) != tuple(want):
                raise CheckpointError(f"{where} has shape {tuple(shape)}, expected {tuple(want)}")
            nbytes = dtype.itemsize * math.prod(shape)
            if want is None and nbytes > max_member_bytes:
                raise CheckpointError(f"{where} would take {nbytes} bytes, more than the "
                                      f"{max_member_bytes} allowed")
            if info.file_size != header_bytes + nbytes:
                raise CheckpointError(f"{where}: the archive declares {info.file_size} bytes, "
                                      f"its header implies {header_bytes + nbytes} (corrupt)")
        out = {}
        for name, info in wanted.items():
            try:
                with zf.open(info) as fh:
                    out[name] = np.lib.format.read_array(fh, allow_pickle=False,
                                                         max_header_size=_MAX_HEADER)
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
                raise CheckpointError(f"{path}: array {name!r} cannot be read ({exc})") from None
    return out


def encode_json(value) -> np.ndarray:
    """`value` as strict JSON (NaN and infinities refused) in a uint8 array, for an .npz."""
    return np.frombuffer(json.dumps(value, allow_nan=False).encode("utf-8"), dtype=np.uint8).copy()


def decode_json(array: np.ndarray, where: str = "JSON"):
    """The value `encode_json` stored in `array`."""
    try:
        return json.loads(np.asarray(array, dtype=np.uint8).tobytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{where}: malformed JSON ({exc})") from None
