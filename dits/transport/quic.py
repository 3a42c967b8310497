"""QUIC glue: an aioquic-compatible library (qh3 or aioquic) under the dits stream API.

Owns the QUIC client connection, the QUIC listener, per-stream backpressure and the library
settings. It must not parse dits frames; it moves bytes between streams and the handler.

Library choice: qh3 (a Rust-core fork with the aioquic API) measured faster than aioquic here
(docs/transport.md), so :data:`QUIC_LIB` names it; aioquic is used when qh3 is not installed.
Both expose ``QuicConnectionProtocol``, ``QuicServer`` and ``QuicConfiguration``; the few
internals we need (unsent bytes per stream, RTT and congestion state, the peer certificate)
differ and live in :class:`_Qh3` and :class:`_Aioquic`.

Theory of operation
-------------------
Writers. The libraries' stream writers queue without bound (``drain()`` is a no-op), so
:class:`QuicStreamWriter` calls the library directly and implements ``drain()`` itself: it
waits while more than :data:`HIGH_WATER` bytes of the stream are not yet sent, and is woken
by the protocol after every ``transmit()``, which runs after each received datagram (ACKs open
the congestion window) and each timer. It resumes once the backlog is at most
:data:`LOW_WATER`, so a writer is woken once per megabyte rather than once per packet.
Bytes sent but not yet acknowledged are bounded separately by the congestion window.

Readers. Incoming data is fed to an ``asyncio.StreamReader`` as it arrives. Neither library
ties flow-control credit to how fast the application reads (credit grows as data arrives),
so a handler must keep reading; the dits protocol reads whole frames promptly.

Streams. A server runs the handler once per peer-initiated stream, at most
:data:`MAX_CONCURRENT_STREAMS` at a time per connection; further streams wait for a slot with
their data buffered. (The protocol-level stream limit is fixed by the libraries: 100
concurrent streams in qh3, 128 in aioquic.) When the handler returns, the stream is finished
(FIN); when it raises, the stream is reset.

No session tickets are issued or used, so there is no 0-RTT data to replay.

SO_REUSEPORT (``reuse_port=True``): the kernel spreads UDP datagrams over the sockets by
4-tuple hash. A QUIC connection stays in one process only while its 4-tuple is fixed; a
client whose NAT rebinds, or that migrates, lands in another process that knows nothing of
the connection, and the connection dies. That is fine on loopback and for most clients, but
not a substitute for connection-id aware load balancing.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable
from functools import cache
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
    "LOW_WATER",
    "MAX_CONCURRENT_STREAMS",
    "QUIC_LIB",
    "QuicClientConnection",
    "QuicStreamWriter",
    "connect",
    "start_listener",
]

log = logging.getLogger(__name__)


def _quiet_normal_close(record: logging.LogRecord) -> bool:
    # qh3 logs every peer close as a WARNING, even a clean one (error code 0).
    args = record.args
    return not (
        record.msg == "Native peer close: %r"
        and isinstance(args, tuple)
        and args
        and isinstance(args[0], tuple)
        and args[0][2:3] == (0,)
    )


logging.getLogger("quic").addFilter(_quiet_normal_close)

QUIC_LIB = "qh3"
"""The one switch between QUIC libraries: "qh3" (measured faster) or "aioquic"."""

MiB = 1024 * 1024
HIGH_WATER = 2 * MiB
"""drain() blocks while a stream has more unsent bytes than this."""
LOW_WATER = HIGH_WATER // 2
"""A blocked drain() resumes once the stream's unsent bytes fall to this."""
MAX_CONCURRENT_STREAMS = 64
"""Handlers running at once per QUIC connection; further streams wait."""

