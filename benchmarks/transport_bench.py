"""Bare transport throughput on loopback: QUIC (aioquic, qh3) and TLS/TCP through dits.transport.

    python -m benchmarks.transport_bench [--size-mib 512] [--streams 1,4]
        [--transports aioquic,qh3,tcp] [--chunk-kib 256] [--repeat 1] [--wait-idle] [--json]

A client (this process) sends N MiB to a server (a separate process started with
multiprocessing "spawn") over 127.0.0.1, split evenly over S parallel streams of one connection
(over TCP, S pooled TLS connections). Each stream carries an 8-byte length, then the payload in
``chunk``-sized writes, each followed by ``await drain()``; the server handler reads it all and
answers with the byte count. The clock runs from the first ``open_stream()`` to the last answer;
connection set-up is excluded. Reported: MiB/s, client and server CPU% over that window (100% =
one core), CPU used by other processes meanwhile (others%: anything above ~10% means the figures
are skewed by a busy machine), the server's peak RSS, and the client connection's loss count.

Later push benchmarks call :func:`bare_transfer` to compare against the bare transport.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

import psutil

from dits.transport import ConnInfo, StreamWriterLike, connect, serve
from dits.transport.tls import ensure_self_signed

TRANSPORTS = ("aioquic", "qh3", "tcp")
MiB = 1024 * 1024


async def _sink(reader: asyncio.StreamReader, writer: StreamWriterLike, info: ConnInfo) -> None:
    """Read an 8-byte length and that many bytes; answer with the count received."""
    remaining = int.from_bytes(await reader.readexactly(8), "big")
    received = 0
    while remaining:
        data = await reader.read(min(remaining, 4 * MiB))
        if not data:
            break
        received += len(data)
        remaining -= len(data)
    writer.write(received.to_bytes(8, "big"))
    await writer.drain()


def _listener_options(transport: str) -> dict[str, Any]:
    if transport == "tcp":
        return {"quic": False, "tcp": True}
    return {"quic": True, "tcp": False, "quic_lib": transport}


def _serve_main(transport: str, cert: str, key: str, pipe: Pipe) -> None:
    """Server process: report the port, run until told to stop, then report peak RSS."""

    async def run() -> None:
        server = await serve(
            "127.0.0.1",
            0,
            handler=_sink,
            cert_file=cert,
            key_file=key,
            **_listener_options(transport),
        )
        pipe.send(server.port)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_reader(pipe.fileno(), stop.set)
        await stop.wait()
        loop.remove_reader(pipe.fileno())
        pipe.recv()
        await server.wait_closed()

    asyncio.run(run())
    pipe.send(_peak_rss())


def _peak_rss() -> int:
    """Peak RSS of this process in bytes.

    VmHWM belongs to the address space, so it starts afresh at exec; ru_maxrss (the fallback)
    survives exec on Linux and would report the parent's peak for a spawned child.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


