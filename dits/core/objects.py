"""The object model: Manifest, Tree, Commit and Symlink as frozen dataclasses (no I/O).

A file's content is a Manifest: the ordered chunk list, the size, the whole-file BLAKE3 and the
chunking profile that cut it. Trees nest; commits point at a root tree. Every object is encoded
by ``dits.core.codec`` and named by the BLAKE3 of that typed encoding.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import IntEnum

from dits.core.ids import ObjectId

__all__ = [
    "ChunkRef",
    "Commit",
    "Identity",
    "Manifest",
    "Object",
    "ObjectKind",
    "Symlink",
    "Tree",
    "TreeEntry",
    "TreeEntryKind",
    "validate_entry_name",
]


class ObjectKind(IntEnum):
    """Type tag in the encoding header."""

    MANIFEST = 1
    TREE = 2
    COMMIT = 3
    SYMLINK = 4


class TreeEntryKind(IntEnum):
    """What a tree entry names: a file (manifest id), a directory (tree id) or a symlink."""

    FILE = 1
    TREE = 2
    SYMLINK = 3


@dataclass(frozen=True)
class ChunkRef:
    """One chunk of a file: its id and plain size."""

    id: ObjectId
    size: int


@dataclass(frozen=True)
class Manifest:
    """A file's content as an ordered chunk list."""

    profile: str
    size: int
    file_hash: ObjectId
    chunks: tuple[ChunkRef, ...]

    def __post_init__(self) -> None:
        if sum(c.size for c in self.chunks) != self.size:
            raise ValueError("manifest chunk sizes do not add up to the file size")


@dataclass(frozen=True)
class TreeEntry:
    """One name in a directory."""

    name: str
    kind: TreeEntryKind
    mode: int
    size: int
    id: ObjectId


# Names no tree may hold: they would escape the tree or clash with the repository itself.
# Compared after case folding and stripping what Windows/macOS ignore (as git's verify_path).
_FORBIDDEN_NAMES = {"", ".", "..", ".dits"}


_IGNORABLE = (
    "\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
    "\u206a\u206b\u206c\u206d\u206e\u206f\ufeff"
)
_UNSAFE_CHAR = re.compile(r"[\x00-\x1f/\\]")
_HAS_IGNORABLE = re.compile(f"[{_IGNORABLE}]")


def validate_entry_name(name: str) -> None:
    """Reject names that are unsafe to write to disk on any OS.

    Raises:
        ValueError: empty, ``.``/``..``, ``.dits`` in any case or alias, contains ``/``, ``\\``,
            NUL or control characters, or longer than 255 bytes.
    """
    if not name:
        raise ValueError("empty path component")
    if _UNSAFE_CHAR.search(name):
        raise ValueError(f"path component {name!r} contains a separator or control character")
    if len(name) > 63 and len(name.encode("utf-8", "surrogateescape")) > 255:
        raise ValueError(f"path component {name[:40]!r}... is longer than 255 bytes")
    # Fast path (status walks every name): only names starting with a dot or space, or holding
    # code points HFS+ ignores, can fold to a reserved name.
    if name[0] not in ". " and not _HAS_IGNORABLE.search(name):
        return
    # NTFS drops trailing dots and spaces; HFS+ ignores some zero-width code points.
    folded = _HAS_IGNORABLE.sub("", unicodedata.normalize("NFC", name)).rstrip(". ").casefold()
    if folded in _FORBIDDEN_NAMES or folded.startswith(".dits:"):
        raise ValueError(f"path component {name!r} is reserved")


@dataclass(frozen=True)
class Tree:
    """A directory: entries sorted by name (by UTF-8 bytes), names unique."""

    entries: tuple[TreeEntry, ...]

    def __post_init__(self) -> None:
        keys = [e.name.encode("utf-8", "surrogateescape") for e in self.entries]
        if keys != sorted(keys) or len(set(keys)) != len(keys):
            raise ValueError("tree entries must be sorted by name and unique")
        for entry in self.entries:
            validate_entry_name(entry.name)

    @classmethod
    def from_entries(cls, entries: list[TreeEntry]) -> Tree:
        """Build a tree, sorting the entries canonically."""
        return cls(tuple(sorted(entries, key=lambda e: e.name.encode("utf-8", "surrogateescape"))))

    def get(self, name: str) -> TreeEntry | None:
        """Return the entry called ``name`` or None."""
        for entry in self.entries:
            if entry.name == name:
                return entry
        return None


@dataclass(frozen=True)
class Identity:
    """Who and when: name, email, seconds since the epoch, UTC offset in minutes."""

    name: str
    email: str
    timestamp: int
    tz_offset_min: int

    def format(self) -> str:
        """``Name <email>`` as git shows it."""
        return f"{self.name} <{self.email}>"


@dataclass(frozen=True)
class Commit:
    """A snapshot: root tree, parents (first parent = the branch it was made on), message."""

    tree: ObjectId
    parents: tuple[ObjectId, ...]
    author: Identity
    committer: Identity
    message: str


@dataclass(frozen=True)
class Symlink:
    """A symbolic link's target, stored verbatim (never followed when adding)."""

    target: str


Object = Manifest | Tree | Commit | Symlink
