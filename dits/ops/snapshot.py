"""Flat snapshots: a tree flattened to path -> entry, and the index folded back into trees.

Every comparison in dits (status, diff, checkout, commit) works on flat maps of repository path
to `FlatEntry`; this module converts between those maps and nested Tree objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dits.core.codec import encode_object, object_id
from dits.core.ids import ObjectId
from dits.core.index import EntryKind, IndexEntry
from dits.core.objects import Commit, Tree, TreeEntry, TreeEntryKind
from dits.repository import Repository

__all__ = ["FlatEntry", "build_tree", "commit_snapshot", "flatten_tree", "index_snapshot"]


@dataclass(frozen=True)
class FlatEntry:
    """A file or symlink in a snapshot."""

    kind: EntryKind
    mode: int
    size: int
    oid: ObjectId

    def same_content(self, other: FlatEntry) -> bool:
        """Same bytes and same executable bit (what a commit records)."""
        return (
            self.kind == other.kind
            and self.oid == other.oid
            and (self.mode & 0o111 != 0) == (other.mode & 0o111 != 0)
        )


def _normal_mode(kind: EntryKind, mode: int) -> int:
    # Like git: only the executable bit of a file is recorded.
    if kind is EntryKind.SYMLINK:
        return 0o120000
    return 0o100755 if mode & 0o111 else 0o100644


def flatten_tree(repo: Repository, tree_id: ObjectId, prefix: str = "") -> dict[str, FlatEntry]:
    """Return every file and symlink under a tree, keyed by repository path."""
    out: dict[str, FlatEntry] = {}
    stack = [(tree_id, prefix)]
    while stack:
        oid, base = stack.pop()
        tree = repo.get_typed(oid, Tree)
        for e in tree.entries:
            path = f"{base}/{e.name}" if base else e.name
            if e.kind is TreeEntryKind.TREE:
                stack.append((e.id, path))
            elif e.kind is TreeEntryKind.FILE:
                out[path] = FlatEntry(EntryKind.FILE, e.mode, e.size, e.id)
            else:
                out[path] = FlatEntry(EntryKind.SYMLINK, e.mode, e.size, e.id)
    return out


def commit_snapshot(repo: Repository, commit_id: ObjectId | None) -> dict[str, FlatEntry]:
    """Flat snapshot of a commit's tree ({} for None: an unborn branch)."""
    if commit_id is None:
        return {}
    return flatten_tree(repo, repo.get_typed(commit_id, Commit).tree)


def index_snapshot(entries: Mapping[str, IndexEntry]) -> dict[str, FlatEntry]:
    """Flat snapshot of the staging index."""
    return {
        p: FlatEntry(e.kind, _normal_mode(e.kind, e.mode), e.size, e.oid)
        for p, e in entries.items()
    }


def build_tree(repo: Repository, snapshot: Mapping[str, FlatEntry]) -> ObjectId:
    """Store the nested trees for a flat snapshot in one batch; return the root tree id."""
    # Children per folder, folders processed deepest first so child ids exist before parents.
    folders: dict[str, list[TreeEntry]] = {"": []}
    for path in snapshot:
        parts = path.split("/")
        for i in range(1, len(parts)):
            folders.setdefault("/".join(parts[:i]), [])
    for path, entry in snapshot.items():
        parent, _, name = path.rpartition("/")
        kind = TreeEntryKind.FILE if entry.kind is EntryKind.FILE else TreeEntryKind.SYMLINK
        mode = _normal_mode(entry.kind, entry.mode)
        folders[parent].append(TreeEntry(name, kind, mode, entry.size, entry.oid))
    pending: list[Tree] = []
    ids: dict[str, ObjectId] = {}
    for folder in sorted(folders, key=lambda f: (-f.count("/") if f else 1, f)):
        if folder == "":
            continue
        tree = Tree.from_entries(folders[folder])
        ids[folder] = object_id(encode_object(tree))
        pending.append(tree)
        parent, _, name = folder.rpartition("/")
        size = sum(e.size for e in tree.entries)
        folders[parent].append(TreeEntry(name, TreeEntryKind.TREE, 0o040000, size, ids[folder]))
    root = Tree.from_entries(folders[""])
    pending.append(root)
    return repo.put_objects(pending)[-1]
