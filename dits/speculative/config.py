"""The ``[speculative]`` section of ``.dits/config``, read once into a validated value.

This module owns the agent's settings and their defaults; human units (``20MB/s``, ``72h``,
``16MiB``) are parsed by ``dits.config_values`` (``parse_*`` are re-exported here for existing
callers). It reads a ``Config`` it is given and never looks at the environment except to expand
``~`` in ``watch_dirs`` (against the ``home`` it is given, else ``Path.home()``).
A bad value raises ``ConfigError`` (a ``UsageError``) naming the key and what was expected.
Keys it does not know are left alone (``speculative.remote`` is read by the agent itself);
``unknown_keys`` lists them so the CLI can warn about typos.

Units: sizes and rates use SI prefixes (``k``, ``M``, ``G``, ``T`` = powers of 1000) or binary
ones (``Ki``, ``Mi``, ``Gi``, ``Ti`` = powers of 1024), case-insensitive. ``B`` is a byte and
``b`` or ``bit`` a bit (``160Mbit/s`` = ``20MB/s``). A bare number is bytes or seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from dits.config import Config
from dits.config_values import (
    SectionReader,
    parse_duration,
    parse_rate,
    parse_size,
)

__all__ = [
    "DEFAULT_IGNORE_DIRS",
    "KNOWN_KEYS",
    "SpeculativeConfig",
    "parse_duration",
    "parse_rate",
    "parse_size",
    "unknown_keys",
]

SECTION: Final = "speculative"
DEFAULT_IGNORE_DIRS: Final = (".dits", ".git", "node_modules")


@dataclass(frozen=True)
class SpeculativeConfig:
    """The agent's settings; every field is documented in docs/configuration.md.

    Attributes:
        enabled: whether ``dits speculative start`` may run the agent at all.
        max_bandwidth: upload limit in bytes/s; 0 = unlimited.
        priority: ``"low"`` (nice/idle I/O class) or ``"normal"``.
        workers: parallel upload streams.
        chunk_ttl: seconds the agent trusts that a speculative upload is still on the server.
        watch_dirs: extra folders to watch, ``~`` expanded, relative ones under the repository.
        patterns: glob patterns watched in ``watch_dirs`` and editor folders, besides the
            built-in media and project patterns (``dits.speculative.nle``).
        ignore_dirs: folder names never watched (the defaults plus configured extras).
        min_file_size: smaller files are left to ``dits add``.
        max_tracked_files: the most files tracked at once; the oldest idle ones go first.
        debounce: seconds a file's size and mtime must stay unchanged before it is final.
        pause_on_active_edit: hold uploads while files are written fast.
        active_edit_rate: bytes/s of writes above which editing counts as active.
        resume_after_idle: calm seconds after which held uploads resume.
        include_derived_caches: also watch caches editors can rebuild (peak files, render
            caches).
        watch_editors: watch the auto-save and cache folders of running editors.
        remote: the remote to pre-upload to; None = the one ``dits push`` would use.
    """

    enabled: bool = True
    max_bandwidth: int = 10_000_000
    priority: str = "low"
    workers: int = 2
    chunk_ttl: float = 72 * 3600.0
    watch_dirs: tuple[Path, ...] = ()
    patterns: tuple[str, ...] = ()
    ignore_dirs: tuple[str, ...] = DEFAULT_IGNORE_DIRS
    min_file_size: int = 0
    max_tracked_files: int = 10_000
    debounce: float = 2.0
    pause_on_active_edit: bool = True
    active_edit_rate: int = 100_000_000
    resume_after_idle: float = 30.0
    include_derived_caches: bool = False
    watch_editors: bool = True
    remote: str | None = None

    @classmethod
    def from_config(cls, config: Config, *, home: Path | None = None) -> SpeculativeConfig:
        """Read and validate the ``[speculative]`` section.

        Args:
            config: the repository's config; relative ``watch_dirs`` are taken relative to the
                folder holding ``.dits`` (the parent of the config file's folder).
            home: what ``~`` expands to (default ``Path.home()``).

        Raises:
            ConfigError: a value has the wrong type or is out of range; the message names the
                key (``speculative.workers must be ...``).
        """
        raw = config.section(SECTION)
        root = config.path.parent.parent
        r = SectionReader(SECTION, raw)
        watch_dirs = tuple(
            _expand(p, home, root) for p in r.strings("watch_dirs", (), allow_empty=False)
        )
        ignore_extra = r.strings("ignore_dirs", (), allow_empty=False)
        return cls(
            enabled=r.boolean("enabled", True),
            max_bandwidth=r.rate("max_bandwidth", "10MB/s", zero_ok=True),
            priority=r.choice("priority", "low", ("low", "normal")),
            workers=r.integer("workers", 2, minimum=1),
            chunk_ttl=r.duration("chunk_ttl", "72h", positive=True),
            watch_dirs=watch_dirs,
            patterns=r.strings("patterns", (), allow_empty=False),
            ignore_dirs=tuple(dict.fromkeys((*DEFAULT_IGNORE_DIRS, *ignore_extra))),
            min_file_size=r.size("min_file_size", 0),
            max_tracked_files=r.integer("max_tracked_files", 10_000, minimum=1),
            debounce=r.duration("debounce", 2.0, positive=False),
            pause_on_active_edit=r.boolean("pause_on_active_edit", True),
            active_edit_rate=r.rate("active_edit_rate", "100MB/s", zero_ok=False),
            resume_after_idle=r.duration("resume_after_idle", 30.0, positive=False),
            include_derived_caches=r.boolean("include_derived_caches", False),
            watch_editors=r.boolean("watch_editors", True),
            remote=r.optional_string("remote"),
        )


KNOWN_KEYS: Final = frozenset(
    {
        "enabled",
        "max_bandwidth",
        "priority",
        "workers",
        "chunk_ttl",
        "watch_dirs",
        "patterns",
        "ignore_dirs",
        "min_file_size",
        "max_tracked_files",
        "debounce",
        "pause_on_active_edit",
        "active_edit_rate",
        "resume_after_idle",
        "include_derived_caches",
        "watch_editors",
        "remote",
    }
)


def unknown_keys(config: Config) -> list[str]:
    """Full names of ``[speculative]`` keys this version does not know (likely typos)."""
    return sorted(f"{SECTION}.{k}" for k in config.section(SECTION) if k not in KNOWN_KEYS)


def _expand(text: str, home: Path | None, root: Path) -> Path:
    if text == "~" or text.startswith("~/"):
        base = home if home is not None else Path.home()
        text = str(base) + text[1:]
    path = Path(text)
    return path if path.is_absolute() else root / path
