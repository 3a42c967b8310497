"""TLS 1.3 over TCP glue: the fallback when UDP is blocked, with the same API as QUIC.

Owns the TLS contexts, the client's connection pool and the server's per-connection request
loop. It must not parse dits frames: where a request or response ends is the protocol's FINAL
flag, not this module's business.

Theory of operation
-------------------
TCP has no streams, so one TLS connection carries one request at a time:

* Client. :meth:`TcpClientConnection.open_stream` takes an idle pooled connection or dials a
  new one (at most :data:`POOL_SIZE`; further callers wait for one to come back) and hands out
  its raw ``asyncio.StreamReader`` plus a :class:`TcpStreamWriter`. Reading until FINAL and
  then calling ``writer.close()`` returns the connection to the pool; ``writer.abort()`` (or
  a close while response bytes are still buffered) closes it instead, because its position in
  the byte stream is unknown. ``write_eof()`` is a no-op: a TCP half-close would end the
  connection, not the request. The reader is shared by the requests that use the connection
  one after another, so a caller must never read past the FINAL frame of its response, and
  must never wait for EOF.
* Server. Each accepted connection is a sequence of streams: wait until request bytes arrive
  (or EOF), call ``handler(reader, writer, info)``, and repeat when it returns. A handler
  therefore reads exactly one request (up to FINAL) and writes one response, which is the same
  contract as on QUIC. A handler that raises or aborts ends the connection. An idle connection
  is closed after :data:`dits.transport.IDLE_TIMEOUT`; pooled client connections are dropped
  a little earlier (:data:`POOL_IDLE`) so the client never picks one the server is closing.

Backpressure is asyncio's own: ``drain()`` waits while the TLS transport holds more than
:data:`HIGH_WATER` bytes, and a reader pauses the socket when it buffers 2 x :data:`READ_LIMIT`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import struct
import time
from collections.abc import Callable
from typing import Any

from dits.transport import (
    IDLE_TIMEOUT,
    CertificateMismatchError,
    ConnectError,
    ConnInfo,
    Server,
    check_certificate,
)
from dits.transport.tls import fingerprint_of_der

__all__ = [
    "HIGH_WATER",
    "POOL_SIZE",
    "TcpClientConnection",
    "TcpStreamWriter",
    "client_context",
    "connect",
    "server_context",
    "start_listener",
]

log = logging.getLogger(__name__)

MiB = 1024 * 1024
POOL_SIZE = 8
"""TLS connections a client opens to one server at most (= concurrent requests over TCP)."""
POOL_IDLE = IDLE_TIMEOUT - 10
"""Seconds an idle pooled connection is kept; shorter than the server's idle timeout."""
HIGH_WATER = 2 * MiB
"""drain() blocks while the TLS transport buffers more than this."""
READ_LIMIT = 1 * MiB
"""StreamReader limit: the socket is paused when 2 x this is buffered."""


def client_context(alpn: str) -> ssl.SSLContext:
    """TLS 1.3 client context offering ``alpn``; no CA check, the certificate is pinned."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # self-signed servers; check_certificate() pins instead
    ctx.set_alpn_protocols([alpn])
    return ctx


def server_context(cert_file: str, key_file: str, alpn: str) -> ssl.SSLContext:
    """TLS 1.3 server context with the certificate and ``alpn``; no tickets, no 0-RTT."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert_file, key_file)
    ctx.set_alpn_protocols([alpn])
    ctx.options |= ssl.OP_NO_TICKET
    ctx.num_tickets = 0
    return ctx


class TcpStreamWriter:
    """The sending half of a request on a TLS connection (client pooled or server side)."""

    def __init__(self, writer: asyncio.StreamWriter, done: Callable[[bool], None]) -> None:
        self._writer = writer
        self._done = done  # done(reusable): back to the pool, or drop the connection
        self._finished = False
        self.aborted = False
        writer.transport.set_write_buffer_limits(high=HIGH_WATER)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue bytes on the TLS connection."""
        if self._finished:
            raise ConnectionResetError("TCP stream is closed")
        self._writer.write(data)

    async def drain(self) -> None:
        """Wait while the transport buffers more than HIGH_WATER bytes."""
        await self._writer.drain()

    def write_eof(self) -> None:
        """No-op: the FINAL flag ends a request; a TCP half-close would end the connection."""

    def close(self) -> None:
        """The request/response is complete: release the connection for the next one."""
        if not self._finished:
            self._finished = True
            self._done(True)

    def abort(self) -> None:
        """Drop the TLS connection: its position in the byte stream is unknown."""
        if not self._finished:
            self._finished = True
            self.aborted = True
            self._done(False)

    def is_closing(self) -> bool:
        """Whether close() or abort() was called, or the connection is closing."""
        return self._finished or self._writer.is_closing()

    def buffered_bytes(self) -> int:
        """Bytes in the TLS transport not yet written to the socket."""
        return self._writer.transport.get_write_buffer_size()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The TLS transport's extra info (``"peername"``, ``"ssl_object"``, ...)."""
        return self._writer.get_extra_info(name, default)


