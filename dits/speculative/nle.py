"""What the agent knows about editors (NLEs): their processes, folders and file patterns.

Pure data plus two thin psutil probes (``running_editors``, ``WriteRateMeter``). Folder
templates use ``~`` for the home folder and ``%NAME%`` / ``$NAME`` for environment variables
(both resolved from the values passed in, never read here implicitly), and ``*`` for a version
folder. Only folders that exist are reported.

Where the locations come from (vendor documentation, checked where we could):

* Premiere Pro and After Effects write auto-saves to a folder next to the project,
  ``Adobe Premiere Pro Auto-Save`` / ``Adobe After Effects Auto-Save``; new projects default
  to ``~/Documents/Adobe/Premiere Pro/<version>/``. The shared media cache (conformed audio
  ``.cfa``, MPEG indexes ``.mpgindex``, peak files ``.pek``) lives in
  ``Adobe/Common/Media Cache Files`` under ``~/Library/Application Support`` (macOS) or
  ``%APPDATA%`` (Windows). It is derived data.
* DaVinci Resolve keeps per-user support files in ``~/Library/Application Support/Blackmagic
  Design/DaVinci Resolve`` (macOS, Resolve 16 and later), ``%APPDATA%\\Blackmagic
  Design\\DaVinci Resolve`` (Windows) and ``~/.local/share/DaVinciResolve`` (Linux), and disk
  databases under ``%PROGRAMDATA%\\Blackmagic Design\\DaVinci Resolve\\Support\\Resolve Disk
  Database`` (Windows). Its render cache is a hidden ``CacheClip`` folder on the first media
  storage volume (``.dvcc`` frames): derived data.
* Final Cut Pro (macOS only) keeps libraries as ``*.fcpbundle`` packages, ``~/Movies`` by
  default; ``Render Files``, ``Transcoded Media`` and ``Analysis Files`` inside are derived.
* Unreal Editor auto-saves into ``<project>/Saved/Autosaves``; its local Derived Data Cache
  (``DerivedDataCache``) is derived data. Per-user engine data lives in
  ``%LOCALAPPDATA%\\UnrealEngine`` (Windows) and ``~/.config/Epic`` (Linux).

Project-relative folders (auto-save folders next to a project) are covered by watching the
working tree; ``Editor.project_autosave_dirs`` names them for reports.

psutil has no per-process I/O counters on macOS; ``WriteRateMeter`` then reads 0 and only the
watcher's growth measure feeds the activity monitor.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Final, Protocol

import psutil

from dits.speculative.config import SpeculativeConfig
from dits.speculative.policy import PriorityClass

__all__ = [
    "DEFAULT_PATTERNS",
    "EDITORS",
    "Editor",
    "RunningEditor",
    "WatchFolder",
    "WriteRateMeter",
    "editor_folders",
    "is_derived_cache",
    "matches",
    "platform_key",
    "running_editors",
]


@dataclass(frozen=True)
class Editor:
    """One editing application.

    Attributes:
        name: display name.
        process_names: glob patterns over process names (case-insensitive, ``.exe`` dropped).
        folders: ``(platform, template)`` pairs of per-user folders worth watching (auto-saves,
            projects); platform is ``darwin``, ``win32`` or ``linux``.
        cache_folders: the same for derived caches, watched only with
            ``include_derived_caches``.
        patterns: file patterns it writes that are worth pre-uploading.
        derived_patterns: file patterns of derived data (rebuilt on demand, never committed).
        derived_dirs: folder names whose whole content is derived.
        project_autosave_dirs: folders it creates next to a project for auto-saves.
    """

    name: str
    process_names: tuple[str, ...]
    folders: tuple[tuple[str, str], ...] = ()
    cache_folders: tuple[tuple[str, str], ...] = ()
    patterns: tuple[str, ...] = ()
    derived_patterns: tuple[str, ...] = ()
    derived_dirs: tuple[str, ...] = ()
    project_autosave_dirs: tuple[str, ...] = ()


_ADOBE_COMMON_MAC: Final = "~/Library/Application Support/Adobe/Common"
_ADOBE_COMMON_WIN: Final = "%APPDATA%/Adobe/Common"
_RESOLVE_MAC: Final = "~/Library/Application Support/Blackmagic Design/DaVinci Resolve"

EDITORS: Final[tuple[Editor, ...]] = (
    Editor(
        name="Adobe Premiere Pro",
        process_names=("Adobe Premiere Pro*",),
        folders=(
            ("darwin", "~/Documents/Adobe/Premiere Pro/*/Adobe Premiere Pro Auto-Save"),
            ("win32", "~/Documents/Adobe/Premiere Pro/*/Adobe Premiere Pro Auto-Save"),
        ),
        cache_folders=(
            ("darwin", f"{_ADOBE_COMMON_MAC}/Media Cache Files"),
            ("darwin", f"{_ADOBE_COMMON_MAC}/Media Cache"),
            ("win32", f"{_ADOBE_COMMON_WIN}/Media Cache Files"),
            ("win32", f"{_ADOBE_COMMON_WIN}/Media Cache"),
        ),
        patterns=("*.prproj", "Adobe Premiere Pro Auto-Save/*.prproj"),
        derived_patterns=("*.cfa", "*.pek", "*.mpgindex"),
        derived_dirs=("Media Cache Files", "Media Cache"),
        project_autosave_dirs=("Adobe Premiere Pro Auto-Save",),
    ),
    Editor(
        name="Adobe After Effects",
        process_names=("AfterFX*", "After Effects*", "Adobe After Effects*"),
        cache_folders=(
            ("darwin", f"{_ADOBE_COMMON_MAC}/Media Cache Files"),
            ("win32", f"{_ADOBE_COMMON_WIN}/Media Cache Files"),
        ),
        patterns=("*.aep", "*.aepx", "* auto-save*.aep"),
        derived_patterns=("*.cfa", "*.pek", "*.mpgindex"),
        derived_dirs=("Media Cache Files", "Media Cache"),
        project_autosave_dirs=("Adobe After Effects Auto-Save",),
    ),
    Editor(
        name="DaVinci Resolve",
        process_names=("Resolve",),
        folders=(
            ("darwin", _RESOLVE_MAC),
            ("win32", "%APPDATA%/Blackmagic Design/DaVinci Resolve"),
            (
                "win32",
                "%PROGRAMDATA%/Blackmagic Design/DaVinci Resolve/Support/Resolve Disk Database",
            ),
            ("linux", "~/.local/share/DaVinciResolve"),
        ),
        patterns=("*.drp", "*.drt", "*.dra"),
        derived_patterns=("*.dvcc",),
        derived_dirs=("CacheClip",),
    ),
    Editor(
        name="Final Cut Pro",
        process_names=("Final Cut Pro",),
        folders=(("darwin", "~/Movies/*.fcpbundle"),),
        patterns=("*.fcpxml", "*.fcpxmld", "*.fcpevent", "*.flexolibrary"),
        derived_dirs=("Render Files", "Transcoded Media", "Analysis Files"),
    ),
    Editor(
        name="Unreal Editor",
        process_names=("UnrealEditor*", "UE4Editor*", "UE5Editor*"),
        folders=(
            ("win32", "%LOCALAPPDATA%/UnrealEngine"),
            ("linux", "~/.config/Epic"),
        ),
        cache_folders=(
            ("win32", "%LOCALAPPDATA%/UnrealEngine/Common/DerivedDataCache"),
            ("linux", "~/.config/Epic/UnrealEngine/Common/DerivedDataCache"),
        ),
        patterns=("*.uasset", "*.umap", "Saved/Autosaves/*"),
        derived_patterns=("*.ddc",),
        derived_dirs=("DerivedDataCache",),
        project_autosave_dirs=("Saved/Autosaves",),
    ),
)
"""Every editor the agent recognises."""

DEFAULT_PATTERNS: Final[tuple[str, ...]] = (
    # camera originals, intermediates and exports
    *("*.mov", "*.mp4", "*.mxf", "*.braw", "*.r3d", "*.ari", "*.m4v", "*.mkv", "*.avi"),
    # project files and auto-saves of every editor above
    *(p for e in EDITORS for p in e.patterns),
)
"""File patterns watched outside the working tree (``speculative.patterns`` adds more)."""

_DERIVED_PATTERNS: Final = tuple(dict.fromkeys(p for e in EDITORS for p in e.derived_patterns))
_DERIVED_DIRS: Final = frozenset(d.casefold() for e in EDITORS for d in e.derived_dirs)


def platform_key(platform: str = sys.platform) -> str:
    """``darwin``, ``win32`` or ``linux`` (any ``linux*``); other platforms map to themselves."""
    return "linux" if platform.startswith("linux") else platform


def _match_one(parts: tuple[str, ...], pattern: str) -> bool:
    pat = tuple(p.casefold() for p in pattern.replace("\\", "/").split("/"))
    if len(pat) > len(parts):
        return False
    tail = parts[len(parts) - len(pat) :]
    return all(fnmatch.fnmatchcase(name, p) for name, p in zip(tail, pat, strict=True))


def _parts(path: PurePath | str) -> tuple[str, ...]:
    text = os.fspath(path).replace("\\", "/")
    return tuple(p.casefold() for p in text.split("/") if p)


def is_derived_cache(path: PurePath | str) -> bool:
    """Whether ``path`` is data an editor rebuilds on demand (media cache, render cache, DDC)."""
    parts = _parts(path)
    if any(p in _DERIVED_DIRS for p in parts[:-1]):
        return True
    return any(_match_one(parts, pattern) for pattern in _DERIVED_PATTERNS)


def matches(path: PurePath | str, cfg: SpeculativeConfig) -> bool:
    """Whether a file outside the working tree is worth pre-uploading.

    Patterns (built-in plus ``cfg.patterns``) match the file name, or the last components of
    the path when they contain ``/``, case-insensitively. Derived caches match only with
    ``cfg.include_derived_caches``. The size limit is the caller's to check.
    """
    parts = _parts(path)
    if not parts:
        return False
    if is_derived_cache(path):
        return cfg.include_derived_caches
    return any(_match_one(parts, p) for p in (*DEFAULT_PATTERNS, *cfg.patterns))


# --------------------------------------------------------------------------- folders


@dataclass(frozen=True)
class WatchFolder:
    """A folder worth watching because an editor uses it."""

    path: Path
    priority_class: int
    editor: str
    derived: bool = False


@dataclass(frozen=True)
class RunningEditor:
    """A running process recognised as an editor."""

    name: str
    pid: int
    process_name: str
    editor: Editor


_VAR: Final = re.compile(
    r"%([A-Za-z_][A-Za-z0-9_]*)%|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_]\w*)"
)


def _expand(template: str, home: Path, env: Mapping[str, str]) -> str | None:
    """Resolve ``~`` and variables; None when a variable is unset (the folder cannot exist)."""
    missing = False

    def var(m: re.Match[str]) -> str:
        nonlocal missing
        name = m.group(1) or m.group(2) or m.group(3)
        value = env.get(name)
        if not value:
            missing = True
            return ""
        return value.replace("\\", "/")

    text = _VAR.sub(var, template)
    if missing:
        return None
    if text == "~" or text.startswith("~/"):
        text = home.as_posix() + text[1:]
    return text


def editor_folders(
    editors: Iterable[Editor | RunningEditor],
    platform: str = sys.platform,
    home: Path | None = None,
    env: Mapping[str, str] | None = None,
    *,
    include_derived: bool = False,
) -> list[WatchFolder]:
    """The existing folders of ``editors`` on ``platform``, each once, in template order.

    Args:
        editors: editors (or running editors, as ``running_editors`` returns them).
        platform: a ``sys.platform`` value.
        home: what ``~`` means (default ``Path.home()``).
        env: environment variables for ``%NAME%``/``$NAME`` (default ``os.environ``).
        include_derived: also return derived-cache folders.
    """
    home = home if home is not None else Path.home()
    env = env if env is not None else os.environ
    key = platform_key(platform)
    seen: set[Path] = set()
    out: list[WatchFolder] = []
    unique = dict.fromkeys(e.editor if isinstance(e, RunningEditor) else e for e in editors)
    for editor in unique:
        groups = [(editor.folders, False)]
        if include_derived:
            groups.append((editor.cache_folders, True))
        for templates, derived in groups:
            for plat, template in templates:
                if plat != key:
                    continue
                for path in _existing(template, home, env):
                    if path not in seen:
                        seen.add(path)
                        out.append(WatchFolder(path, PriorityClass.EDITOR, editor.name, derived))
    return out


def _existing(template: str, home: Path, env: Mapping[str, str]) -> Iterator[Path]:
    text = _expand(template, home, env)
    if text is None:
        return
    candidates = sorted(glob.glob(glob.escape(text).replace("[*]", "*"))) if "*" in text else [text]
    for candidate in candidates:
        path = Path(candidate)
        if path.is_dir():
            yield path


# --------------------------------------------------------------------------- processes


def _process_key(name: str) -> str:
    name = name.casefold()
    return name[:-4] if name.endswith(".exe") else name


_PROCESS_PATTERNS: Final = tuple((p.casefold(), e) for e in EDITORS for p in e.process_names)


def _editor_for(names: Iterable[str]) -> tuple[Editor, str] | None:
    for raw in names:
        if not raw:
            continue
        key = _process_key(raw)
        for pattern, editor in _PROCESS_PATTERNS:
            if fnmatch.fnmatchcase(key, pattern):
                return editor, raw
    return None


def running_editors(
    process_iter: Callable[..., Iterable[Any]] = psutil.process_iter,
) -> list[RunningEditor]:
    """Every running process whose name (or executable's name) is an editor's.

    Processes that exit or deny access while being looked at are skipped.
    """
    found: list[RunningEditor] = []
    for proc in process_iter(["pid", "name", "exe"]):
        info = getattr(proc, "info", None) or {}
        exe = info.get("exe") or ""
        hit = _editor_for([info.get("name") or "", os.path.basename(exe)])
        if hit is not None:
            editor, process_name = hit
            found.append(
                RunningEditor(editor.name, int(info.get("pid", proc.pid)), process_name, editor)
            )
    return found


class _Process(Protocol):
    def io_counters(self) -> Any: ...
    def create_time(self) -> float: ...


class WriteRateMeter:
    """Bytes per second written by running editors, from psutil's per-process I/O counters.

    ``sample(now)`` reads every editor's write counter and returns the bytes written since the
    previous sample divided by the time between them; the first sample returns 0. Counters
    are kept per (pid, start time), so a reused pid starts afresh. ``write_chars`` (all
    ``write`` calls, any file system) is used where the platform has it, else ``write_bytes``.

    Args:
        pids: which processes to measure (default: ``running_editors``).
        process: builds a psutil process handle from a pid (injectable for tests).
    """

    def __init__(
        self,
        pids: Callable[[], Iterable[int]] | None = None,
        process: Callable[[int], _Process] = psutil.Process,
    ) -> None:
        self._pids = pids or (lambda: [e.pid for e in running_editors()])
        self._process = process
        self._last: dict[tuple[int, float], int] = {}
        self._last_at: float | None = None

    def sample(self, now: float) -> float:
        """Write rate in bytes/s since the previous sample (0 on the first)."""
        current: dict[tuple[int, float], int] = {}
        for pid in dict.fromkeys(self._pids()):
            try:
                proc = self._process(pid)
                counters = proc.io_counters()
                key = (pid, proc.create_time())
            except (psutil.Error, AttributeError, OSError):
                continue  # exited, access denied, or no counters on this platform (macOS)
            written = getattr(counters, "write_chars", None)
            current[key] = int(written if written is not None else counters.write_bytes)
        delta = sum(v - self._last[k] for k, v in current.items() if k in self._last)
        previous_at, self._last_at, self._last = self._last_at, now, current
        if previous_at is None or now <= previous_at:
            return 0.0
        return max(0, delta) / (now - previous_at)
