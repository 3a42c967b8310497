"""Kill -9 dits-remote at random moments of pushes, restart it, retry (RELIABILITY.md T10).

    python -m benchmarks server-kill [--iterations 100] [--file-mib 8] [--seed 1] [--json]

Each iteration commits a new file of fresh random bytes, starts `dits push` (the real CLI),
kills the server with SIGKILL after a random delay within the push's expected duration,
restarts it on the same port, and runs the push again until it succeeds. After every
iteration: `dits-remote fsck` must be clean (every byte verified, no dangling refs), and the
server's branch must be exactly the client's tip. A soak, not a speed figure: it reports how
often the kill landed mid-push, retries needed, and any failure.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.add_bench import write_random
from benchmarks.push_bench import ENV, _run
from dits.errors import EXIT_NETWORK
from dits.net.local_server import LocalServer, remote_cli
from dits.repository import Repository

MiB = 1 << 20


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bench(iterations: int, file_size: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    report: dict[str, Any] = {
        "iterations": iterations,
        "killed_mid_push": 0,
        "push_finished_before_kill": 0,
        "retries": 0,
        "fsck_clean": 0,
        "ref_matches": 0,
        "failures": [],
    }
    with tempfile.TemporaryDirectory(prefix="dits-bench-kill-") as tmp:
        root = Path(tmp)
        work, srv = root / "work", root / "srv"
        work.mkdir()
        srv.mkdir()
        remote_cli("init", "--root", str(srv), "r")
        token = remote_cli("token", "create", "--root", str(srv), "--repo", "r", "--write")
        listen = f"127.0.0.1:{_free_port()}"
        server = LocalServer(srv)
        port = server.start(listen)
        _run(work, "init")
        _run(work, "remote", "add", "origin", f"dits://127.0.0.1:{port}/r", "--token", token)
        # When to kill: between the CLI's start-up and the end of its transfer, both refined
        # from the retries that pushed a whole commit.
        startup, transfer = 0.4, 0.3
        for i in range(iterations):
            write_random(work / f"take-{i:03d}.mov", file_size, b"kill-%d" % i)
            _run(work, "add", ".")
            _run(work, "commit", "-m", f"take {i}")
            push = subprocess.Popen(
                [sys.executable, "-m", "dits.cli.main", "push"],
                cwd=work,
                env=ENV,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            # Python start-up varies; aim at the first half of the transfer.
            time.sleep(rng.uniform(0.6 * startup, startup + 0.5 * transfer))
            server.kill()
            _, err = push.communicate(timeout=120)
            code = push.returncode
            if code not in (0, EXIT_NETWORK):
                report["failures"].append(f"iteration {i}: push exit {code}: {err.strip()[-300:]}")
            if code == 0:
                report["push_finished_before_kill"] += 1
            else:
                report["killed_mid_push"] += 1
            server.start(listen)
            for _attempt in range(5):
                started = time.perf_counter()
                ran = subprocess.run(
                    [sys.executable, "-m", "dits.cli.main", "push", "--json"],
                    cwd=work,
                    env=ENV,
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if ran.returncode == 0:
                    pushed = json.loads(ran.stdout)
                    if not pushed.get("up_to_date") and pushed["chunks_sent"] > 0:
                        wall = time.perf_counter() - started
                        startup = 0.7 * startup + 0.3 * (wall - pushed["seconds"])
                        transfer = 0.7 * transfer + 0.3 * pushed["seconds"]
                    break
                report["retries"] += 1
            else:
                report["failures"].append(f"iteration {i}: push kept failing: {ran.stderr[-300:]}")
                continue
            fsck = subprocess.run(
                [sys.executable, "-m", "remote.cli", "fsck", "--root", str(srv), "--json"],
                capture_output=True,
                text=True,
                env=ENV,
                check=False,
            )
            if fsck.returncode == 0 and json.loads(fsck.stdout)["clean"]:
                report["fsck_clean"] += 1
            else:
                report["failures"].append(f"iteration {i}: fsck: {fsck.stdout[-300:]}")
            local, remote = _tips(work)
            if local == remote:
                report["ref_matches"] += 1
            else:
                report["failures"].append(f"iteration {i}: server branch is not the local tip")
            print(f"iteration {i + 1}/{iterations}: kill after push exit {code}", file=sys.stderr)
        server.stop()
    return report


def _tips(work: Path) -> tuple[bytes | None, bytes | None]:
    """(local main, the server's main as a fresh fetch sees it)."""
    _run(work, "fetch")
    with Repository.open(work) as repo:
        return repo.refs.get_ref("refs/heads/main"), repo.refs.get_ref("refs/remotes/origin/main")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks server-kill",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--file-mib", type=float, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = bench(args.iterations, int(args.file_mib * MiB), args.seed)
    print(json.dumps(report, indent=2) if args.json else report)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
