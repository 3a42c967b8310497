"""Push and clone over QUIC through a lossy, reordering, delaying UDP link (RELIABILITY.md T8).

    python -m benchmarks lossy [--size-mib 64] [--loss 0.05] [--reorder 0.05]
                               [--duplicate 0.01] [--delay-ms 50] [--jitter-ms 20] [--json]

A real dits-remote and the real CLI on 127.0.0.1, with `tests/chaos_proxy.py` between them:
every datagram in either direction is dropped, duplicated or held back (reordered) with the
given probabilities and delayed by DELAY +- JITTER. The same push over clean loopback is the
baseline. Reported: seconds and goodput of push and clone, goodput relative to the clean
push, what the proxy did, whether the clone is identical and the server's fsck is clean.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.add_bench import write_random
from benchmarks.push_bench import _run
from dits.net.local_server import LocalServer, remote_cli
from tests.chaos_proxy import UdpChaosProxy

MiB = 1 << 20


def _digest(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def bench(
    size: int, loss: float, reorder: float, duplicate: float, delay: float, jitter: float
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dits-bench-lossy-") as tmp:
        root = Path(tmp)
        work = root / "work"
        work.mkdir()
        _run(work, "init")
        write_random(work / "media.mov", size, b"lossy-bench")
        _run(work, "add", "media.mov")
        _run(work, "commit", "-m", "media")
        results: dict[str, Any] = {"bytes": size}
        for label in ("clean", "lossy"):
            srv = root / f"srv-{label}"
            srv.mkdir()
            remote_cli("init", "--root", str(srv), "r")
            token = remote_cli("token", "create", "--root", str(srv), "--repo", "r", "--write")
            with LocalServer(srv) as server:
                proxy = None
                port = server.port
                if label == "lossy":
                    proxy = UdpChaosProxy(
                        ("127.0.0.1", server.port),
                        loss=loss,
                        reorder=reorder,
                        duplicate=duplicate,
                        delay=delay,
                        jitter=jitter,
                    )
                    port = proxy.start()
                try:
                    url = f"dits://127.0.0.1:{port}/r"
                    if label == "lossy":
                        _run(work, "remote", "remove", "origin")
                    _run(work, "remote", "add", "origin", url, "--token", token)
                    pushed = _run(work, "push", "--transport", "quic", "--json")
                    clone_dir = root / f"clone-{label}"
                    cloned = _run(
                        root,
                        "clone",
                        url,
                        str(clone_dir),
                        "--token",
                        token,
                        "--transport",
                        "quic",
                        "--json",
                    )
                    identical = _digest(clone_dir / "media.mov") == _digest(work / "media.mov")
                    shutil.rmtree(clone_dir)
                finally:
                    if proxy is not None:
                        proxy.stop()
            fsck = remote_cli("fsck", "--root", str(srv), "--json")
            figures: dict[str, Any] = {
                "push_seconds": round(pushed.seconds, 2),
                "push_mb_s": round(size / pushed.seconds / 1e6, 2),
                "clone_seconds": round(cloned.seconds, 2),
                "clone_mb_s": round(size / cloned.seconds / 1e6, 2),
                "clone_identical": identical,
                "server_fsck_clean": json.loads(fsck)["clean"],
            }
            if proxy is not None:
                c = proxy.counters
                figures["datagrams"] = {
                    "received": c.received,
                    "dropped": c.dropped,
                    "reordered": c.reordered,
                    "duplicated": c.duplicated,
                }
                figures["push_vs_clean"] = round(
                    results["clean"]["push_seconds"] / pushed.seconds, 3
                )
            results[label] = figures
        return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks lossy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--size-mib", type=float, default=64)
    parser.add_argument("--loss", type=float, default=0.05)
    parser.add_argument("--reorder", type=float, default=0.05)
    parser.add_argument("--duplicate", type=float, default=0.01)
    parser.add_argument("--delay-ms", type=float, default=50)
    parser.add_argument("--jitter-ms", type=float, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = bench(
        int(args.size_mib * MiB),
        args.loss,
        args.reorder,
        args.duplicate,
        args.delay_ms / 1000,
        args.jitter_ms / 1000,
    )
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for name, figures in results.items():
            print(f"{name:6} {figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
