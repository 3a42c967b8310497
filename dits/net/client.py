"""The client end of the dits protocol: one authenticated session over any transport.

``RemoteSession`` turns protocol requests into awaitable calls. It opens one stream per
request (QUIC) or borrows a pooled TLS connection (TCP), says Hello once per underlying
connection, reads each response with ``ResponseReader`` (exactly up to its FINAL frame) and
raises the server's error as the same exception class the server raised.
"""

from __future__ import annotations

import asyncio
import sys
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from dits import __version__
from dits.core.ids import ObjectId
from dits.protocol import (
    SUPPORTED_VERSIONS,
    Blob,
    BlobKind,
    Get,
    Have,
    HaveResult,
    Hello,
    Limits,
    ListRefs,
    Message,
    Permission,
    PutChunk,
    PutObject,
    PutResult,
    PutSpeculative,
    RefChange,
    Refs,
    RefsUpdated,
    ResponseReader,
    UpdateRefs,
    Welcome,
    encode_message,
    exception_for,
)
from dits.remotes import KnownHosts, RemoteSpec
from dits.transport import Connection, StreamWriterLike, connect

__all__ = ["PACE_SLICE", "RemoteSession", "open_session"]

PACE_SLICE = 64 * 1024
"""``put_speculative`` with ``pace`` writes at most this many bytes per ``pace`` call."""


@dataclass
class _Stream:
    reader: asyncio.StreamReader
    writer: StreamWriterLike


class RemoteSession:
    """An open, authenticated connection to one repository on a dits-remote."""

    def __init__(self, conn: Connection, spec: RemoteSpec, welcome: Welcome) -> None:
        self.conn = conn
        self.spec = spec
        self.welcome = welcome
        self.limits = Limits().narrowed(welcome.limits)
        self._hello = _hello(spec)
        self._authed: weakref.WeakSet[asyncio.StreamReader] = weakref.WeakSet()
        self.bytes_sent = 0
        self.bytes_received = 0

    @property
    def transport(self) -> str:
        return self.conn.transport_name

    @property
    def permissions(self) -> Permission:
        return self.welcome.permissions

    async def close(self) -> None:
        await self.conn.close()

    # -- plumbing ------------------------------------------------------------------------------

    async def _open(self) -> _Stream:
        reader, writer = await self.conn.open_stream()
        stream = _Stream(reader, writer)
        # QUIC authenticates the connection once; each pooled TLS connection says Hello itself.
        if self.conn.transport_name == "tcp" and reader not in self._authed:
            await self._send(stream, [self._hello])
            await self._receive(stream, self._hello)
            self._authed.add(reader)
        return stream

    async def _send(self, stream: _Stream, msgs: Sequence[Message]) -> None:
        sent = await _send(stream, msgs, self.limits.max_payload)
        self.bytes_sent += sent

    async def _receive(self, stream: _Stream, request: Message) -> list[Message]:
        msgs, size = await _receive(stream, request, self.limits)
        self.bytes_received += size
        return msgs

    async def request(self, msgs: Sequence[Message]) -> list[Message]:
        """Send one request, return its response messages; errors raise their classes."""
        stream = await self._open()
        try:
            await self._send(stream, msgs)
            stream.writer.write_eof()
            response = await self._receive(stream, msgs[0])
        except BaseException:
            stream.writer.abort()
            raise
        stream.writer.close()
        return response

    # -- requests --------------------------------------------------------------------------------

    async def list_refs(self, prefix: str = "refs/") -> Refs:
        (refs,) = await self.request([ListRefs(prefix)])
        assert isinstance(refs, Refs)
        return refs

    async def have(self, kind: BlobKind, ids: Sequence[ObjectId]) -> set[ObjectId]:
        """The subset of ``ids`` the server has for us, asked in batches."""
        present: set[ObjectId] = set()
        step = self.limits.max_batch
        batches = [tuple(ids[i : i + step]) for i in range(0, len(ids), step)]
        results = await asyncio.gather(*(self.request([Have(kind, b)]) for b in batches))
        for batch, (answer,) in zip(batches, results, strict=True):
            assert isinstance(answer, HaveResult)
            present.update(oid for oid, bit in zip(batch, answer.present, strict=True) if bit)
        return present

    async def put(
        self,
        msgs: Sequence[PutChunk | PutObject],
        *,
        pace: Callable[[int], Awaitable[None]] | None = None,
    ) -> PutResult:
        """Upload chunks and objects as one put request (``pace``: as in put_speculative)."""
        if pace is None:
            (result,) = await self.request(msgs)
        else:
            result = await self._request_paced(msgs, pace)
        assert isinstance(result, PutResult)
        return result

    async def _request_paced(
        self, msgs: Sequence[Message], pace: Callable[[int], Awaitable[None]]
    ) -> Message:
        stream = await self._open()
        try:
            self.bytes_sent += await _send_paced(stream, msgs, self.limits.max_payload, pace)
            stream.writer.write_eof()
            (result,) = await self._receive(stream, msgs[0])
        except BaseException:
            stream.writer.abort()
            raise
        stream.writer.close()
        return result

    async def put_speculative(
        self,
        chunks: Sequence[PutChunk],
        *,
        pace: Callable[[int], Awaitable[None]] | None = None,
    ) -> PutResult:
        """Upload ``chunks`` ahead of a push, as one PutSpeculative request.

        The server keeps them private to this token in this repository until a push that
        reaches them promotes them, and may expire them (docs/protocol.md). A refused request
        stores nothing.

        Args:
            chunks: the chunks, as a push would send them (RAW or their stored zstd frame).
            pace: when given, the encoded request is written in slices of at most
                ``PACE_SLICE`` bytes and ``await pace(len(slice))`` runs before each one (a
                token bucket behind it keeps a bandwidth cap smooth).

        Returns:
            The server's PutResult (``stored_new``: chunks it did not hold for us yet).

        Raises:
            QuotaExceededError: the token's speculative quota is full (or the server takes
                no speculative uploads).
            ForbiddenError: the token may not write to this repository.
            HashMismatchError / TooLargeError: a chunk is wrong (a bug in the caller).
        """
        if not chunks:
            return PutResult(0, 0)
        msgs = [PutSpeculative.of(c) for c in chunks]
        if pace is None:
            (result,) = await self.request(msgs)
        else:
            result = await self._request_paced(msgs, pace)
        assert isinstance(result, PutResult)
        return result

    async def get(self, kind: BlobKind, ids: Sequence[ObjectId]) -> AsyncIterator[Blob]:
        """Stream the blobs of ``ids`` in order (one request)."""
        request = Get(kind, tuple(ids))
        stream = await self._open()
        try:
            await self._send(stream, [request])
            stream.writer.write_eof()
            reader = ResponseReader(request, self.limits)
            while (needed := reader.bytes_needed) > 0:
                data = await _read_some(stream.reader, needed)
                self.bytes_received += len(data)
                for msg in reader.feed(data):
                    if isinstance(msg, Blob):
                        yield msg
            if reader.error is not None:
                raise exception_for(reader.error)
        except BaseException:
            stream.writer.abort()
            raise
        stream.writer.close()

    async def update_refs(self, changes: Sequence[RefChange]) -> None:
        (answer,) = await self.request([UpdateRefs(tuple(changes))])
        assert isinstance(answer, RefsUpdated)


