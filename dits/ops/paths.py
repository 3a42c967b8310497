"""`dits rm` and `dits mv`: remove or rename tracked paths in the index and the working tree."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from dits.core.index import IndexEntry
from dits.errors import ConflictError, UsageError
from dits.ops.status import content_changed
from dits.repository import Repository

__all__ = ["MoveResult", "RemoveResult", "move", "remove"]


@dataclass
class RemoveResult:
    """Paths removed from the index (and from disk unless cached)."""

    removed: list[str] = field(default_factory=list)


@dataclass
class MoveResult:
    """(old, new) pairs renamed."""

    moved: list[tuple[str, str]] = field(default_factory=list)


def remove(
    repo: Repository, specs: list[str], *, cached: bool = False, force: bool = False
) -> RemoveResult:
    """Stop tracking paths; delete the files too unless ``cached``.

    Raises:
        UsageError: a path is not tracked.
        ConflictError: a file has changes that are not committed (unless ``force``/``cached``).
    """
    with repo.write_lock("dits rm"):
        index = repo.index.read_all()
        targets: list[str] = []
        for spec in specs:
            matched = [p for p in index if not spec or p == spec or p.startswith(spec + "/")]
            if not matched:
                raise UsageError(f"pathspec '{spec or '.'}' did not match any tracked file")
            targets.extend(matched)
        if not force and not cached:
            dirty = []
            for path in targets:
                wf = repo.worktree.lstat(path)
                if wf is not None and content_changed(repo, index[path], wf):
                    dirty.append(path)
            if dirty:
                raise ConflictError(
                    f"{', '.join(dirty[:5])} has local changes; use --cached to keep the file "
                    "or -f to delete it anyway"
                )
        repo.index.apply({p: None for p in targets})
        if not cached:
            for path in targets:
                repo.worktree.remove_file(path)
        return RemoveResult(sorted(set(targets)))


def move(repo: Repository, source: str, dest: str) -> MoveResult:
    """Rename a tracked file or folder (into ``dest`` if that is an existing folder).

    Raises:
        UsageError: the source is not tracked, or the destination exists.
    """
    with repo.write_lock("dits mv"):
        index = repo.index.read_all()
        dest_abs = repo.worktree.abs_path(dest)
        if dest and os.path.isdir(dest_abs) and not os.path.islink(dest_abs):
            dest = f"{dest}/{source.rsplit('/', 1)[-1]}"
            dest_abs = repo.worktree.abs_path(dest)
        if not source:
            raise UsageError("cannot move the repository root")
        if dest == source or dest.startswith(source + "/"):
            raise UsageError(f"cannot move '{source}' into itself")
        if os.path.lexists(dest_abs):
            raise UsageError(f"destination '{dest}' exists")
        moved = [p for p in index if p == source or p.startswith(source + "/")]
        if not moved:
            raise UsageError(f"'{source}' is not tracked")
        if not os.path.lexists(repo.worktree.abs_path(source)):
            raise UsageError(f"'{source}' does not exist in the working tree")
        dest_abs.parent.mkdir(parents=True, exist_ok=True)
        os.rename(repo.worktree.abs_path(source), dest_abs)
        changes: dict[str, IndexEntry | None] = {}
        pairs = []
        for path in moved:
            new = dest + path[len(source) :]
            changes[path] = None
            changes[new] = index[path]
            pairs.append((path, new))
        repo.index.apply(changes)
        return MoveResult(pairs)