# Initial flow-control windows, large enough for one stream to fill a fast path (bandwidth-delay
# product). Both libraries raise them as data arrives, not as the application reads it.
MAX_STREAM_DATA = 16 * MiB
MAX_DATA = 64 * MiB
# Datagram size: on other paths the library default (1200-1280 bytes; qh3 clients probe the
# path MTU upwards). Loopback has a 64 KiB MTU and every packet costs syscalls, crypto calls and
# ACKs, so there each library gets the largest packets it handles (see _Lib.loopback_datagram).
SOCKET_BUFFER = 16 * MiB  # SO_RCVBUF/SO_SNDBUF; short bursts of 100s of packets must not drop

_STREAM_ABORTED = 0x10C  # application error code for a reset stream (H3_REQUEST_CANCELLED)
_CONNECTION_REFUSED = 0x2  # QUIC CONNECTION_REFUSED: server is shutting down


class _Lib:
    """An aioquic-compatible QUIC library: its classes plus the internals we read."""

    loopback_datagram = 16000
    """Largest datagram for loopback peers (aioquic writes STREAM frame lengths in 2 bytes,
    so its frames, and in practice its packets, must stay below 16 KiB)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.QuicConfiguration: Any = _attr(name, "quic.configuration", "QuicConfiguration")
        self.QuicConnection: Any = _attr(name, "quic.connection", "QuicConnection")
        self.protocol_base: Any = _attr(name, "asyncio.protocol", "QuicConnectionProtocol")
        self.server_base: Any = _attr(name, "asyncio.server", "QuicServer")
        self.events: Any = importlib.import_module(f"{name}.quic.events")

    def configuration(self, *, is_client: bool, alpn: str, loopback: bool) -> Any:
        config = self.QuicConfiguration(
            is_client=is_client,
            alpn_protocols=[alpn],
            idle_timeout=IDLE_TIMEOUT,
            max_data=MAX_DATA,
            max_stream_data=MAX_STREAM_DATA,
            verify_mode=ssl.CERT_NONE,  # pinned in check_certificate() after the handshake
        )
        if loopback:
            config.max_datagram_size = self.loopback_datagram
        return config

    async def datagram_endpoint(
        self, factory: Callable[[], Any], sock: socket.socket
    ) -> tuple[asyncio.DatagramTransport, Any]:
        loop = asyncio.get_running_loop()
        return await loop.create_datagram_endpoint(factory, sock=sock)

    def unsent(self, quic: Any, stream_id: int) -> int:
        raise NotImplementedError

    def stats(self, quic: Any) -> dict[str, Any]:
        raise NotImplementedError

    def peer_certificate(self, quic: Any) -> bytes:
        raise NotImplementedError


class _Qh3(_Lib):
    loopback_datagram = 60000  # measured 3x the throughput of 1452, 1-1.3x that of 16000

    def configuration(self, *, is_client: bool, alpn: str, loopback: bool) -> Any:
        config = super().configuration(is_client=is_client, alpn=alpn, loopback=loopback)
        # qh3 defaults to 333 ms (RFC 9002 for unknown paths); the first PTO would be ~1 s.
        config.initial_rtt = 0.1
        return config

    async def datagram_endpoint(
        self, factory: Callable[[], Any], sock: socket.socket
    ) -> tuple[asyncio.DatagramTransport, Any]:
        # qh3's transport batches datagrams with recvmmsg and GSO (Linux); clients use it
        # already, servers only when asked, as here.
        optimized = _attr(self.name, "asyncio._transport", "create_optimized_datagram_transport")
        loop = asyncio.get_running_loop()
        transport, protocol = await optimized(loop, factory, sock=sock)
        return transport, protocol

    def unsent(self, quic: Any, stream_id: int) -> int:
        return int(quic.get_send_buffer_size(stream_id))

    def stats(self, quic: Any) -> dict[str, Any]:
        core = quic._core
        if core is None:
            return {}
        return {
            "smoothed_rtt": core.smoothed_rtt,
            "latest_rtt": core.latest_rtt,
            "cwnd": core.congestion_window,
            "bytes_in_flight": core.bytes_in_flight,
            "lost_packets": core.loss_total,
            "pto_count": core.pto_total,
        }

    def peer_certificate(self, quic: Any) -> bytes:
        return bytes(quic.get_peercert().public_bytes())


class _Aioquic(_Lib):
    def configuration(self, *, is_client: bool, alpn: str, loopback: bool) -> Any:
        config = super().configuration(is_client=is_client, alpn=alpn, loopback=loopback)
        config.congestion_control_algorithm = "cubic"
        return config

    def unsent(self, quic: Any, stream_id: int) -> int:
        stream = quic._streams.get(stream_id)
        if stream is None:
            return 0
        return sum(r.stop - r.start for r in stream.sender._pending)

    def stats(self, quic: Any) -> dict[str, Any]:
        loss = quic._loss
        return {
            "smoothed_rtt": loss._rtt_smoothed if loss._rtt_initialized else None,
            "latest_rtt": loss._rtt_latest if loss._rtt_initialized else None,
            "cwnd": loss.congestion_window,
            "bytes_in_flight": loss.bytes_in_flight,
            "lost_packets": None,  # aioquic does not count them
            "pto_count": loss._pto_count,
        }

    def peer_certificate(self, quic: Any) -> bytes:
        from cryptography.hazmat.primitives.serialization import Encoding

        return bytes(quic.tls._peer_certificate.public_bytes(Encoding.DER))


def _attr(package: str, module: str, name: str) -> Any:
    return getattr(importlib.import_module(f"{package}.{module}"), name)


@cache
def load_lib(name: str | None = None) -> _Lib:
    """The QUIC library ``name`` (default :data:`QUIC_LIB`, else whichever is installed)."""
    names = [name] if name else [QUIC_LIB, "aioquic"]
    for candidate in names:
        try:
            importlib.import_module(candidate)
        except ImportError:
            continue
        return _Qh3(candidate) if candidate == "qh3" else _Aioquic(candidate)
    raise ImportError(f"no QUIC library: install {' or '.join(names)}")


class QuicStreamWriter:
    """The sending half of one QUIC stream, with a real ``drain()`` (see module docstring)."""

    high_water = HIGH_WATER
    low_water = LOW_WATER

    def __init__(self, protocol: Any, stream_id: int) -> None:
        self._protocol = protocol
        self._quic = protocol._quic
        self._lib: _Lib = protocol.lib
        self.stream_id = stream_id
        self._eof = False
        self._aborted = False
        self._waiter: asyncio.Future[None] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` on the stream; the protocol transmits it on the next loop pass."""
        if self._eof or self._aborted:
            raise ConnectionResetError(f"QUIC stream {self.stream_id} is closed")
        self._protocol.check_open()
        try:
            self._quic.send_stream_data(self.stream_id, data)
        except Exception as exc:  # reset by the peer (STOP_SENDING): each library raises its own
            raise ConnectionResetError(f"QUIC stream {self.stream_id}: {exc}") from exc
        self._protocol._transmit_soon()

    async def drain(self) -> None:
        """Wait while more than ``high_water`` bytes are unsent, until ``low_water`` remain."""
        self._protocol.check_open()
        if self.buffered_bytes() <= self.high_water:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        self._protocol.blocked.add(self)
        try:
            await self._waiter
        finally:
            self._protocol.blocked.discard(self)
            self._waiter = None

    def wake(self, exc: BaseException | None = None) -> None:
        """Release a blocked drain(), with ``exc`` if the connection failed."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    def buffered_bytes(self) -> int:
        """Bytes written to this stream and not yet sent (in-flight bytes excluded)."""
        if self._protocol.terminated is not None:
            return 0
        return self._lib.unsent(self._quic, self.stream_id)

    def write_eof(self) -> None:
        """Send FIN: the peer's reader sees EOF after the data written so far."""
        if self._eof or self._aborted or self._protocol.terminated is not None:
            return
        self._eof = True
        self._quic.send_stream_data(self.stream_id, b"", end_stream=True)
        self._protocol._transmit_soon()

    def close(self) -> None:
        """Finish the stream (same as write_eof on QUIC)."""
        self.write_eof()

    def abort(self) -> None:
        """Reset the stream in both directions; unsent data is dropped."""
        if self._aborted or self._protocol.terminated is not None:
            return
        self._aborted = True
        self.wake(ConnectionResetError(f"QUIC stream {self.stream_id} aborted"))
        try:
            if not self._eof:
                self._quic.reset_stream(self.stream_id, _STREAM_ABORTED)
            self._quic.stop_stream(self.stream_id, _STREAM_ABORTED)
        except Exception as exc:  # stream already finished in a direction: nothing to reset
            log.debug("abort of QUIC stream %d: %s", self.stream_id, exc)
        self._protocol._transmit_soon()

    def is_closing(self) -> bool:
        """Whether close(), write_eof() or abort() was called."""
        return self._eof or self._aborted

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``"stream_id"`` is the QUIC stream id, as in asyncio's StreamWriter."""
        return self.stream_id if name == "stream_id" else default


