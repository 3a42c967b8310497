"""Writing snapshots to the working tree: `switch`/`checkout` a branch and `restore` paths.

Files are written atomically (temporary file, fsync, rename) with their mode restored, so a
crash leaves either the old or the new file. Temporary files live in `.dits/tmp/` so a killed
checkout leaves nothing in the working tree; the next `_apply` sweeps what a dead process left.
Only a folder on another filesystem (a mount inside the tree) gets a sibling temporary file,
since a rename cannot cross filesystems. Every chunk is verified against
its id as it is read; a corrupt chunk aborts that one file (its temporary file is removed, the
old file stays), the others are written, and the failure is reported. Nothing is ever written
through a symlink: a parent folder that is a link is refused.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from dits.core.index import EntryKind, IndexEntry
from dits.core.objects import Manifest, Symlink
from dits.errors import (
    ConflictError,
    CorruptObjectError,
    DitsError,
    ObjectNotFoundError,
    UsageError,
)
from dits.ops.snapshot import FlatEntry, commit_snapshot, index_snapshot
from dits.ops.status import content_changed
from dits.repository import HEADS, Repository, validate_branch_name
from dits.store.base import RefUpdate

__all__ = [
    "CheckoutResult",
    "PendingFile",
    "restore",
    "sweep_stale_temp",
    "switch",
    "write_entry",
]


@dataclass
class CheckoutResult:
    """What was written, removed, and what could not be written."""

    branch: str | None = None
    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    bytes_written: int = 0

    def to_json(self) -> dict[str, object]:
        """Machine-readable form for --json."""
        return {
            "branch": self.branch,
            "written": self.written,
            "removed": self.removed,
            "failed": self.failed,
            "bytes_written": self.bytes_written,
        }


class UnsafePathError(DitsError):
    """A path would be written through a symlink or over a folder."""


def _ensure_parent(root: Path, path: str) -> Path:
    """Create the parent folders of ``path``, refusing any that is a symlink or a file."""
    parts = path.split("/")
    current = root
    for part in parts[:-1]:
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            os.mkdir(current)
            continue
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise UnsafePathError(
                f"{path}: refusing to write because {current.relative_to(root)} is not a folder"
            )
    return current


_TEMP_PREFIX = "checkout-"
_temp_counter = itertools.count()


def _temp_dir(repo: Repository) -> Path:
    path = repo.dits_dir / "tmp"
    path.mkdir(exist_ok=True)
    return path


def _temp_path(repo: Repository, parent: Path, name: str) -> Path:
    """A temporary name on the same filesystem as ``parent``, outside the tree when possible."""
    temp_dir = _temp_dir(repo)
    if os.stat(temp_dir).st_dev == os.stat(parent).st_dev:
        return temp_dir / f"{_TEMP_PREFIX}{os.getpid()}-{next(_temp_counter)}"
    return parent / f".{name}.dits-tmp-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_temp(repo: Repository) -> int:
    """Remove temporary files left by checkouts whose process is gone; return how many."""
    removed = 0
    temp_dir = repo.dits_dir / "tmp"
    try:
        names = os.listdir(temp_dir)
    except FileNotFoundError:
        return 0
    for name in names:
        if not name.startswith(_TEMP_PREFIX):
            continue
        pid_text = name[len(_TEMP_PREFIX) :].split("-", 1)[0]
        if not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_dir / name)
            removed += 1
    return removed


class PendingFile:
    """A file being written under its temporary name; ``commit`` moves it into place.

    Chunks may be written at any offset, in any order, from any thread (``os.pwrite``); the
    caller calls ``commit`` once every byte is written, or ``abort`` to drop the temporary file.
    Neither may run while another thread still writes.

    Raises:
        UnsafePathError: (constructor) a parent is a symlink or a file.
    """

    def __init__(self, repo: Repository, path: str, mode: int) -> None:
        parent = _ensure_parent(repo.root, path)
        self.path = path
        self.mode = 0o755 if mode & 0o111 else 0o644
        self.target = repo.root / path
        self.tmp = _temp_path(repo, parent, path.rsplit("/", 1)[-1])
        self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)

    def write_at(self, data: bytes | memoryview, offset: int) -> None:
        """Write all of ``data`` at ``offset``."""
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, offset)
            view, offset = view[n:], offset + n

    def commit(self) -> os.stat_result:
        """Set the mode, fsync, rename over the target; return the target's lstat.

        Raises:
            UnsafePathError: a folder is in the way (the temporary file is then removed).
        """
        try:
            os.fchmod(self.fd, self.mode)
            os.fsync(self.fd)
            self._close()
            if os.path.isdir(self.target) and not os.path.islink(self.target):
                raise UnsafePathError(f"{self.path}: a folder is in the way")
            os.replace(self.tmp, self.target)
        except BaseException:
            self.abort()
            raise
        return os.lstat(self.target)

    def abort(self) -> None:
        """Close and remove the temporary file; the target is left as it was."""
        self._close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)

    def _close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


def write_entry(
    repo: Repository,
    path: str,
    entry: FlatEntry,
    on_bytes: Callable[[int], None] | None = None,
) -> os.stat_result:
    """Write one file or symlink atomically; return its lstat.

    Raises:
        CorruptObjectError / ObjectNotFoundError: a chunk is bad; the old file is untouched.
        UnsafePathError: a parent is a symlink or a file.
    """
    if entry.kind is EntryKind.SYMLINK:
        parent = _ensure_parent(repo.root, path)
        target = repo.root / path
        tmp = _temp_path(repo, parent, path.rsplit("/", 1)[-1])
        link = repo.get_typed(entry.oid, Symlink)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(link.target, tmp)
        os.replace(tmp, target)
        return os.lstat(target)
    manifest = repo.get_typed(entry.oid, Manifest)
    pending = PendingFile(repo, path, entry.mode)
    try:
        offset = 0
        for ref in manifest.chunks:
            data = repo.chunks.get(ref.id)
            if len(data) != ref.size:
                raise CorruptObjectError(f"{path}: chunk {ref.id.hex()[:12]} has the wrong size")
            pending.write_at(data, offset)
            offset += ref.size
            if on_bytes is not None:
                on_bytes(ref.size)
    except BaseException:
        pending.abort()
        raise
    return pending.commit()


def _apply(
    repo: Repository,
    changes: dict[str, FlatEntry | None],
    result: CheckoutResult,
    on_bytes: Callable[[int], None] | None,
) -> dict[str, IndexEntry | None]:
    index_changes: dict[str, IndexEntry | None] = {}
    sweep_stale_temp(repo)
    # Removals first: a file may become a folder in the target.
    for path in sorted(p for p, e in changes.items() if e is None):
        repo.worktree.remove_file(path)
        index_changes[path] = None
        result.removed.append(path)
    for path in sorted(p for p, e in changes.items() if e is not None):
        entry = changes[path]
        assert entry is not None
        try:
            st = write_entry(repo, path, entry, on_bytes)
        except (CorruptObjectError, ObjectNotFoundError, UnsafePathError) as exc:
            result.failed.append(f"{path}: {exc}")
            continue
        except OSError as exc:
            result.failed.append(f"{path}: cannot write ({exc.strerror})")
            continue
        index_changes[path] = IndexEntry.from_stat(entry.kind, st, entry.oid)
        result.written.append(path)
        result.bytes_written += entry.size
    return index_changes


def _dirty_paths(repo: Repository, head_snap: dict[str, FlatEntry]) -> set[str]:
    """Tracked paths whose index or working copy differs from HEAD."""
    index = repo.index.read_all()
    index_snap = index_snapshot(index)
    dirty = {
        p
        for p in head_snap.keys() | index_snap.keys()
        if head_snap.get(p) is None
        or index_snap.get(p) is None
        or not head_snap[p].same_content(index_snap[p])
    }
    for path, entry in index.items():
        wf = repo.worktree.lstat(path)
        if wf is None or content_changed(repo, entry, wf):
            dirty.add(path)
    return dirty


def switch(
    repo: Repository,
    branch: str,
    *,
    create: bool = False,
    force: bool = False,
    on_plan: Callable[[int], None] | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> CheckoutResult:
    """Switch the working tree, index and HEAD to ``branch`` (created at HEAD with ``create``).

    Raises:
        ConflictError: uncommitted changes or untracked files would be overwritten (unless
            ``force``); the tree is left untouched.
        UsageError: the branch does not exist (or exists, with ``create``).
    """
    validate_branch_name(branch)
    with repo.write_lock("dits switch"):
        ref = HEADS + branch
        head = repo.head_commit()
        target = repo.refs.get_ref(ref)
        if create:
            if target is not None:
                raise UsageError(f"branch '{branch}' already exists")
            if head is not None:
                repo.refs.update_refs([RefUpdate(ref, head, None)])
            target = head
        elif target is None:
            raise UsageError(
                f"no branch named '{branch}' (create it with 'dits switch -c {branch}')"
            )
        head_snap = commit_snapshot(repo, head)
        target_snap = commit_snapshot(repo, target)
        changes: dict[str, FlatEntry | None] = {}
        for path in head_snap.keys() | target_snap.keys():
            a, b = head_snap.get(path), target_snap.get(path)
            if a is not None and b is not None and a.same_content(b):
                continue
            changes[path] = b
        if not force:
            blocked = sorted(_dirty_paths(repo, head_snap) & changes.keys())
            blocked += sorted(
                p
                for p, e in changes.items()
                if e is not None
                and p not in head_snap
                and p not in repo.index.read_all()
                and os.path.lexists(repo.root / p)
            )
            if blocked:
                listing = ", ".join(blocked[:10]) + (" ..." if len(blocked) > 10 else "")
                raise ConflictError(
                    f"switching to '{branch}' would overwrite uncommitted changes in: {listing}; "
                    "commit them, or use --force to discard them"
                )
        else:
            # Forced: also reset dirty paths that the switch does not touch.
            for path in _dirty_paths(repo, head_snap) - changes.keys():
                changes[path] = target_snap.get(path)
        result = CheckoutResult(branch=branch)
        if on_plan is not None:
            on_plan(sum(e.size for e in changes.values() if e is not None))
        index_changes = _apply(repo, changes, result, on_bytes)
        repo.index.apply(index_changes)
        if not result.failed:
            repo.refs.set_head(ref)
        else:
            # Keep HEAD where it was: the tree is partly switched and the person must decide.
            raise CheckoutIncompleteError(result)
        return result


class CheckoutIncompleteError(DitsError):
    """Some files could not be written (corrupt chunks, unsafe paths); the others were."""

    exit_code = 5

    def __init__(self, result: CheckoutResult) -> None:
        lines = "; ".join(result.failed[:5])
        super().__init__(
            f"{len(result.failed)} file(s) could not be written ({lines}); "
            f"{len(result.written)} written. Run 'dits fsck' to see what is damaged"
        )
        self.result = result


def restore(
    repo: Repository,
    paths: Iterable[str],
    *,
    source: str | None = None,
    staged: bool = False,
    worktree: bool = True,
    on_bytes: Callable[[int], None] | None = None,
) -> CheckoutResult:
    """Restore paths, as `git restore` does.

    * default: the working files from the index;
    * ``staged``: the index entries from HEAD (or ``source``), i.e. unstage;
    * ``source``: the working files from that revision (the index is left alone unless
      ``staged`` is also given).

    Raises:
        UsageError: a path matches nothing in the source or the index.
        CheckoutIncompleteError: some files could not be written.
    """
    specs = list(paths)
    with repo.write_lock("dits restore"):
        index = repo.index.read_all()
        if source is not None:
            src = commit_snapshot(repo, repo.resolve(source))
        elif staged:
            src = commit_snapshot(repo, repo.head_commit())
        else:
            src = index_snapshot(index)
        changes: dict[str, FlatEntry | None] = {}
        for spec in specs:
            matched = [
                p
                for p in src.keys() | index.keys()
                if not spec or p == spec or p.startswith(spec + "/")
            ]
            if not matched:
                raise UsageError(f"pathspec '{spec}' did not match any tracked file")
            for p in matched:
                changes[p] = src.get(p)
        result = CheckoutResult()
        index_changes: dict[str, IndexEntry | None] = {}
        if staged:
            for p, e in changes.items():
                old = index.get(p)
                if e is None:
                    index_changes[p] = None
                elif old is None or old.oid != e.oid or old.kind != e.kind:
                    # Zero stat data makes status look at the working file again.
                    index_changes[p] = IndexEntry(e.kind, e.mode, e.size, 0, 0, 0, 0, e.oid)
        if worktree:
            written = _apply(repo, changes, result, on_bytes)
            # The index learns the new stat data only where it describes the written content.
            for p, fresh in written.items():
                staged_entry = index_changes.get(p, index.get(p))
                if fresh is not None and staged_entry is not None and staged_entry.oid == fresh.oid:
                    index_changes[p] = fresh
        repo.index.apply(index_changes)
        if result.failed:
            raise CheckoutIncompleteError(result)
        return result