class _Pooled:
    __slots__ = ("last_used", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.last_used = time.monotonic()


class TcpClientConnection:
    """A pool of TLS connections to one server; implements :class:`dits.transport.Connection`."""

    transport_name = "tcp"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        server_name: str | None,
        verify: Callable[[bytes], None] | None,
        timeout: float,
        alpn: str,
        pool_size: int = POOL_SIZE,
    ) -> None:
        self._host, self._port = host, port
        self._server_name = server_name or host
        self._verify = verify
        self._timeout = timeout
        self._alpn = alpn
        self._ctx = client_context(alpn)
        self._slots = asyncio.Semaphore(pool_size)
        self._idle: list[_Pooled] = []
        self._all: set[_Pooled] = set()
        self._last: _Pooled | None = None
        self._closed = False
        self.peer_fingerprint = ""

    async def start(self) -> None:
        """Dial the first connection, which checks the certificate and ALPN."""
        conn = await self._dial()
        self._idle.append(conn)

    async def _dial(self) -> _Pooled:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self._host,
                    self._port,
                    ssl=self._ctx,
                    server_hostname=self._server_name,
                    limit=READ_LIMIT,
                ),
                self._timeout,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            reason = str(exc) or type(exc).__name__
            raise ConnectError(f"TLS/TCP to {self._host}:{self._port} failed: {reason}") from exc
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            if ssl_object.selected_alpn_protocol() != self._alpn:
                raise ConnectError(f"{self._host}:{self._port} does not speak {self._alpn!r}")
            der: bytes = ssl_object.getpeercert(binary_form=True)
            fingerprint = fingerprint_of_der(der)
            if self.peer_fingerprint and fingerprint != self.peer_fingerprint:
                raise CertificateMismatchError(
                    f"server certificate changed from {self.peer_fingerprint} to {fingerprint}"
                )
            check_certificate(der, self._verify)
        except BaseException:
            writer.transport.abort()
            raise
        self.peer_fingerprint = fingerprint
        conn = _Pooled(reader, writer)
        self._all.add(conn)
        return conn

    def _take_idle(self) -> _Pooled | None:
        stale = time.monotonic() - POOL_IDLE
        while self._idle:
            conn = self._idle.pop()  # most recently used: warmest congestion window
            if conn.last_used >= stale and not conn.reader.at_eof():
                return conn
            self._drop(conn)
        return None

    async def open_stream(self) -> tuple[asyncio.StreamReader, TcpStreamWriter]:
        """A dedicated TLS connection for one request, waiting if all POOL_SIZE are busy.

        Raises:
            ConnectError: a new connection was needed and could not be made.
            ConnectionError: this connection was closed.
        """
        if self._closed:
            raise ConnectionResetError("connection is closed")
        await self._slots.acquire()
        try:
            conn = self._take_idle() or await self._dial()
        except BaseException:
            self._slots.release()
            raise
        self._last = conn

        def done(reusable: bool) -> None:
            # Leftover bytes mean the caller stopped before the end of the response.
            if reusable and not self._closed and not conn.writer.is_closing():
                reusable = not _buffered(conn.reader)
            if reusable:
                conn.last_used = time.monotonic()
                self._idle.append(conn)
            else:
                self._drop(conn)
            self._slots.release()

        return conn.reader, TcpStreamWriter(conn.writer, done)

    def _drop(self, conn: _Pooled) -> None:
        self._all.discard(conn)
        conn.writer.transport.abort()

    def rtt_seconds(self) -> float | None:
        """The kernel's smoothed RTT of the most recently used connection (Linux), else None."""
        rtt = self.stats().get("rtt")
        return float(rtt) if rtt is not None else None

    def stats(self) -> dict[str, Any]:
        """Pool sizes plus TCP_INFO (rtt, cwnd in segments, retransmits) where available."""
        figures: dict[str, Any] = {"connections": len(self._all), "idle": len(self._idle)}
        if self._last is not None:
            figures.update(_tcp_info(self._last.writer.get_extra_info("socket")))
        return figures

    async def close(self) -> None:
        """Close every pooled connection, idle or in use."""
        self._closed = True
        self._idle.clear()
        for conn in list(self._all):
            self._drop(conn)


def _buffered(reader: asyncio.StreamReader) -> int:
    buffer: bytearray = getattr(reader, "_buffer", bytearray())
    return len(buffer)


