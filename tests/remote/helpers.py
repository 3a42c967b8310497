"""Shared pieces of the remote tests."""

from __future__ import annotations

from dits.core.codec import encode_object
from dits.core.ids import ObjectId
from dits.core.objects import Tree, TreeEntry, TreeEntryKind


def hostile_tree(name: str) -> bytes:
    """A tree encoding naming ``name``, built below the Tree class, which would refuse it."""
    tree = object.__new__(Tree)
    entry = TreeEntry(name, TreeEntryKind.FILE, 0o100644, 0, ObjectId(bytes(32)))
    object.__setattr__(tree, "entries", (entry,))
    return encode_object(tree)
