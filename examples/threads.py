"""The `--threads N` option of the example training commands (BLAS threads via threadpoolctl).

The matrix products of a minibatch are small; more BLAS threads than free cores make them
several times slower on a loaded machine, so the examples default to one thread.
"""
from __future__ import annotations

HELP = ("BLAS threads (set with threadpoolctl; default 1: the matrix products of a minibatch "
        "are small, and more threads than free cores make them several times slower on a "
        "loaded machine; 0 keeps the BLAS library's own setting)")


def add_option(add, default=1):
    """Declare ``--threads`` with `add` (a parser's ``add_argument`` or a wrapper of it)."""
    add("--threads", type=int, default=default, metavar="N", help=HELP)


def check(n: int) -> str | None:
    """The one-line complaint about a ``--threads`` value, or None when it is valid."""
    return None if n >= 0 else f"--threads must be 0 or more, got {n}"


def limit(n: int) -> None:
    """Set the BLAS thread pool to `n` threads for the rest of the process (0: leave it)."""
    from threadpoolctl import threadpool_limits
    threadpool_limits(limits=n or None, user_api="blas")