StreamCallback = Callable[[Any, asyncio.StreamReader, QuicStreamWriter], None]


@cache
def _protocol_class(lib: _Lib) -> Any:
    """A subclass of ``lib``'s QuicConnectionProtocol with our streams and backpressure."""

    class DitsQuicProtocol(lib.protocol_base):  # type: ignore[misc,name-defined]
        def __init__(
            self,
            quic: Any,
            *,
            info: ConnInfo,
            on_stream: StreamCallback,
            on_handshake: Callable[[ConnInfo], None] | None = None,
            refuse: bool = False,
        ) -> None:
            super().__init__(quic)
            self.lib = lib
            self.info = info
            self.alpn: str | None = None
            self.blocked: set[QuicStreamWriter] = set()
            self.slots = asyncio.Semaphore(MAX_CONCURRENT_STREAMS)
            self.terminated: ConnectionError | None = None
            self._on_stream = on_stream
            self._on_handshake = on_handshake
            self._refuse = refuse
            self._done_streams: dict[int, None] = {}  # recently ended, insertion-ordered
            # Datagrams handed to the socket: neither library counts packets sent, and a loss
            # rate (staging's network monitor) needs them next to the lost-packet count.
            self.datagrams_sent = 0
            produce = quic.datagrams_to_send

            def counted(now: float) -> Any:
                out = produce(now=now)
                self.datagrams_sent += len(out)
                return out

            quic.datagrams_to_send = counted

        def check_open(self) -> None:
            if self.terminated is not None:
                raise self.terminated

        def datagram_received(self, data: bytes, addr: Any) -> None:
            if self.info.peer is None:
                self.info.peer = (str(addr[0]), int(addr[1]))
            super().datagram_received(data, addr)
            if self._refuse:
                self._refuse = False
                self._quic.close(_CONNECTION_REFUSED, None, "server is shutting down")
                self.transmit()

        def transmit(self) -> None:
            super().transmit()
            # ACKs and timers land here: wake writers whose backlog has drained.
            if self.blocked:
                for writer in list(self.blocked):
                    if writer.buffered_bytes() <= writer.low_water:
                        self.blocked.discard(writer)
                        writer.wake()

        def _create_stream(self, stream_id: int) -> tuple[asyncio.StreamReader, QuicStreamWriter]:
            reader = asyncio.StreamReader()
            writer = QuicStreamWriter(self, stream_id)
            self._stream_readers[stream_id] = reader
            return reader, writer

        def _forget(self, stream_id: int) -> None:
            del self._stream_readers[stream_id]
            self._done_streams[stream_id] = None
            if len(self._done_streams) > 1024:
                del self._done_streams[next(iter(self._done_streams))]

        def quic_event_received(self, event: Any) -> None:
            # Replaces the libraries' handler: they differ on resets and on forgetting readers.
            ev = lib.events
            if isinstance(event, ev.StreamDataReceived):
                sid = event.stream_id
                reader = self._stream_readers.get(sid)
                if reader is None:
                    # Only a new peer-initiated stream gets a handler; anything else is late
                    # data for a stream that already ended. (Stream ids may arrive out of
                    # order, so "below the highest seen" does not mean "ended".)
                    peer_initiated = (sid & 1) == (1 if self._quic.configuration.is_client else 0)
                    if not peer_initiated or sid in self._done_streams:
                        return
                    reader, writer = self._create_stream(sid)
                    self._on_stream(self, reader, writer)
                if event.data:
                    reader.feed_data(event.data)
                if event.end_stream:
                    reader.feed_eof()
                    self._forget(sid)
            elif isinstance(event, ev.StreamReset):
                reader = self._stream_readers.get(event.stream_id)
                if reader is not None:
                    reader.set_exception(
                        ConnectionResetError(f"QUIC stream {event.stream_id} reset by peer")
                    )
                    self._forget(event.stream_id)
            elif isinstance(event, ev.ProtocolNegotiated):
                self.alpn = event.alpn_protocol
            elif isinstance(event, ev.HandshakeCompleted):
                if self._on_handshake is not None:
                    try:
                        self._on_handshake(self.info)
                    except Exception:
                        log.exception("on_connection callback failed")
            elif isinstance(event, ev.ConnectionTerminated):
                reason = event.reason_phrase or f"error code {event.error_code:#x}"
                self._terminate(ConnectionResetError(f"QUIC connection closed: {reason}"))

        def error_received(self, exc: Exception) -> None:
            # The client's socket is connected to the server, so an ICMP "port unreachable"
            # arrives here as ECONNREFUSED: nothing listens there any more (the server died or
            # never ran). End the connection now rather than after the idle timeout; during
            # the handshake this lets `auto` fall back to TLS/TCP at once.
            if not isinstance(exc, ConnectionRefusedError) or self.terminated is not None:
                return
            gone = ConnectionRefusedError("the server's QUIC port is closed (port unreachable)")
            waiter = getattr(self, "_connected_waiter", None)
            if waiter is not None and not waiter.done():
                waiter.set_exception(gone)
            self._terminate(gone)
            try:
                self._quic.close(_CONNECTION_REFUSED, None, "peer unreachable")
            except Exception as close_exc:  # already closing: nothing more to do
                log.debug("closing an unreachable QUIC connection: %s", close_exc)

        def _terminate(self, exc: ConnectionError) -> None:
            self.terminated = exc
            for reader in self._stream_readers.values():
                reader.set_exception(exc)  # a cut stream is not a clean EOF
            self._stream_readers.clear()
            for writer in list(self.blocked):
                writer.wake(exc)
            self.blocked.clear()

    return DitsQuicProtocol


