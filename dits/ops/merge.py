"""The local half of `dits pull`: fold a fetched commit into the current branch.

Fetching is not done here; the caller stores the remote commit (and its remote-tracking ref)
first, then calls `integrate`. Nothing here prints or talks to the network.

Theory of operation. `integrate` takes the repository write lock and decides, from the best
common ancestors of HEAD ("ours") and the fetched commit ("theirs"):

* theirs is an ancestor of ours: **up-to-date**, nothing is touched;
* ours is an ancestor of theirs (or the branch is unborn): **fast-forward**, the files that
  differ are written as `switch` writes them, then the branch moves by compare-and-swap;
* otherwise the histories diverged: a file-by-file **three-way merge** of the flat snapshots.
  A path changed on one side only takes that side; the same change on both sides is fine; any
  other pair of changes (including modify/delete, and a file where the other side has a folder)
  is a **conflict**. Content and the executable bit are merged separately, so one side's edit
  and the other side's ``chmod +x`` combine. There is no line-level merge: dits holds media.

Every refusal happens before anything is modified: conflicts, uncommitted changes or
untracked files in the way, and objects or chunks missing from an incomplete fetch are all
found first, and then the ref, the index and the working tree are left exactly as they were.
On a conflict both versions stay available (ours at HEAD, theirs wherever the caller stored it).

The order of writes matches `switch`: objects, then working files and index, then the ref. If
a chunk turns out to be corrupt while writing, the other files are written, the ref stays and
`CheckoutIncompleteError` reports it (the merge commit object becomes garbage for gc).

Criss-cross histories have several best common ancestors. Rather than merging them into a
virtual base (git's recursive strategy), a path merges cleanly only when every best ancestor
gives the same answer for it; otherwise it is reported as a conflict. That is conservative:
it may report a conflict git would resolve, never a silent wrong merge.

Hooks are not run (git runs no pre-commit hook for merges either).
"""

from __future__ import annotations

import os
import stat
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from dits.core.ids import ObjectId, short_id
from dits.core.index import EntryKind
from dits.core.objects import Commit, Identity, Manifest
from dits.errors import ConflictError, ObjectNotFoundError
from dits.ops.checkout import CheckoutIncompleteError, CheckoutResult, _apply, _dirty_paths
from dits.ops.snapshot import FlatEntry, build_tree, commit_snapshot
from dits.repository import Repository
from dits.store.base import RefUpdate

__all__ = [
    "MergeKind",
    "MergeResult",
    "UnrelatedHistoriesError",
    "integrate",
    "merge_base",
    "merge_bases",
]

MergeKind = Literal["up-to-date", "fast-forward", "merged", "conflict"]


class UnrelatedHistoriesError(ConflictError):
    """The two commits share no ancestor (refused unless asked for)."""


@dataclass
class MergeResult:
    """What `integrate` did.

    Attributes:
        kind: "up-to-date", "fast-forward", "merged" or "conflict".
        commit: the new HEAD commit (the fast-forward target or the new merge commit); the
            unchanged HEAD for "up-to-date"; None for "conflict".
        conflicts: paths changed differently on both sides, sorted ("conflict" only).
        updated: paths whose working copy was written or deleted, sorted.
        removed: the subset of ``updated`` that was deleted.
        base: the merge base used (the first when there are several), if any.
    """

    kind: MergeKind
    commit: ObjectId | None
    conflicts: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    base: ObjectId | None = None

    def to_json(self) -> dict[str, object]:
        """Machine-readable form for --json."""
        return {
            "kind": self.kind,
            "commit": self.commit.hex() if self.commit is not None else None,
            "base": self.base.hex() if self.base is not None else None,
            "conflicts": self.conflicts,
            "updated": self.updated,
            "removed": self.removed,
        }


# -- history ------------------------------------------------------------------------------


