"""`dits add`: stage files (new, modified, deleted) into the index.

Order of writes keeps a crash harmless: chunks, then manifests, then one atomic index update.
Until the index update commits, nothing refers to the new data and the index is as before.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from dits.core.ids import ObjectId
from dits.core.index import EntryKind, IndexEntry
from dits.core.objects import Manifest, Symlink
from dits.errors import UsageError
from dits.ops.ingest import FileChangedError, Ingestor, IngestStats, UnreadableFileError
from dits.repository import Repository
from dits.worktree import WorkFile

__all__ = ["AddResult", "KnownManifest", "PathspecError", "add_paths", "stage_files"]

# (absolute path, size, mtime_ns, inode) -> the manifest someone already made of exactly that
# file (the speculative agent), or None.
KnownManifest = Callable[[str, int, int, int], Manifest | None]


class PathspecError(UsageError):
    """A path given to add/rm matched nothing."""


@dataclass
class AddResult:
    """What `add` did."""

    added: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    from_agent: list[str] = field(default_factory=list)  # manifests the agent had made already
    errors: list[str] = field(default_factory=list)
    stats: IngestStats = field(default_factory=IngestStats)

    def to_json(self) -> dict[str, object]:
        """Machine-readable form for --json."""
        return {
            "added": self.added,
            "modified": self.modified,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "errors": self.errors,
            "files_read": self.stats.files,
            "bytes_read": self.stats.bytes_read,
            "chunks": self.stats.chunks,
            "new_chunks": self.stats.new_chunks,
            "new_bytes": self.stats.new_bytes,
            "reused_chunks": self.stats.chunks - self.stats.new_chunks,
            "files_from_agent": len(self.from_agent),
        }


def _under(path: str, spec: str) -> bool:
    return not spec or path == spec or path.startswith(spec + "/")


def add_paths(
    repo: Repository,
    specs: Iterable[str],
    *,
    on_plan: Callable[[int], None] | None = None,
    on_bytes: Callable[[int], None] | None = None,
    known: KnownManifest | None = None,
) -> AddResult:
    """Stage every file under the given repository paths ("" = the whole tree).

    Files whose stat data matches the index are not read. Tracked files that vanished are staged
    as removed. Unreadable files are reported in ``errors`` and skipped; the rest is staged.
    ``known`` offers manifests made earlier of the very same file ("instant add", see
    ``stage_files``).

    Raises:
        PathspecError: a path matched no file and no tracked entry.
    """
    specs = list(specs)
    with repo.write_lock("dits add"):
        index = repo.index.read_all()
        result = AddResult()
        found: dict[str, WorkFile] = {}
        for spec in specs:
            matched = False
            for wf in repo.worktree.walk(spec, errors=result.errors):
                found[wf.path] = wf
                matched = True
            tracked = [p for p in index if _under(p, spec)]
            if spec and not matched and not tracked:
                raise PathspecError(f"pathspec '{spec or '.'}' did not match any files")
        gone = [
            p
            for p in index
            if p not in found and any(_under(p, s) for s in specs) and not _exists(repo, p)
        ]
        changes: dict[str, IndexEntry | None] = {p: None for p in gone}
        result.removed = sorted(gone)
        to_read = []
        for path, wf in found.items():
            entry = index.get(path)
            kind = EntryKind.SYMLINK if wf.is_symlink else EntryKind.FILE
            if (
                entry is not None
                and entry.kind == kind
                and entry.mode == wf.mode
                and entry.same_stat(wf.size, wf.mtime_ns, wf.ctime_ns, wf.inode)
            ):
                result.unchanged += 1
                continue
            to_read.append(wf)
        if on_plan is not None:
            on_plan(sum(wf.size for wf in to_read if not wf.is_symlink))
        staged = stage_files(repo, to_read, result, on_bytes=on_bytes, known=known)
        for path, entry in staged.items():
            (result.modified if path in index else result.added).append(path)
            changes[path] = entry
        result.added.sort()
        result.modified.sort()
        if changes:
            repo.index.apply(changes)
        return result


def _exists(repo: Repository, path: str) -> bool:
    return os.path.lexists(repo.worktree.abs_path(path))


def stage_files(
    repo: Repository,
    files: list[WorkFile],
    result: AddResult,
    *,
    on_bytes: Callable[[int], None] | None = None,
    known: KnownManifest | None = None,
) -> dict[str, IndexEntry]:
    """Read, chunk and store files; store their manifests; return their new index entries.

    A file for which ``known`` has a manifest made of exactly this file (same size, mtime and
    inode, the index's own test for "unchanged") whose chunks are all in the local store is not
    read again: the speculative agent chunked and stored it while it was being saved.
    Per-file failures go to ``result.errors``; a store failure (disk full) raises.
    """
    entries: dict[str, IndexEntry] = {}
    manifests: list[tuple[str, Manifest | Symlink, os.stat_result]] = []
    max_reads = int(repo.config.get("core.max_file_reads", 3))
    with Ingestor(repo.chunks, on_bytes=on_bytes, max_reads=max_reads) as ingestor:
        for wf in files:
            abs_path = repo.worktree.abs_path(wf.path)
            try:
                if wf.is_symlink:
                    target = os.readlink(abs_path)
                    manifests.append((wf.path, Symlink(target), os.lstat(abs_path)))
                elif known is not None and (hit := _known_manifest(repo, abs_path, known)):
                    manifests.append((wf.path, *hit))
                    result.from_agent.append(wf.path)
                    if on_bytes is not None:
                        on_bytes(hit[0].size)
                else:
                    manifest, st = ingestor.ingest_file(abs_path, wf.path, wf.size)
                    manifests.append((wf.path, manifest, st))
            except OSError as exc:
                result.errors.append(f"{wf.path}: cannot read ({exc.strerror})")
            except (UnreadableFileError, FileChangedError) as exc:
                result.errors.append(exc.message)
        ingestor.flush()
        result.stats = ingestor.stats
    ids: list[ObjectId] = repo.put_objects([m for _, m, _ in manifests])
    for (path, obj, st), oid in zip(manifests, ids, strict=True):
        kind = EntryKind.SYMLINK if isinstance(obj, Symlink) else EntryKind.FILE
        entries[path] = IndexEntry.from_stat(kind, st, oid)
    return entries


def _known_manifest(
    repo: Repository, abs_path: os.PathLike[str], known: KnownManifest
) -> tuple[Manifest, os.stat_result] | None:
    st = os.stat(abs_path, follow_symlinks=False)
    manifest = known(os.fspath(abs_path), st.st_size, st.st_mtime_ns, st.st_ino)
    if manifest is None or manifest.size != st.st_size:
        return None
    ids = {c.id for c in manifest.chunks}
    if repo.chunks.has_many(ids) != ids:  # gc may have dropped what nothing referenced yet
        return None
    return manifest, st
