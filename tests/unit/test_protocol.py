"""The wire protocol: golden bytes, round trips, strict and bounded decoding, error mapping."""

from __future__ import annotations

import ast
import functools
import random
import struct
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from dits.core.ids import ObjectId, hash_bytes
from dits.errors import EXIT_CONFLICT, EXIT_CORRUPT, EXIT_USAGE, DitsError, ObjectNotFoundError
from dits.protocol import (
    FLAG_FINAL,
    Blob,
    BlobKind,
    Encoding,
    Error,
    ErrorCode,
    FrameDecoder,
    FrameType,
    Get,
    HashMismatchError,
    Have,
    HaveResult,
    Hello,
    InternalServerError,
    Limits,
    ListRefs,
    Message,
    NonFastForwardError,
    NotFoundError,
    Permission,
    Ping,
    Pong,
    ProtocolViolation,
    PutChunk,
    PutObject,
    PutResult,
    PutSpeculative,
    RefChange,
    Refs,
    RefsUpdated,
    RemoteError,
    RequestAssembler,
    ResponseReader,
    StaleRefError,
    Stats,
    StatsResult,
    TooLargeError,
    UnsupportedVersionError,
    UpdateRefs,
    Welcome,
    decode_chunk_data,
    decode_message,
    encode_frame,
    encode_message,
    encode_request,
    encode_response,
    error_frame_for,
    exception_for,
    negotiate_version,
    verify_chunk,
)
from dits.protocol.errors import MAX_ERROR_IDS, error_class_for
from dits.protocol.messages import MAX_IDS, MIN_PAYLOAD
from dits.protocol.stream import REQUEST_TYPES

ROOT = Path(__file__).resolve().parents[2]
LIMITS = Limits()
MAXP = LIMITS.max_payload
A = hash_bytes(b"a")
B = hash_bytes(b"b")


def u16(n: int) -> bytes:
    return n.to_bytes(2, "little")


def u32(n: int) -> bytes:
    return n.to_bytes(4, "little")


def join(buffers: list[bytes | memoryview]) -> bytes:
    return b"".join(bytes(b) for b in buffers)


def frames_of(msg: Message, final: bool = True, max_payload: int = MAXP) -> bytes:
    return join(encode_message(msg, final=final, max_payload=max_payload))


# --- golden bytes ---------------------------------------------------------------------------


def test_frame_header_golden_bytes() -> None:
    assert join(encode_frame(FrameType.PING, b"12345678", final=True)) == (
        b"\x20\x01\x00\x00\x08\x00\x00\x0012345678"
    )
    assert join(encode_frame(FrameType.STATS, b"", final=False)) == b"\x1c" + bytes(7)


def test_hello_golden_bytes() -> None:
    msg = Hello(versions=(1, 2), token=b"tk", repo="films/cut", agent="dits/0.1")
    assert msg.encode() == (
        b"\x02" + u16(1) + u16(2) + u16(2) + b"tk" + u16(9) + b"films/cut" + u16(8) + b"dits/0.1"
    )
    assert frames_of(msg) == b"\x01\x01\x00\x00" + u32(30) + msg.encode()


def test_welcome_golden_bytes() -> None:
    msg = Welcome(1, Permission.READ | Permission.WRITE, "s1", LIMITS)
    assert msg.encode() == (
        u16(1)
        + b"\x03"
        + u16(2)
        + b"s1"
        + u32(8 * 1024 * 1024 + 64)
        + u32(4 * 1024 * 1024)
        + u32(16384)
        + u16(64)
        + u32(64 * 1024 * 1024)
    )


def test_have_and_have_result_golden_bytes() -> None:
    assert Have(BlobKind.CHUNK, (A, B)).encode() == b"\x01" + u32(2) + A + B
    flags = (True, False, False, False, False, False, False, False, False, True)
    assert HaveResult(BlobKind.OBJECT, flags).encode() == b"\x02" + u32(10) + b"\x01\x02"


def test_put_chunk_and_blob_golden_bytes() -> None:
    assert PutChunk(A, Encoding.RAW, 3, b"xyz").encode() == A + b"\x00" + u32(3) + b"xyz"
    assert Blob(A, Encoding.RAW, 3, b"xyz").encode() == A + b"\x00" + u32(3) + u32(3) + b"xyz"
    assert PutObject(A, b"obj").encode() == A + u32(3) + b"obj"


def test_put_speculative_golden_bytes() -> None:
    msg = PutSpeculative(A, Encoding.RAW, 3, b"xyz")
    assert msg.encode() == A + b"\x00" + u32(3) + b"xyz"  # PutChunk's layout
    assert frames_of(msg) == b"\x1e\x01\x00\x00" + u32(40) + A + b"\x00" + u32(3) + b"xyz"
    assert frames_of(msg, final=False)[:2] == b"\x1e\x00"
    frame = zstandard.ZstdCompressor().compress(b"abc" * 100)
    zstd = PutSpeculative(A, Encoding.ZSTD, 300, frame)
    assert zstd.encode() == A + b"\x01" + u32(300) + frame
    chunk = PutChunk(A, Encoding.ZSTD, 300, frame)
    assert PutSpeculative.of(chunk) == zstd and frames_of(chunk)[1:] == frames_of(zstd)[1:]


