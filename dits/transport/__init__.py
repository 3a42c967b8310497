"""Byte streams between a dits client and dits-remote: QUIC (preferred) or TLS 1.3 over TCP.

This package only moves bytes. It owns connecting, certificate pinning, listening, stream
multiplexing and backpressure; it knows nothing about frames, messages or authentication, which
belong to ``dits.protocol`` (and whatever that layer stores in :attr:`ConnInfo.state`).

Theory of operation
-------------------
Both transports expose the same asyncio API, so the protocol layer is transport-agnostic:

* A client calls :func:`connect` and gets a :class:`Connection`. ``open_stream()`` returns an
  ``asyncio.StreamReader`` and a :class:`StreamWriterLike` for exactly one request/response.
* A server calls :func:`serve` with one ``handler(reader, writer, info)``. The handler reads one
  request, writes its response and returns. The same function serves QUIC and TCP.

Stream contract (identical on both transports):

1. The client writes a request whose last frame carries the protocol's FINAL flag, then reads
   the response until its FINAL frame, then calls ``writer.close()``.
2. The handler reads the request until FINAL (never "until EOF", and never further), writes the
   response ending in FINAL, awaits ``drain()`` and returns.
3. ``write_eof()`` ends the stream on QUIC and is a no-op on TCP; ``close()`` after the complete
   response means "done, reuse what you can"; ``abort()`` means "the stream state is unknown,
   throw it away" (QUIC resets the stream, TCP drops the pooled connection). Call ``abort()`` on
   any error or cancellation in the middle of a request.
4. ``drain()`` blocks while more than a high-water mark of written bytes is unsent, on both
   transports, so writing a large object never buffers it whole.

QUIC gives each request its own stream. TLS/TCP has no streams, so a TCP connection carries one
request at a time and the client keeps a small pool of them (see :mod:`dits.transport.tcp`);
because the FINAL flag marks where a request and its response end, a pooled TCP stream needs no
EOF and its raw reader/writer are handed out directly.

Certificates are self-signed and pinned: :func:`connect` skips CA verification and passes the
server's DER certificate to ``verify``, which raises to refuse (see :mod:`dits.transport.tls`).
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from dits.errors import EXIT_NETWORK, DitsError, UsageError

__all__ = [
    "ALPN",
    "CertificateMismatchError",
    "ConnInfo",
    "ConnectError",
    "Connection",
    "Handler",
    "Server",
    "StreamWriterLike",
    "TransportError",
    "connect",
    "serve",
]

log = logging.getLogger(__name__)

ALPN = "dits/1"
"""TLS application protocol of the dits wire protocol; both ends refuse any other."""

IDLE_TIMEOUT = 60.0
"""Seconds without traffic after which either end drops a connection (QUIC and TCP)."""

DEFAULT_GRACE = 10.0
"""Seconds :meth:`Server.wait_closed` lets in-flight handlers finish before cancelling them."""

_conn_ids = itertools.count(1)


class TransportError(DitsError):
    """The network path to the remote failed; retrying later may work."""

    exit_code = EXIT_NETWORK
    transient = True


class ConnectError(TransportError):
    """No connection could be established (nothing listening, timeout, TLS or ALPN refused)."""


class CertificateMismatchError(TransportError):
    """The server's certificate is not the pinned one: possibly an impostor, never retried."""

    transient = False


class StreamWriterLike(Protocol):
    """The sending half of one stream, as both transports implement it."""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue bytes; never blocks. Follow with ``await drain()``."""

    async def drain(self) -> None:
        """Wait until the unsent bytes are below the high-water mark.

        Raises:
            ConnectionError: the connection or stream was closed or reset.
        """

    def write_eof(self) -> None:
        """End the sending direction (QUIC FIN); a no-op on pooled TCP streams."""

    def close(self) -> None:
        """The stream completed normally: end it (QUIC) or return it to the pool (TCP)."""

    def abort(self) -> None:
        """Discard the stream: reset it (QUIC) or drop its TCP connection."""

    def is_closing(self) -> bool:
        """Whether close() or abort() was called."""

    def buffered_bytes(self) -> int:
        """Bytes written but not yet handed to the network."""


class Connection(Protocol):
    """A client connection to one server; open one stream per request."""

    transport_name: str
    """``"quic"`` or ``"tcp"``."""
    peer_fingerprint: str
    """``"sha256:<hex>"`` of the server's DER certificate, see :func:`tls.fingerprint_of_der`."""

    async def open_stream(self) -> tuple[asyncio.StreamReader, StreamWriterLike]:
        """Open a stream for one request/response.

        Raises:
            ConnectError: a new underlying connection was needed and could not be made.
            ConnectionError: this connection is closed.
        """

    def rtt_seconds(self) -> float | None:
        """Smoothed round-trip time, or None where the transport does not measure it."""

    def stats(self) -> dict[str, Any]:
        """Congestion and loss figures for logs and the network monitor (keys vary)."""

    async def close(self) -> None:
        """Close the connection and every stream on it."""


