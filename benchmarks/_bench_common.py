"""Shared helpers of the benchmark scripts: interleaved timing, environment, output.

Timing model: each variant is calibrated once to a number of calls per repetition
(`calibrate`), then every repetition runs each variant in turn (`interleaved`), so slow
drifts of the machine (frequency, other load) hit all variants alike.  A repetition's
per-iteration time is its elapsed time divided by its number of calls; the reports give the
median and the minimum of those over the repetitions, and ratios are taken per repetition
(paired, same repetition) before the median is taken.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse_args(name: str, description: str, default_repeat: int, quick_repeat: int,
               add_arguments=None, argv=None):
    """Parse the common options (`--repeat`, `--quick`, `--json`, `--threads`) and those that
    `add_arguments(parser)` adds; applies `--threads` (see `limit_threads`)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeat", type=int, default=None,
                        help=f"timed repetitions per variant (default {default_repeat}; "
                             f"{quick_repeat} with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="a fast smoke-test mode (fewer sizes, repetitions and calls)")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / f"{name}.json",
                        help=f"where to write the results (default benchmarks/results/{name}.json)")
    add_threads_argument(parser)
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    limit_threads(args.threads)
    if args.repeat is None:
        args.repeat = quick_repeat if args.quick else default_repeat
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def add_threads_argument(parser) -> None:
    """`--threads N` (default 1); the script calls `limit_threads(args.threads)` after parsing."""
    parser.add_argument("--threads", type=int, default=1,
                        help="BLAS/OpenMP threads (threadpoolctl; default 1: small products "
                             "get much slower when threads oversubscribe a loaded machine)")


_LIMITS = []     # the active threadpool limits (kept alive for the whole run)


def limit_threads(threads: int) -> dict:
    """Limit the BLAS and OpenMP thread pools of this process to `threads` (threadpoolctl),
    and PyTorch's when it is imported; returns what `blas_info` reports afterwards."""
    import numpy  # noqa: F401  (loads the BLAS library, so the limit reaches it)
    from threadpoolctl import threadpool_limits
    _LIMITS.append(threadpool_limits(limits=threads))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return blas_info()


def blas_info() -> list:
    """The loaded BLAS/OpenMP libraries: (library, version, threads, kernel architecture)."""
    import numpy  # noqa: F401
    from threadpoolctl import threadpool_info
    return [{k: info.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
            for info in threadpool_info()]


CLOCK = time.perf_counter
"""The clock of `calibrate` and `time_once`: wall time; a benchmark may switch it to
`time.process_time` (CPU time of this process), which other processes loading the machine
disturb far less."""


def calibrate(fn, target_s: float, max_number: int = 1_000_000) -> int:
    """Calls per repetition so that one repetition of `fn` takes about `target_s` seconds."""
    number = 1
    while True:
        t0 = CLOCK()
        for _ in range(number):
            fn()
        elapsed = CLOCK() - t0
        if elapsed >= target_s / 4 or number >= max_number:
            break
        number *= 4 if elapsed < target_s / 40 else 2
    per_call = elapsed / number
    return max(1, min(max_number, round(target_s / max(per_call, 1e-9))))


def time_once(fn, number: int) -> float:
    """Seconds per call of `fn`, over `number` back-to-back calls."""
    t0 = CLOCK()
    for _ in range(number):
        fn()
    return (CLOCK() - t0) / number


def interleaved(variants: dict, repeat: int, target_s: float, warmup: int = 2) -> dict:
    """Per-call times (seconds) of each variant, `repeat` repetitions interleaved.

    Returns {name: {"number": calls per repetition, "times": [seconds per call, ...]}}.
    """
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    numbers = {name: calibrate(fn, target_s) for name, fn in variants.items()}
    times: dict = {name: [] for name in variants}
    for _ in range(repeat):
        gc.collect()
        for name, fn in variants.items():
            times[name].append(time_once(fn, numbers[name]))
    return {name: {"number": numbers[name], "times": times[name]} for name in variants}


def summary(times: list, scale: float) -> dict:
    scaled = [t * scale for t in times]
    return {"median": statistics.median(scaled), "min": min(scaled)}


def paired_ratio(num: list, den: list) -> dict:
    ratios = [a / b for a, b in zip(num, den)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def environment() -> dict:
    import numpy as np

    import spmdbatch
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "numpy": np.__version__,
        "spmdbatch": getattr(spmdbatch, "__version__", "?"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15min": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "threads_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                     "MKL_NUM_THREADS", "OPENBLAS_CORETYPE",
                                                     "OPENBLAS_L2_SIZE") if k in os.environ},
        "blas": blas_info(),
    }


def markdown_table(headers: list, rows: list) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    def line(r):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    sep = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def write_json(path: Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    print(f"\nwrote {path}")


def add_sst_argument(parser) -> None:
    """`--data DIR`: where the Stanford Sentiment Treebank is (see `sst_trees`)."""
    parser.add_argument("--data", default=None,
                        help="SST directory (default: $SPMDBATCH_SST_DIR or ../shared/data/sst)")


def sst_trees(directory, count: int, synthetic: bool = False):
    """(vocabulary, the first `count` training trees, where they come from): the SST in
    `directory` (None: $SPMDBATCH_SST_DIR or ../shared/data/sst), or a synthetic treebank
    when there is none there or `synthetic` (a benchmark's --quick) asks for one."""
    from examples.treelstm import data as sst     # (needs the repository root on sys.path)
    directory = directory or sst.default_data_dir()
    if directory is None or synthetic:
        vocab, trees = sst.synthetic_treebank(count, seed=0)
        return vocab, trees, "synthetic treebank"
    corpus = sst.load_sst(directory)
    return corpus.vocab, corpus.train[:count], f"SST train[:{count}]"