def test_update_refs_and_error_golden_bytes() -> None:
    msg = UpdateRefs((RefChange("refs/heads/main", None, A, force=True),))
    assert msg.encode() == u32(1) + u16(15) + b"refs/heads/main" + bytes(32) + A + b"\x01"
    err = Error(ErrorCode.STALE_REF, "moved", (B,), "refs/heads/main")
    assert err.encode() == u16(9) + u16(5) + b"moved" + u16(1) + B + u16(15) + b"refs/heads/main"
    assert frames_of(err)[:8] == b"\x7f\x01\x00\x00" + u32(len(err.encode()))


# --- round trips ----------------------------------------------------------------------------

ids = st.binary(min_size=32, max_size=32).filter(any).map(ObjectId)
texts = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40)
kinds = st.sampled_from(BlobKind)


@st.composite
def limits(draw: st.DrawFn) -> Limits:
    payload = draw(st.integers(MIN_PAYLOAD, 2**32 - 1))
    return Limits(
        max_payload=payload,
        max_chunk_size=draw(st.integers(1, payload - 64)),
        max_batch=draw(st.integers(1, min(MAX_IDS, (payload - 5) // 32))),
        max_streams=draw(st.integers(1, 65535)),
        max_object_size=draw(st.integers(1, 2**32 - 1)),
    )


@st.composite
def chunk_fields(draw: st.DrawFn) -> tuple[ObjectId, Encoding, int, bytes]:
    data = draw(st.binary(max_size=200))
    encoding = draw(st.sampled_from(Encoding))
    plain = len(data) if encoding == Encoding.RAW else draw(st.integers(len(data), 2**32 - 1))
    return draw(ids), encoding, plain, data


def ref_change(name: str, old: ObjectId | None, new: ObjectId | None, force: bool) -> RefChange:
    return RefChange(name, old, new if (old or new) else A, force)


messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(
        Hello,
        st.lists(st.integers(0, 65535), min_size=1, max_size=5).map(tuple),
        st.binary(max_size=64),
        texts,
        texts,
    ),
    st.builds(Welcome, st.integers(0, 65535), st.integers(0, 7).map(Permission), texts, limits()),
    st.builds(ListRefs, texts),
    st.builds(Refs, texts, st.dictionaries(texts, ids, max_size=5).map(lambda d: tuple(d.items()))),
    st.builds(Have, kinds, st.lists(ids, max_size=5).map(tuple)),
    st.builds(HaveResult, kinds, st.lists(st.booleans(), max_size=40).map(tuple)),
    chunk_fields().map(lambda f: PutChunk(*f)),
    st.builds(PutObject, ids, st.binary(max_size=200)),
    st.integers(0, 2**32 - 1).flatmap(
        lambda a: st.builds(PutResult, st.just(a), st.integers(0, a))
    ),
    st.builds(Get, kinds, st.lists(ids, min_size=1, max_size=5).map(tuple)),
    chunk_fields().map(lambda f: Blob(*f)),
    st.builds(
        UpdateRefs,
        st.dictionaries(
            texts.filter(bool),
            st.tuples(st.none() | ids, st.none() | ids, st.booleans()),
            max_size=4,
        ).map(lambda d: tuple(ref_change(n, *v) for n, v in d.items())),
    ),
    st.builds(RefsUpdated, st.integers(0, 2**32 - 1)),
    st.just(Stats()),
    st.dictionaries(texts, st.integers() | texts | st.booleans(), max_size=5).map(
        StatsResult.from_dict
    ),
    st.builds(Ping, st.binary(min_size=8, max_size=8)),
    st.builds(Pong, st.binary(min_size=8, max_size=8)),
    st.builds(Error, st.integers(0, 65535), texts, st.lists(ids, max_size=3).map(tuple), texts),
)


@given(messages)
def test_every_message_round_trips(msg: Message) -> None:
    payload = msg.encode()
    assert type(msg).decode(payload) == msg
    frames = FrameDecoder(MAXP).feed(frames_of(msg))
    assert len(frames) == 1 and frames[0].final and frames[0].type is msg.TYPE
    assert decode_message(frames[0]) == msg


@given(messages)
def test_every_truncation_and_extension_is_rejected(msg: Message) -> None:
    payload = msg.encode()
    cls = type(msg)
    for cut in range(len(payload)):
        try:
            decoded = cls.decode(payload[:cut])
        except ProtocolViolation:
            continue
        # Only messages whose last field is "the rest of the payload" may decode shorter.
        assert isinstance(msg, PutChunk) and decoded != msg
    if not isinstance(msg, PutChunk):
        with pytest.raises(ProtocolViolation):
            cls.decode(payload + b"\x00")


@given(limits(), limits())
def test_narrowed_limits_stay_valid(a: Limits, b: Limits) -> None:
    c = a.narrowed(b)
    assert c.max_payload == min(a.max_payload, b.max_payload)
    assert c.max_object_size == min(a.max_object_size, b.max_object_size)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_payload": MIN_PAYLOAD - 1},
        {"max_chunk_size": MAXP},
        {"max_batch": 0},
        {"max_batch": MAX_IDS + 1},
        {"max_streams": 0},
        {"max_object_size": 2**32},
    ],
)
def test_unusable_limits_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        Limits(**kwargs)


def test_welcome_with_unusable_limits_is_a_protocol_violation() -> None:
    payload = bytearray(Welcome(1, Permission.READ, "", LIMITS).encode())
    payload[5:9] = u32(1024)  # max_payload below MIN_PAYLOAD
    with pytest.raises(ProtocolViolation, match="limits"):
        Welcome.decode(bytes(payload))
    bad_bits = bytearray(Welcome(1, Permission.READ, "", LIMITS).encode())
    bad_bits[2] = 0x08
    with pytest.raises(ProtocolViolation, match="permission"):
        Welcome.decode(bytes(bad_bits))


