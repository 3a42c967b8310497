"""The working tree: turning user paths into repository paths, and walking files with ignores.

Repository paths are POSIX, relative to the root, validated component by component (no ``..``,
no ``.dits`` in any case, no separators or control characters). Walking never follows symlinks:
a link is reported as a link, so nothing outside the tree is ever read. ``.ditsignore`` files
use gitignore semantics through dulwich's ignore module, nested files applying to their folder.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dulwich.ignore import IgnoreFilter, read_ignore_patterns

from dits.core.objects import validate_entry_name
from dits.errors import UsageError

__all__ = ["IGNORE_FILE", "PathOutsideRepoError", "WorkFile", "Worktree", "validate_repo_path"]

IGNORE_FILE = ".ditsignore"
DITS_DIR = ".dits"


class PathOutsideRepoError(UsageError):
    """A path given on the command line is not inside the working tree, or is inside .dits."""


@dataclass(frozen=True)
class WorkFile:
    """A file or symlink found in the working tree, with the stat data the index compares."""

    path: str
    is_symlink: bool
    mode: int
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    dev: int

    @classmethod
    def from_stat(cls, path: str, st: os.stat_result) -> WorkFile:
        """Build from an lstat result."""
        return cls(
            path,
            stat.S_ISLNK(st.st_mode),
            st.st_mode,
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
            st.st_ino,
            st.st_dev,
        )


def validate_repo_path(path: str) -> None:
    """Raise ValueError unless ``path`` is a safe, normalised, relative POSIX repository path."""
    if not path or path.startswith("/"):
        raise ValueError(f"{path!r} is not a relative path")
    for part in path.split("/"):
        validate_entry_name(part)


class _IgnoreStack:
    """Ignore filters of the folders above the current one, deepest last."""

    def __init__(self) -> None:
        self.filters: list[tuple[str, IgnoreFilter]] = []

    def push_dir(self, root: Path, rel_dir: str) -> bool:
        path = root / rel_dir / IGNORE_FILE if rel_dir else root / IGNORE_FILE
        try:
            with open(path, "rb") as fh:
                patterns = list(read_ignore_patterns(fh))
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError:
            return False
        self.filters.append((rel_dir, IgnoreFilter(patterns)))
        return True

    def pop_dir(self) -> None:
        self.filters.pop()

    def is_ignored(self, rel_path: str, is_dir: bool) -> bool:
        for base, filt in reversed(self.filters):
            sub = rel_path[len(base) + 1 :] if base else rel_path
            verdict = filt.is_ignored(sub + "/" if is_dir else sub)
            if verdict is not None:
                return bool(verdict)
        return False


class Worktree:
    """Path handling and walking for one working tree rooted at ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def repo_path(self, user_path: str | os.PathLike[str], cwd: Path | None = None) -> str:
        """Turn a path as typed by a person into a repository path ("" for the root).

        Raises:
            PathOutsideRepoError: the path lies outside the working tree or inside ``.dits``.
        """
        base = cwd if cwd is not None else Path.cwd()
        absolute = Path(os.path.normpath(base / user_path))
        try:
            rel = absolute.relative_to(self.root)
        except ValueError:
            raise PathOutsideRepoError(
                f"'{user_path}' is outside the repository at {self.root}"
            ) from None
        text = rel.as_posix()
        if text == ".":
            return ""
        if text.split("/")[0] == DITS_DIR:
            raise PathOutsideRepoError(f"'{user_path}' is inside the repository's .dits folder")
        try:
            validate_repo_path(text)
        except ValueError as exc:
            raise PathOutsideRepoError(f"'{user_path}': {exc}") from None
        return text

    def abs_path(self, repo_path: str) -> Path:
        """The filesystem path of a repository path."""
        return self.root / repo_path if repo_path else self.root

    def remove_file(self, repo_path: str) -> None:
        """Delete a file or link if present, then the folders it leaves empty (not the root)."""
        path = self.abs_path(repo_path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        parent = path.parent
        while parent != self.root:
            try:
                os.rmdir(parent)
            except OSError:
                break
            parent = parent.parent

    def lstat(self, repo_path: str) -> WorkFile | None:
        """Stat one path without following a final symlink; None if absent or not a file/link."""
        try:
            st = os.lstat(self.abs_path(repo_path))
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            return None
        return WorkFile.from_stat(repo_path, st)

    def walk(self, start: str = "", *, errors: list[str] | None = None) -> Iterator[WorkFile]:
        """Yield every non-ignored regular file and symlink under ``start``, sorted by path.

        Unreadable folders are skipped and described in ``errors`` when given. Names that are
        unsafe for a repository (``.dits``, control characters) are skipped the same way.
        """
        stack = _IgnoreStack()
        # Ignore files of the folders above `start` apply too.
        parts = start.split("/") if start else []
        pushed = int(stack.push_dir(self.root, ""))
        for i in range(len(parts) - 1):
            pushed += int(stack.push_dir(self.root, "/".join(parts[: i + 1])))
        start_abs = self.abs_path(start)
        try:
            st = os.lstat(start_abs)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            if (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)) and not stack.is_ignored(
                start, False
            ):
                yield WorkFile.from_stat(start, st)
            return
        yield from self._walk_dir(start, stack, errors)

    def _walk_dir(
        self, rel_dir: str, stack: _IgnoreStack, errors: list[str] | None
    ) -> Iterator[WorkFile]:
        pushed = stack.push_dir(self.root, rel_dir) if rel_dir else False
        try:
            try:
                with os.scandir(self.abs_path(rel_dir)) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                if errors is not None:
                    errors.append(f"{rel_dir or '.'}: cannot read folder ({exc.strerror})")
                return
            for entry in entries:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                if not rel_dir and entry.name == DITS_DIR:
                    continue
                try:
                    validate_entry_name(entry.name)
                except ValueError as exc:
                    if errors is not None:
                        errors.append(f"{rel}: skipped ({exc})")
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError as exc:
                    if errors is not None:
                        errors.append(f"{rel}: cannot stat ({exc.strerror})")
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if not stack.is_ignored(rel, True):
                        yield from self._walk_dir(rel, stack, errors)
                elif (
                    stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)
                ) and not stack.is_ignored(rel, False):
                    yield WorkFile.from_stat(rel, st)
        finally:
            if pushed:
                stack.pop_dir()
