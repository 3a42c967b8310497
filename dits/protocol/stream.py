"""One request or response per stream: turning a stream's bytes into checked messages. No I/O.

Theory of operation. A stream carries exactly one request (client to server) and its response
(server to client). Each side runs one object per stream and feeds it the bytes it reads:

* ``RequestAssembler`` (server side) decodes a request: its first frame fixes the kind; a
  put request (PutChunk, PutObject or PutSpeculative) may hold many messages, every other
  request is exactly one frame. Messages come out as they complete, so a put streams through
  without the whole request being buffered.
* ``ResponseReader`` (client side) decodes the response to a request it knows, and checks it
  against that request: the right message type, the same kind and count in a HaveResult, one
  Blob per requested id in request order, the echoed ping nonce, a version the client offered.
  An Error message may replace any response, or end a Get response early; it is returned like
  any message (``exception_for`` turns it into the exception to raise) and is always final.

Both enforce ``Limits`` *before* buffering: frame length (``FrameDecoder``), ids per Have/Get,
changes per UpdateRefs, chunk plain size, object data size. A PutObject or Blob whose data spans
frames is reassembled from DATA_PART frames (exactly the declared ``data_size``, nothing else
in between, FINAL only on the frame that completes a message). Any violation raises
``ProtocolViolation`` (or ``TooLargeError``) and leaves the object dead: the stream is lost.

What this module does not do: connection-level rules (Hello first, then requests allowed by
the granted permissions) belong to the server session, and verifying hashes of what arrives
belongs to whoever stores it (``decode_chunk_data`` and ``verify_chunk``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from dits.protocol.errors import ProtocolViolation, TooLargeError
from dits.protocol.frames import Buffer, Frame, FrameDecoder, FrameType
from dits.protocol.messages import (
    Blob,
    BlobKind,
    Error,
    Get,
    Have,
    HaveResult,
    Hello,
    Limits,
    Message,
    Ping,
    Pong,
    PutChunk,
    PutObject,
    PutSpeculative,
    RefsUpdated,
    UpdateRefs,
    Welcome,
    decode_message,
    encode_message,
)

__all__ = [
    "REQUEST_TYPES",
    "RESPONSE_TYPES",
    "RequestAssembler",
    "ResponseReader",
    "encode_request",
    "encode_response",
]

REQUEST_TYPES: dict[FrameType, frozenset[FrameType]] = {
    FrameType.HELLO: frozenset({FrameType.WELCOME}),
    FrameType.LIST_REFS: frozenset({FrameType.REFS}),
    FrameType.HAVE: frozenset({FrameType.HAVE_RESULT}),
    FrameType.PUT_CHUNK: frozenset({FrameType.PUT_RESULT}),
    FrameType.PUT_OBJECT: frozenset({FrameType.PUT_RESULT}),
    FrameType.GET: frozenset({FrameType.BLOB}),
    FrameType.UPDATE_REFS: frozenset({FrameType.REFS_UPDATED}),
    FrameType.STATS: frozenset({FrameType.STATS_RESULT}),
    FrameType.PING: frozenset({FrameType.PONG}),
    FrameType.PUT_SPECULATIVE: frozenset({FrameType.PUT_RESULT}),
}
"""Request frame type -> the success message types of its response (Error is always allowed)."""

RESPONSE_TYPES: frozenset[FrameType] = frozenset(
    {t for types in REQUEST_TYPES.values() for t in types} | {FrameType.ERROR}
)

_MULTI_MESSAGE = frozenset(
    {FrameType.PUT_CHUNK, FrameType.PUT_OBJECT, FrameType.BLOB, FrameType.PUT_SPECULATIVE}
)
_SPANNING = frozenset({FrameType.PUT_OBJECT, FrameType.BLOB})


class _MessageStream:
    """Frames -> messages for one direction of one stream, reassembling DATA_PART frames."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._decoder = FrameDecoder(limits.max_payload)
        self._partial: PutObject | Blob | None = None
        self._partial_size = 0
        self._partial_buf = bytearray()
        self._failed = False
        self.complete = False
        """True once the FINAL frame has been processed."""
        self.count = 0
        """Messages returned so far."""

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Consume bytes read from the stream; return the messages they complete, in order.

        Raises:
            ProtocolViolation: malformed or out-of-order frames, bytes after the FINAL frame.
            TooLargeError: a limit was exceeded.
        """
        if self._failed:
            raise ProtocolViolation("stream already failed")
        out: list[Message] = []
        try:
            for frame in self._decoder.feed(data):
                msg = self._frame(frame)
                if msg is not None:
                    out.append(msg)
        except ProtocolViolation:
            self._failed = True
            raise
        return out

    @property
    def bytes_needed(self) -> int:
        """Bytes to read next without reading past the FINAL frame; 0 once complete.

        The glue loops ``feed(await reader.readexactly(n))`` while ``n := bytes_needed``: exactly
        one header, then exactly one payload, so a payload arrives whole (uncopied) and the
        bytes of the next request on a pooled TCP connection stay unread.
        """
        return 0 if self.complete else self._decoder.bytes_needed

    def eof(self) -> None:
        """Declare the end of the stream.

        Raises:
            ProtocolViolation: the stream ended before the FINAL frame (or inside a frame).
        """
        self._decoder.eof()
        if not self.complete:
            self._failed = True
            raise ProtocolViolation("stream ended before the FINAL frame")

    def _frame(self, frame: Frame) -> Message | None:
        if self.complete:
            raise ProtocolViolation(f"{frame.type.name} frame after the FINAL frame")
        if self._partial is not None:
            return self._continue(frame)
        if frame.type is FrameType.DATA_PART:
            raise ProtocolViolation("DATA_PART frame without a message to continue")
        self._check_type(frame)
        msg: Message
        if frame.type in _SPANNING:
            head: PutObject | Blob
            head, size = (PutObject if frame.type is FrameType.PUT_OBJECT else Blob).decode_head(
                frame.payload
            )
            self._check(head, size)  # limits are checked before any data is buffered
            if memoryview(head.data).nbytes < size:
                if frame.final:
                    raise ProtocolViolation(f"FINAL on an incomplete {frame.type.name}")
                self._partial = head
                self._partial_size = size
                self._partial_buf = bytearray(head.data)
                return None
            msg = head
        else:
            msg = decode_message(frame)
            self._check(msg, 0)
        return self._deliver(msg, frame.final)

    def _continue(self, frame: Frame) -> Message | None:
        assert self._partial is not None
        if frame.type is not FrameType.DATA_PART:
            raise ProtocolViolation(f"{frame.type.name} frame inside a message's DATA_PART run")
        size = len(frame.payload)
        if size == 0:
            raise ProtocolViolation("empty DATA_PART frame")
        buf = self._partial_buf
        if len(buf) + size > self._partial_size:
            raise ProtocolViolation("DATA_PART frames exceed the declared data_size")
        buf += frame.payload
        if len(buf) < self._partial_size:
            if frame.final:
                raise ProtocolViolation("FINAL on a DATA_PART before the message is complete")
            return None
        msg = replace(self._partial, data=memoryview(buf))
        self._partial = None
        self._partial_buf = bytearray()
        return self._deliver(msg, frame.final)

    def _deliver(self, msg: Message, final: bool) -> Message:
        self.count += 1
        if final:
            self._finish(msg)
            self.complete = True
        return msg

    def _finish(self, last: Message) -> None:
        """Check the request or response as a whole once its FINAL message arrived."""

    def _check_type(self, frame: Frame) -> None:
        raise NotImplementedError

    def _check(self, msg: Message, data_size: int) -> None:
        """Enforce limits and consistency on a message; ``data_size`` for PutObject/Blob."""


class RequestAssembler(_MessageStream):
    """Server side: decode the one request on a stream (see the module docstring).

    Args:
        limits: the limits the server announced in its Welcome.

    Attributes:
        kind: the frame type of the request's first message, None before it arrives.
        complete: the FINAL frame has arrived; the response may be sent.
        count: messages returned so far (a put reply's ``accepted``).
    """

    def __init__(self, limits: Limits) -> None:
        super().__init__(limits)
        self.kind: FrameType | None = None

    def _check_type(self, frame: Frame) -> None:
        if self.kind is None:
            if frame.type not in REQUEST_TYPES:
                raise ProtocolViolation(f"{frame.type.name} is not a request")
            if frame.type not in _MULTI_MESSAGE and not frame.final:
                raise ProtocolViolation(f"a {frame.type.name} request is a single FINAL frame")
            self.kind = frame.type
        elif frame.type is not self.kind:
            raise ProtocolViolation(f"{frame.type.name} frame in a {self.kind.name} request")

    def _check(self, msg: Message, data_size: int) -> None:
        lim = self.limits
        if isinstance(msg, Have | Get) and len(msg.ids) > lim.max_batch:
            raise TooLargeError(f"{len(msg.ids)} ids exceed max_batch {lim.max_batch}")
        if isinstance(msg, UpdateRefs) and len(msg.changes) > lim.max_batch:
            raise TooLargeError(f"{len(msg.changes)} ref changes exceed max_batch {lim.max_batch}")
        if isinstance(msg, PutChunk | PutSpeculative) and msg.plain_size > lim.max_chunk_size:
            raise TooLargeError(
                f"chunk of {msg.plain_size} bytes exceeds max_chunk_size {lim.max_chunk_size}",
                ids=[msg.id],
            )
        if isinstance(msg, PutObject) and data_size > lim.max_object_size:
            raise TooLargeError(
                f"object of {data_size} bytes exceeds max_object_size {lim.max_object_size}",
                ids=[msg.id],
            )


class ResponseReader(_MessageStream):
    """Client side: decode and check the response to ``request`` (see the module docstring).

    Args:
        request: the request sent on this stream (for a put, any of its messages).
        limits: the client's limits narrowed by the server's (``Limits.narrowed``); for the
            Welcome itself, the client's own.

    Attributes:
        complete: the FINAL frame has arrived.
        count: messages returned so far.
        error: the Error message, if the server sent one (always the last message).
    """

    def __init__(self, request: Message, limits: Limits) -> None:
        super().__init__(limits)
        if request.TYPE not in REQUEST_TYPES:
            raise ValueError(f"{type(request).__name__} is not a request")
        self.request = request
        self.error: Error | None = None
        self._allowed = REQUEST_TYPES[request.TYPE]

    def _check_type(self, frame: Frame) -> None:
        if frame.type is FrameType.ERROR:
            if not frame.final:
                raise ProtocolViolation("an Error frame must be FINAL")
            return
        if frame.type not in self._allowed:
            raise ProtocolViolation(
                f"{frame.type.name} frame in the response to {self.request.TYPE.name}"
            )
        if frame.type is FrameType.BLOB:
            assert isinstance(self.request, Get)
            if self.count >= len(self.request.ids):
                raise ProtocolViolation("more Blobs than ids requested")
        elif not frame.final:
            raise ProtocolViolation(f"a {frame.type.name} response is a single FINAL frame")

    def _check(self, msg: Message, data_size: int) -> None:
        req = self.request
        if isinstance(msg, Error):
            self.error = msg
        elif isinstance(msg, Welcome):
            assert isinstance(req, Hello)
            if msg.version not in req.versions:
                raise ProtocolViolation(f"server chose version {msg.version}, not offered")
        elif isinstance(msg, HaveResult):
            assert isinstance(req, Have)
            if msg.kind != req.kind or len(msg.present) != len(req.ids):
                raise ProtocolViolation("HaveResult does not match its Have")
        elif isinstance(msg, Blob):
            assert isinstance(req, Get)
            expected = req.ids[self.count]
            if msg.id != expected:
                raise ProtocolViolation(
                    f"Blob {msg.id.hex()} out of order (expected {expected.hex()})"
                )
            cap = (
                self.limits.max_chunk_size
                if req.kind == BlobKind.CHUNK
                else self.limits.max_object_size
            )
            if msg.plain_size > cap:
                raise TooLargeError(f"Blob of {msg.plain_size} bytes exceeds {cap}", ids=[msg.id])
        elif isinstance(msg, Pong):
            assert isinstance(req, Ping)
            if msg.nonce != req.nonce:
                raise ProtocolViolation("Pong nonce does not match the Ping")
        elif isinstance(msg, RefsUpdated):
            assert isinstance(req, UpdateRefs)
            if msg.count != len(req.changes):
                raise ProtocolViolation("RefsUpdated count does not match the request")

    def _finish(self, last: Message) -> None:
        if isinstance(last, Blob):
            assert isinstance(self.request, Get)
            if self.count != len(self.request.ids):
                raise ProtocolViolation(
                    f"response ended after {self.count} of {len(self.request.ids)} Blobs"
                )


def _encode_all(messages: Sequence[Message], max_payload: int) -> list[Buffer]:
    out: list[Buffer] = []
    last = len(messages) - 1
    for i, msg in enumerate(messages):
        out.extend(encode_message(msg, final=i == last, max_payload=max_payload))
    return out


def encode_request(messages: Iterable[Message], *, max_payload: int) -> list[Buffer]:
    """Return the buffers of a whole request, FINAL on its last frame.

    For a put that streams, call ``encode_message`` per message instead (``final=True`` on
    the last one).

    Args:
        messages: one request message, or one or more PutChunk, PutObject or PutSpeculative
            (one type per request).
        max_payload: the server's ``Limits.max_payload``.

    Raises:
        ValueError: not a valid request (empty, mixed types, a response type, ...) or a field
            that cannot be encoded.
    """
    msgs = list(messages)
    if not msgs:
        raise ValueError("a request has at least one message")
    kind = msgs[0].TYPE
    if kind not in REQUEST_TYPES:
        raise ValueError(f"{kind.name} is not a request")
    if len(msgs) > 1 and (kind not in _MULTI_MESSAGE or any(m.TYPE is not kind for m in msgs)):
        raise ValueError("only a put request holds several messages, all of one type")
    return _encode_all(msgs, max_payload)


def encode_response(messages: Iterable[Message], *, max_payload: int) -> list[Buffer]:
    """Return the buffers of a whole response, FINAL on its last frame.

    Args:
        messages: one response message; or Blobs, optionally ending with an Error.
        max_payload: the ``Limits.max_payload`` in force.

    Raises:
        ValueError: not a valid response, or a field that cannot be encoded.
    """
    msgs = list(messages)
    if not msgs:
        raise ValueError("a response has at least one message")
    for msg in msgs:
        if msg.TYPE not in RESPONSE_TYPES:
            raise ValueError(f"{msg.TYPE.name} is not a response")
    if len(msgs) > 1 and (
        any(m.TYPE is not FrameType.BLOB for m in msgs[:-1])
        or msgs[-1].TYPE not in (FrameType.BLOB, FrameType.ERROR)
    ):
        raise ValueError("only Blobs (and a closing Error) make a multi-message response")
    return _encode_all(msgs, max_payload)