@dataclass
class ConnInfo:
    """What a handler knows about the connection its stream belongs to.

    Attributes:
        conn_id: unique per server process, for logs.
        transport_name: ``"quic"`` or ``"tcp"``.
        peer: the client's (host, port).
        state: per-connection storage shared by all streams of the connection; the protocol
            layer keeps authentication here. A TCP client's pool opens several TCP connections,
            so over TCP each of them authenticates separately.
    """

    conn_id: int
    transport_name: str
    peer: tuple[str, int] | None = None
    state: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def new(cls, transport_name: str, peer: Any = None) -> ConnInfo:
        """A fresh ConnInfo with the next connection id; ``peer`` may be a socket address."""
        return cls(next(_conn_ids), transport_name, _host_port(peer))


Handler = Callable[[asyncio.StreamReader, StreamWriterLike, ConnInfo], Awaitable[None]]
"""Serves one request on one stream, then returns (see the stream contract above)."""


def _host_port(addr: Any) -> tuple[str, int] | None:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return (str(addr[0]), int(addr[1]))
    return None


class _Listener(Protocol):
    port: int

    def stop_accepting(self) -> None: ...

    async def shutdown(self) -> None: ...


class Server:
    """QUIC and TLS/TCP listeners on one port number, sharing one handler.

    ``close()`` stops accepting connections and streams; ``wait_closed()`` then lets in-flight
    handlers finish for up to ``grace`` seconds, cancels the rest and closes every connection.
    """

    def __init__(self, handler: Handler, grace: float = DEFAULT_GRACE) -> None:
        self.port = 0
        self.handler = handler
        self.grace = grace
        self.closing = False
        self._listeners: list[_Listener] = []
        self._tasks: set[asyncio.Future[None]] = set()

    def run(self, invocation: Awaitable[None]) -> asyncio.Future[None]:
        """Run a handler invocation as a task that close() will wait for."""
        task = asyncio.ensure_future(invocation)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def active_handlers(self) -> int:
        """Handler invocations still running."""
        return len(self._tasks)

    def close(self) -> None:
        """Stop accepting new connections and streams; running handlers continue."""
        self.closing = True
        for listener in self._listeners:
            listener.stop_accepting()

    async def wait_closed(self) -> None:
        """Wait up to ``grace`` seconds for running handlers, cancel the rest, close all."""
        self.close()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self.grace)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("cancelled %d handler(s) still running at shutdown", len(pending))
                await asyncio.wait(pending, timeout=1.0)
        for listener in self._listeners:
            await listener.shutdown()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.wait_closed()


