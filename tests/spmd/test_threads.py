"""`grad`, `spmd` and `stats()` from several threads at once (issue 15, section 6).

The active tape, the running batch program (frame, lanes) and the open `stats()` block are
per thread: threads that differentiate batch programs at the same time neither see each
other's tapes ("nested differentiation") nor count each other's calls.
"""
from __future__ import annotations

import threading

import numpy as np

import spmdbatch as sb

THREADS = 4
ROUNDS = 25


def step(x, n):
    """Per-example code with a varying loop and branch (a frame with several groups)."""
    total = 0.0
    for k in range(n):
        if x > k * 0.3:
            total += np.tanh(x * (k + 1))
        else:
            total -= 0.5 * x
    return total


def loss(scale, xs, ns):
    return sb.spmd(step, in_axes=(0, 0))(xs * scale, ns).sum()


def _run_in_threads(work):
    """Run ``work(i)`` in THREADS threads started together; the results and errors by thread."""
    barrier = threading.Barrier(THREADS)
    results, errors = [None] * THREADS, []

    def body(i):
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as exc:   # noqa: BLE001  (reported by the test)
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


def _inputs(i):
    rng = np.random.default_rng(i)
    return np.float64(1.0 + 0.1 * i), rng.uniform(-2, 2, size=7), rng.integers(0, 5, size=7)


def test_grad_from_four_threads_at_once_equals_one_thread():
    expected = [sb.value_and_grad(loss)(*_inputs(i)) for i in range(THREADS)]

    def work(i):
        out = []
        for _ in range(ROUNDS):
            out.append(sb.value_and_grad(loss)(*_inputs(i)))
        return out

    results, errors = _run_in_threads(work)
    assert not errors, f"{len(errors)} thread(s) failed, first: {errors[0]!r}"
    for i, rounds in enumerate(results):
        for value, g in rounds:
            assert value == expected[i][0] and g == expected[i][1]


def test_stats_count_only_their_own_thread():
    def work(i):
        with sb.stats() as s:
            for _ in range(i + 1):          # thread i makes i + 1 top-level calls
                sb.spmd(step)(np.linspace(-1, 1, 5), np.array([3, 0, 2, 1, 4]))
        return s.calls_by_function.get("step", 0)

    results, errors = _run_in_threads(work)
    assert not errors, f"{len(errors)} thread(s) failed, first: {errors[0]!r}"
    with sb.stats() as alone:
        sb.spmd(step)(np.linspace(-1, 1, 5), np.array([3, 0, 2, 1, 4]))
    per_call = alone.calls_by_function["step"]
    assert results == [per_call * (i + 1) for i in range(THREADS)]


def test_a_tape_of_another_thread_is_not_active_here():
    seen = []

    def inner(x):
        done = threading.Event()

        def other():
            # a plain computation on another thread while this one differentiates
            seen.append(sb.grad(lambda y: (y * y).sum())(np.arange(3.0)))
            done.set()

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert done.is_set()
        return (x * 3).sum()

    g = sb.grad(inner)(np.ones(2))
    np.testing.assert_array_equal(g, [3.0, 3.0])
    np.testing.assert_array_equal(seen[0], [0.0, 2.0, 4.0])
