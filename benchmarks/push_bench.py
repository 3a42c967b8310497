"""Push and clone through a real dits-remote on loopback, against bare transfers in the same run.

    python -m benchmarks push [--size-gib 2] [--present-gib 10] [--transports quic,tcp] [--json]

Scenarios (issue 3, section 4):
  push     `dits push` of SIZE GiB of fresh incompressible media, per transport, next to a bare
           transfer of the same byte count over the same transport library (target: >= 70 %
           of the bare figure; over TLS/TCP >= 300 MB/s)
  clone    `dits clone` of that repository, per transport
  present  a push of a PRESENT GiB file whose chunks the server already has (the pushed media
           repeated end to end, so its chunks are nearly all the pushed ones; target <= 1 s)
  memory   peak RSS (VmHWM) of the client and the server during each push and clone
           (target <= 300 MiB)
Yardsticks measured in the same run, to read the push figure against:
  disk     writing the same byte count into the server's folder and fsyncing it (a push
           must do at least that; the bare transfer does not)
  cpu      CPU seconds of the client and of the server during the push, and the share of
           the two cores the bare transfer already used
The client and the server are separate processes (`python -m dits.cli.main`,
`python -m remote.cli serve`), both on this machine, sharing its two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.add_bench import REPO_ROOT, write_random
from dits.net.local_server import LocalServer, peak_rss, remote_cli

MiB = 1 << 20
ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "DITS_COMMIT_TIME": "1700000000"}


def _run(cwd: Path, *args: str, env: dict[str, str] | None = None) -> tuple[float, str, int]:
    """Run the dits CLI; return (seconds, stdout, peak RSS bytes of the process)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dits.cli.main", *args],
        cwd=cwd,
        env=env or ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = 0
    t0 = time.perf_counter()
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, peak_rss(proc.pid))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    done.set()
    watcher.join()
    if proc.returncode != 0:
        raise SystemExit(f"dits {' '.join(args)} failed ({proc.returncode}): {err}")
    return seconds, out, peak


def bench(
    data_dir: Path, size_gib: float, present_gib: float, transports: list[str]
) -> dict[str, Any]:
    from benchmarks.transport_bench import bare_transfer

    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    size = int(size_gib * (1 << 30))
    work = data_dir / "work"
    work.mkdir()
    _run(work, "init")
    _run(work, "config", "user.name", "Bench")
    _run(work, "config", "user.email", "bench@example.com")
    write_random(work / "export.mov", size, b"push-bench")
    _run(work, "add", "export.mov")
    _run(work, "commit", "-m", "media")
    if present_gib > 0:
        _make_reel_branch(work, present_gib)
    srv_root = data_dir / "server"
    srv_root.mkdir()
    results: dict[str, Any] = {"bytes": size}
    for transport in transports:
        repo = f"bench-{transport}"
        remote_cli("init", "--root", str(srv_root), repo)
        token = remote_cli("token", "create", "--root", str(srv_root), "--repo", repo, "--write")
        server = LocalServer(srv_root, env=ENV)
        server.start()
        try:
            url = f"dits://127.0.0.1:{server.port}/{repo}"
            _run(work, "remote", "remove", "origin") if transport != transports[0] else None
            _run(work, "remote", "add", "origin", url, "--token", token)
            _run(work, "config", "remote.origin.transport", transport)
            assert server.proc is not None
            server_cpu0, client_cpu0 = _process_cpu(server.proc.pid), _children_cpu()
            seconds, out, client_rss = _run(work, "push", "--json")
            server_cpu = _process_cpu(server.proc.pid) - server_cpu0
            client_cpu = _children_cpu() - client_cpu0
            report = json.loads(out)
            push_server_rss = server.peak_rss()
            clone_dir = data_dir / f"clone-{transport}"
            clone_seconds, _, clone_rss = _run(
                data_dir,
                "clone",
                url,
                str(clone_dir),
                "--token",
                token,
                "--transport",
                transport,
                "--json",
            )
            shutil.rmtree(clone_dir)
            if present_gib > 0:
                results[f"present-{transport}"] = _push_present(work, present_gib)
            server_rss = server.peak_rss()
        finally:
            server.stop()
        bare_name = "qh3" if transport == "quic" else "tcp"
        bare = bare_transfer(bare_name, size, streams=4)
        disk_mb_s = durable_write_mb_s(srv_root, size)
        push_mb_s = size / seconds / 1e6
        bare_mb_s = bare["mib_s"] * MiB / 1e6
        results[transport] = {
            "push_seconds": round(seconds, 2),
            "push_mb_s": round(push_mb_s, 1),
            "bare_mb_s": round(bare_mb_s, 1),
            "push_vs_bare": round(push_mb_s / bare_mb_s, 2),
            "disk_write_fsync_mb_s": round(disk_mb_s, 1),
            "push_client_cpu_s": round(client_cpu, 2),
            "push_server_cpu_s": round(server_cpu, 2),
            "bare_cpu_pct_of_two_cores": round(
                (bare["client_cpu_pct"] + bare["server_cpu_pct"]) / 2
            ),
            "chunks_sent": report["chunks_sent"],
            "clone_seconds": round(clone_seconds, 2),
            "clone_mb_s": round(size / clone_seconds / 1e6, 1),
            "client_peak_rss_mib": round(max(client_rss, clone_rss) / MiB, 1),
            "server_peak_rss_mib": round(max(push_server_rss, server_rss) / MiB, 1),
        }
    shutil.rmtree(data_dir)
    return results


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def durable_write_mb_s(folder: Path, size: int) -> float:
    """Write ``size`` fresh random bytes into ``folder`` in 8 MiB pieces and fsync: the least
    a push of that many bytes must do on the server's disk."""
    pattern = os.urandom(64 * MiB)
    path = folder / "disk-yardstick.tmp"
    started = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        done = 0
        while done < size:
            piece = min(8 * MiB, size - done)
            start = done % len(pattern)
            view = memoryview(pattern)[start : start + piece]
            done += os.write(fd, view)
        os.fsync(fd)
    finally:
        os.close(fd)
        path.unlink()
    return size / (time.perf_counter() - started) / 1e6


def _make_reel_branch(work: Path, present_gib: float) -> None:
    """Branch ``reel``: the media plus a file made of the media repeated end to end, so its
    chunks are (nearly) all chunks the main push sends."""
    target = int(present_gib * (1 << 30))
    _run(work, "switch", "-c", "reel")
    with open(work / "reel.mov", "wb") as out:
        done = 0
        while done < target:
            with open(work / "export.mov", "rb") as fh:
                while done < target and (block := fh.read(min(64 * MiB, target - done))):
                    out.write(block)
                    done += len(block)
    _run(work, "add", "reel.mov")
    _run(work, "commit", "-m", "reel")
    _run(work, "switch", "main")


def _push_present(work: Path, present_gib: float) -> dict[str, Any]:
    seconds, out, rss = _run(work, "push", "origin", "reel", "--json")
    report = json.loads(out)
    return {
        "bytes": int(present_gib * (1 << 30)),
        "push_seconds": round(seconds, 3),
        "chunks_total": report["chunks_total"],
        "chunks_sent": report["chunks_sent"],
        "client_peak_rss_mib": round(rss / MiB, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks push",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/dits-bench-push"))
    parser.add_argument("--size-gib", type=float, default=2.0)
    parser.add_argument("--present-gib", type=float, default=10.0)
    parser.add_argument("--transports", default="quic,tcp")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = bench(args.data_dir, args.size_gib, args.present_gib, args.transports.split(","))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for name, figures in results.items():
            print(f"{name:8} {figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
