"""Cost of one recursion level at depths 50, 1000 and 10000 (a chain recursion under @spmd).

A chain ``chain(p, n, x) = tanh(chain(p, n - 1, x) * p[1] + x)`` of depth n, for a batch of 8
examples (half of them half as deep), forward and forward+backward (grad with respect to p).
Reported: milliseconds per level (total time / depth), minimum over the repetitions. With
per-lane waiting counts and a queue of ready lanes (execution/recursion.py) the cost of a level
does not depend on the depth; earlier, every resume looked at every parked lane.

    python benchmarks/recursion_depth.py
    python benchmarks/recursion_depth.py --depths 50,1000 --repeat 3
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import environment, markdown_table, parse_args, write_json  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import spmdbatch as sb  # noqa: E402


def chain(p, n, x):
    if n <= 0:
        return np.tanh(x * p[0])
    return np.tanh(chain(p, n - 1, x) * p[1] + x)


def loss(p, ns, xs):
    depth = int(ns.max())
    return sb.spmd(chain, in_axes=(None, 0, 0), max_depth=depth + 10)(p, ns, xs).sum()


def main(argv=None):
    def options(ap):
        ap.add_argument("--depths", default="50,1000,10000")
        ap.add_argument("--batch", type=int, default=8)
    args = parse_args("recursion_depth", __doc__.split("\n\n")[0], 2, 1, options, argv)
    if args.quick:
        args.depths = "20,60"
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20000))
    p = np.array([0.5, 0.9])
    grad = sb.grad(loss)
    results, rows = [], []
    for depth in [int(d) for d in args.depths.split(",")]:
        ns = np.full(args.batch, depth)
        ns[::2] = depth // 2
        xs = np.linspace(-1.0, 1.0, args.batch)
        loss(p, ns[:2] // 10, xs[:2])
        fwd, bwd = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            loss(p, ns, xs)
            t1 = time.perf_counter()
            grad(p, ns, xs)
            t2 = time.perf_counter()
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
        entry = {"depth": depth, "batch": args.batch, "fwd_ms_per_level": 1e3 * min(fwd) / depth,
                 "fwd_bwd_ms_per_level": 1e3 * min(bwd) / depth}
        results.append(entry)
        rows.append([depth, f"{entry['fwd_ms_per_level']:.3f}", f"{entry['fwd_bwd_ms_per_level']:.3f}"])
    print(f"Chain recursion, batch {args.batch}, ms per level (minimum of {args.repeat})\n")
    print(markdown_table(["depth", "forward", "forward+backward"], rows))
    write_json(args.json, {"benchmark": "recursion_depth", "config": vars(args) | {"json": str(args.json)},
                           "environment": environment(), "results": results})
    return results


if __name__ == "__main__":
    main()