def test_negotiate_version() -> None:
    assert negotiate_version([7, 1, 3]) == 1
    with pytest.raises(UnsupportedVersionError):
        negotiate_version([2, 3])


def test_strict_decoding_details() -> None:
    with pytest.raises(ProtocolViolation, match="UTF-8"):
        ListRefs.decode(u16(2) + b"\xc3\x28")
    with pytest.raises(ProtocolViolation, match="no protocol versions"):
        Hello.decode(b"\x00" + u16(0) + u16(0) + u16(0))
    with pytest.raises(ProtocolViolation, match="BlobKind"):
        Have.decode(b"\x03" + u32(0))
    with pytest.raises(ProtocolViolation, match="ids but"):
        Have.decode(b"\x01" + u32(2) + A)
    with pytest.raises(ProtocolViolation, match="cap"):
        Get.decode(b"\x01" + u32(MAX_IDS + 1))
    with pytest.raises(ProtocolViolation, match="no ids"):
        Get.decode(b"\x01" + u32(0))
    with pytest.raises(ProtocolViolation, match="duplicate"):
        Refs.decode(u16(0) + u32(2) + (u16(1) + b"x" + A) * 2)
    with pytest.raises(ProtocolViolation, match="cannot fit"):
        Refs.decode(u16(0) + u32(2**32 - 1))
    with pytest.raises(ProtocolViolation, match="neither"):
        UpdateRefs.decode(u32(1) + u16(1) + b"x" + bytes(64) + b"\x00")
    with pytest.raises(ProtocolViolation, match="force"):
        UpdateRefs.decode(u32(1) + u16(1) + b"x" + A + B + b"\x02")
    with pytest.raises(ProtocolViolation, match="stored_new"):
        PutResult.decode(u32(1) + u32(2))
    with pytest.raises(ProtocolViolation, match="cap"):
        Error.decode(u16(1) + u16(0) + u16(MAX_ERROR_IDS + 1))
    with pytest.raises(ProtocolViolation, match="JSON"):
        StatsResult.decode(u32(1) + b"[")
    with pytest.raises(ProtocolViolation, match="JSON"):
        deep = b"[" * 100_000
        StatsResult.decode(u32(len(deep)) + deep)
    with pytest.raises(ProtocolViolation, match="object"):
        StatsResult.decode(u32(2) + b"[]")
    with pytest.raises(ProtocolViolation, match="raw data"):
        PutChunk.decode(A + b"\x00" + u32(4) + b"xyz")
    with pytest.raises(ProtocolViolation, match="too long"):
        Blob.decode(A + b"\x01" + u32(0) + u32(2000) + bytes(2000))
    with pytest.raises(ProtocolViolation, match="DATA_PART"):
        PutObject.decode(A + u32(10) + b"abc")


def test_encoding_unrepresentable_values_is_a_local_error() -> None:
    with pytest.raises(ValueError):
        ListRefs("x" * 70_000).encode()
    with pytest.raises(ValueError):
        Have(BlobKind.CHUNK, (ObjectId(b"short"),)).encode()
    with pytest.raises(ValueError):
        Ping(b"1234").encode()
    with pytest.raises(ValueError):
        PutChunk(A, Encoding.RAW, 5, b"1234").encode()
    with pytest.raises(ValueError):
        Get(BlobKind.CHUNK, ()).encode()
    with pytest.raises(ValueError):
        Welcome(1, Permission(8), "", LIMITS).encode()
    with pytest.raises(ValueError, match="all-zero"):
        UpdateRefs((RefChange("r", None, ObjectId(bytes(32))),)).encode()
    with pytest.raises(ValueError, match="exceeds max_payload"):
        encode_message(Refs("", (("x" * 60_000, A),) * 10), final=True, max_payload=MIN_PAYLOAD)


# --- bitmap ---------------------------------------------------------------------------------


def test_have_result_bitmap_length_and_padding_are_checked() -> None:
    assert HaveResult.decode(b"\x01" + u32(3) + b"\x05").present == (True, False, True)
    with pytest.raises(ProtocolViolation, match="padding"):
        HaveResult.decode(b"\x01" + u32(3) + b"\x0d")
    with pytest.raises(ProtocolViolation, match="bitmap"):
        HaveResult.decode(b"\x01" + u32(3) + b"\x05\x00")
    with pytest.raises(ProtocolViolation, match="bitmap"):
        HaveResult.decode(b"\x01" + u32(9) + b"\x05")
    assert HaveResult.decode(b"\x01" + u32(0)).present == ()


def test_have_result_helpers() -> None:
    req = (A, B, hash_bytes(b"c"))
    res = HaveResult.for_ids(BlobKind.CHUNK, req, {A}.__contains__)
    assert res.present == (True, False, False)
    assert res.missing(req) == [B, hash_bytes(b"c")]


# --- frame decoder --------------------------------------------------------------------------


def sample_stream() -> bytes:
    msgs: list[Message] = [
        PutChunk(hash_bytes(bytes(n)), Encoding.RAW, n, bytes(n)) for n in (0, 1, 100, 70_000)
    ]
    return join(encode_request(msgs, max_payload=MAXP))