class _Graph:
    """Commits read once and kept for the walks of one merge."""

    def __init__(self, repo: Repository) -> None:
        self._repo = repo
        self._commits: dict[ObjectId, Commit] = {}

    def commit(self, oid: ObjectId) -> Commit:
        found = self._commits.get(oid)
        if found is None:
            found = self._commits[oid] = self._repo.get_typed(oid, Commit)
        return found

    def parents(self, oid: ObjectId) -> tuple[ObjectId, ...]:
        return self.commit(oid).parents

    def ancestors(self, starts: Iterable[ObjectId]) -> set[ObjectId]:
        """Every commit reachable from ``starts``, the starts included."""
        seen = set(starts)
        queue = deque(seen)
        while queue:
            for parent in self.parents(queue.popleft()):
                if parent not in seen:
                    seen.add(parent)
                    queue.append(parent)
        return seen

    def generations(self, within: set[ObjectId]) -> dict[ObjectId, int]:
        """Longest parent chain to a root (roots are 1), for commits in ``within``."""
        gen: dict[ObjectId, int] = {}
        for start in within:
            stack = [start]
            while stack:
                oid = stack[-1]
                if oid in gen:
                    stack.pop()
                    continue
                missing = [p for p in self.parents(oid) if p not in gen]
                if missing:
                    stack.extend(missing)
                    continue
                gen[oid] = 1 + max((gen[p] for p in self.parents(oid)), default=0)
                stack.pop()
        return gen


def _best_common(graph: _Graph, a: ObjectId, b: ObjectId) -> list[ObjectId]:
    if a == b:
        return [a]
    from_a = graph.ancestors([a])
    # Walk b's history and stop at the first commits a reaches too: those are common, and
    # everything behind them is common as well, so it need not be marked twice.
    candidates: set[ObjectId] = set()
    seen = {b}
    queue = deque([b])
    while queue:
        oid = queue.popleft()
        if oid in from_a:
            candidates.add(oid)
            continue
        for parent in graph.parents(oid):
            if parent not in seen:
                seen.add(parent)
                queue.append(parent)
    # A candidate behind another candidate is common but not best.
    behind = graph.ancestors(p for c in candidates for p in graph.parents(c))
    best = candidates - behind
    gen = graph.generations(best)
    return sorted(best, key=lambda c: (-gen[c], -graph.commit(c).committer.timestamp, c))


def merge_bases(repo: Repository, a: ObjectId, b: ObjectId) -> list[ObjectId]:
    """Every best common ancestor of two commits, best first.

    A best common ancestor is a commit reachable from both that is not behind another such
    commit. Linear and ordinary merged histories have one; criss-cross merges have several.
    The order is deterministic: longest history first, then newest committer time, then id.

    Raises:
        ObjectNotFoundError / CorruptObjectError: a commit in the walk is missing or broken.
    """
    return _best_common(_Graph(repo), a, b)


def merge_base(repo: Repository, a: ObjectId, b: ObjectId) -> ObjectId | None:
    """The best common ancestor of two commits (the first of `merge_bases`), or None.

    ``merge_base(repo, a, b) == a`` exactly when ``a`` is an ancestor of ``b`` (or equal).
    """
    bases = merge_bases(repo, a, b)
    return bases[0] if bases else None


# -- three-way merge of flat snapshots ---------------------------------------------------


class _Conflict:
    """Marker: the path cannot be merged."""


_CONFLICT = _Conflict()


def _same(x: FlatEntry | None, y: FlatEntry | None) -> bool:
    if x is None or y is None:
        return x is y
    return x.same_content(y)


def _merge_entry(
    base: FlatEntry | None, ours: FlatEntry | None, theirs: FlatEntry | None
) -> FlatEntry | _Conflict | None:
    if _same(ours, theirs):
        return ours
    if _same(base, ours):
        return theirs
    if _same(base, theirs):
        return ours
    if base is None or ours is None or theirs is None:
        return _CONFLICT
    if not (base.kind is ours.kind is theirs.kind is EntryKind.FILE):
        return _CONFLICT
    # Content and executable bit merge independently (one side edits, the other chmods).
    if ours.oid in (theirs.oid, base.oid):
        content = theirs
    elif theirs.oid == base.oid:
        content = ours
    else:
        return _CONFLICT
    base_x, ours_x, theirs_x = (bool(e.mode & 0o111) for e in (base, ours, theirs))
    executable = theirs_x if ours_x == base_x else ours_x
    return FlatEntry(
        EntryKind.FILE, 0o100755 if executable else 0o100644, content.size, content.oid
    )


