"""`dits diff --stat`: per file, bytes changed and chunks reused, between two snapshots.

Snapshots are HEAD/commits (from trees), the index, or the working tree (files whose stat data
differs from the index are chunked in hash-only mode; nothing is stored).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from dits.core.codec import encode_object, object_id
from dits.core.index import EntryKind
from dits.core.objects import Manifest, Symlink
from dits.ops.ingest import Ingestor
from dits.ops.snapshot import FlatEntry, commit_snapshot, index_snapshot
from dits.ops.status import content_changed
from dits.repository import Repository

__all__ = ["DiffResult", "FileDiff", "diff_snapshots", "worktree_snapshot"]


@dataclass(frozen=True)
class FileDiff:
    """One changed path. ``bytes_changed`` counts bytes in chunks the old version lacks."""

    path: str
    status: str  # added | modified | deleted | mode
    old_size: int
    new_size: int
    chunks: int
    chunks_reused: int
    bytes_changed: int


@dataclass
class DiffResult:
    """All changed files plus totals."""

    files: list[FileDiff] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        """Machine-readable form for --json."""
        return {
            "files": [f.__dict__ for f in self.files],
            "files_changed": len(self.files),
            "bytes_changed": sum(f.bytes_changed for f in self.files),
            "chunks_reused": sum(f.chunks_reused for f in self.files),
            "chunks": sum(f.chunks for f in self.files),
        }


class _ManifestSource:
    """Manifests by id: from the store, or computed in hash-only mode for working files."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.computed: dict[bytes, Manifest] = {}

    def get(self, entry: FlatEntry) -> Manifest | None:
        if entry.kind is not EntryKind.FILE:
            return None
        if entry.oid in self.computed:
            return self.computed[entry.oid]
        return self.repo.get_typed(entry.oid, Manifest)


def worktree_snapshot(repo: Repository, source: _ManifestSource) -> dict[str, FlatEntry]:
    """The working tree's tracked and untracked files as a snapshot (hash-only chunking)."""
    index = repo.index.read_all()
    snap: dict[str, FlatEntry] = {}
    with Ingestor(None) as ingestor:
        for wf in repo.worktree.walk(""):
            entry = index.get(wf.path)
            if entry is not None and not content_changed(repo, entry, wf):
                snap[wf.path] = FlatEntry(entry.kind, wf.mode, wf.size, entry.oid)
                continue
            abs_path = repo.worktree.abs_path(wf.path)
            if wf.is_symlink:
                oid = object_id(encode_object(Symlink(os.readlink(abs_path))))
                snap[wf.path] = FlatEntry(EntryKind.SYMLINK, wf.mode, wf.size, oid)
                continue
            if entry is None:
                continue  # untracked files are not part of a diff, as in git
            manifest, _ = ingestor.ingest_file(abs_path, wf.path, wf.size)
            oid = object_id(encode_object(manifest))
            source.computed[oid] = manifest
            snap[wf.path] = FlatEntry(EntryKind.FILE, wf.mode, wf.size, oid)
    return snap


def snapshot_of(repo: Repository, what: str, source: _ManifestSource) -> dict[str, FlatEntry]:
    """``:empty``, ``:index``, ``:worktree`` or a revision."""
    if what == ":empty":
        return {}
    if what == ":index":
        return index_snapshot(repo.index.read_all())
    if what == ":worktree":
        return worktree_snapshot(repo, source)
    return commit_snapshot(repo, repo.resolve(what))


def diff_snapshots(repo: Repository, old_spec: str, new_spec: str) -> DiffResult:
    """Compare two snapshots named as in `snapshot_of`."""
    source = _ManifestSource(repo)
    old = snapshot_of(repo, old_spec, source)
    new = snapshot_of(repo, new_spec, source)
    result = DiffResult()
    for path in sorted(old.keys() | new.keys()):
        a, b = old.get(path), new.get(path)
        if a is not None and b is not None and a.same_content(b):
            continue
        ma = source.get(a) if a is not None else None
        mb = source.get(b) if b is not None else None
        old_ids = {c.id for c in ma.chunks} if ma else set()
        new_chunks = mb.chunks if mb else ()
        reused = sum(1 for c in new_chunks if c.id in old_ids)
        changed = sum(c.size for c in new_chunks if c.id not in old_ids)
        if a is None:
            status = "added"
        elif b is None:
            status = "deleted"
        elif a.oid == b.oid:
            status = "mode"
        else:
            status = "modified"
        result.files.append(
            FileDiff(
                path,
                status,
                a.size if a else 0,
                b.size if b else 0,
                len(new_chunks),
                reused,
                changed if b is not None else 0,
            )
        )
    return result