async def _read_some(reader: asyncio.StreamReader, needed: int) -> bytes:
    """Whatever has arrived, at least one byte and up to 1 MiB (see remote/handler.py: one
    ``readexactly`` per frame part costs a copy and a memmove of the buffer each time). A
    server sends nothing after a response's FINAL frame, so this never reads into the next."""
    data = await reader.read(max(needed, 1 << 20))
    if not data:
        raise asyncio.IncompleteReadError(b"", needed)
    return data


async def _send(stream: _Stream, msgs: Sequence[Message], max_payload: int) -> int:
    sent = 0
    last = len(msgs) - 1
    for i, msg in enumerate(msgs):
        for buf in encode_message(msg, final=i == last, max_payload=max_payload):
            stream.writer.write(buf)
            sent += memoryview(buf).nbytes
        await stream.writer.drain()
    return sent


async def _send_paced(
    stream: _Stream,
    msgs: Sequence[Message],
    max_payload: int,
    pace: Callable[[int], Awaitable[None]],
) -> int:
    sent = 0
    last = len(msgs) - 1
    for i, msg in enumerate(msgs):
        for buf in encode_message(msg, final=i == last, max_payload=max_payload):
            view = memoryview(buf)
            if view.format != "B" or view.ndim != 1:
                view = view.cast("B")
            for start in range(0, view.nbytes, PACE_SLICE):
                piece = view[start : start + PACE_SLICE]
                await pace(piece.nbytes)  # before the write: the bucket decides when it goes
                stream.writer.write(piece)
                await stream.writer.drain()
                sent += piece.nbytes
    return sent


async def _receive(stream: _Stream, request: Message, limits: Limits) -> tuple[list[Message], int]:
    reader = ResponseReader(request, limits)
    out: list[Message] = []
    size = 0
    while (needed := reader.bytes_needed) > 0:
        data = await _read_some(stream.reader, needed)
        size += len(data)
        out += reader.feed(data)
    if reader.error is not None:
        raise exception_for(reader.error)
    return out, size


def _hello(spec: RemoteSpec) -> Hello:
    return Hello(
        tuple(SUPPORTED_VERSIONS), (spec.token or "").encode(), spec.url.repo, f"dits/{__version__}"
    )


def _say_pinned(spec: RemoteSpec) -> Callable[[str], None]:
    def say(fingerprint: str) -> None:
        print(
            f"dits: first connection to {spec.url.host}:{spec.url.port}: pinned its "
            f"certificate {fingerprint}",
            file=sys.stderr,
        )

    return say


async def open_session(
    spec: RemoteSpec, *, known_hosts: KnownHosts | None = None, timeout: float = 10.0
) -> RemoteSession:
    """Connect (pinning the certificate on first use), say Hello, return the session.

    Raises:
        CertificateChangedError: the server's certificate is not the pinned one.
        UnauthenticatedError / NotFoundOrForbiddenError: the token does not open the repo.
        ConnectError: no transport could connect.
    """
    hosts = known_hosts or KnownHosts()
    conn = await connect(
        spec.url.host,
        spec.url.port,
        transport=spec.transport,
        verify=hosts.verifier(spec.url.host, spec.url.port, on_pinned=_say_pinned(spec)),
        connect_timeout=timeout,
    )
    hello = _hello(spec)
    try:
        reader, writer = await conn.open_stream()
        stream = _Stream(reader, writer)
        await _send(stream, [hello], Limits().max_payload)
        writer.write_eof()
        (welcome,), _ = await _receive(stream, hello, Limits())
        writer.close()
    except BaseException:
        await conn.close()
        raise
    assert isinstance(welcome, Welcome)
    session = RemoteSession(conn, spec, welcome)
    if conn.transport_name == "tcp":
        session._authed.add(reader)
    return session