async def _client(transport: str, port: int, size: int, streams: int, chunk: int) -> dict[str, Any]:
    kind = "tcp" if transport == "tcp" else "quic"
    quic_lib = None if transport == "tcp" else transport
    conn = await connect("127.0.0.1", port, transport=kind, quic_lib=quic_lib)
    payload = memoryview(os.urandom(chunk))
    per_stream = [size // streams + (1 if i < size % streams else 0) for i in range(streams)]

    async def one(nbytes: int) -> int:
        reader, writer = await conn.open_stream()
        writer.write(nbytes.to_bytes(8, "big"))
        left = nbytes
        while left:
            piece = payload[: min(left, chunk)]
            writer.write(piece)
            left -= len(piece)
            await writer.drain()
        writer.write_eof()
        answer = int.from_bytes(await reader.readexactly(8), "big")
        writer.close()
        return answer

    start = time.perf_counter()
    received = await asyncio.gather(*(one(n) for n in per_stream))
    elapsed = time.perf_counter() - start
    stats = conn.stats()
    await conn.close()
    if sum(received) != size:
        raise RuntimeError(f"server received {sum(received)} of {size} bytes")
    return {"seconds": elapsed, "stats": stats}


def bare_transfer(
    transport: str, size: int, streams: int, chunk: int = 256 * 1024
) -> dict[str, Any]:
    """Send ``size`` bytes client -> server over ``streams`` parallel streams on loopback.

    The server runs in a separate (spawned) process; the client runs in this one, so this
    function must not be called from a running event loop.

    Args:
        transport: ``"aioquic"``, ``"qh3"`` (QUIC through dits.transport with that library) or
            ``"tcp"`` (TLS/TCP through dits.transport).
        size: total payload bytes.
        streams: parallel streams sharing the payload.
        chunk: bytes per write() call.

    Returns:
        A dict with transport, size, streams, chunk, seconds, mib_s, client_cpu_pct,
        server_cpu_pct, server_peak_rss_mib and the client connection's stats().
    """
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {TRANSPORTS}")
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="dits-transport-bench-") as tmp:
        cert, key = str(Path(tmp, "cert.pem")), str(Path(tmp, "key.pem"))
        ensure_self_signed(cert, key)
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_serve_main, args=(transport, cert, key, child), daemon=True)
        proc.start()
        try:
            if not parent.poll(30):
                raise RuntimeError("benchmark server did not start")
            port = parent.recv()
            server = psutil.Process(proc.pid)
            me = psutil.Process()
            s0, c0, m0 = server.cpu_times(), me.cpu_times(), psutil.cpu_times()
            result = asyncio.run(_client(transport, port, size, streams, chunk))
            s1, c1, m1 = server.cpu_times(), me.cpu_times(), psutil.cpu_times()
            parent.send("stop")
            peak_rss = parent.recv() if parent.poll(30) else None
        finally:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    seconds = result["seconds"]
    return {
        "transport": transport,
        "size_mib": size / MiB,
        "streams": streams,
        "chunk_kib": chunk // 1024,
        "seconds": round(seconds, 3),
        "mib_s": round(size / MiB / seconds, 1),
        "client_cpu_pct": round(_cpu(c0, c1) / seconds * 100),
        "server_cpu_pct": round(_cpu(s0, s1) / seconds * 100),
        # Busy CPU outside client and server (other work on the machine skews the figures).
        "others_cpu_pct": round((_busy(m0, m1) - _cpu(c0, c1) - _cpu(s0, s1)) / seconds * 100),
        "server_peak_rss_mib": round(peak_rss / MiB, 1) if peak_rss else None,
        "stats": result["stats"],
    }


def _cpu(before: Any, after: Any) -> float:
    return float((after.user - before.user) + (after.system - before.system))


def _busy(before: Any, after: Any) -> float:
    fields = ("user", "nice", "system", "irq", "softirq", "steal")  # guest is inside user
    return float(sum(getattr(after, f, 0.0) - getattr(before, f, 0.0) for f in fields))


def _wait_idle(limit_pct: float = 25.0, max_wait: float = 600.0) -> None:
    """Shared machines: wait until the rest of the system is quiet, so figures compare."""
    deadline = time.monotonic() + max_wait
    while time.monotonic() < deadline:
        if psutil.cpu_percent(interval=2.0) * (psutil.cpu_count() or 1) < limit_pct:
            return


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark matrix and print a table (or JSON lines with --json)."""
    parser = argparse.ArgumentParser(prog="transport_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--streams", default="1,4", help="comma-separated stream counts")
    parser.add_argument("--transports", default=",".join(TRANSPORTS))
    parser.add_argument("--chunk-kib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell; the best is kept")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument(
        "--wait-idle",
        action="store_true",
        help="before each run, wait (up to 10 min) until other processes use < 25%% of a core",
    )
    args = parser.parse_args(argv)

    if not args.json:
        print(
            f"{'transport':<9} {'streams':>7} {'MiB/s':>8} {'client%':>8} {'server%':>8} "
            f"{'srv RSS MiB':>11} {'others%':>7}  lost"
        )
    for transport in args.transports.split(","):
        for streams in (int(s) for s in args.streams.split(",")):
            runs = []
            for _ in range(args.repeat):
                if args.wait_idle:
                    _wait_idle()
                runs.append(
                    bare_transfer(transport, args.size_mib * MiB, streams, args.chunk_kib * 1024)
                )
            best = max(runs, key=lambda r: r["mib_s"])
            if args.json:
                print(json.dumps(best), flush=True)
            else:
                print(
                    f"{transport:<9} {streams:>7} {best['mib_s']:>8.1f} "
                    f"{best['client_cpu_pct']:>8} {best['server_cpu_pct']:>8} "
                    f"{best['server_peak_rss_mib']!s:>11} {best['others_cpu_pct']:>7}  "
                    f"{best['stats'].get('lost_packets')}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
