"""Predictive staging: does reading and compressing overlap the wire? (issue 5, section 6)

    python -m benchmarks staging [--link-mb-s 20] [--compressible-mib 160] [--video-mib 128]
                                 [--repeats 1] [--json]

A real `dits push` (in this process) to a real dits-remote (a subprocess on 127.0.0.1, QUIC),
with the upload capped by `push --limit-rate` (a token bucket in front of the QUIC stream, the
"rate limit in the transport" the issue allows). The repository stores chunks raw
(`core.compression = false`), so every compressed byte on the wire costs CPU during the push.

Data, generated deterministically:
  compressible  media-adjacent: DPX-like 10-bit frames (smooth gradients with sensor noise),
                a project XML and render logs
  video         incompressible frames (random bytes, as ProRes/H.264 payloads look to zstd),
                in a default repository (chunks probed at add) and in a raw-at-rest one

Scenarios, each pushing the same commit to a fresh server-side repository:
  pipelined     the staging engine: chunks N+1..N+k staged while chunk N is on the wire
  sequential    the stage-then-send path under the same memory bound and rate cap
  cpu           staging alone (no wire; decisions made for the same link rate): the CPU rate
  video         incompressible video, pipelined, with content analysis on and off (default
                repository), and analysed chunk by chunk (raw store): the decision's CPU share

Targets: pipelined throughput >= 0.9 x min(link rate, CPU rate), where both are counted in
plain bytes (a link of L bytes/s carries L / wire-ratio plain bytes/s); pipelined >= 1.3x
sequential; compressible data sends fewer bytes than raw; video not slowed by the analysis
and its decision <= ~2 % of CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from dits.core.ids import ObjectId
from dits.net.local_server import LocalServer, remote_cli
from dits.ops.add import add_paths
from dits.ops.commit import commit
from dits.ops.sync import push
from dits.remotes import KnownHosts, add_remote
from dits.repository import Repository
from dits.staging.config import StagingConfig
from dits.staging.engine import (
    StagedChunk,
    StagingEngine,
    StoredChunkStager,
    cached_machine_model,
)

MiB = 1 << 20


def dpx_like_frame(seed: int, width: int = 2048, height: int = 1080) -> bytes:
    """A 10-bit RGB frame packed in 32-bit words (as DPX stores it): gradients plus noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = (x * 1023 // width + y * 300 // height + seed * 7) % 1024
    noise = rng.integers(-6, 7, size=(height, width))
    chan = [np.clip(base + noise + k * 40, 0, 1023).astype(np.uint32) for k in range(3)]
    words = (chan[0] << 22) | (chan[1] << 12) | (chan[2] << 2)
    header = b"SDPX" + bytes(2044)
    return header + bytes(words.astype(">u4").tobytes())


def project_xml(seed: int, size: int) -> bytes:
    rng = random.Random(seed)
    out = bytearray(b'<?xml version="1.0"?>\n<Project>\n')
    while len(out) < size:
        out += (
            f'  <Clip id="{rng.randrange(10**6)}" name="A{rng.randrange(999):03d}_C'
            f'{rng.randrange(99):02d}" in="{rng.randrange(10**5)}" out="{rng.randrange(10**5)}"'
            f' track="V{rng.randrange(1, 9)}" speed="1.0"/>\n'
        ).encode()
    return bytes(out[:size])


def render_log(seed: int, size: int) -> bytes:
    rng = random.Random(seed)
    out = bytearray()
    t = 0.0
    while len(out) < size:
        t += rng.random()
        out += (
            f"[{t:12.3f}] render: frame {rng.randrange(10**5)} done in "
            f"{rng.random() * 90:.2f} ms (GPU {rng.randrange(100)}%, cache hit)\n"
        ).encode()
    return bytes(out[:size])


def make_project(root: Path, compressible_mib: int, video_mib: int) -> dict[str, int]:
    """Write the two folders; return bytes per kind."""
    (root / "frames").mkdir(parents=True)
    (root / "video").mkdir(parents=True)
    frames = 0
    i = 0
    target = compressible_mib * MiB * 3 // 4
    while frames < target:
        data = dpx_like_frame(i)
        (root / "frames" / f"frame_{i:05d}.dpx").write_bytes(data)
        frames += len(data)
        i += 1
    rest = compressible_mib * MiB - frames
    (root / "frames" / "project.xml").write_bytes(project_xml(1, max(rest // 2, 1)))
    (root / "frames" / "render.log").write_bytes(render_log(2, max(rest // 2, 1)))
    rng = random.Random(3)
    for k in range(max(1, video_mib // 64)):
        (root / "video" / f"clip_{k}.mov").write_bytes(rng.randbytes(min(64, video_mib) * MiB))
    return {"compressible": compressible_mib * MiB, "video": video_mib * MiB}


def _push(
    repo: Repository, url: str, token: str, hosts: KnownHosts, remote: str, **kw: Any
) -> dict[str, Any]:
    add_remote(repo.config, remote, url, token=token)
    result = push(repo, remote, known_hosts=hosts, **kw)
    doc: dict[str, Any] = result.to_json()
    st: dict[str, Any] = result.staging or {}
    plain = st.get("plain_bytes", 0)
    doc["plain_mb_s"] = plain / result.upload_seconds / 1e6 if result.upload_seconds else None
    doc["wire_ratio"] = st.get("wire_bytes", 0) / plain if plain else None
    return doc


def stage_only(repo: Repository, tip_chunks: list[tuple[ObjectId, int]], link: float) -> float:
    """Plain MB/s of staging alone, deciding as for a link of ``link`` bytes/s."""
    cfg = StagingConfig.from_config(repo.config)
    engine = StagingEngine(cfg, fixed_bandwidth=link)

    async def sink(batch: list[StagedChunk], pace: Any) -> None:
        return None

    stats = asyncio.run(engine.run(tip_chunks, StoredChunkStager(repo.chunks), sink))
    return stats.plain_bytes / stats.seconds / 1e6


def bench(work: Path, link_mb_s: float, compressible_mib: int, video_mib: int) -> dict[str, Any]:
    link = link_mb_s * 1e6
    server_root = work / "server"
    hosts = KnownHosts(work / "known_hosts")
    sizes = make_project(work / "project", compressible_mib, video_mib)
    tokens = {}
    for name in (
        "pipelined",
        "sequential",
        "video_on",
        "video_off",
        "video_on_2",
        "video_off_2",
        "video_analysed",
    ):
        remote_cli("init", "--root", str(server_root), name)
        tokens[name] = remote_cli(
            "token", "create", "--root", str(server_root), "--repo", name, "--write"
        ).strip()
    out: dict[str, Any] = {"link_mb_s": link_mb_s, "sizes": sizes}
    with LocalServer(server_root) as server:
        cached_machine_model()  # measured once, before anything is timed
        for kind in ("frames", "video"):
            with Repository.init(work / "project" / kind) as repo:
                # Frames: stored raw, so the wire compression costs CPU during the push.
                # Video: a default repository (its raw chunks already failed add's probe).
                repo.config.set("core.compression", kind == "video")  # read at open
            with Repository.open(work / "project" / kind) as repo:
                t0 = time.perf_counter()
                add_paths(repo, [""])
                commit(repo, kind, now=1700000000, tz_offset_min=0, name="b", email="b@x")
                out[f"add_{kind}_seconds"] = time.perf_counter() - t0
                if kind == "frames":
                    out["cpu_mb_s"] = stage_only(repo, _chunks_of(repo), link)
                    for name, seq in (("pipelined", False), ("sequential", True)):
                        out[name] = _push(
                            repo,
                            server.url(name),
                            tokens[name],
                            hosts,
                            name,
                            limit_rate=int(link),
                            sequential_staging=seq,
                        )
                else:
                    for name, analysis in (("video_on", True), ("video_off", False)):
                        repo.config.set("staging.enable_content_analysis", analysis)
                        out[name] = _push(repo, server.url(name), tokens[name], hosts, name)
                    # Again in the other order, into fresh server repositories: the first push
                    # of a run warms caches the second one finds.
                    for name, analysis in (("video_off", False), ("video_on", True)):
                        again = f"{name}_2"
                        repo.config.set("staging.enable_content_analysis", analysis)
                        out[again] = _push(repo, server.url(again), tokens[again], hosts, again)
                    repo.config.set("staging.enable_content_analysis", True)
        # What the analysis itself costs on video, where it runs: a store that keeps chunks
        # raw, so nothing was probed at add time.
        with Repository.init(work / "project" / "video_raw") as repo:
            repo.config.set("core.compression", False)
        (work / "project" / "video").rename(work / "project" / "video_raw" / "video")
        with Repository.open(work / "project" / "video_raw") as repo:
            add_paths(repo, [""])
            commit(repo, "video", now=1700000000, tz_offset_min=0, name="b", email="b@x")
            name = "video_analysed"
            out[name] = _push(repo, server.url(name), tokens[name], hosts, name)
    p, s = out["pipelined"], out["sequential"]
    link_plain = link / p["wire_ratio"] / 1e6 if p["wire_ratio"] else link_mb_s
    # The CPU rate of the run itself: what the staging threads did per second of their own
    # time, with this run's levels and with the server competing for the same two cores.
    st = p["staging"]
    out["cpu_mb_s_in_run"] = (
        st["plain_bytes"] / (st["staging_seconds"] / st["staging_threads"]) / 1e6
        if st["staging_seconds"]
        else None
    )
    bound = min(link_plain, out["cpu_mb_s_in_run"] or out["cpu_mb_s"])
    video_on = [out[k]["plain_mb_s"] for k in ("video_on", "video_on_2")]
    video_off = [out[k]["plain_mb_s"] for k in ("video_off", "video_off_2")]
    out["summary"] = {
        "pipelined_plain_mb_s": p["plain_mb_s"],
        "sequential_plain_mb_s": s["plain_mb_s"],
        "link_in_plain_mb_s": link_plain,
        "cpu_mb_s": out["cpu_mb_s"],
        "cpu_mb_s_in_run": out["cpu_mb_s_in_run"],
        "pipelined_vs_bound": p["plain_mb_s"] / bound,
        "pipelined_vs_sequential": p["plain_mb_s"] / s["plain_mb_s"],
        "wire_ratio_compressible": p["wire_ratio"],
        "video_on_mb_s": sum(video_on) / 2,
        "video_off_mb_s": sum(video_off) / 2,
        "video_analysed_mb_s": out["video_analysed"]["plain_mb_s"],
        "video_decision_cpu_share": out["video_analysed"]["staging"]["decision_cpu_share"],
    }
    return out


def _chunks_of(repo: Repository) -> list[tuple[ObjectId, int]]:
    from dits.ops.sync import _tip_chunks

    tip = repo.refs.get_ref("refs/heads/" + repo.current_branch())
    assert tip is not None
    return list(_tip_chunks(repo, tip).items())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks staging")
    ap.add_argument("--link-mb-s", type=float, default=20.0)
    ap.add_argument("--compressible-mib", type=int, default=160)
    ap.add_argument("--video-mib", type=int, default=128)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="dits-staging-bench-"))
    try:
        out = bench(work, args.link_mb_s, args.compressible_mib, args.video_mib)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return 0
    s = out["summary"]
    print(f"link cap {args.link_mb_s:.0f} MB/s (wire); repository stores chunks raw")
    for name in ("pipelined", "sequential"):
        d = out[name]
        st = d["staging"] or {}
        print(
            f"{name:>10}: {d['plain_mb_s']:.1f} MB/s plain, wire/plain {d['wire_ratio']:.3f}, "
            f"levels {st.get('levels')}, stage-ahead hits {st.get('stage_ahead_hits')}/"
            f"{st.get('stage_ahead_hits', 0) + st.get('stage_ahead_misses', 0)}, CPU-bound "
            f"{st.get('cpu_bound_seconds', 0):.2f} s, network-bound "
            f"{st.get('network_bound_seconds', 0):.2f} s, buffer peak "
            f"{st.get('buffer_peak_bytes', 0) / MiB:.0f} MiB"
        )
    print(
        f"CPU rate: staging alone {s['cpu_mb_s']:.1f} MB/s, in the pipelined run "
        f"{s['cpu_mb_s_in_run']:.1f} MB/s; link in plain bytes "
        f"{s['link_in_plain_mb_s']:.1f} MB/s; pipelined = {s['pipelined_vs_bound']:.2f} x "
        f"min(link, CPU) (target >= 0.9), {s['pipelined_vs_sequential']:.2f} x sequential "
        f"(target >= 1.3)"
    )
    share = s["video_decision_cpu_share"]
    print(
        f"video (incompressible, default repository, mean of 2 pushes each): "
        f"{s['video_on_mb_s']:.1f} MB/s with content analysis on, {s['video_off_mb_s']:.1f} "
        f"MB/s off; from a raw store, analysed chunk by chunk: {s['video_analysed_mb_s']:.1f} "
        f"MB/s, decision "
        f"{100 * share if share is not None else float('nan'):.2f}% of CPU"
    )
    return 0