async def serve(
    host: str,
    port: int,
    *,
    handler: Handler,
    cert_file: str,
    key_file: str,
    quic: bool = True,
    tcp: bool = True,
    on_connection: Callable[[ConnInfo], None] | None = None,
    reuse_port: bool = False,
    grace: float = DEFAULT_GRACE,
    alpn: str = ALPN,
    quic_lib: str | None = None,
) -> Server:
    """Listen for QUIC (UDP) and TLS/TCP on the same port number.

    Args:
        host: address to bind, e.g. ``"0.0.0.0"`` or ``"127.0.0.1"``.
        port: port number for both listeners; 0 picks one free for UDP and TCP (see
            :attr:`Server.port`).
        handler: serves one request per call, see :data:`Handler` and the stream contract.
        cert_file: PEM certificate (see :func:`dits.transport.tls.ensure_self_signed`).
        key_file: PEM private key.
        quic: start the QUIC listener.
        tcp: start the TLS/TCP listener.
        on_connection: called with each new connection's :class:`ConnInfo`.
        reuse_port: set SO_REUSEPORT so several worker processes can serve the same port (see
            docs/transport.md for the QUIC caveat).
        grace: seconds :meth:`Server.wait_closed` waits for in-flight handlers.
        alpn: application protocol to require; only tests change it.
        quic_lib: ``"qh3"`` or ``"aioquic"``; None uses :data:`dits.transport.quic.QUIC_LIB`.

    Returns:
        The running :class:`Server`.

    Raises:
        UsageError: neither listener was requested.
        OSError: the port is taken or the address cannot be bound.
    """
    from dits.transport import quic as quic_mod
    from dits.transport import tcp as tcp_mod

    if not (quic or tcp):
        raise UsageError("serve() needs at least one of quic or tcp")
    server = Server(handler, grace)
    notify = on_connection or (lambda info: None)

    async def start_quic(p: int) -> _Listener:
        return await quic_mod.start_listener(
            host, p, server, cert_file, key_file, notify, reuse_port, alpn, quic_lib
        )

    async def start_tcp(p: int) -> _Listener:
        return await tcp_mod.start_listener(
            host, p, server, cert_file, key_file, notify, reuse_port, alpn
        )

    # With port 0 the TCP port is picked first; if that number is taken on UDP, try another.
    attempts = 20 if port == 0 and quic and tcp else 1
    for attempt in range(attempts):
        first = await (start_tcp(port) if tcp else start_quic(port))
        bound = first.port
        if not (quic and tcp):
            server._listeners = [first]
            server.port = bound
            return server
        try:
            second = await start_quic(bound)
        except OSError as exc:
            await first.shutdown()
            if exc.errno != errno.EADDRINUSE or attempt == attempts - 1:
                raise
            continue
        server._listeners = [first, second]
        server.port = bound
        return server
    raise AssertionError("unreachable")


async def connect(
    host: str,
    port: int,
    *,
    transport: str = "auto",
    server_name: str | None = None,
    verify: Callable[[bytes], None] | None = None,
    fallback_timeout: float = 1.5,
    connect_timeout: float = 10.0,
    alpn: str = ALPN,
    quic_lib: str | None = None,
) -> Connection:
    """Connect to a dits server over QUIC, TLS/TCP, or QUIC falling back to TLS/TCP.

    Args:
        host: server name or address.
        port: the server's port number (the same for UDP and TCP).
        transport: ``"quic"``, ``"tcp"`` or ``"auto"``: try QUIC and use TLS/TCP on the same
            port if the QUIC handshake does not complete within ``fallback_timeout`` (UDP
            blocked, or a server without QUIC).
        server_name: TLS server name indication; defaults to ``host`` when it is a name.
        verify: called with the server's DER certificate after the handshake, before any
            request; raises to refuse (for example when the fingerprint is not the pinned one).
            None accepts any certificate; the caller may pin ``peer_fingerprint`` afterwards.
        fallback_timeout: seconds to wait for QUIC in ``"auto"`` mode.
        connect_timeout: seconds to wait for an explicit ``"quic"`` or a ``"tcp"`` handshake.
        alpn: application protocol to offer; only tests change it.
        quic_lib: ``"qh3"`` or ``"aioquic"``; None uses :data:`dits.transport.quic.QUIC_LIB`.

    Returns:
        An open :class:`Connection`.

    Raises:
        CertificateMismatchError: ``verify`` refused the certificate (no fallback is tried).
        ConnectError: no transport could connect.
        UsageError: unknown ``transport``.
    """
    from dits.transport import quic as quic_mod
    from dits.transport import tcp as tcp_mod

    if transport not in ("auto", "quic", "tcp"):
        raise UsageError(f"unknown transport {transport!r}: use quic, tcp or auto")
    if transport != "tcp":
        timeout = fallback_timeout if transport == "auto" else connect_timeout
        try:
            return await quic_mod.connect(
                host,
                port,
                server_name=server_name,
                verify=verify,
                timeout=timeout,
                alpn=alpn,
                quic_lib=quic_lib,
            )
        except ConnectError as exc:
            if transport == "quic":
                raise
            log.info("QUIC to %s:%d failed (%s); falling back to TLS/TCP", host, port, exc)
    return await tcp_mod.connect(
        host,
        port,
        server_name=server_name,
        verify=verify,
        timeout=connect_timeout,
        alpn=alpn,
    )


def check_certificate(der: bytes, verify: Callable[[bytes], None] | None) -> None:
    """Run the pinning callback; anything it raises becomes CertificateMismatchError."""
    if verify is None:
        return
    try:
        verify(der)
    except CertificateMismatchError:
        raise
    except Exception as exc:
        from dits.transport.tls import fingerprint_of_der

        raise CertificateMismatchError(
            f"server certificate {fingerprint_of_der(der)} refused: {exc}"
        ) from exc