@cache
def _server_class(lib: _Lib) -> Any:
    """``lib``'s QuicServer, plus batch delivery of datagrams to established connections."""

    class DitsQuicServer(lib.server_base):  # type: ignore[misc,name-defined]
        def datagrams_received(self, datagrams: list[bytes], addr: Any) -> None:
            # The base class takes one datagram at a time, so each one costs a transmit() and
            # often an ACK (a syscall). Consecutive short-header datagrams of one connection go
            # to it as a batch instead: one transmit, one ACK, per recvmmsg() burst.
            cid_end = 1 + self._configuration.connection_id_length
            batch: list[bytes] = []
            target: Any = None
            for data in datagrams:
                proto = self._protocols.get(data[1:cid_end]) if data and data[0] < 0x80 else None
                if proto is not target and batch:
                    target.datagrams_received(batch, addr)
                    batch = []
                if proto is None:
                    self.datagram_received(data, addr)  # handshakes, new connections, junk
                else:
                    batch.append(data)
                target = proto
            if batch:
                target.datagrams_received(batch, addr)

    return DitsQuicServer


def _udp_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A bound UDP socket with large buffers: loopback bursts overflow the 208 KiB default."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        for force, plain in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):  # *BUFFORCE
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)  # root: above rmem_max
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


class QuicClientConnection:
    """A client QUIC connection; implements :class:`dits.transport.Connection`."""

    transport_name = "quic"

    def __init__(self, protocol: Any, transport: asyncio.DatagramTransport, lib: _Lib) -> None:
        self._protocol = protocol
        self._transport = transport
        self._lib = lib
        self.peer_fingerprint = fingerprint_of_der(lib.peer_certificate(protocol._quic))
        self.quic_lib = lib.name

    async def open_stream(self) -> tuple[asyncio.StreamReader, QuicStreamWriter]:
        """Open a bidirectional stream for one request.

        Raises:
            ConnectionError: the connection is closed (idle timeout, server shutdown, close()).
        """
        self._protocol.check_open()
        reader, writer = await self._protocol.create_stream()
        return reader, writer

    def rtt_seconds(self) -> float | None:
        """Smoothed RTT from the QUIC loss-recovery state."""
        rtt = self._lib.stats(self._protocol._quic).get("smoothed_rtt")
        return float(rtt) if rtt is not None else None

    def stats(self) -> dict[str, Any]:
        """smoothed_rtt, latest_rtt, cwnd, bytes_in_flight, lost_packets (None with aioquic),
        pto_count, packets_sent (datagrams, which on this connection carry one packet each
        once the handshake is over)."""
        figures = self._lib.stats(self._protocol._quic)
        return {
            "library": self._lib.name,
            **figures,
            "packets_sent": self._protocol.datagrams_sent,
        }

    async def close(self) -> None:
        """Send CONNECTION_CLOSE and release the socket at once.

        Every request has had its response by now, so nothing is lost by not staying through
        the closing period (RFC 9000 10.2: three PTOs, ~90 ms even on loopback, which every
        push, fetch and clone used to wait out): it only exists to answer stray packets. The
        library transmits CONNECTION_CLOSE inside ``close()``; the server frees the connection
        on it, or at its idle timeout should that datagram be lost.
        """
        if self._protocol.terminated is None:
            self._protocol.close()
            await asyncio.sleep(0)  # let a datagram the socket could not take yet go out
        self._transport.close()


