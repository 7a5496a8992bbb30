"""Transform time of the @spmd corpus, and the warm call overhead of a cached spmd function.

For every function in ``tests/spmd/test_corpus.py``'s CASES:

- cold transform: its cached programs are dropped (``spmdbatch.frontend.transform.forget``:
  the compiled program of its code object and the instance kept on the function), then
  ``spmdbatch.frontend.transform.batched_version(f)`` is timed (lower + emit + compile +
  instantiate).  Lowering alone (``spmdbatch.frontend.lower_function(f)``) is timed in the
  same repetition; "rest" (emit + compile + instantiate) is median(total) - median(lower),
  and likewise for the minimum.  Functions that f calls (e.g. ``helper``) are transformed
  lazily at their first batched call and are not part of this.
- warm call: ``spmd(f)`` (already transformed) on a batch of one example vs calling ``f``
  natively on that one example, interleaved per repetition.

    python benchmarks/transform_time.py [--repeat N] [--quick] [--json PATH]
"""
from __future__ import annotations

import importlib.util
import statistics
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CORPUS_DIR = ROOT / "tests" / "spmd"
sys.path.insert(0, str(HERE))

import spmdbatch as sb  # noqa: E402
from spmdbatch.frontend import lower_function  # noqa: E402
from spmdbatch.frontend import transform  # noqa: E402
from _bench_common import (environment, interleaved, markdown_table, paired_ratio,  # noqa: E402
                           parse_args, summary, write_json)

NAME = "transform_time"


def load_corpus():
    """tests/spmd/test_corpus.py, imported by path (it imports `oracle` from its folder)."""
    if str(CORPUS_DIR) not in sys.path:
        sys.path.insert(0, str(CORPUS_DIR))
    spec = importlib.util.spec_from_file_location("spmd_test_corpus", CORPUS_DIR / "test_corpus.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module        # (dataclasses look their module up while it loads)
    spec.loader.exec_module(module)
    return module


def forget(fn):
    """Drop `fn` from the transform caches, so the next batched_version(fn) is cold."""
    transform.forget(fn)


def cold_transform_times(functions, repeat: int) -> list:
    """Per function: seconds of lower_function(f) and of a cold batched_version(f).

    The functions are interleaved within each repetition (every function once per
    repetition), so a burst of machine load is spread over all of them.
    """
    out = [{"lower": [], "total": []} for _ in functions]
    for _ in range(repeat):
        for fn, times in zip(functions, out):
            t0 = time.perf_counter()
            lower_function(fn)
            t1 = time.perf_counter()
            forget(fn)
            t2 = time.perf_counter()
            transform.batched_version(fn)
            t3 = time.perf_counter()
            times["lower"].append(t1 - t0)
            times["total"].append(t3 - t2)
    return out


def main():
    args = parse_args(NAME, __doc__.splitlines()[0], default_repeat=20, quick_repeat=2)
    target_s = 0.002 if args.quick else 0.02
    corpus = load_corpus()
    cases = corpus.CASES
    warnings.simplefilter("ignore")   # inactive-lane numpy warnings are not the point here

    # one untimed round: first-use costs (imports, caches of the interpreter) out of the way
    for fn, _ in cases:
        forget(fn)
        transform.batched_version(fn)

    cold = cold_transform_times([fn for fn, _ in cases], args.repeat)
    results, rows = [], []
    for (fn, case_args), times in zip(cases, cold):
        name = fn.__name__
        n_blocks = len(transform.program_of(fn).fn_ir.blocks)

        spmd_fn = sb.spmd(fn, in_axes=(0,) * len(case_args))
        one_batch = tuple(a[:1] for a in case_args)
        one_example = tuple(a[0] for a in case_args)
        spmd_fn(*one_batch)                           # transforms callees too, before timing
        timed = interleaved({"cached_spmd": lambda: spmd_fn(*one_batch),
                             "native": lambda: fn(*one_example)},
                            repeat=args.repeat, target_s=target_s)
        lower = summary(times["lower"], 1e3)
        total = summary(times["total"], 1e3)
        # difference of the statistics, not per repetition: a scheduler preemption (about
        # 4 ms on a loaded machine) inside one lower_function call would make it negative
        rest = {k: total[k] - lower[k] for k in ("median", "min")}
        cached = summary(timed["cached_spmd"]["times"], 1e6)
        native = summary(timed["native"]["times"], 1e6)
        ratio = paired_ratio(timed["cached_spmd"]["times"], timed["native"]["times"])
        results.append({
            "function": name, "blocks": n_blocks,
            "lower_ms": lower, "rest_ms": rest, "total_transform_ms": total,
            "cached_call_us": cached, "native_call_us": native,
            "ratio_cached_over_native": ratio,
            "calls_per_repeat": {"cached_spmd": timed["cached_spmd"]["number"],
                                 "native": timed["native"]["number"]},
        })
        rows.append([name, n_blocks, f"{lower['median']:.3f} ({lower['min']:.3f})",
                     f"{rest['median']:.3f} ({rest['min']:.3f})",
                     f"{total['median']:.3f} ({total['min']:.3f})",
                     f"{cached['median']:.1f} ({cached['min']:.1f})",
                     f"{native['median']:.2f} ({native['min']:.2f})", f"{ratio['median']:.0f}"])

    med = lambda key: statistics.median(r[key]["median"] for r in results)  # noqa: E731
    print(f"## @spmd transform time and warm call overhead ({len(results)} corpus functions)\n")
    print(markdown_table(
        ["function", "blocks in IR", "lower ms median (min)", "rest ms median (min)",
         "total transform ms median (min)",
         "cached call µs (B=1) median (min)", "native call µs median (min)", "cached/native"],
        rows))
    print(f"\nmedian over functions: lower {med('lower_ms'):.3f} ms, total transform "
          f"{med('total_transform_ms'):.3f} ms, cached call {med('cached_call_us'):.1f} µs, "
          f"native call {med('native_call_us'):.2f} µs")
    print(f"{args.repeat} repetitions. Transform: one cold call per function per repetition, "
          f"functions interleaved; rest = total - lower (of the medians, of the minima).\n"
          f"Calls: cached spmd and native interleaved per repetition; cached/native is the "
          f"median of the paired per-repetition ratios.")
    write_json(args.json, {
        "benchmark": NAME,
        "config": {"repeat": args.repeat, "quick": args.quick,
                   "target_seconds_per_repeat": target_s, "batch_for_cached_call": 1},
        "environment": environment(),
        "results": results,
    })


if __name__ == "__main__":
    main()
