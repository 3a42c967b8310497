"""The ``[speculative]`` section of ``.dits/config``, read once into a validated value.

This module owns the agent's settings, their defaults and the parsing of human units (``20MB/s``,
``72h``, ``16MiB``). It reads a ``Config`` it is given and never looks at the environment except
to expand ``~`` in ``watch_dirs`` (against the ``home`` it is given, else ``Path.home()``).
A bad value raises ``ConfigError`` (a ``UsageError``) naming the key and what was expected.
Keys it does not know are left alone (``speculative.remote`` is read by the agent itself);
``unknown_keys`` lists them so the CLI can warn about typos.

Units: sizes and rates use SI prefixes (``k``, ``M``, ``G``, ``T`` = powers of 1000) or binary
ones (``Ki``, ``Mi``, ``Gi``, ``Ti`` = powers of 1024), case-insensitive. ``B`` is a byte and
``b`` or ``bit`` a bit (``160Mbit/s`` = ``20MB/s``). A bare number is bytes or seconds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from dits.config import Config, ConfigError

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
MIN_RATE: Final = 1000  # bytes/s; anything slower is a forgotten unit (`max_bandwidth = 20`)

_PREFIX: Final[dict[str, int]] = {
    "": 1,
    "k": 1000,
    "m": 1000**2,
    "g": 1000**3,
    "t": 1000**4,
    "ki": 1024,
    "mi": 1024**2,
    "gi": 1024**3,
    "ti": 1024**4,
}
_QUANTITY: Final = re.compile(
    r"\s*(?P<num>\d+(?:\.\d*)?|\.\d+)\s*(?P<prefix>[kKmMgGtT]i?)?"
    r"(?P<unit>B|b|bit|bits|byte|bytes)?\s*(?P<per>/\s*s|/\s*sec|ps)?\s*"
)
_DURATION_UNITS: Final[dict[str, float]] = {
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_DURATION_PART: Final = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|sec|min|s|m|h|d)?\s*")
_TRUE: Final = frozenset({"true", "yes", "on", "1"})
_FALSE: Final = frozenset({"false", "no", "off", "0"})


def _quantity(text: str, *, rate: bool) -> int:
    m = _QUANTITY.fullmatch(text)
    if m is None or (m.group("per") and not rate):
        raise ValueError(text)
    prefix = (m.group("prefix") or "").lower()
    unit = m.group("unit") or ""
    factor = _PREFIX[prefix] / (8 if unit in ("b", "bit", "bits") else 1)
    return round(float(m.group("num")) * factor)


def _plain_number(value: str | int | float) -> float | None:
    """A TOML number as it is (None for text); booleans, NaN and negatives are refused."""
    if isinstance(value, bool):
        raise ValueError(str(value))
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(str(value))
        return float(value)
    return None


def parse_rate(text: str | int | float) -> int:
    """A transfer rate in bytes per second: ``20MB/s``, ``20M``, ``2.5 MB/s``, ``160Mbit/s``.

    Args:
        text: a number (bytes/s) or a number with a unit; ``0`` means unlimited.

    Returns:
        Bytes per second, rounded to an integer.

    Raises:
        ValueError: the text is not a rate, or is negative.
    """
    number = _plain_number(text)
    return round(number) if number is not None else _quantity(str(text), rate=True)


def parse_size(text: str | int | float) -> int:
    """A size in bytes: ``16MiB``, ``4M``, ``1.5GB``, or a plain number of bytes.

    Raises:
        ValueError: the text is not a size, or is negative.
    """
    number = _plain_number(text)
    return round(number) if number is not None else _quantity(str(text), rate=False)


def parse_duration(text: str | int | float) -> float:
    """A duration in seconds: ``72h``, ``30m``, ``45s``, ``500ms``, ``1d``, ``1h30m`` or a number.

    Raises:
        ValueError: the text is not a duration, or is negative.
    """
    number = _plain_number(text)
    if number is not None:
        return number
    assert isinstance(text, str)
    total, pos = 0.0, 0
    parts = 0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if m is None or m.end() == pos:
            raise ValueError(text)
        unit = m.group(2)
        if unit is None and (parts or m.end() < len(text)):
            raise ValueError(text)  # "1h30" is ambiguous
        total += float(m.group(1)) * _DURATION_UNITS[unit or "s"]
        pos = m.end()
        parts += 1
    if not parts:
        raise ValueError(text)
    return total


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
        r = _Reader(raw)
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


class _Reader:
    """Typed access to one section, raising ConfigError with the key's full name."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw = raw

    def _fail(self, key: str, value: Any, expected: str) -> ConfigError:
        return ConfigError(f"{SECTION}.{key} must be {expected}, not {value!r}")

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw.get(key, default)
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise self._fail(key, value, "true or false")

    def integer(self, key: str, default: int, *, minimum: int) -> int:
        value = self.raw.get(key, default)
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self._fail(key, value, f"a whole number of at least {minimum}")
        return value

    def choice(self, key: str, default: str, options: tuple[str, ...]) -> str:
        value = self.raw.get(key, default)
        if not isinstance(value, str) or value.strip().lower() not in options:
            raise self._fail(key, value, " or ".join(repr(o) for o in options))
        return value.strip().lower()

    def rate(self, key: str, default: str, *, zero_ok: bool) -> int:
        value = self.raw.get(key, default)
        try:
            rate = parse_rate(value)
        except (ValueError, TypeError):
            raise self._fail(key, value, 'a rate such as "20MB/s", "160Mbit/s" or 0') from None
        if rate == 0 and zero_ok:
            return 0
        if rate < MIN_RATE:
            hint = " (0 = unlimited)" if zero_ok else ""
            expected = f'a rate with a unit, e.g. "20MB/s"{hint}; a bare number is bytes/s'
            raise self._fail(key, value, expected)
        return rate

    def size(self, key: str, default: int) -> int:
        value = self.raw.get(key, default)
        try:
            return parse_size(value)
        except (ValueError, TypeError):
            expected = 'a size such as "16MiB", "4M" or a number of bytes'
            raise self._fail(key, value, expected) from None

    def duration(self, key: str, default: str | float, *, positive: bool) -> float:
        value = self.raw.get(key, default)
        try:
            seconds = parse_duration(value)
        except (ValueError, TypeError):
            expected = 'a duration such as "72h", "30m", "45s" or seconds'
            raise self._fail(key, value, expected) from None
        if positive and seconds <= 0:
            raise self._fail(key, value, "a duration above zero")
        return seconds

    def strings(self, key: str, default: tuple[str, ...], *, allow_empty: bool) -> tuple[str, ...]:
        value = self.raw.get(key, list(default))
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(
            isinstance(v, str) and (allow_empty or v.strip()) for v in value
        ):
            raise self._fail(key, value, 'a list of non-empty strings, e.g. ["a", "b"]')
        return tuple(v.strip() for v in value)

    def optional_string(self, key: str) -> str | None:
        value = self.raw.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self._fail(key, value, "a non-empty name")
        return value.strip()
