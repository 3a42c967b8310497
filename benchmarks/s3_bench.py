"""Chunk objects versus pack objects on the permanent-storage backends of dits-remote.

    python -m benchmarks.s3_bench [--objects 400] [--chunk-kib 256] [--pack-mib 32]
                                  [--threads 8] [--samples 200] [--endpoint URL --bucket B]
                                  [--local-dir DIR] [--json]

Scenarios, all through the real backends (``remote.storage``: conditional PUT with SHA-256,
ranged GET, HEAD):
  put        N chunk objects of ``chunk-kib`` each, versus the same bytes packed into
             ``pack-mib`` pack objects; sequential and with ``--threads`` writers
  get        latency of one chunk: a ranged GET out of a pack versus a GET of its own object
  head       HEAD requests per second on chunk objects
  local      the same put comparison on the local-folder backend (two fsyncs per object)
  cost       AWS S3 Standard request cost per GiB for both layouts (list prices in COST_*)

Without ``--endpoint`` it starts ``python -m moto.server`` on 127.0.0.1 (a free port) with dummy
credentials, so moto figures measure client, HTTP and server overhead on loopback, not a WAN.
With ``--endpoint`` and ``--bucket`` it uses the caller's credentials and a throw-away prefix.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import blake3

from remote.storage import LocalStorage, PermanentStorage

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
COST_PUT_PER_1000 = 0.005  # USD, S3 Standard PUT/COPY/POST/LIST
COST_GET_PER_1000 = 0.0004  # USD, S3 Standard GET/HEAD
COST_GB_MONTH = 0.023  # USD, S3 Standard first 50 TB


@dataclass(frozen=True)
class Chunk:
    key: str
    data: bytes


@dataclass(frozen=True)
class Pack:
    key: str
    data: bytes
    members: list[tuple[str, int, int]]  # chunk key, offset, length: the server's LMDB index


def make_chunks(count: int, size: int) -> list[Chunk]:
    """Incompressible chunks from BLAKE3's XOF, keyed ``chunks/ab/<hex>`` by their hash."""
    stream = blake3.blake3(b"dits s3 bench").digest(length=count * size)
    chunks = []
    for i in range(count):
        data = stream[i * size : (i + 1) * size]
        hexid = blake3.blake3(data).hexdigest()
        chunks.append(Chunk(f"chunks/{hexid[:2]}/{hexid}", data))
    return chunks


def make_packs(chunks: Sequence[Chunk], pack_size: int) -> list[Pack]:
    """Concatenate chunks, in order, into packs of at most ``pack_size`` bytes."""
    packs: list[Pack] = []
    group: list[Chunk] = []
    for chunk in chunks:
        if group and sum(len(c.data) for c in group) + len(chunk.data) > pack_size:
            packs.append(_pack(group))
            group = []
        group.append(chunk)
    if group:
        packs.append(_pack(group))
    return packs


def _pack(group: Sequence[Chunk]) -> Pack:
    data = b"".join(c.data for c in group)
    members, offset = [], 0
    for chunk in group:
        members.append((chunk.key, offset, len(chunk.data)))
        offset += len(chunk.data)
    return Pack(f"packs/{blake3.blake3(data).hexdigest()}", data, members)


def timed_puts(store: PermanentStorage, items: Sequence[Chunk | Pack], threads: int) -> float:
    """Store every item (create-only), return wall seconds."""
    t0 = time.perf_counter()
    if threads <= 1:
        for item in items:
            store.put(item.key, item.data)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda item: store.put(item.key, item.data), items))
    return time.perf_counter() - t0


def put_figures(seconds: float, items: Sequence[Chunk | Pack]) -> dict[str, float]:
    total = sum(len(i.data) for i in items)
    return {
        "objects": len(items),
        "seconds": round(seconds, 3),
        "objects_per_s": round(len(items) / seconds, 1),
        "mb_per_s": round(total / seconds / 1e6, 1),
    }


def latencies(samples: int, call: Callable[[int], object]) -> dict[str, float]:
    """Median and p95 of ``call(i)`` in milliseconds over ``samples`` calls."""
    times = []
    for i in range(samples):
        t0 = time.perf_counter()
        call(i)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {
        "median_ms": round(statistics.median(times), 2),
        "p95_ms": round(times[int(len(times) * 0.95) - 1], 2),
    }


def bench_put(
    store: PermanentStorage, chunks: list[Chunk], packs: list[Pack], threads: int
) -> dict[str, dict[str, float]]:
    """Sequential and threaded PUTs of both layouts (fresh keys each round)."""
    results = {}
    for label, n in (("sequential", 1), (f"threads_{threads}", threads)):
        prefix = f"{label}/"
        c_items = [Chunk(prefix + c.key, c.data) for c in chunks]
        p_items = [Chunk(prefix + p.key, p.data) for p in packs]
        results[f"chunks_{label}"] = put_figures(timed_puts(store, c_items, n), c_items)
        results[f"packs_{label}"] = put_figures(timed_puts(store, p_items, n), p_items)
    return results


