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
  disk     writing the same byte count into the server's folder and fsyncing it, through
           the page cache and with O_DIRECT as the server's packs do (a push must do at
           least that; the bare transfer does not)
  cpu      CPU seconds of the client and of the server during the push, and the share of
           the two cores the bare transfer already used
The client and the server are separate processes (`python -m dits.cli.main`,
`python -m remote.cli serve`), both on this machine, sharing its two cores.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.add_bench import REPO_ROOT, write_random
from dits.net.local_server import LocalServer, remote_cli

MiB = 1 << 20
ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "DITS_COMMIT_TIME": "1700000000"}


@dataclass
class _Ran:
    seconds: float
    out: str
    peak_rss: int  # bytes, the kernel's own high-water mark (ru_maxrss from wait4)
    cpu: float  # user + system seconds


def _run(cwd: Path, *args: str, env: dict[str, str] | None = None) -> _Ran:
    """Run the dits CLI and reap it with ``wait4``, which reports its exact peak RSS and CPU."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dits.cli.main", *args],
        cwd=cwd,
        env=env or ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    t0 = time.perf_counter()
    outputs: dict[str, str] = {}

    def drain(name: str, stream: Any) -> None:
        outputs[name] = stream.read()

    readers = [
        threading.Thread(target=drain, args=("out", proc.stdout)),
        threading.Thread(target=drain, args=("err", proc.stderr)),
    ]
    for reader in readers:
        reader.start()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join()
    if proc.returncode != 0:
        raise SystemExit(f"dits {' '.join(args)} failed ({proc.returncode}): {outputs['err']}")
    return _Ran(seconds, outputs["out"], usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime)


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
            server_cpu0 = _process_cpu(server.proc.pid)
            pushed = _run(work, "push", "--json")
            server_cpu = _process_cpu(server.proc.pid) - server_cpu0
            seconds, client_rss, client_cpu = pushed.seconds, pushed.peak_rss, pushed.cpu
            report = json.loads(pushed.out)
            push_server_rss = server.peak_rss()
            clone_dir = data_dir / f"clone-{transport}"
            cloned = _run(
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
        direct_mb_s = durable_write_mb_s(srv_root, size, direct=True)
        push_mb_s = size / seconds / 1e6
        bare_mb_s = bare["mib_s"] * MiB / 1e6
        results[transport] = {
            "push_seconds": round(seconds, 2),
            "push_mb_s": round(push_mb_s, 1),
            "bare_mb_s": round(bare_mb_s, 1),
            "push_vs_bare": round(push_mb_s / bare_mb_s, 2),
            "disk_write_fsync_mb_s": round(disk_mb_s, 1),
            "disk_direct_write_mb_s": round(direct_mb_s, 1),
            "push_client_cpu_s": round(client_cpu, 2),
            "push_server_cpu_s": round(server_cpu, 2),
            "bare_cpu_pct_of_two_cores": round(
                (bare["client_cpu_pct"] + bare["server_cpu_pct"]) / 2
            ),
            "chunks_sent": report["chunks_sent"],
            "clone_seconds": round(cloned.seconds, 2),
            "clone_mb_s": round(size / cloned.seconds / 1e6, 1),
            "client_peak_rss_mib": round(max(client_rss, cloned.peak_rss) / MiB, 1),
            "server_peak_rss_mib": round(max(push_server_rss, server_rss) / MiB, 1),
        }
    shutil.rmtree(data_dir)
    return results


def _process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def durable_write_mb_s(folder: Path, size: int, *, direct: bool = False) -> float:
    """Write ``size`` fresh random bytes into ``folder`` in 8 MiB pieces and fsync: the least
    a push of that many bytes must do on the server's disk. ``direct``: with O_DIRECT, as the
    server's pack store writes (from page-aligned memory)."""
    pattern: Any = mmap.mmap(-1, 64 * MiB)  # page-aligned, as O_DIRECT needs
    pattern.write(os.urandom(64 * MiB))
    path = folder / "disk-yardstick.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if direct else 0)
    size -= size % (8 * MiB) if direct else 0
    started = time.perf_counter()
    fd = os.open(path, flags, 0o600)
    whole = memoryview(pattern)
    try:
        done = 0
        while done < size:
            piece = min(8 * MiB, size - done)
            start = done % len(pattern)
            done += os.write(fd, whole[start : start + piece])
        os.fsync(fd)
    finally:
        os.close(fd)
        path.unlink()
        whole.release()
        pattern.close()
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
    ran = _run(work, "push", "origin", "reel", "--json")
    seconds, rss = ran.seconds, ran.peak_rss
    report = json.loads(ran.out)
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
