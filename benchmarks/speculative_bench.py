"""A render lands in the working tree; how long from its close to a finished push?

    python -m benchmarks speculative [--size-mib 2048] [--render-seconds 60]
                                     [--cap 40MB/s] [--json]

Issue 4, section 7. A render simulation writes SIZE MiB of incompressible media into the
working tree over RENDER seconds, the way a QuickTime writer does: an ``ftyp`` box, an ``mdat``
box whose size field is a placeholder, the frames appended at a steady rate, then at the end
the writer seeks back to patch the ``mdat`` size and appends the ``moov`` box. From the
moment the file is closed, ``dits add FILE && dits commit -m x && dits push`` runs and is timed.

Two runs, each into its own server repository (so nothing is shared between them):

  with agent     ``dits speculative start`` before the render; its uploads capped at CAP
  without agent  the same render, nothing running in the background

Targets: with the agent, done within 3 s of the close and >= 95 % of the bytes pre-synced
(``percent_bytes_presynced`` from ``dits push --json``). CAP must be above the render's write
rate (SIZE / RENDER) for the agent to keep up; the default 40 MB/s is for 2 GiB in 60 s.
The client, the agent and the server share this machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import blake3

from benchmarks.add_bench import REPO_ROOT
from dits.net.local_server import LocalServer, remote_cli

MiB = 1 << 20
ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "DITS_COMMIT_TIME": "1700000000"}
_PIECE = 4 * MiB


def _dits(cwd: Path, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "dits.cli.main", *args],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"dits {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc.stdout


def render(path: Path, size: int, seconds: float, seed: bytes) -> float:
    """Write a QuickTime-shaped file of ``size`` bytes at a steady rate; return the close time
    (time.monotonic) after the final patch and fsync."""
    xof = blake3.blake3(seed)
    ftyp = struct.pack(">I4s", 20, b"ftyp") + b"qt  " + struct.pack(">I", 0x200) + b"qt  "
    wide = struct.pack(">I4s", 8, b"wide")
    moov_body = xof.digest(length=64 << 10, seek=1 << 50)
    moov = struct.pack(">I4s", 8 + len(moov_body), b"moov") + moov_body
    payload = size - len(ftyp) - len(wide) - 8 - len(moov)
    start = time.monotonic()
    with open(path, "wb") as fh:
        fh.write(ftyp + wide)
        mdat_at = fh.tell()
        fh.write(struct.pack(">I4s", 0, b"mdat"))  # size unknown until the end, as ffmpeg does
        done = 0
        while done < payload:
            n = min(_PIECE, payload - done)
            fh.write(xof.digest(length=n, seek=done))
            fh.flush()
            done += n
            lag = start + seconds * done / payload - time.monotonic()
            if lag > 0:
                time.sleep(lag)
        fh.write(moov)
        fh.seek(mdat_at)
        fh.write(struct.pack(">I", 8 + payload))  # patch the placeholder
        fh.flush()
        os.fsync(fh.fileno())
    return time.monotonic()


def _scenario(
    data: Path,
    server: LocalServer,
    name: str,
    size: int,
    seconds: float,
    cap: str,
    agent: bool,
    agent_config: tuple[tuple[str, str], ...],
) -> dict[str, Any]:
    srv_root = server.root
    token = remote_cli("token", "create", "--root", str(srv_root), "--repo", name, "--write")
    work = data / name
    work.mkdir()
    _dits(work, "init")
    _dits(work, "config", "user.name", "Bench")
    _dits(work, "config", "user.email", "bench@example.com")
    _dits(work, "remote", "add", "origin", server.url(name), "--token", token)
    _dits(work, "config", "speculative.max_bandwidth", cap)
    for key, value in agent_config:
        _dits(work, "config", key, value)
    out: dict[str, Any] = {"agent": agent}
    if agent:
        _dits(work, "speculative", "start")
    t_started = time.monotonic()
    try:
        closed = render(work / "render.mov", size, seconds, name.encode())
        t0 = time.monotonic()
        added = json.loads(_dits(work, "add", "--json", "render.mov"))
        t_add = time.monotonic()
        _dits(work, "-q", "commit", "-m", "render")
        t_commit = time.monotonic()
        pushed = json.loads(_dits(work, "push", "--json"))
        done = time.monotonic()
        out["render_seconds"] = round(closed - t_started, 1)
    finally:
        if agent:
            status = json.loads(_dits(work, "speculative", "status", "--json"))
            out["agent_status"] = {
                k: status.get(k)
                for k in ("bytes_uploaded", "chunks_uploaded", "failures", "last_error")
            }
            _dits(work, "speculative", "stop")
    out.update(
        seconds_close_to_pushed=round(done - closed, 2),
        seconds_add=round(t_add - t0, 2),
        seconds_commit=round(t_commit - t_add, 2),
        seconds_push=round(done - t_commit, 2),
        add_files_from_agent=added.get("files_from_agent", 0),
        add_bytes_read=added.get("bytes_read"),
        push_chunks_total=pushed["chunks_total"],
        push_chunks_sent=pushed["chunks_sent"],
        push_bytes_sent=pushed["chunk_bytes_sent"],
        percent_bytes_presynced=pushed["percent_bytes_presynced"],
    )
    return out


def bench(
    size_mib: int,
    seconds: float,
    cap: str,
    data_dir: Path | None,
    only: str | None = None,
    agent_config: tuple[tuple[str, str], ...] = (),
) -> dict[str, Any]:
    data = Path(data_dir or tempfile.mkdtemp(prefix="dits-spec-bench-"))
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    srv_root = data / "server"
    srv_root.mkdir()
    for name in ("with-agent", "no-agent"):  # separate repositories: nothing shared
        remote_cli("init", "--root", str(srv_root), name)
    server = LocalServer(srv_root, env=ENV)
    server.start()
    size = size_mib * MiB
    results: dict[str, Any] = {
        "size_bytes": size,
        "render_rate_mb_s": round(size / seconds / 1e6, 1),
        "cap": cap,
    }
    try:
        if only in (None, "with-agent"):
            results["with_agent"] = _scenario(
                data, server, "with-agent", size, seconds, cap, True, agent_config
            )
        if only in (None, "without-agent"):
            results["without_agent"] = _scenario(
                data, server, "no-agent", size, seconds, cap, False, ()
            )
    finally:
        server.stop()
        if data_dir is None:
            shutil.rmtree(data, ignore_errors=True)
    w, wo = results.get("with_agent"), results.get("without_agent")
    if w is not None and wo is not None:
        results["speedup"] = round(wo["seconds_close_to_pushed"] / w["seconds_close_to_pushed"], 1)
    if w is not None:
        results["targets"] = {
            "done_within_3s": w["seconds_close_to_pushed"] <= 3.0,
            "presynced_at_least_95pct": w["percent_bytes_presynced"] >= 95.0,
        }
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks speculative", description=__doc__)
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--render-seconds", type=float, default=60.0)
    ap.add_argument("--cap", default="40MB/s", help="the agent's max_bandwidth")
    ap.add_argument("--data-dir", type=Path, default=None, help="keep the data here")
    ap.add_argument("--only", choices=("with-agent", "without-agent"), help="run one scenario")
    ap.add_argument(
        "--agent-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra dits config for the agent's repository (repeatable)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    extra = tuple(tuple(kv.split("=", 1)) for kv in args.agent_config)
    results = bench(
        args.size_mib,
        args.render_seconds,
        args.cap,
        args.data_dir,
        args.only,
        extra,  # type: ignore[arg-type]
    )
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(
        f"render: {args.size_mib} MiB over {args.render_seconds:.0f} s "
        f"({results['render_rate_mb_s']} MB/s), agent cap {args.cap}"
    )
    for key in ("with_agent", "without_agent"):
        if key not in results:
            continue
        r = results[key]
        print(
            f"{key.replace('_', ' '):14} close -> pushed {r['seconds_close_to_pushed']:6.2f} s "
            f"(add {r['seconds_add']:.2f}, commit {r['seconds_commit']:.2f}, push "
            f"{r['seconds_push']:.2f}); pre-synced {r['percent_bytes_presynced']:.1f} %, "
            f"sent {r['push_bytes_sent'] / MiB:.1f} MiB at push"
        )
    print(f"speedup {results.get('speedup')}x; targets: {results.get('targets')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
