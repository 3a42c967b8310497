"""dits.transport over real loopback sockets: QUIC and TLS/TCP behind one API."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from dits.errors import DitsError, UsageError
from dits.transport import (
    CertificateMismatchError,
    ConnectError,
    Connection,
    ConnInfo,
    Handler,
    Server,
    StreamWriterLike,
    connect,
    serve,
)
from dits.transport import quic as quic_mod
from dits.transport.tls import ensure_self_signed, fingerprint_of_der, load_fingerprint

# "quic" uses the default library (qh3); aioquic runs the echo test only, to keep this fast.
TRANSPORTS = ["quic", "tcp"]


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 15))


@pytest.fixture
def certs(tmp_path: Path) -> tuple[str, str, str]:
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    fingerprint = ensure_self_signed(cert, key, ["dits.test"])
    return cert, key, fingerprint


# A stand-in for the dits protocol: a 4-byte length, then the body; the length plays FINAL.
async def read_message(reader: asyncio.StreamReader) -> bytes:
    size = int.from_bytes(await reader.readexactly(4), "big")
    return await reader.readexactly(size)


def write_message(writer: StreamWriterLike, body: bytes) -> None:
    writer.write(len(body).to_bytes(4, "big"))
    writer.write(body)


async def echo(reader: asyncio.StreamReader, writer: StreamWriterLike, info: ConnInfo) -> None:
    body = await read_message(reader)
    info.state["requests"] = info.state.get("requests", 0) + 1
    write_message(writer, b"%d:%d:" % (info.conn_id, info.state["requests"]) + body)
    await writer.drain()


async def request(conn: Connection, body: bytes) -> bytes:
    reader, writer = await conn.open_stream()
    write_message(writer, body)
    await writer.drain()
    writer.write_eof()
    answer = await read_message(reader)
    writer.close()
    return answer


async def start(certs: tuple[str, str, str], handler: Handler = echo, **options: Any) -> Server:
    cert, key, _ = certs
    return await serve("127.0.0.1", 0, handler=handler, cert_file=cert, key_file=key, **options)


def with_server(
    certs: tuple[str, str, str],
    body: Callable[[Server], Awaitable[Any]],
    handler: Handler = echo,
    **options: Any,
) -> Any:
    async def main() -> Any:
        server = await start(certs, handler, **options)
        try:
            return await body(server)
        finally:
            server.close()
            await server.wait_closed()

    return run(main())


@pytest.mark.parametrize(
    ("transport", "lib"), [("quic", "qh3"), ("quic", "aioquic"), ("tcp", None)]
)
def test_echo_round_trip_uses_one_handler_for_both_transports(
    certs: tuple[str, str, str], transport: str, lib: str | None
) -> None:
    async def body(server: Server) -> None:
        conn = await connect("127.0.0.1", server.port, transport=transport, quic_lib=lib)
        assert conn.transport_name == transport
        assert conn.peer_fingerprint == certs[2]
        first = await request(conn, b"hello")
        second = await request(conn, b"again")
        await conn.close()
        conn_id = first.split(b":")[0]
        # Same connection for both requests: state is shared (over TCP via the pool).
        assert first == conn_id + b":1:hello"
        assert second == conn_id + b":2:again"

    with_server(certs, body, quic_lib=lib)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_parallel_streams_share_one_connection(certs: tuple[str, str, str], transport: str) -> None:
    seen: list[int] = []

    async def slow_echo(r: asyncio.StreamReader, w: StreamWriterLike, info: ConnInfo) -> None:
        seen.append(info.conn_id)
        body = await read_message(r)
        await asyncio.sleep(0.2)  # overlap the requests
        write_message(w, body[::-1])
        await w.drain()

    async def body(server: Server) -> None:
        conn = await connect("127.0.0.1", server.port, transport=transport)
        bodies = [os.urandom(1000 + i) for i in range(6)]
        started = time.monotonic()
        answers = await asyncio.gather(*(request(conn, b) for b in bodies))
        assert answers == [b[::-1] for b in bodies]
        assert time.monotonic() - started < 6 * 0.2  # they ran in parallel
        await conn.close()

    with_server(certs, body, slow_echo)
    if transport == "quic":
        assert len(set(seen)) == 1  # all streams on one QUIC connection
    else:
        assert len(set(seen)) == 6  # one pooled TLS connection per concurrent request


async def count_bytes(reader: asyncio.StreamReader, writer: StreamWriterLike, _: ConnInfo) -> None:
    remaining = int.from_bytes(await reader.readexactly(8), "big")
    total = 0
    while remaining:
        data = await reader.read(min(remaining, 1 << 20))
        if not data:
            break
        total += len(data)
        remaining -= len(data)
    writer.write(total.to_bytes(8, "big"))
    await writer.drain()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_large_transfer_buffers_at_most_high_water_plus_one_write(
    certs: tuple[str, str, str], transport: str
) -> None:
    size, chunk = 32 * 1024 * 1024, 256 * 1024
    high_water = quic_mod.HIGH_WATER if transport == "quic" else 2 * 1024 * 1024

    async def body(server: Server) -> None:
        conn = await connect("127.0.0.1", server.port, transport=transport)
        reader, writer = await conn.open_stream()
        writer.write(size.to_bytes(8, "big"))
        block = os.urandom(chunk)
        peak = 0
        for _ in range(size // chunk):
            writer.write(block)
            peak = max(peak, writer.buffered_bytes())
            await writer.drain()
            peak = max(peak, writer.buffered_bytes())
        assert peak <= high_water + chunk + 8
        assert int.from_bytes(await reader.readexactly(8), "big") == size
        writer.close()
        await conn.close()

    with_server(certs, body, count_bytes)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_refused_pin_raises_certificate_mismatch(
    certs: tuple[str, str, str], transport: str
) -> None:
    offered: list[bytes] = []

    def refuse(der: bytes) -> None:
        offered.append(der)
        raise ValueError("not the pinned certificate")

    async def body(server: Server) -> None:
        with pytest.raises(CertificateMismatchError) as caught:
            await connect("127.0.0.1", server.port, transport=transport, verify=refuse)
        assert "not the pinned certificate" in str(caught.value)

    with_server(certs, body)
    assert [fingerprint_of_der(d) for d in offered] == [certs[2]]
    assert issubclass(CertificateMismatchError, DitsError)
    assert CertificateMismatchError.exit_code != 0
    assert not CertificateMismatchError.transient


def test_auto_mode_does_not_fall_back_after_a_refused_pin(certs: tuple[str, str, str]) -> None:
    def refuse(der: bytes) -> None:
        raise CertificateMismatchError("pinned elsewhere")

    async def body(server: Server) -> None:
        with pytest.raises(CertificateMismatchError, match="pinned elsewhere"):
            await connect("127.0.0.1", server.port, verify=refuse)

    with_server(certs, body)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_matching_pin_connects(certs: tuple[str, str, str], transport: str) -> None:
    def pin(der: bytes) -> None:
        if fingerprint_of_der(der) != certs[2]:
            raise ValueError("mismatch")

    async def body(server: Server) -> None:
        conn = await connect("127.0.0.1", server.port, transport=transport, verify=pin)
        assert (await request(conn, b"x")).endswith(b":x")
        await conn.close()

    with_server(certs, body)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_alpn_mismatch_is_refused(certs: tuple[str, str, str], transport: str) -> None:
    async def body(server: Server) -> None:
        with pytest.raises(ConnectError):
            await connect(
                "127.0.0.1", server.port, transport=transport, alpn="other/9", connect_timeout=3
            )

    with_server(certs, body)


def test_auto_falls_back_to_tcp_when_nothing_answers_on_udp(certs: tuple[str, str, str]) -> None:
    async def body(server: Server) -> None:
        started = time.monotonic()
        conn = await connect("127.0.0.1", server.port, transport="auto", fallback_timeout=0.5)
        assert conn.transport_name == "tcp"
        assert time.monotonic() - started < 0.5 + 1.0
        assert (await request(conn, b"fallback")).endswith(b":fallback")
        await conn.close()

    with_server(certs, body, quic=False)


def test_auto_prefers_quic(certs: tuple[str, str, str]) -> None:
    async def body(server: Server) -> None:
        conn = await connect("127.0.0.1", server.port)
        assert conn.transport_name == "quic"
        await request(conn, b"x")
        assert conn.rtt_seconds() is not None
        stats = conn.stats()
        assert {"cwnd", "bytes_in_flight", "lost_packets", "smoothed_rtt"} <= stats.keys()
        await conn.close()

    with_server(certs, body)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_graceful_close_lets_the_in_flight_handler_finish(
    certs: tuple[str, str, str], transport: str
) -> None:
    entered = asyncio.Event

    async def main() -> None:
        started = entered()

        async def slow(r: asyncio.StreamReader, w: StreamWriterLike, info: ConnInfo) -> None:
            body = await read_message(r)
            started.set()
            await asyncio.sleep(0.3)
            write_message(w, body)
            await w.drain()

        server = await start(certs, slow)
        conn = await connect("127.0.0.1", server.port, transport=transport)
        pending = asyncio.ensure_future(request(conn, b"in flight"))
        await started.wait()
        server.close()
        closing = asyncio.ensure_future(server.wait_closed())
        assert await pending == b"in flight"
        await closing
        assert server.active_handlers == 0
        with pytest.raises((ConnectError, ConnectionError, asyncio.IncompleteReadError)):
            again = await connect("127.0.0.1", server.port, transport=transport, connect_timeout=1)
            await request(again, b"too late")
        await conn.close()

    run(main())


def test_graceful_close_cancels_handlers_after_grace(certs: tuple[str, str, str]) -> None:
    async def main() -> None:
        cancelled = asyncio.Event()

        async def stuck(r: asyncio.StreamReader, w: StreamWriterLike, info: ConnInfo) -> None:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        server = await start(certs, stuck, grace=0.2)
        conn = await connect("127.0.0.1", server.port, transport="quic")
        reader, writer = await conn.open_stream()
        write_message(writer, b"x")
        await writer.drain()
        while server.active_handlers == 0:
            await asyncio.sleep(0.01)
        await server.wait_closed()
        assert cancelled.is_set()
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await read_message(reader)
        await conn.close()

    run(main())


def test_handler_error_resets_the_quic_stream(certs: tuple[str, str, str]) -> None:
    async def broken(r: asyncio.StreamReader, w: StreamWriterLike, info: ConnInfo) -> None:
        await read_message(r)
        raise RuntimeError("boom")

    async def body(server: Server) -> None:
        conn = await connect("127.0.0.1", server.port, transport="quic")
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await request(conn, b"x")
        await conn.close()

    with_server(certs, body, broken)


def test_tcp_pool_reuses_a_connection_and_drops_an_aborted_one(
    certs: tuple[str, str, str],
) -> None:
    async def body(server: Server) -> None:
        conn = await connect("127.0.0.1", server.port, transport="tcp")
        for i in range(3):
            await request(conn, b"%d" % i)
        assert conn.stats()["connections"] == 1
        _, writer = await conn.open_stream()
        writer.write_eof()  # a no-op on TCP: the connection stays usable
        writer.abort()
        assert conn.stats()["connections"] == 0
        assert (await request(conn, b"after")).endswith(b":1:after")  # a fresh connection
        assert conn.rtt_seconds() is not None
        await conn.close()

    with_server(certs, body)


def test_on_connection_sees_each_connection(certs: tuple[str, str, str]) -> None:
    infos: list[ConnInfo] = []

    async def body(server: Server) -> None:
        for transport in TRANSPORTS:
            conn = await connect("127.0.0.1", server.port, transport=transport)
            await request(conn, b"x")
            await conn.close()

    with_server(certs, body, on_connection=infos.append)
    assert sorted(i.transport_name for i in infos) == ["quic", "tcp"]
    assert all(i.peer is not None and i.peer[0] == "127.0.0.1" for i in infos)


def test_reuse_port_lets_two_workers_share_a_port(certs: tuple[str, str, str]) -> None:
    async def main() -> None:
        first = await start(certs, reuse_port=True)
        second = await start_on(certs, first.port, reuse_port=True)
        for transport in TRANSPORTS:
            conn = await connect("127.0.0.1", first.port, transport=transport)
            assert (await request(conn, b"w")).endswith(b":w")
            await conn.close()
        for server in (first, second):
            await server.wait_closed()

    run(main())


async def start_on(certs: tuple[str, str, str], port: int, **options: Any) -> Server:
    cert, key, _ = certs
    return await serve("127.0.0.1", port, handler=echo, cert_file=cert, key_file=key, **options)


def test_unknown_transport_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        run(connect("127.0.0.1", 1, transport="carrier-pigeon"))


def test_connect_to_nothing_raises_connect_error() -> None:
    with pytest.raises(ConnectError):
        run(connect("127.0.0.1", 9, fallback_timeout=0.2, connect_timeout=1))


def test_self_signed_certificate_is_private_stable_and_pinnable(tmp_path: Path) -> None:
    cert, key = tmp_path / "c" / "cert.pem", tmp_path / "c" / "key.pem"
    fingerprint = ensure_self_signed(cert, key, ["example.org", "10.0.0.1"])
    assert fingerprint.startswith("sha256:") and len(fingerprint) == 7 + 64
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert ensure_self_signed(cert, key) == fingerprint  # existing files are kept
    assert load_fingerprint(cert) == fingerprint
    assert not list(tmp_path.glob("c/.*.tmp"))

    from cryptography import x509

    names = x509.load_pem_x509_certificate(cert.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    text = {str(n.value) for n in names.value}
    assert {"localhost", "127.0.0.1", "example.org", "10.0.0.1"} <= text