def _three_way(
    bases: list[dict[str, FlatEntry]],
    ours: Mapping[str, FlatEntry],
    theirs: Mapping[str, FlatEntry],
) -> tuple[dict[str, FlatEntry], list[str]]:
    """Return (merged snapshot, conflicting paths)."""
    merged: dict[str, FlatEntry] = {}
    conflicts: set[str] = set()
    paths = set(ours) | set(theirs)
    for base in bases:
        paths |= base.keys()
    for path in paths:
        o, t = ours.get(path), theirs.get(path)
        answers = [_merge_entry(base.get(path), o, t) for base in bases]
        first = answers[0]
        if isinstance(first, _Conflict) or any(
            isinstance(x, _Conflict) or not _same(x, first) for x in answers[1:]
        ):
            conflicts.add(path)
        elif first is not None:
            merged[path] = first
    # A file where the other side put a folder: both paths merged "cleanly" on their own.
    folders: set[str] = set()
    for path in merged:
        parts = path.split("/")
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
    for path in list(merged):
        if path in folders:
            conflicts.add(path)
            conflicts.update(p for p in merged if p.startswith(path + "/"))
    for path in conflicts:
        merged.pop(path, None)
    return merged, sorted(conflicts)


# -- applying ------------------------------------------------------------------------------


def _changes(
    old: Mapping[str, FlatEntry], new: Mapping[str, FlatEntry]
) -> dict[str, FlatEntry | None]:
    """What the working tree needs to go from ``old`` to ``new`` (None: delete)."""
    return {
        path: new.get(path)
        for path in old.keys() | new.keys()
        if not _same(old.get(path), new.get(path))
    }


def _blocked(
    repo: Repository, head_snap: dict[str, FlatEntry], changes: Mapping[str, FlatEntry | None]
) -> list[str]:
    """Paths the update would write over uncommitted work (modified, staged or untracked)."""
    index = repo.index.read_all()
    blocked = set(_dirty_paths(repo, head_snap) & changes.keys())
    removed = {p for p, e in changes.items() if e is None and p in head_snap}
    for path, entry in changes.items():
        if entry is None or path in head_snap or path in index:
            continue
        if _in_the_way(repo, path, removed):
            blocked.add(path)
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            try:
                st = os.lstat(repo.root / parent)
            except FileNotFoundError:
                break
            except NotADirectoryError:
                break  # a shallower parent is a file; that one is reported
            if not stat.S_ISDIR(st.st_mode) and parent not in removed:
                blocked.add(parent)  # an untracked file or link where a folder must go
                break
    return sorted(blocked)


def _in_the_way(repo: Repository, path: str, removed: set[str]) -> bool:
    """Whether something untracked occupies ``path`` (a folder only of removed files is fine)."""
    target = repo.root / path
    try:
        st = os.lstat(target)
    except (FileNotFoundError, NotADirectoryError):
        return False
    if not stat.S_ISDIR(st.st_mode):
        return True
    for folder, dirs, files in os.walk(target):
        rel = os.path.relpath(folder, repo.root).replace(os.sep, "/")
        # os.walk lists links to folders among the folders (and does not follow them).
        links = [d for d in dirs if os.path.islink(os.path.join(folder, d))]
        if any(f"{rel}/{name}" not in removed for name in (*files, *links)):
            return True
    return False


def _check_present(repo: Repository, entries: Iterable[FlatEntry]) -> None:
    """Refuse before writing anything when objects or chunks are missing (a partial fetch)."""
    wanted = {e.oid: e for e in entries}
    missing = set(wanted) - repo.objects.has_many(wanted)
    chunk_ids: set[ObjectId] = set()
    for oid, entry in wanted.items():
        if entry.kind is EntryKind.FILE and oid not in missing:
            chunk_ids.update(c.id for c in repo.get_typed(oid, Manifest).chunks)
    missing_chunks = chunk_ids - repo.chunks.has_many(chunk_ids)
    if missing or missing_chunks:
        raise ObjectNotFoundError(
            f"{len(missing)} object(s) and {len(missing_chunks)} chunk(s) needed for the update "
            "are not in the repository; fetch again"
        )


def _update_worktree(
    repo: Repository,
    changes: dict[str, FlatEntry | None],
    on_bytes: Callable[[int], None] | None,
) -> CheckoutResult:
    result = CheckoutResult(branch=repo.current_branch())
    index_changes = _apply(repo, changes, result, on_bytes)
    repo.index.apply(index_changes)
    if result.failed:
        raise CheckoutIncompleteError(result)
    return result