async def _wait_readable(reader: asyncio.StreamReader) -> bool:
    """Wait for the first bytes of the next request; False at EOF.

    asyncio has no public peek, so this waits on the reader the way its own read() does.
    """
    r: Any = reader
    if not r._buffer and not r._eof:
        await r._wait_for_data("_wait_readable")
    return bool(r._buffer)


_TCP_INFO = struct.Struct("=32x I 32x I I 4x I 16x I")  # lost, rtt, rttvar, cwnd, retrans


def _tcp_info(sock: Any) -> dict[str, Any]:
    """A few fields of Linux ``struct tcp_info``; empty elsewhere."""
    if sock is None or not hasattr(socket, "TCP_INFO"):
        return {}
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        lost, rtt, rttvar, cwnd, retrans = _TCP_INFO.unpack_from(raw)
    except (OSError, struct.error):
        return {}
    return {
        "rtt": rtt / 1e6,
        "rttvar": rttvar / 1e6,
        "cwnd_segments": cwnd,
        "lost_packets": lost,
        "retransmits": retrans,
    }


async def connect(
    host: str,
    port: int,
    *,
    server_name: str | None,
    verify: Callable[[bytes], None] | None,
    timeout: float,
    alpn: str,
) -> TcpClientConnection:
    """Open the pool's first TLS connection; see :func:`dits.transport.connect`.

    Raises:
        ConnectError: nothing listens, timeout, TLS failure or wrong ALPN.
        CertificateMismatchError: ``verify`` refused the server certificate.
    """
    conn = TcpClientConnection(
        host, port, server_name=server_name, verify=verify, timeout=timeout, alpn=alpn
    )
    await conn.start()
    return conn


class TcpListener:
    """The TCP side of a :class:`dits.transport.Server`."""

    def __init__(self, server: Server, notify: Callable[[ConnInfo], None], alpn: str) -> None:
        self._server = server
        self._notify = notify
        self._alpn = alpn
        self._aserver: asyncio.Server | None = None
        self._idle: set[asyncio.StreamWriter] = set()
        self._open: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.port = 0

    async def on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one TLS connection: a handler call per request until EOF or idle timeout."""
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is None or ssl_object.selected_alpn_protocol() != self._alpn:
            writer.transport.abort()  # OpenSSL completes the handshake without a common ALPN
            return
        info = ConnInfo.new("tcp", writer.get_extra_info("peername"))
        try:
            self._notify(info)
        except Exception:
            log.exception("on_connection callback failed")
        self._open.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while not self._server.closing:
                self._idle.add(writer)
                try:
                    if not await asyncio.wait_for(_wait_readable(reader), IDLE_TIMEOUT):
                        break
                except TimeoutError:
                    break
                finally:
                    self._idle.discard(writer)
                if self._server.closing:
                    break
                stream = TcpStreamWriter(writer, lambda reusable: None)
                try:
                    await self._server.run(self._server.handler(reader, stream, info))
                except (ConnectionError, asyncio.IncompleteReadError):
                    break
                except Exception:
                    log.exception("handler failed on TCP connection %d", info.conn_id)
                    break
                if stream.aborted:
                    break
        except ConnectionError:
            pass
        finally:
            self._open.discard(writer)
            self._idle.discard(writer)
            if task is not None:
                self._tasks.discard(task)
            if self._server.closing:
                writer.transport.abort()
            else:
                writer.close()

    def stop_accepting(self) -> None:
        """Close the listening socket and the connections that wait between requests."""
        if self._aserver is not None:
            self._aserver.close()
        for writer in list(self._idle):
            writer.close()

    async def shutdown(self) -> None:
        """Close the listening socket and every connection."""
        self.stop_accepting()
        for writer in list(self._open):
            writer.transport.abort()
        if self._tasks:  # connection loops notice the abort and exit
            await asyncio.wait(set(self._tasks), timeout=1.0)
        if self._aserver is not None:
            await self._aserver.wait_closed()
            self._aserver = None


async def start_listener(
    host: str,
    port: int,
    server: Server,
    cert_file: str,
    key_file: str,
    notify: Callable[[ConnInfo], None],
    reuse_port: bool,
    alpn: str,
) -> TcpListener:
    """Listen for TLS on TCP ``host:port``; see :func:`dits.transport.serve`."""
    listener = TcpListener(server, notify, alpn)
    aserver = await asyncio.start_server(
        listener.on_client,
        host,
        port,
        ssl=server_context(cert_file, key_file, alpn),
        limit=READ_LIMIT,
        reuse_port=reuse_port or None,
        ssl_handshake_timeout=10.0,
    )
    listener._aserver = aserver
    listener.port = aserver.sockets[0].getsockname()[1]
    return listener