def test_decoder_gives_the_same_frames_for_any_split() -> None:
    data = sample_stream()
    whole = [(f.type, f.final, bytes(f.payload)) for f in FrameDecoder(MAXP).feed(data)]
    assert len(whole) == 4 and whole[-1][1] and not whole[0][1]

    dec = FrameDecoder(MAXP)
    one_by_one = []
    for i in range(len(data)):
        one_by_one += dec.feed(data[i : i + 1])
    dec.eof()
    assert [(f.type, f.final, bytes(f.payload)) for f in one_by_one] == whole

    rng = random.Random(1234)
    for _ in range(200):
        dec = FrameDecoder(MAXP)
        got = []
        pos = 0
        while pos < len(data):
            step = rng.choice((1, 2, 7, 8, 9, 100, 4096, 70_000))
            got += dec.feed(memoryview(data)[pos : pos + step])
            pos += step
        dec.eof()
        assert [(f.type, f.final, bytes(f.payload)) for f in got] == whole


def test_whole_frames_are_not_copied_and_split_ones_once() -> None:
    payload = bytes(4 * 1024 * 1024)
    data = join(encode_frame(FrameType.PUT_CHUNK, payload, True))
    (frame,) = FrameDecoder(MAXP).feed(data)
    assert frame.payload.obj is data  # a view of the fed buffer
    dec = FrameDecoder(MAXP)
    frames = []
    for i in range(0, len(data), 65536):
        frames += dec.feed(data[i : i + 65536])
    (frame,) = frames
    assert isinstance(frame.payload.obj, bytes) and len(frame.payload.obj) == len(payload)


def test_absurd_lengths_are_rejected_before_allocation() -> None:
    for length in (MAXP + 1, 2**31, 2**32 - 1):
        dec = FrameDecoder(MAXP)
        tracemalloc.start()
        try:
            with pytest.raises(TooLargeError, match="exceeds the limit"):
                dec.feed(struct.pack("<BBHI", FrameType.PUT_CHUNK, 1, 0, length) + b"x" * 10)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 1024 * 1024
        with pytest.raises(ProtocolViolation, match="after a protocol error"):
            dec.feed(b"")
    # The header alone is enough to refuse, even split.
    dec = FrameDecoder(1000)
    assert dec.feed(b"\x14\x01\x00\x00") == []
    with pytest.raises(TooLargeError):
        dec.feed(u32(1001))


@pytest.mark.parametrize(
    "header",
    [
        b"\x03\x01\x00\x00\x00\x00\x00\x00",  # unknown type
        b"\xff\x01\x00\x00\x00\x00\x00\x00",  # unknown type
        b"\x20\x02\x00\x00\x08\x00\x00\x00",  # unknown flag bit 1
        b"\x20\x81\x00\x00\x08\x00\x00\x00",  # unknown flag bit 7
        b"\x20\x01\x01\x00\x08\x00\x00\x00",  # reserved not zero
        b"\x20\x01\x00\x80\x08\x00\x00\x00",  # reserved not zero
    ],
)
def test_bad_headers_are_rejected(header: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        FrameDecoder(MAXP).feed(header)


def test_truncated_frames_fail_at_eof() -> None:
    data = frames_of(Ping(b"12345678"))
    for cut in range(1, len(data)):
        dec = FrameDecoder(MAXP)
        assert dec.feed(data[:cut]) == []
        assert dec.pending == cut
        with pytest.raises(ProtocolViolation, match="inside a frame"):
            dec.eof()
    dec = FrameDecoder(MAXP)
    dec.feed(data)
    dec.eof()


def test_data_part_is_not_a_message() -> None:
    (frame,) = FrameDecoder(MAXP).feed(join(encode_frame(FrameType.DATA_PART, b"x", True)))
    with pytest.raises(ProtocolViolation, match="DATA_PART"):
        decode_message(frame)


# --- chunk data -----------------------------------------------------------------------------


def zstd(data: bytes, **kwargs: Any) -> bytes:
    return zstandard.ZstdCompressor(level=3, **kwargs).compress(data)


def test_chunk_data_raw_and_zstd() -> None:
    plain = b"timeline " * 1000
    oid = hash_bytes(plain)
    raw = PutChunk.decode(PutChunk(oid, Encoding.RAW, len(plain), plain).encode())
    assert bytes(decode_chunk_data(raw, LIMITS.max_chunk_size)) == plain
    for frame in (zstd(plain), zstd(plain, write_content_size=False)):
        msg = PutChunk(oid, Encoding.ZSTD, len(plain), frame)
        out = decode_chunk_data(msg, LIMITS.max_chunk_size)
        assert out == plain
        verify_chunk(oid, out)
    empty = PutChunk(hash_bytes(b""), Encoding.ZSTD, 0, zstd(b"", write_content_size=False))
    assert decode_chunk_data(empty, 10) == b""


def test_chunk_data_inconsistencies_are_rejected() -> None:
    plain = b"x" * 5000
    cap = LIMITS.max_chunk_size
    with pytest.raises(ProtocolViolation, match="raw data"):
        decode_chunk_data(PutChunk(A, Encoding.RAW, 10, b"short"), cap)
    with pytest.raises(TooLargeError, match="plain_size"):
        decode_chunk_data(PutChunk(A, Encoding.RAW, cap + 1, bytes(cap + 1)), cap)
    with pytest.raises(ProtocolViolation, match="declares"):
        decode_chunk_data(PutChunk(A, Encoding.ZSTD, 4999, zstd(plain)), cap)
    for size in (4999, 5001):  # no declared size: decodes to more, or fewer, bytes than claimed
        msg = PutChunk(A, Encoding.ZSTD, size, zstd(plain, write_content_size=False))
        with pytest.raises(ProtocolViolation, match="decode"):
            decode_chunk_data(msg, cap)
    for bad in (b"", b"garbage!", zstd(plain)[:-3], zstd(plain) + b"\x00", zstd(plain) * 2):
        with pytest.raises(ProtocolViolation):
            decode_chunk_data(PutChunk(A, Encoding.ZSTD, 5000, bad), cap)


def test_hash_mismatch() -> None:
    verify_chunk(A, b"a")
    with pytest.raises(HashMismatchError) as info:
        verify_chunk(A, b"b")
    assert info.value.ids == (A,) and info.value.code is ErrorCode.HASH_MISMATCH


@functools.cache
def gib_of_zeros(declare_size: bool) -> bytes:
    cobj = zstandard.ZstdCompressor(level=1, write_content_size=declare_size).compressobj(
        size=(1 << 30) if declare_size else -1
    )
    block = bytes(1 << 20)
    parts = [cobj.compress(block) for _ in range(1024)]
    parts.append(cobj.flush())
    return b"".join(parts)


@pytest.mark.parametrize("declare_size", [True, False])
def test_zstd_bomb_is_rejected_fast_without_allocating_it(declare_size: bool) -> None:
    bomb = gib_of_zeros(declare_size)
    assert len(bomb) < 64 * 1024
    cap = LIMITS.max_chunk_size
    msg = PutChunk(A, Encoding.ZSTD, cap, bomb)  # claims the largest allowed size
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ProtocolViolation):
            decode_chunk_data(msg, cap)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 1.0
    assert peak < 2 * cap


