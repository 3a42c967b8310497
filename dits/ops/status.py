"""`dits status`: staged changes (index vs HEAD), unstaged changes (tree vs index), untracked.

Unchanged files are recognised from index stat data alone; a file whose stat changed but whose
size did not is re-chunked in hash-only mode (nothing stored) to tell a touch from an edit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from dits.core.codec import encode_object, object_id
from dits.core.index import EntryKind, IndexEntry
from dits.core.objects import Symlink
from dits.ops.ingest import FileChangedError, Ingestor, UnreadableFileError
from dits.ops.snapshot import commit_snapshot, index_snapshot
from dits.repository import Repository
from dits.worktree import WorkFile

__all__ = ["StatusResult", "content_changed", "status"]


@dataclass
class StatusResult:
    """Every difference, as sorted path lists."""

    branch: str
    head: str | None
    staged_added: list[str] = field(default_factory=list)
    staged_modified: list[str] = field(default_factory=list)
    staged_deleted: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    untracked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """No staged, unstaged or untracked change."""
        return not (
            self.staged_added
            or self.staged_modified
            or self.staged_deleted
            or self.modified
            or self.deleted
            or self.untracked
        )

    @property
    def dirty_tracked(self) -> list[str]:
        """Tracked paths with uncommitted changes (staged or not)."""
        return sorted(
            set(self.staged_added)
            | set(self.staged_modified)
            | set(self.staged_deleted)
            | set(self.modified)
            | set(self.deleted)
        )

    def to_json(self) -> dict[str, object]:
        """Machine-readable form for --json."""
        return {
            "branch": self.branch,
            "head": self.head,
            "staged": {
                "added": self.staged_added,
                "modified": self.staged_modified,
                "deleted": self.staged_deleted,
            },
            "modified": self.modified,
            "deleted": self.deleted,
            "untracked": self.untracked,
            "errors": self.errors,
            "clean": self.clean,
        }


def content_changed(repo: Repository, entry: IndexEntry, wf: WorkFile) -> bool:
    """Whether a working file differs from its index entry (reads it only when stat is unsure)."""
    kind = EntryKind.SYMLINK if wf.is_symlink else EntryKind.FILE
    if kind != entry.kind or (entry.mode & 0o111 != 0) != (wf.mode & 0o111 != 0):
        return True
    if entry.same_stat(wf.size, wf.mtime_ns, wf.ctime_ns, wf.inode):
        return False
    if wf.size != entry.size:
        return True
    path = repo.worktree.abs_path(wf.path)
    if wf.is_symlink:
        target = os.readlink(path)
        return object_id(encode_object(Symlink(target))) != entry.oid
    return _hash_file(path, wf.path) != entry.oid


def _hash_file(path: Path, name: str) -> bytes:
    with Ingestor(None) as ingestor:
        manifest, _ = ingestor.ingest_file(path, name, 0)
    return object_id(encode_object(manifest))


def status(repo: Repository) -> StatusResult:
    """Compare HEAD, the index and the working tree."""
    head = repo.head_commit()
    result = StatusResult(repo.current_branch(), head.hex() if head else None)
    index = repo.index.read_all()
    head_snap = commit_snapshot(repo, head)
    index_snap = index_snapshot(index)
    for path, entry in index_snap.items():
        old = head_snap.get(path)
        if old is None:
            result.staged_added.append(path)
        elif not old.same_content(entry):
            result.staged_modified.append(path)
    result.staged_deleted = [p for p in head_snap if p not in index_snap]
    seen: set[str] = set()
    for wf in repo.worktree.walk("", errors=result.errors):
        seen.add(wf.path)
        staged = index.get(wf.path)
        if staged is None:
            result.untracked.append(wf.path)
            continue
        try:
            if content_changed(repo, staged, wf):
                result.modified.append(wf.path)
        except (UnreadableFileError, FileChangedError, OSError) as exc:
            result.errors.append(f"{wf.path}: {exc}")
            result.modified.append(wf.path)
    # A tracked file inside an ignored folder is still tracked: check those directly.
    for path in index:
        if path not in seen:
            wf2 = repo.worktree.lstat(path)
            if wf2 is None:
                result.deleted.append(path)
            elif content_changed(repo, index[path], wf2):
                result.modified.append(path)
    for lst in (
        result.staged_added,
        result.staged_modified,
        result.staged_deleted,
        result.modified,
        result.deleted,
        result.untracked,
    ):
        lst.sort()
    return result
