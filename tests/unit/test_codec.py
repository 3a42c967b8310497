"""The canonical encoding: golden bytes, round trips, strict decoding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dits.core.codec import DecodeError, decode_object, encode_object, object_id
from dits.core.ids import ObjectId, hash_bytes, parse_id
from dits.core.objects import (
    ChunkRef,
    Commit,
    Identity,
    Manifest,
    Symlink,
    Tree,
    TreeEntry,
    TreeEntryKind,
    validate_entry_name,
)

A = hash_bytes(b"a")
B = hash_bytes(b"b")


def test_manifest_golden_bytes() -> None:
    m = Manifest("media-v1", 10, A, (ChunkRef(A, 4), ChunkRef(B, 6)))
    enc = encode_object(m)
    expected = (
        b"DITS\x01\x01"  # magic, kind manifest, version 1
        + b"\x08media-v1"
        + (10).to_bytes(8, "little")
        + A
        + (2).to_bytes(4, "little")
        + A
        + (4).to_bytes(4, "little")
        + B
        + (6).to_bytes(4, "little")
    )
    assert enc == expected
    # The id is part of the format: a change here breaks every stored repository.
    assert object_id(enc).hex()[:16] == hash_bytes(expected).hex()[:16]


def test_commit_golden_bytes() -> None:
    who = Identity("Ed", "e@x", 1_700_000_000, -300)
    c = Commit(A, (B,), who, who, "cut\n")
    enc = encode_object(c)
    ident = (
        b"\x02\x00Ed"
        + b"\x03\x00e@x"
        + (1_700_000_000).to_bytes(8, "little")
        + (-300).to_bytes(2, "little", signed=True)
    )
    assert enc == b"DITS\x03\x01" + A + b"\x01" + B + ident + ident + b"\x04\x00\x00\x00cut\n"


def test_tree_golden_bytes() -> None:
    t = Tree.from_entries([TreeEntry("b.mov", TreeEntryKind.FILE, 0o100644, 5, A)])
    enc = encode_object(t)
    assert enc == (
        b"DITS\x02\x01\x01\x00\x00\x00"
        + b"\x01"
        + (0o100644).to_bytes(4, "little")
        + (5).to_bytes(8, "little")
        + A
        + b"\x05\x00b.mov"
    )


names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\\x00"),
    min_size=1,
    max_size=30,
).filter(lambda n: _valid(n))


def _valid(name: str) -> bool:
    try:
        validate_entry_name(name)
    except ValueError:
        return False
    return True


ids = st.binary(min_size=32, max_size=32).map(ObjectId)


@given(st.lists(st.tuples(ids, st.integers(0, 2**32 - 1)), max_size=50), st.text(max_size=20))
def test_manifest_round_trip(chunks: list[tuple[ObjectId, int]], profile: str) -> None:
    refs = tuple(ChunkRef(i, s) for i, s in chunks)
    m = Manifest(profile, sum(s for _, s in chunks), hash_bytes(b"f"), refs)
    assert decode_object(encode_object(m)) == m


@given(st.dictionaries(names, st.tuples(st.sampled_from(list(TreeEntryKind)), ids), max_size=20))
def test_tree_round_trip(entries: dict[str, tuple[TreeEntryKind, ObjectId]]) -> None:
    t = Tree.from_entries([TreeEntry(n, k, 0o100644, 1, i) for n, (k, i) in entries.items()])
    assert decode_object(encode_object(t)) == t


@given(
    st.text(max_size=200),
    st.lists(ids, max_size=3),
    st.integers(-(2**40), 2**40),
    st.integers(-720, 840),
)
def test_commit_round_trip(message: str, parents: list[ObjectId], ts: int, tz: int) -> None:
    who = Identity("Näme", "mail@example.com", ts, tz)
    c = Commit(hash_bytes(b"t"), tuple(parents), who, who, message)
    assert decode_object(encode_object(c)) == c


def test_symlink_round_trip() -> None:
    s = Symlink("../media/a.mov")
    assert decode_object(encode_object(s)) == s


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"NOPE\x01\x01",
        b"DITS\x09\x01",  # unknown kind
        b"DITS\x01\x63",  # unknown version
        encode_object(Symlink("x"))[:-1],  # truncated
        encode_object(Symlink("x")) + b"\x00",  # trailing bytes
    ],
)
def test_decode_rejects_garbage(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_object(data)


def test_decode_rejects_unsorted_or_hostile_tree() -> None:
    good = encode_object(Tree.from_entries([TreeEntry("a", TreeEntryKind.FILE, 0o644, 0, A)]))
    hostile = good.replace(b"\x01\x00a", b"\x02\x00..")
    with pytest.raises(DecodeError):
        decode_object(hostile)


@given(st.binary(max_size=300))
def test_decode_never_crashes_on_random_bytes(data: bytes) -> None:
    try:
        decode_object(b"DITS" + data)
    except DecodeError:
        pass


@pytest.mark.parametrize(
    "name", ["", ".", "..", ".dits", ".DITS", ".dits.", ".Dits ", "a/b", "a\\b", "a\x00", "x\ny"]
)
def test_unsafe_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError):
        validate_entry_name(name)


@pytest.mark.parametrize("name", ["clip.mov", "Ünïcode ✂.prproj", ".ditsignore", "a b", "..x"])
def test_ordinary_names_are_accepted(name: str) -> None:
    validate_entry_name(name)


def test_parse_id() -> None:
    assert parse_id(A.hex()) == A
    with pytest.raises(ValueError):
        parse_id("abc")
    with pytest.raises(ValueError):
        parse_id("zz" * 32)


def test_manifest_sizes_must_add_up() -> None:
    with pytest.raises(ValueError):
        Manifest("p", 5, A, (ChunkRef(A, 4),))
