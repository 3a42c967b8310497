"""Dispatcher: ``python -m benchmarks NAME [ARGS...]`` runs ``main(ARGS)`` of that benchmark.

Add a benchmark by adding its module to :data:`BENCHMARKS`.
"""

from __future__ import annotations

import compileall
import importlib
import os
import sys
from pathlib import Path

BENCHMARKS: dict[str, str] = {
    "chunking": "benchmarks.chunking_bench",
    "add": "benchmarks.add_bench",
    "push": "benchmarks.push_bench",
    "transport": "benchmarks.transport_bench",
    "s3": "benchmarks.s3_bench",
    "lossy": "benchmarks.lossy_bench",
    "server-kill": "benchmarks.server_kill_bench",
    "speculative": "benchmarks.speculative_bench",
    "staging": "benchmarks.staging_bench",
}
"""Benchmark name -> module path; the module defines ``main(argv: list[str] | None) -> int``."""


def installed_like() -> None:
    """Measure dits as an installed copy runs: with compiled bytecode.

    pip compiles bytecode at install; a checkout run with PYTHONDONTWRITEBYTECODE set (as on
    the project's VM) compiles every module again in every command, ~0.1 s each. The
    variable is dropped for the benchmark's subprocesses and the bytecode compiled once.
    """
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    root = Path(__file__).resolve().parents[1]
    for package in ("dits", "remote"):
        compileall.compile_dir(root / package, quiet=1)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark named by the first argument with the remaining arguments."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in BENCHMARKS:
        names = ", ".join(sorted(BENCHMARKS))
        print(f"usage: python -m benchmarks NAME [ARGS...]   (NAME: {names})", file=sys.stderr)
        return 2
    installed_like()
    module = importlib.import_module(BENCHMARKS[args[0]])
    result: int = module.main(args[1:])
    return result


if __name__ == "__main__":
    sys.exit(main())
