"""The asyncio glue between a transport stream and ``RemoteService``: one request per call.

Frames are read with ``RequestAssembler.bytes_needed`` (exactly one header, then exactly one
payload), so a request is never read past its FINAL frame. Work that hashes, decompresses or
touches storage runs in a thread pool (BLAKE3, zstd and LMDB release the GIL). Uploads are
processed batch by batch while the next batch is read, so the network and the CPU overlap
with at most two batches in memory.

A PutSpeculative request is stored like a push upload, batch by batch, but as one unit: when
the server refuses a batch (quota, bad bytes), the entries its earlier batches created are
removed again before the Error goes out (``SpeculativeUpload.abort``). A client that goes away
mid-request keeps the batches already stored; they expire like any speculative upload.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from dits.protocol import (
    Blob,
    Get,
    Have,
    HaveResult,
    Hello,
    ListRefs,
    Message,
    Permission,
    Ping,
    Pong,
    ProtocolViolation,
    PutChunk,
    PutObject,
    PutResult,
    PutSpeculative,
    Refs,
    RefsUpdated,
    RemoteError,
    RequestAssembler,
    Stats,
    StatsResult,
    UnauthenticatedError,
    UpdateRefs,
    Welcome,
    encode_message,
    error_frame_for,
    negotiate_version,
)
from dits.transport import ConnInfo, StreamWriterLike
from remote.service import RemoteService, Session

__all__ = ["RequestHandler"]

log = logging.getLogger("dits.remote")

_T = TypeVar("_T")
_BATCH_BYTES = 8 << 20  # per upload stream, two in flight: bounds server memory
_READ_BLOCK = 1 << 20
_request_ids = itertools.count(1)
_PUTS = (PutChunk, PutObject, PutSpeculative)
_DISCARD_BYTES = 256 << 20  # of a refused upload read and dropped so the client hears why
_DISCARD_SECONDS = 30.0


class RequestHandler:
    """``dits.transport.Handler`` for dits-remote."""

    def __init__(self, service: RemoteService, *, threads: int = 4) -> None:
        self.service = service
        self.limits = service.limits
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="dits-remote")

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def __call__(
        self, reader: asyncio.StreamReader, writer: StreamWriterLike, info: ConnInfo
    ) -> None:
        rid = f"{info.conn_id}.{next(_request_ids)}"
        asm = RequestAssembler(self.limits)
        kind = "?"
        try:
            first = await self._read(reader, asm)
            if not first:
                return
            kind = type(first[0]).__name__
            await self._dispatch(first, asm, reader, writer, info, rid)
        except (asyncio.IncompleteReadError, ConnectionError):
            log.info("%s %s: client went away", rid, kind)
            writer.abort()
        except RemoteError as exc:
            level = logging.WARNING if isinstance(exc, ProtocolViolation) else logging.INFO
            log.log(level, "%s %s refused: %s", rid, kind, exc)
            if (
                not isinstance(exc, ProtocolViolation)
                and not asm.complete
                and info.transport_name != "quic"
            ):
                # A refusal mid-upload (quota, a bad chunk): the client is still sending. Over
                # TCP a dropped connection would reach it as a reset, never as this Error, so
                # the rest of the request is read and thrown away first (bounded). A QUIC
                # stream ends on its own; the connection and its other streams live on.
                await self._discard_rest(reader, asm)
            await self._send(writer, error_frame_for(exc))
            if isinstance(exc, ProtocolViolation) or not asm.complete:
                # The rest of this request cannot be parsed (or is not wanted). TCP drops the
                # connection after the Error frame is flushed; a QUIC stream just ends here,
                # because a reset could overtake the Error frame.
                if info.transport_name == "quic":
                    writer.write_eof()
                else:
                    writer.abort()
        except Exception as exc:
            log.exception("%s %s failed", rid, kind)
            await self._send(writer, error_frame_for(exc))

    async def _discard_rest(self, reader: asyncio.StreamReader, asm: RequestAssembler) -> None:
        """Read a refused request up to its FINAL frame, at most ``_DISCARD_BYTES`` more or
        for ``_DISCARD_SECONDS``; then the connection stays usable. Gives up quietly (the
        caller drops the connection as before) when the client sends more or stalls."""
        budget = _DISCARD_BYTES

        async def drain() -> None:
            nonlocal budget
            while not asm.complete and budget > 0:
                msgs = await self._read(reader, asm)
                budget -= sum(len(m.data) for m in msgs if isinstance(m, _PUTS))

        try:
            await asyncio.wait_for(drain(), _DISCARD_SECONDS)
        except (TimeoutError, RemoteError, asyncio.IncompleteReadError, ConnectionError):
            pass

    async def _read(self, reader: asyncio.StreamReader, asm: RequestAssembler) -> list[Message]:
        """Read until at least one message (or the request) is complete.

        Reads whatever has arrived, up to 1 MiB, rather than exactly one frame part:
        ``readexactly`` of a 256 KiB payload costs a copy plus a memmove of the rest of the
        stream buffer each time. Reading past a FINAL frame cannot happen, since a client
        sends its next request only after the response; if one did, the assembler refuses the
        extra bytes as a protocol violation.
        """
        while True:
            needed = asm.bytes_needed
            if needed == 0:
                return []
            data = await reader.read(max(needed, _READ_BLOCK))
            if not data:
                raise asyncio.IncompleteReadError(b"", needed)
            msgs = asm.feed(data)
            if msgs:
                return msgs

    async def _send(self, writer: StreamWriterLike, msg: Message) -> None:
        try:
            for buf in encode_message(msg, final=True, max_payload=self.limits.max_payload):
                writer.write(buf)
            await writer.drain()
        except (ConnectionError, RuntimeError):
            writer.abort()

    def _session(self, info: ConnInfo) -> Session:
        session = info.state.get("session")
        if session is None:
            raise UnauthenticatedError("send Hello first")
        assert isinstance(session, Session)
        self.service.check_session(session, info.state["token"])
        return session

    async def _dispatch(
        self,
        first: list[Message],
        asm: RequestAssembler,
        reader: asyncio.StreamReader,
        writer: StreamWriterLike,
        info: ConnInfo,
        rid: str,
    ) -> None:
        msg = first[0]
        svc = self.service
        if isinstance(msg, Ping):
            await self._send(writer, Pong(msg.nonce))
        elif isinstance(msg, Hello):
            version = negotiate_version(msg.versions)
            session = await self._run(svc.open_session, msg.token, msg.repo)
            info.state["session"] = session
            info.state["token"] = msg.token
            log.info(
                "%s hello repo=%s token=%s perms=%s agent=%s",
                rid,
                msg.repo,
                session.uploader.rstrip(b"\0").decode("ascii", "replace"),
                session.permissions,
                msg.agent,
            )
            await self._send(
                writer, Welcome(version, session.permissions, svc.server_id, self.limits)
            )
        elif isinstance(msg, ListRefs):
            session = await self._run(self._session, info)
            refs = await self._run(svc.list_refs, session, msg.prefix)
            head = "refs/heads/main" if "refs/heads/main" in refs else next(iter(refs), "")
            await self._send(writer, Refs(head, tuple(sorted(refs.items()))))
        elif isinstance(msg, Have):
            session = await self._run(self._session, info)
            present = await self._run(svc.have, session, msg.kind, msg.ids)
            await self._send(writer, HaveResult(msg.kind, tuple(present)))
        elif isinstance(msg, Get):
            session = await self._run(self._session, info)
            await self._serve_get(session, msg, writer)
        elif isinstance(msg, PutChunk | PutObject):
            session = await self._run(self._session, info)
            store = svc.put_chunks if isinstance(msg, PutChunk) else svc.put_objects
            await self._serve_put(session, store, first, asm, reader, writer, rid)
        elif isinstance(msg, PutSpeculative):
            session = await self._run(self._session, info)
            upload = await self._run(svc.speculative_upload, session)

            def store_speculative(_: Session, batch: list[Any]) -> tuple[int, int]:
                return upload.add(batch)

            try:
                await self._serve_put(session, store_speculative, first, asm, reader, writer, rid)
            except RemoteError:
                await self._run(upload.abort)  # a refused request stores nothing
                raise
        elif isinstance(msg, UpdateRefs):
            session = await self._run(self._session, info)
            started = time.perf_counter()
            report = await self._run(svc.update_refs, session, msg.changes)
            seconds = time.perf_counter() - started
            log.info(
                "%s update-refs repo=%s %s promoted=%d packs=%d bytes=%d in %.2f s (%s)",
                rid,
                session.repo,
                ",".join(c.name for c in msg.changes),
                report.promoted,
                report.packs,
                report.bytes_stored,
                seconds,
                " ".join(f"{k} {v:.3f}" for k, v in report.phases.items()),
            )
            await self._send(writer, RefsUpdated(len(msg.changes)))
            if report.released:
                await self._run(svc.temp_maintenance)
        elif isinstance(msg, Stats):
            session = await self._run(self._session, info)
            session.require(Permission.ADMIN)
            doc = {
                "server_id": svc.server_id,
                **svc.counters,
                **svc.index.stats(),
                **svc.speculative_stats(),
            }
            await self._send(writer, StatsResult(json.dumps(doc)))
        else:
            raise ProtocolViolation(f"{type(msg).__name__} is not a request")

    async def _serve_get(self, session: Session, msg: Get, writer: StreamWriterLike) -> None:
        """Stream the blobs, reading about one batch ahead: a Get may name thousands of
        chunks, and the server never holds more than a batch of them in memory."""
        blobs = self.service.get(session, msg.kind, msg.ids)

        def take() -> list[Blob]:
            group: list[Blob] = []
            size = 0
            while size < _BATCH_BYTES and (blob := next(blobs, None)) is not None:
                group.append(blob)
                size += len(blob.data)
            return group

        sent = 0
        while group := await self._run(take):
            for blob in group:
                sent += 1
                final = sent == len(msg.ids)
                for buf in encode_message(blob, final=final, max_payload=self.limits.max_payload):
                    writer.write(buf)
                await writer.drain()

    async def _serve_put(
        self,
        session: Session,
        store: Callable[[Session, list[Any]], tuple[int, int]],
        first: list[Message],
        asm: RequestAssembler,
        reader: asyncio.StreamReader,
        writer: StreamWriterLike,
        rid: str,
    ) -> None:
        batch: list[Any] = list(first)
        size = sum(len(m.data) for m in batch if isinstance(m, _PUTS))
        accepted = new = 0
        pending: asyncio.Future[tuple[int, int]] | None = None
        try:
            while not asm.complete:
                msgs = await self._read(reader, asm)
                batch += msgs
                size += sum(len(m.data) for m in msgs if isinstance(m, _PUTS))
                if size >= _BATCH_BYTES:
                    if pending is not None:
                        a, n = await pending
                        accepted, new = accepted + a, new + n
                    loop = asyncio.get_running_loop()
                    pending = loop.run_in_executor(self.pool, store, session, batch)
                    batch, size = [], 0
        except BaseException:
            if pending is not None:  # let the batch in flight finish before anyone undoes it
                await asyncio.gather(pending, return_exceptions=True)
            raise
        if pending is not None:
            a, n = await pending
            accepted, new = accepted + a, new + n
        if batch:
            a, n = await self._run(store, session, batch)
            accepted, new = accepted + a, new + n
        log.debug("%s put repo=%s accepted=%d new=%d", rid, session.repo, accepted, new)
        await self._send(writer, PutResult(accepted, new))
