"""Checkpoints survive interrupted writes, and hostile files are refused before they are read.

Peak memory is measured in a subprocess (the growth of ``ru_maxrss`` over the call, and
tracemalloc's peak, which numpy's allocations report to) so the test process's own history
does not count.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from spmdbatch import files, nn

ROOT = Path(__file__).resolve().parents[2]
BOMB_BYTES = 256 * 2**20          # what the hostile archives below inflate to


def model():
    return nn.Chain(nn.Linear(4, 8, "tanh", rng=0), nn.Linear(8, 3, rng=1))


def assert_same_params(a, b):
    for (n1, x), (n2, y) in zip(a.parameters(), b.parameters()):
        assert n1 == n2
        np.testing.assert_array_equal(x, y)


# --- atomic saves ------------------------------------------------------------------------------

def test_an_interrupt_in_the_middle_of_a_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "best.npz"
    old = model()
    old.save(path)
    new = old.replace(layers=tuple(l.replace(W=l.W + 1.0) for l in old.layers))
    write_array = np.lib.format.write_array
    calls = []

    def interrupted(fp, array, *args, **kwargs):      # the second array: half written, then ^C
        calls.append(1)
        if len(calls) == 2:
            fp.write(b"\x93NUMPY partial")
            raise KeyboardInterrupt
        return write_array(fp, array, *args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", interrupted)
    with pytest.raises(KeyboardInterrupt):
        new.save(path)
    monkeypatch.undo()
    assert_same_params(model().load(path), old)
    assert [p.name for p in tmp_path.iterdir()] == ["best.npz"]      # no temporary left behind
    new.save(path)
    assert_same_params(model().load(path), new)


def test_a_full_disk_during_a_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "best.npz"
    old = model()
    old.save(path)

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        old.astype(np.float64).save(path)
    monkeypatch.undo()
    loaded = model().load(path)
    assert_same_params(loaded, old)
    assert loaded.layers[0].W.dtype == np.float32
    assert [p.name for p in tmp_path.iterdir()] == ["best.npz"]


def test_save_appends_npz_and_keeps_the_file_mode(tmp_path):
    m = model()
    m.save(tmp_path / "weights")
    assert (tmp_path / "weights.npz").is_file()
    os.chmod(tmp_path / "weights.npz", 0o640)
    m.save(tmp_path / "weights.npz")
    assert (tmp_path / "weights.npz").stat().st_mode & 0o777 == 0o640
    assert_same_params(model().load(tmp_path / "weights.npz"), m)


def test_write_text_atomic_keeps_the_old_text_when_the_writer_fails(tmp_path):
    path = tmp_path / "state.json"
    files.write_text_atomic(path, '{"epoch": 1}')
    with pytest.raises(RuntimeError):
        with files.atomic_write(path, "w", encoding="utf-8") as fh:
            fh.write('{"epo')
            raise RuntimeError("killed")
    assert json.loads(path.read_text()) == {"epoch": 1}


# --- hostile and broken files --------------------------------------------------------------------

def _npz_with_member(path, name, shape, dtype=np.float32, file_bytes=None):
    """An .npz (deflated) whose member `name` is a zero array of `shape`, streamed to disk
    so that making it takes no memory. Returns the path."""
    dtype = np.dtype(dtype)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array_header_1_0(
                fh, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                     "shape": shape})
            left = file_bytes if file_bytes is not None else dtype.itemsize * int(np.prod(shape))
            chunk = bytes(1 << 22)
            while left > 0:
                fh.write(chunk[:min(left, len(chunk))])
                left -= len(chunk)
    return path


def _measure(code: str) -> dict:
    """Run `code` (which must set `result`) in a fresh interpreter; returns its JSON report
    with the growth of the peak RSS and tracemalloc's peak over the code, in MB."""
    script = textwrap.dedent("""
        import json, resource, sys, tracemalloc
        import numpy as np
        from spmdbatch import nn
        from examples.treelstm import data
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tracemalloc.start()
        try:
        {body}
        except Exception as exc:
            result = {{"error": type(exc).__name__, "message": str(exc)}}
        peak = tracemalloc.get_traced_memory()[1]
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result["rss_growth_mb"] = (after - before) / 1024
        result["traced_peak_mb"] = peak / 2**20
        print(json.dumps(result))
    """).format(body=textwrap.indent(textwrap.dedent(code), "    "))
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_an_npz_bomb_with_an_unexpected_member_is_refused_without_reading_it(tmp_path):
    bomb = _npz_with_member(tmp_path / "bomb.npz", "evil", (BOMB_BYTES // 4,))
    assert bomb.stat().st_size < 3 * 2**20
    report = _measure(f"""
        result = {{"loaded": repr(nn.Linear(4, 3, rng=0).load({str(bomb)!r}))}}
    """)
    assert report.get("error") == "CheckpointError", report
    assert "evil" in report["message"] and str(bomb) in report["message"]
    assert report["rss_growth_mb"] < 100 and report["traced_peak_mb"] < 100, report


def test_an_npz_bomb_under_an_expected_name_is_refused_by_its_shape(tmp_path):
    bomb = _npz_with_member(tmp_path / "bomb.npz", "W", (BOMB_BYTES // 12, 3))
    report = _measure(f"""
        result = {{"loaded": repr(nn.Linear(4, 3, rng=0).load({str(bomb)!r}, strict=False))}}
    """)
    assert report.get("error") == "CheckpointError", report
    assert "shape" in report["message"]
    assert report["rss_growth_mb"] < 100 and report["traced_peak_mb"] < 100, report


def test_an_npz_whose_header_lies_about_its_size_is_refused(tmp_path):
    path = _npz_with_member(tmp_path / "lying.npz", "W", (3, 4), file_bytes=4 * 12 + 4096)
    with pytest.raises(files.CheckpointError, match="declares"):
        nn.Linear(4, 3, rng=0).load(path, strict=False)


def test_truncated_and_foreign_files_are_refused_with_the_file_name(tmp_path):
    m = nn.Linear(4, 3, rng=0)
    m.save(tmp_path / "good.npz")
    blob = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(blob[:len(blob) // 2])
    (tmp_path / "empty.npz").write_bytes(b"")
    for name in ("cut.npz", "empty.npz"):
        with pytest.raises(files.CheckpointError, match=name):
            m.load(tmp_path / name)
    np.savez(tmp_path / "pickled.npz", W=np.array([object()], dtype=object))
    with pytest.raises(files.CheckpointError, match="object"):
        m.load(tmp_path / "pickled.npz", strict=False)
    with pytest.raises(FileNotFoundError):
        m.load(tmp_path / "absent.npz")


def test_a_zip_bomb_is_refused_by_unpack_archive_with_little_memory(tmp_path):
    archive = tmp_path / "trainDevTestTrees_PTB.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("trees/train.txt", "w", force_zip64=True) as fh:
            chunk = b"(2 x)\n" * (1 << 19)
            for _ in range(BOMB_BYTES // len(chunk)):
                fh.write(chunk)
        zf.writestr("trees/dev.txt", "(2 x)\n")
        zf.writestr("trees/test.txt", "(2 x)\n")
    assert archive.stat().st_size < 3 * 2**20
    dest = tmp_path / "sst"
    report = _measure(f"""
        data.unpack_archive({str(archive)!r}, {str(dest)!r})
        result = {{}}
    """)
    assert report.get("error") == "ValueError", report
    assert "more than" in report["message"]
    assert report["rss_growth_mb"] < 100 and report["traced_peak_mb"] < 100, report
    assert not dest.exists() or list(dest.iterdir()) == []


def test_unpack_archive_stops_at_its_cap_and_writes_nothing(tmp_path):
    from examples.treelstm import data
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for split in ("train", "dev", "test"):
            zf.writestr(f"trees/{split}.txt", "(2 x)\n" * 1000)
    with pytest.raises(ValueError, match="more than the 100 allowed"):
        data.unpack_archive(archive, tmp_path / "out", check_md5=False, max_bytes=100)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    data.unpack_archive(archive, tmp_path / "out", check_md5=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dev.txt", "test.txt", "train.txt"]


def test_save_and_load_through_open_files():
    import io
    m = model()
    buf = io.BytesIO()
    m.save(buf)
    buf.seek(0)
    assert_same_params(model().load(buf), m)


def test_save_tree_and_load_tree_round_trip_a_training_state(tmp_path):
    m = model()
    opt = nn.Adam(1e-2)
    state = opt.init(m)
    grads = m.replace(layers=tuple(l.replace(W=np.ones_like(l.W), b=np.ones_like(l.b))
                                   for l in m.layers))
    m2, state2 = opt.update(m, grads, state)
    path = nn.save_tree(tmp_path / "state", {"model": m2, "opt": state2}, {"epoch": 3})
    assert path.name == "state.npz"
    tree, meta = nn.load_tree(path, {"model": model(), "opt": opt.init(model())})
    assert meta == {"epoch": 3}
    assert tree["opt"].step == 1 and type(tree["opt"].step) is int
    assert_same_params(tree["model"], m2)
    for (_, a), (_, b) in zip(nn.named_leaves(tree["opt"]), nn.named_leaves(state2)):
        np.testing.assert_array_equal(a, b)
    other = nn.Chain(nn.Linear(4, 9, "tanh", rng=0), nn.Linear(9, 3, rng=1))
    with pytest.raises(files.CheckpointError, match="shape"):
        nn.load_tree(path, {"model": other, "opt": opt.init(other)})
    with pytest.raises(ValueError):
        nn.save_tree(tmp_path / "bad", {"x": np.zeros(2)}, {"loss": float("nan")})