def _move_branch(repo: Repository, ref: str, new: ObjectId, old: ObjectId | None) -> None:
    try:
        repo.refs.update_refs([RefUpdate(ref, new, old)])
    except ConflictError:
        raise ConflictError(
            f"{repo.current_branch()} moved while pulling; run 'dits status' and retry"
        ) from None


def _refuse_dirty(blocked: list[str], what: str) -> None:
    if blocked:
        listing = ", ".join(blocked[:10]) + (" ..." if len(blocked) > 10 else "")
        raise ConflictError(
            f"{what} would overwrite uncommitted changes in: {listing}; "
            "commit or restore them first"
        )


def integrate(
    repo: Repository,
    theirs: ObjectId,
    *,
    name: str,
    email: str,
    now: int,
    tz_offset_min: int,
    message: str | None = None,
    allow_unrelated: bool = False,
    on_bytes: Callable[[int], None] | None = None,
) -> MergeResult:
    """Bring ``theirs`` into the current branch: up-to-date, fast-forward or merge commit.

    Args:
        repo: the repository; its current branch is updated.
        theirs: the fetched commit (its objects and chunks must be in ``repo``).
        name, email, now, tz_offset_min: author and committer of a merge commit (as for
            `dits.ops.commit.commit`; see `dits.ops.commit.identity`).
        message: merge commit message (default ``Merge <short theirs> into <branch>``).
        allow_unrelated: merge histories with no common ancestor (against an empty base).
        on_bytes: progress callback, bytes written.

    Returns:
        The result; ``kind == "conflict"`` means nothing was changed and
        ``conflicts`` lists the paths.

    Raises:
        ConflictError: uncommitted changes or untracked files would be overwritten, or the
            branch moved concurrently; nothing was modified.
        UnrelatedHistoriesError: no common ancestor and not ``allow_unrelated``.
        ObjectNotFoundError: objects or chunks needed for the update are missing (nothing
            was modified).
        CheckoutIncompleteError: some files could not be written; the branch did not move.
    """
    with repo.write_lock("dits pull"):
        ref = repo.head_ref()
        branch = repo.current_branch()
        ours = repo.refs.get_ref(ref)
        graph = _Graph(repo)
        graph.commit(theirs)  # a missing or non-commit id fails here, before anything
        bases = [] if ours is None else _best_common(graph, ours, theirs)
        base = bases[0] if bases else None
        if ours is not None and theirs in bases:
            return MergeResult("up-to-date", ours, base=theirs)
        head_snap = commit_snapshot(repo, ours)
        if ours is None or ours in bases:
            target_snap = commit_snapshot(repo, theirs)
            changes = _changes(head_snap, target_snap)
            _refuse_dirty(_blocked(repo, head_snap, changes), "fast-forward")
            _check_present(repo, (e for e in changes.values() if e is not None))
            done = _update_worktree(repo, changes, on_bytes)
            _move_branch(repo, ref, theirs, ours)
            return _done("fast-forward", theirs, done, base)
        if not bases and not allow_unrelated:
            raise UnrelatedHistoriesError(
                f"refusing to merge unrelated histories ({short_id(theirs)} shares no commit "
                f"with {branch})"
            )
        base_snaps = [commit_snapshot(repo, b) for b in bases] or [{}]
        merged, conflicts = _three_way(base_snaps, head_snap, commit_snapshot(repo, theirs))
        if conflicts:
            return MergeResult("conflict", None, conflicts=conflicts, base=base)
        changes = _changes(head_snap, merged)
        _refuse_dirty(_blocked(repo, head_snap, changes), "merging")
        _check_present(repo, (e for e in changes.values() if e is not None))
        who = Identity(name, email, now, tz_offset_min)
        text = message if message and message.strip() else f"Merge {short_id(theirs)} into {branch}"
        tree = build_tree(repo, merged)
        oid = repo.put_object(Commit(tree, (ours, theirs), who, who, text.rstrip() + "\n"))
        done = _update_worktree(repo, changes, on_bytes)
        _move_branch(repo, ref, oid, ours)
        return _done("merged", oid, done, base)


def _done(
    kind: MergeKind, oid: ObjectId, done: CheckoutResult, base: ObjectId | None
) -> MergeResult:
    return MergeResult(
        kind,
        oid,
        updated=sorted(done.written + done.removed),
        removed=sorted(done.removed),
        base=base,
    )