async def connect(
    host: str,
    port: int,
    *,
    server_name: str | None,
    verify: Callable[[bytes], None] | None,
    timeout: float,
    alpn: str,
    quic_lib: str | None = None,
) -> QuicClientConnection:
    """Open a QUIC connection; see :func:`dits.transport.connect` for the arguments.

    Raises:
        ConnectError: no handshake within ``timeout``, refused, or wrong ALPN.
        CertificateMismatchError: ``verify`` refused the server certificate.
    """
    lib = load_lib(quic_lib)
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise ConnectError(f"cannot resolve {host}: {exc}") from exc
    family, _, _, _, addr = infos[0]
    config = lib.configuration(is_client=True, alpn=alpn, loopback=_is_loopback(str(addr[0])))
    config.server_name = server_name or (None if _is_ip(host) else host)
    quic = lib.QuicConnection(configuration=config)
    info = ConnInfo.new("quic", addr)

    def refuse_push(proto: Any, reader: asyncio.StreamReader, writer: QuicStreamWriter) -> None:
        writer.abort()  # servers do not open streams in dits/1

    cls = _protocol_class(lib)
    sock: socket.socket | None = None
    try:
        sock = _udp_socket("::" if family == socket.AF_INET6 else "0.0.0.0", 0)
        sock.connect(addr)  # so ICMP errors reach error_received (see there)
        transport, protocol = await lib.datagram_endpoint(
            lambda: cls(quic, info=info, on_stream=refuse_push), sock
        )
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise ConnectError(f"cannot open a UDP socket for QUIC: {exc}") from exc
    try:
        protocol.connect(addr)
        try:
            await asyncio.wait_for(protocol.wait_connected(), timeout)
        except TimeoutError:
            # Detach the library's handshake future: it would fail unobserved on close().
            protocol._connected_waiter = None
            raise ConnectError(f"no QUIC handshake with {host}:{port} in {timeout:g} s") from None
        except ConnectionError as exc:
            reason = protocol.terminated or exc
            raise ConnectError(f"QUIC connection to {host}:{port} refused: {reason}") from None
        if protocol.alpn != alpn:
            raise ConnectError(f"{host}:{port} speaks {protocol.alpn!r}, not {alpn!r}")
        conn = QuicClientConnection(protocol, transport, lib)
        check_certificate(lib.peer_certificate(quic), verify)
    except BaseException as exc:
        if isinstance(exc, CertificateMismatchError) or protocol.terminated is None:
            protocol.close()  # sends CONNECTION_CLOSE so the server forgets us at once
        transport.close()
        raise
    return conn


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class QuicListener:
    """The UDP side of a :class:`dits.transport.Server`."""

    def __init__(
        self,
        server: Server,
        lib: _Lib,
        notify: Callable[[ConnInfo], None],
    ) -> None:
        self._server = server
        self._lib = lib
        self._notify = notify
        self._accepting = True
        self._quic_server: Any = None
        self._transport: asyncio.DatagramTransport | None = None
        self.port = 0

    def create_protocol(self, connection: Any, stream_handler: Any = None) -> Any:
        """Factory the library's QuicServer calls for each new connection."""
        return _protocol_class(self._lib)(
            connection,
            info=ConnInfo.new("quic"),
            on_stream=self._on_stream,
            on_handshake=self._notify,
            refuse=not self._accepting,
        )

    def _on_stream(self, protocol: Any, reader: asyncio.StreamReader, w: QuicStreamWriter) -> None:
        if self._server.closing:
            w.abort()
            return
        self._server.run(self._serve_stream(protocol, reader, w))

    async def _serve_stream(
        self, protocol: Any, reader: asyncio.StreamReader, writer: QuicStreamWriter
    ) -> None:
        async with protocol.slots:
            try:
                await self._server.handler(reader, writer, protocol.info)
            except (Exception, asyncio.CancelledError) as exc:
                if not isinstance(exc, ConnectionError | asyncio.CancelledError):
                    log.exception("handler failed on QUIC stream %d", writer.stream_id)
                with contextlib.suppress(Exception):  # the connection may be gone already
                    writer.abort()
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return
            # A client that read its FINAL frame may close the connection before our FIN.
            with contextlib.suppress(Exception):
                writer.close()

    def stop_accepting(self) -> None:
        """New connections are refused (CONNECTION_REFUSED); existing ones continue."""
        self._accepting = False

    async def shutdown(self) -> None:
        """Close every connection and the socket."""
        if self._quic_server is not None:
            self._quic_server.close()  # CONNECTION_CLOSE to each client, then the socket
            self._quic_server = None
            await asyncio.sleep(0)


async def start_listener(
    host: str,
    port: int,
    server: Server,
    cert_file: str,
    key_file: str,
    notify: Callable[[ConnInfo], None],
    reuse_port: bool,
    alpn: str,
    quic_lib: str | None = None,
) -> QuicListener:
    """Bind UDP ``host:port`` and serve QUIC into ``server``; see :func:`dits.transport.serve`."""
    lib = load_lib(quic_lib)
    config = lib.configuration(is_client=False, alpn=alpn, loopback=_is_loopback(host))
    config.load_cert_chain(cert_file, key_file)
    listener = QuicListener(server, lib, notify)
    sock = _udp_socket(host, port, reuse_port=reuse_port)
    transport, quic_server = await lib.datagram_endpoint(
        lambda: _server_class(lib)(configuration=config, create_protocol=listener.create_protocol),
        sock,
    )
    listener._quic_server = quic_server
    listener._transport = transport
    listener.port = sock.getsockname()[1]
    return listener