def test_zstd_frame_claiming_2_to_the_64_is_rejected() -> None:
    # magic, FHD (8-byte content size, not single segment), window byte, size, empty last block
    # (2**64-1 and 2**64-2 are zstd's "unknown" and "error" sentinels, hence 2**64-3)
    frame = b"\x28\xb5\x2f\xfd\xc0\x00" + (2**64 - 3).to_bytes(8, "little") + b"\x01\x00\x00"
    assert zstandard.frame_content_size(frame) == 2**64 - 3
    with pytest.raises(TooLargeError, match="declares"):
        decode_chunk_data(PutChunk(A, Encoding.ZSTD, 10, frame), LIMITS.max_chunk_size)


def test_zstd_window_is_capped() -> None:
    plain = random.Random(5).randbytes(100_000) * 2
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=23, write_content_size=0)
    cobj = zstandard.ZstdCompressor(compression_params=params).compressobj()
    frame = cobj.compress(plain) + cobj.flush()  # streaming: the 8 MiB window stays declared
    assert zstandard.get_frame_parameters(frame).window_size == 8 << 20
    msg = Blob(hash_bytes(plain), Encoding.ZSTD, len(plain), frame)
    assert decode_chunk_data(msg, 8 << 20) == plain
    with pytest.raises(ProtocolViolation, match="memory"):
        decode_chunk_data(msg, 1 << 20)


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_error_code_round_trips_to_the_same_class(code: ErrorCode) -> None:
    cls = error_class_for(code)
    assert issubclass(cls, RemoteError) and issubclass(cls, DitsError) and cls.code is code
    exc = cls("it failed", ids=[A, B], ref="refs/heads/main")
    wire = Error.decode(error_frame_for(exc).encode())
    back = exception_for(wire)
    assert type(back) is cls
    assert (back.message, back.ids, back.ref) == ("it failed", (A, B), "refs/heads/main")


def test_error_classes_carry_exit_codes_and_transience() -> None:
    assert StaleRefError("x").exit_code == EXIT_CONFLICT
    assert NonFastForwardError("x").exit_code == EXIT_CONFLICT
    assert HashMismatchError("x").exit_code == EXIT_CORRUPT
    assert error_class_for(ErrorCode.UNAUTHENTICATED)("x").exit_code == EXIT_USAGE
    assert error_class_for(ErrorCode.NOT_FOUND_OR_FORBIDDEN)("x").exit_code == EXIT_USAGE
    assert error_class_for(ErrorCode.BUSY).transient
    assert issubclass(TooLargeError, ProtocolViolation)


def test_error_frame_for_caps_and_hides() -> None:
    many = [hash_bytes(i.to_bytes(4, "little")) for i in range(1500)]
    err = error_frame_for(NotFoundError("x" * 100_000, ids=many))
    assert len(err.ids) == MAX_ERROR_IDS and len(err.message.encode()) <= 4096
    Error.decode(err.encode())
    leak = error_frame_for(OSError("/srv/dits/secret/path: permission denied"))
    assert leak.code == ErrorCode.INTERNAL and "srv" not in leak.message
    assert error_frame_for(ObjectNotFoundError("/srv/x")).code == ErrorCode.NOT_FOUND
    assert error_frame_for(ProtocolViolation("\udcff bad")).encode()  # surrogates survive


def test_a_full_server_disk_is_named_without_leaking_paths() -> None:
    from dits.errors import EXIT_IO, StorageFullError
    from dits.protocol import ServerStorageFullError

    frame = error_frame_for(StorageFullError("no space left on device: /srv/dits/temp/0001.pack"))
    assert frame.code == ErrorCode.STORAGE_FULL and "srv" not in frame.message
    exc = exception_for(Error.decode(frame.encode()))
    assert isinstance(exc, ServerStorageFullError) and exc.exit_code == EXIT_IO
    assert "out of storage space" in exc.message


