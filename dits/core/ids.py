"""ObjectId: the 32-byte BLAKE3-256 digest that names every chunk and object."""

from __future__ import annotations

from typing import NewType

import blake3

__all__ = ["ID_LEN", "HexId", "ObjectId", "format_id", "hash_bytes", "parse_id", "short_id"]

ID_LEN = 32

ObjectId = NewType("ObjectId", bytes)
"""Raw 32-byte BLAKE3 digest."""

HexId = NewType("HexId", str)
"""64 lowercase hex characters."""


def hash_bytes(data: bytes | bytearray | memoryview) -> ObjectId:
    """Return the BLAKE3-256 id of ``data`` (chunk ids hash the plain bytes)."""
    return ObjectId(blake3.blake3(data).digest())


def format_id(oid: ObjectId) -> HexId:
    """Return the lowercase hex form of an id."""
    return HexId(oid.hex())


def short_id(oid: ObjectId, length: int = 12) -> str:
    """Return an abbreviated hex form for display."""
    return oid.hex()[:length]


def parse_id(text: str) -> ObjectId:
    """Parse a full 64-character hex id.

    Raises:
        ValueError: ``text`` is not 64 hex characters.
    """
    if len(text) != 2 * ID_LEN:
        raise ValueError(f"not a full object id: {text!r}")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"not a hex object id: {text!r}") from None
    return ObjectId(raw)
