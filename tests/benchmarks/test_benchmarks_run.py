"""Smoke tests of the benchmark scripts: they run in --quick mode and write sane JSON.

No timing assertions: only that each script exits 0 and reports positive numbers.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"


def _run(script: str, tmp_path: Path) -> dict:
    out = tmp_path / "x.json"
    # The scripts import this checkout's spmdbatch, installed or not.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])))
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), "--quick", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    assert "|" in proc.stdout  # printed a markdown table
    data = json.loads(out.read_text())
    assert data["config"]["quick"] is True
    assert data["environment"]["python"]
    assert data["results"]
    return data


def _positive_stats(entry: dict, key: str):
    stats = entry[key]
    assert set(stats) >= {"median", "min"}, (key, stats)
    for v in stats.values():
        assert isinstance(v, float) and v > 0, (key, stats)


def test_spmd_overhead_quick(tmp_path):
    data = _run("spmd_overhead.py", tmp_path)
    assert data["benchmark"] == "spmd_overhead"
    assert {r["mode"] for r in data["results"]} == {"fwd+bwd", "fwd"}
    for r in data["results"]:
        assert isinstance(r["batch"], int) and r["batch"] > 0
        for key in ("spmd_ms", "hand_ms", "ratio_spmd_over_hand"):
            _positive_stats(r, key)
        assert 0 <= r["max_relative_error"] <= 1e-4


def test_transform_time_quick(tmp_path):
    data = _run("transform_time.py", tmp_path)
    assert data["benchmark"] == "transform_time"
    names = [r["function"] for r in data["results"]]
    assert len(names) == len(set(names)) and "tozero" in names
    for r in data["results"]:
        assert isinstance(r["blocks"], int) and r["blocks"] >= 1
        for key in ("lower_ms", "total_transform_ms", "cached_call_us", "native_call_us",
                    "ratio_cached_over_native"):
            _positive_stats(r, key)
        assert "rest_ms" in r


def test_natural_code_quick(tmp_path):
    data = _run("natural_code.py", tmp_path)
    assert data["benchmark"] == "natural_code"
    impls = data["config"]["impls"]
    assert {"natural", "example"} <= set(impls)
    assert ("torch" in impls) != bool(data["config"]["torch_note"])   # present, or said missing
    assert all(0 <= err <= 1e-3 for err in data["agreement_max_relative_difference"].values())
    for r in data["results"]:
        for impl in impls:
            _positive_stats(r, f"{impl}_trees_per_s")
        _positive_stats(r, "ratio_natural_over_example")


def test_scalar_programs_quick(tmp_path):
    data = _run("scalar_programs.py", tmp_path)
    assert data["benchmark"] == "scalar_programs"
    timed = {r["program"] for r in data["results"]}
    assert "collatz" in timed
    assert timed | set(data["skipped"]) == set(data["config"]["programs"].split(","))
    assert all(data["skipped"].values())      # every skip says why
    for r in data["results"]:
        for key in ("loop_ms", "spmd_ms", "numpy_ms", "ratio_loop_over_spmd", "ratio_numpy_over_spmd"):
            _positive_stats(r, key)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


@pytest.mark.parametrize("script,key", [("tree_recursion.py", "rows"), ("treelstm.py", "rows")])
def test_tree_benchmarks_quick(tmp_path, script, key):
    out = tmp_path / "t.json"
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), "--quick", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    rows = json.loads(out.read_text())[key]
    assert rows
    for row in rows:
        rates = [v for k, v in row.items() if k.endswith("trees_per_s")]
        assert rates and all(v > 0 for v in rates)


def test_molecules_quick(tmp_path):
    data = _run("molecules.py", tmp_path)
    assert data["benchmark"] == "molecules"
    for r in data["results"]:
        assert r["batch"] == 32 and r["graphs_per_epoch"] > 0
        for key in ("spmd_graphs_per_s", "numpy_graphs_per_s", "spmd_over_numpy"):
            for v in r[key].values():
                assert isinstance(v, float) and v > 0, (key, r[key])


def test_childsum_tree_quick(tmp_path):
    data = _run("childsum_tree.py", tmp_path)
    assert data["benchmark"] == "childsum_tree"
    for r in data["results"]:
        # one batched call per level of the tallest tree: the child loop runs by height
        assert r["encode_calls_first_batch"] == r["tallest_tree_first_batch"]
        for key in ("spmd_fwd_ms_per_tree", "hand_fwd_ms_per_tree", "spmd_train_ms_per_tree",
                    "hand_train_ms_per_tree", "hand_over_spmd_fwd", "hand_over_spmd_train"):
            _positive_stats(r, key)
        assert 0 <= r["max_relative_error"] < 1e-3


def test_recursion_depth_quick(tmp_path):
    data = _run("recursion_depth.py", tmp_path)
    assert data["benchmark"] == "recursion_depth"
    assert [r["depth"] for r in data["results"]] == [20, 60]
    for r in data["results"]:
        assert r["fwd_ms_per_level"] > 0 and r["fwd_bwd_ms_per_level"] > 0