def test_unknown_error_code_from_a_newer_server() -> None:
    exc = exception_for(Error(999, "new thing"))
    assert isinstance(exc, InternalServerError) and "999" in exc.message


# --- request and response streams -----------------------------------------------------------


def assemble(data: bytes, limits: Limits = LIMITS, step: int = 0) -> list[Message]:
    asm = RequestAssembler(limits)
    out: list[Message] = []
    for i in range(0, len(data), step or len(data) or 1):
        out += asm.feed(data[i : i + (step or len(data))])
    asm.eof()
    return out


def test_put_request_streams_messages_as_they_arrive() -> None:
    chunks = [PutChunk(hash_bytes(bytes([n])), Encoding.RAW, 1, bytes([n])) for n in range(5)]
    data = join(encode_request(chunks, max_payload=MAXP))
    asm = RequestAssembler(LIMITS)
    first = asm.feed(data[: len(data) // 2])
    assert first and not asm.complete and asm.kind is FrameType.PUT_CHUNK
    rest = asm.feed(data[len(data) // 2 :])
    asm.eof()
    assert first + rest == chunks and asm.complete and asm.count == 5


def test_bytes_needed_reads_exactly_one_request() -> None:
    chunks = [PutChunk(hash_bytes(bytes([n])), Encoding.RAW, 1, bytes([n])) for n in range(3)]
    first = join(encode_request(chunks, max_payload=MAXP))
    data = first + frames_of(Ping(b"12345678"))  # the next request on a pooled connection
    asm = RequestAssembler(LIMITS)
    pos = 0
    got: list[Message] = []
    while n := asm.bytes_needed:
        got += asm.feed(data[pos : pos + n])
        pos += n
    assert got == chunks and pos == len(first) and asm.complete


def test_large_objects_span_frames_and_reassemble() -> None:
    small = Limits(max_payload=MIN_PAYLOAD, max_chunk_size=1024, max_batch=16)
    big = random.Random(3).randbytes(3 * MIN_PAYLOAD + 17)
    obj = PutObject(hash_bytes(big), big)
    data = join(encode_request([obj, PutObject(A, b"a")], max_payload=small.max_payload))
    types = [f.type for f in FrameDecoder(small.max_payload).feed(data)]
    assert types.count(FrameType.DATA_PART) == 3
    for step in (0, 1000, 65536):
        got = assemble(data, small, step)
        assert got == [obj, PutObject(A, b"a")]

    get = Get(BlobKind.OBJECT, (obj.id, A))
    blobs = [Blob(obj.id, Encoding.RAW, len(big), big), Blob(A, Encoding.RAW, 1, b"a")]
    reader = ResponseReader(get, small)
    assert reader.feed(join(encode_response(blobs, max_payload=small.max_payload))) == blobs
    reader.eof()
    assert reader.complete


def test_object_over_the_limit_is_refused_before_its_data() -> None:
    small = Limits(max_object_size=1000)
    head = A + u32(2**32 - 1) + b"x"
    asm = RequestAssembler(small)
    with pytest.raises(TooLargeError, match="max_object_size"):
        asm.feed(join(encode_frame(FrameType.PUT_OBJECT, head, False)))
    with pytest.raises(ProtocolViolation):
        asm.feed(b"")


def pv(data: bytes, limits: Limits = LIMITS) -> str:
    with pytest.raises(ProtocolViolation) as info:
        assemble(data, limits)
    return str(info.value)


def test_request_assembler_rejects_bad_sequences() -> None:
    ping = frames_of(Ping(b"12345678"))
    chunk = PutChunk(A, Encoding.RAW, 1, b"a")
    assert "after the FINAL" in pv(ping + ping)
    assert "single FINAL" in pv(frames_of(Ping(b"12345678"), final=False))
    assert "not a request" in pv(frames_of(Pong(b"12345678")))
    assert "not a request" in pv(frames_of(Error(1, "x")))
    assert "in a PUT_CHUNK request" in pv(
        frames_of(chunk, final=False) + frames_of(PutObject(A, b"a"))
    )
    assert "before the FINAL" in pv(frames_of(chunk, final=False))
    assert "without a message" in pv(join(encode_frame(FrameType.DATA_PART, b"x", True)))
    split = A + u32(10) + b"abc"
    obj_head = join(encode_frame(FrameType.PUT_OBJECT, split, False))
    assert "incomplete" in pv(join(encode_frame(FrameType.PUT_OBJECT, split, True)))
    assert "empty DATA_PART" in pv(obj_head + join(encode_frame(FrameType.DATA_PART, b"", True)))
    assert "exceed" in pv(obj_head + join(encode_frame(FrameType.DATA_PART, b"x" * 8, True)))
    one_byte_final = join(encode_frame(FrameType.DATA_PART, b"x", True))
    assert "before the message" in pv(obj_head + one_byte_final)
    assert "inside" in pv(obj_head + frames_of(PutObject(A, b"a")))
    many = Have(BlobKind.CHUNK, tuple([A] * 17))
    assert "max_batch" in pv(frames_of(many), Limits(max_batch=16))
    big = PutChunk(A, Encoding.RAW, 2000, bytes(2000))
    assert "max_chunk_size" in pv(frames_of(big), Limits(max_chunk_size=1999))


def read(request: Message, response: bytes) -> list[Message]:
    reader = ResponseReader(request, LIMITS)
    out = reader.feed(response)
    reader.eof()
    return out


def test_response_reader_checks_against_the_request() -> None:
    hello = Hello((1,), b"", "r", "a")
    assert read(hello, frames_of(Welcome(1, Permission.READ, "s", LIMITS)))
    get = Get(BlobKind.CHUNK, (A, B))
    blob_a, blob_b = Blob(A, Encoding.RAW, 1, b"a"), Blob(B, Encoding.RAW, 1, b"b")
    err = Error(ErrorCode.NOT_FOUND, "gone", (B,))
    reader = ResponseReader(get, LIMITS)
    assert reader.feed(frames_of(blob_a, final=False) + frames_of(err)) == [blob_a, err]
    assert reader.error == err and reader.complete
    assert isinstance(exception_for(err), NotFoundError)

    cases: list[tuple[Message, bytes, str]] = [
        (hello, frames_of(Welcome(2, Permission.READ, "s", LIMITS)), "not offered"),
        (hello, frames_of(Refs("", ())), "in the response to HELLO"),
        (get, frames_of(blob_b, final=False) + frames_of(blob_a), "out of order"),
        (get, frames_of(blob_a), "after 1 of 2"),
        (get, frames_of(blob_a, False) + frames_of(blob_b, False) + frames_of(blob_a), "more"),
        (get, frames_of(err, final=False), "must be FINAL"),
        (get, frames_of(blob_a, final=False), "before the FINAL"),
        (Have(BlobKind.CHUNK, (A,)), frames_of(HaveResult(BlobKind.CHUNK, ())), "match"),
        (Ping(b"12345678"), frames_of(Pong(b"87654321")), "nonce"),
        (UpdateRefs((RefChange("r", None, A),)), frames_of(RefsUpdated(2)), "count"),
        (ListRefs(""), frames_of(Refs("", ()), final=False), "single FINAL"),
    ]
    for request, response, reason in cases:
        with pytest.raises(ProtocolViolation, match=reason):
            read(request, response)
    too_big = Blob(A, Encoding.RAW, LIMITS.max_chunk_size + 1, bytes(LIMITS.max_chunk_size + 1))
    with pytest.raises(TooLargeError):
        read(Get(BlobKind.CHUNK, (A,)), frames_of(too_big))


def test_encode_request_and_response_validate_their_shape() -> None:
    for request_type in REQUEST_TYPES:
        assert request_type in FrameType.__members__.values()
    with pytest.raises(ValueError):
        encode_request([], max_payload=MAXP)
    with pytest.raises(ValueError):
        encode_request([Ping(b"12345678"), Ping(b"12345678")], max_payload=MAXP)
    with pytest.raises(ValueError):
        encode_request([Pong(b"12345678")], max_payload=MAXP)
    with pytest.raises(ValueError):
        encode_response([Ping(b"12345678")], max_payload=MAXP)
    with pytest.raises(ValueError):
        encode_response([Error(1, "x"), Blob(A, Encoding.RAW, 1, b"a")], max_payload=MAXP)
    with pytest.raises(ValueError):
        encode_response([Welcome(1, Permission.READ, "", LIMITS), Error(1, "")], max_payload=MAXP)
    last = FrameDecoder(MAXP).feed(join(encode_request([Stats()], max_payload=MAXP)))[-1]
    assert last.final and last.payload.nbytes == 0


# --- fuzzing --------------------------------------------------------------------------------

SAMPLES: list[Message] = [
    Hello((1,), b"token", "repo", "agent"),
    Welcome(1, Permission.READ, "srv", LIMITS),
    Refs("refs/heads/main", (("refs/heads/main", A),)),
    Have(BlobKind.CHUNK, (A, B)),
    HaveResult(BlobKind.CHUNK, (True, False)),
    PutChunk(A, Encoding.RAW, 3, b"abc"),
    PutObject(A, b"object"),
    Get(BlobKind.OBJECT, (A,)),
    Blob(A, Encoding.ZSTD, 100, zstd(bytes(100))),
    UpdateRefs((RefChange("refs/heads/main", A, B),)),
    StatsResult.from_dict({"chunks": 3}),
    Error(ErrorCode.MISSING_OBJECTS, "missing", (A,), "refs/heads/x"),
]
REQUESTS: list[Message] = [m for m in SAMPLES if m.TYPE in REQUEST_TYPES] + [Ping(b"12345678")]
DECODABLE: list[type[Message]] = [Hello, Welcome, ListRefs, Refs, Have, HaveResult, PutChunk]
DECODABLE += [PutObject, PutResult, Get, Blob, UpdateRefs, RefsUpdated, Stats, StatsResult]
DECODABLE += [Ping, Pong, Error]


SMALL = Limits(max_payload=MIN_PAYLOAD, max_chunk_size=4096, max_batch=64, max_object_size=8192)


def only_protocol_violations(action: Callable[[], object]) -> None:
    try:
        action()
    except ProtocolViolation:
        pass


def feed_everything(data: bytes, rng: random.Random) -> None:
    def frames() -> None:
        dec = FrameDecoder(SMALL.max_payload)
        for frame in dec.feed(data):
            only_protocol_violations(functools.partial(decode_message, frame))
        dec.eof()

    def request() -> None:
        assemble(data, SMALL, rng.choice((0, 1, 5)))

    def response() -> None:
        reader = ResponseReader(rng.choice(REQUESTS), SMALL)
        for msg in reader.feed(data):
            if isinstance(msg, PutChunk | Blob):
                only_protocol_violations(functools.partial(decode_chunk_data, msg, 4096))
        reader.eof()

    for action in (frames, request, response):
        only_protocol_violations(action)


def test_random_bytes_only_ever_raise_protocol_violation() -> None:
    rng = random.Random(20240601)
    valid = [frames_of(m) for m in SAMPLES]
    for i in range(2000):
        mode = i % 4
        if mode == 0:  # pure noise
            data = rng.randbytes(rng.randrange(0, 64))
        elif mode == 1:  # a plausible header with a random payload
            payload = rng.randbytes(rng.randrange(0, 80))
            ftype = rng.choice(list(FrameType))
            data = struct.pack("<BBHI", ftype, rng.choice((0, FLAG_FINAL)), 0, len(payload))
            data += payload
        else:  # valid frames with bytes flipped, cut or inserted
            mutated = bytearray(b"".join(rng.sample(valid, rng.randrange(1, 3))))
            for _ in range(rng.randrange(1, 4)):
                pos = rng.randrange(len(mutated))
                op = rng.randrange(3)
                if op == 0:
                    mutated[pos] ^= 1 << rng.randrange(8)
                elif op == 1:
                    del mutated[pos:]
                    if not mutated:
                        break
                else:
                    mutated[pos:pos] = rng.randbytes(rng.randrange(1, 5))
            data = bytes(mutated)
        feed_everything(data, rng)
        payload = data[8:] if mode else data
        for cls in DECODABLE:
            only_protocol_violations(functools.partial(cls.decode, payload))


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_hypothesis_payloads_only_raise_protocol_violation(payload: bytes) -> None:
    for cls in DECODABLE:
        only_protocol_violations(functools.partial(cls.decode, payload))


# --- layering -------------------------------------------------------------------------------

IO_MODULES = {"os", "io", "socket", "subprocess", "pathlib", "shutil", "time", "lmdb", "boto3"}
IO_MODULES |= {"asyncio", "tempfile", "mmap", "ssl", "aioquic", "qh3", "threading", "select"}


def test_protocol_does_no_io() -> None:
    for path in (ROOT / "dits" / "protocol").glob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        bad = {n for n in names if n.split(".")[0] in IO_MODULES}
        assert not bad, f"{path.name} imports {bad}"
        assert not any(n.startswith(("remote", "dits.store", "dits.ops")) for n in names)


def test_protocol_imports_without_network_modules() -> None:
    code = (
        "import sys, dits.protocol\n"
        "bad = {'asyncio', 'socket', 'ssl', 'lmdb', 'aioquic', 'boto3'} & set(sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# --- PutSpeculative (0x1E) ------------------------------------------------------------------


@given(chunk_fields())
def test_put_speculative_round_trips_and_is_not_a_put_chunk(
    fields: tuple[ObjectId, Encoding, int, bytes],
) -> None:
    msg = PutSpeculative(*fields)
    assert PutSpeculative.decode(msg.encode()) == msg
    (frame,) = FrameDecoder(MAXP).feed(frames_of(msg))
    assert frame.type is FrameType.PUT_SPECULATIVE and decode_message(frame) == msg
    assert not isinstance(decode_message(frame), PutChunk)
    payload = msg.encode()
    for cut in range(len(payload)):
        try:
            shorter = PutSpeculative.decode(payload[:cut])
        except ProtocolViolation:
            continue
        assert shorter != msg  # only the data, the last field, may come out shorter


def test_put_speculative_request_is_a_put_of_its_own_kind() -> None:
    chunks = [PutSpeculative(hash_bytes(bytes([n])), Encoding.RAW, 1, bytes([n])) for n in range(4)]
    data = join(encode_request(chunks, max_payload=MAXP))
    asm = RequestAssembler(LIMITS)
    assert asm.feed(data) == chunks and asm.complete and asm.kind is FrameType.PUT_SPECULATIVE
    assert REQUEST_TYPES[FrameType.PUT_SPECULATIVE] == {FrameType.PUT_RESULT}
    push = PutChunk(A, Encoding.RAW, 1, b"a")
    assert "in a PUT_SPECULATIVE request" in pv(frames_of(chunks[0], final=False) + frames_of(push))
    assert "in a PUT_CHUNK request" in pv(frames_of(push, final=False) + frames_of(chunks[0]))
    with pytest.raises(ValueError):
        encode_request([chunks[0], push], max_payload=MAXP)
    big = PutSpeculative(A, Encoding.RAW, 2000, bytes(2000))
    assert "max_chunk_size" in pv(frames_of(big), Limits(max_chunk_size=1999))
    assert decode_chunk_data(chunks[1], LIMITS.max_chunk_size) == b"\x01"
    with pytest.raises(TooLargeError):
        decode_chunk_data(big, 1999)
    assert read(chunks[0], frames_of(PutResult(4, 2))) == [PutResult(4, 2)]
    quota = Error(ErrorCode.QUOTA_EXCEEDED, "full")
    assert read(chunks[0], frames_of(quota)) == [quota]
    with pytest.raises(ProtocolViolation, match="in the response to PUT_SPECULATIVE"):
        read(chunks[0], frames_of(RefsUpdated(1)))