def bench_reads(
    store: PermanentStorage, chunks: list[Chunk], packs: list[Pack], samples: int, threads: int
) -> dict[str, dict[str, float]]:
    """Ranged GET from a pack vs GET of a chunk object vs HEAD; keys from the sequential round."""
    members = [(pack.key, off, length) for pack in packs for _, off, length in pack.members]

    def ranged(i: int) -> None:
        key, off, length = members[(i * 7919) % len(members)]
        assert len(store.get("sequential/" + key, off, length)) == length

    def whole(i: int) -> None:
        chunk = chunks[(i * 7919) % len(chunks)]
        assert len(store.get("sequential/" + chunk.key)) == len(chunk.data)

    def head(i: int) -> None:
        store.size("sequential/" + chunks[i % len(chunks)].key)

    ranged(0)  # warm the connection pool
    whole(0)
    heads = latencies(samples, head)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(head, range(samples)))
    threaded_rate = samples / (time.perf_counter() - t0)
    return {
        "get_range_from_pack": latencies(samples, ranged),
        "get_chunk_object": latencies(samples, whole),
        "head_sequential": {**heads, "per_s": round(1000 / heads["median_ms"], 1)},
        f"head_threads_{threads}": {"per_s": round(threaded_rate, 1)},
    }


def request_costs(chunk_size: int, pack_size: int) -> dict[str, float]:
    """USD per GiB stored, for PUTs under each layout and for reading everything back."""
    chunk_puts, pack_puts = GIB / chunk_size, GIB / pack_size
    return {
        "chunk_puts_per_gib": chunk_puts,
        "pack_puts_per_gib": pack_puts,
        "chunk_put_usd_per_gib": round(chunk_puts * COST_PUT_PER_1000 / 1000, 6),
        "pack_put_usd_per_gib": round(pack_puts * COST_PUT_PER_1000 / 1000, 6),
        "chunk_get_usd_per_gib": round(chunk_puts * COST_GET_PER_1000 / 1000, 6),
        "pack_get_usd_per_gib": round(pack_puts * COST_GET_PER_1000 / 1000, 6),
        "storage_usd_per_gib_month": round(COST_GB_MONTH * GIB / 1e9, 6),
    }


@contextmanager
def moto_endpoint() -> Iterator[str]:
    """Run moto's S3 server in a child process on 127.0.0.1 with dummy credentials."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        del os.environ[name]
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
        NO_PROXY="127.0.0.1",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def _wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("moto.server exited; is moto[server] installed?")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("moto.server did not start listening within 30 s")


def run_s3(args: argparse.Namespace, chunks: list[Chunk], packs: list[Pack]) -> dict[str, object]:
    from remote.storage.s3 import S3Storage

    with _endpoint(args) as (endpoint, bucket):
        prefix = f"dits-bench-{secrets.token_hex(4)}"
        store = S3Storage(bucket, prefix, endpoint_url=endpoint, max_pool_connections=32)
        store.probe()
        try:
            results: dict[str, object] = {
                "put": bench_put(store, chunks, packs, args.threads),
                "read": bench_reads(store, chunks, packs, args.samples, args.threads),
            }
        finally:
            for key in list(store.list()):
                store.delete(key)
            store.close()
    return results


@contextmanager
def _endpoint(args: argparse.Namespace) -> Iterator[tuple[str | None, str]]:
    if args.endpoint or args.bucket:
        if not args.bucket:
            raise SystemExit("--endpoint needs --bucket (an existing bucket)")
        yield args.endpoint, args.bucket
        return
    import boto3

    with moto_endpoint() as url:
        bucket = f"dits-bench-{secrets.token_hex(4)}"
        admin = boto3.session.Session().client("s3", endpoint_url=url)
        admin.create_bucket(Bucket=bucket)
        admin.close()
        yield url, bucket


def run_local(
    args: argparse.Namespace, chunks: list[Chunk], packs: list[Pack]
) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="dits-bench-local-", dir=args.local_dir))
    try:
        store = LocalStorage(root)
        return {"put": bench_put(store, chunks, packs, args.threads)}
    finally:
        shutil.rmtree(root)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print a summary (or JSON with ``--json``)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.s3_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--objects", type=int, default=400, help="chunk objects (default 400)")
    parser.add_argument("--chunk-kib", type=int, default=256)
    parser.add_argument("--pack-mib", type=int, default=32)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--samples", type=int, default=200, help="requests per latency figure")
    parser.add_argument("--endpoint", help="S3-compatible endpoint URL (default: moto on loopback)")
    parser.add_argument("--bucket", help="existing bucket for --endpoint or AWS")
    parser.add_argument("--local-dir", help="parent folder for the local-backend run")
    parser.add_argument("--no-local", action="store_true", help="skip the local-backend run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    chunks = make_chunks(args.objects, args.chunk_kib * KIB)
    packs = make_packs(chunks, args.pack_mib * MIB)
    results: dict[str, object] = {
        "setup": {
            "chunks": len(chunks),
            "chunk_bytes": args.chunk_kib * KIB,
            "packs": len(packs),
            "pack_bytes_max": args.pack_mib * MIB,
            "endpoint": args.endpoint or ("aws" if args.bucket else "moto on 127.0.0.1"),
        },
        "s3": run_s3(args, chunks, packs),
        "cost": request_costs(args.chunk_kib * KIB, args.pack_mib * MIB),
    }
    if not args.no_local:
        results["local"] = run_local(args, chunks, packs)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        _print_summary(results)
    return 0


def _print_summary(results: dict[str, object], indent: str = "") -> None:
    for name, value in results.items():
        if isinstance(value, dict):
            if all(not isinstance(v, dict) for v in value.values()):
                figures = "  ".join(f"{k}={v}" for k, v in value.items())
                print(f"{indent}{name:28} {figures}")
            else:
                print(f"{indent}{name}")
                _print_summary(value, indent + "  ")
        else:
            print(f"{indent}{name:28} {value}")


if __name__ == "__main__":
    sys.exit(main())
