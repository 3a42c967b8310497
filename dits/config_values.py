"""Typed values in ``.dits/config`` sections: human units and errors that name the key.

This module owns the parsing of sizes, rates and durations (``16MiB``, ``20MB/s``, ``72h``) and
``SectionReader``, which reads one section's keys into checked Python values. It does no I/O and
knows no section's keys: ``dits.speculative.config`` and ``dits.staging.config`` list their own
keys and defaults. A bad value raises ``ConfigError`` (a ``UsageError``) naming the key and what
was expected (``staging.staging_queue_depth must be ...``).

Units: sizes and rates use SI prefixes (``k``, ``M``, ``G``, ``T`` = powers of 1000) or binary
ones (``Ki``, ``Mi``, ``Gi``, ``Ti`` = powers of 1024), case-insensitive. ``B`` is a byte and
``b`` or ``bit`` a bit (``160Mbit/s`` = ``20MB/s``). A bare number is bytes or seconds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Final

from dits.config import ConfigError

__all__ = [
    "MIN_RATE",
    "SectionReader",
    "parse_duration",
    "parse_rate",
    "parse_size",
]

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


class SectionReader:
    """Typed access to one config section, raising ConfigError with the key's full name.

    Args:
        section: the section's name, used in error messages (``speculative``, ``staging``).
        raw: the section's keys and TOML values (``Config.section(name)``).
    """

    def __init__(self, section: str, raw: Mapping[str, Any]) -> None:
        self.section = section
        self.raw = raw

    def _fail(self, key: str, value: Any, expected: str) -> ConfigError:
        return ConfigError(f"{self.section}.{key} must be {expected}, not {value!r}")

    def boolean(self, key: str, default: bool) -> bool:
        """``true``/``false`` or the strings yes/no, on/off, 1/0."""
        value = self.raw.get(key, default)
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise self._fail(key, value, "true or false")

    def integer(self, key: str, default: int, *, minimum: int) -> int:
        """A whole number (or a string of digits) of at least ``minimum``."""
        value = self.raw.get(key, default)
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self._fail(key, value, f"a whole number of at least {minimum}")
        return value

    def fraction(self, key: str, default: float) -> float:
        """A number above 0 and at most 1 (``0.85``; a numeric string is accepted)."""
        value = self.raw.get(key, default)
        number: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = None
        if number is None or not math.isfinite(number) or not 0.0 < number <= 1.0:
            raise self._fail(key, value, "a number above 0 and at most 1, e.g. 0.85")
        return number

    def choice(self, key: str, default: str, options: tuple[str, ...]) -> str:
        """One of ``options``, case-insensitive; returned lower-case."""
        value = self.raw.get(key, default)
        if not isinstance(value, str) or value.strip().lower() not in options:
            raise self._fail(key, value, " or ".join(repr(o) for o in options))
        return value.strip().lower()

    def rate(self, key: str, default: str, *, zero_ok: bool) -> int:
        """A rate in bytes/s (``parse_rate``); 0 only when ``zero_ok`` (unlimited)."""
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

    def size(self, key: str, default: int | str, *, minimum: int = 0) -> int:
        """A size in bytes (``parse_size``) of at least ``minimum``."""
        value = self.raw.get(key, default)
        try:
            size = parse_size(value)
        except (ValueError, TypeError):
            expected = 'a size such as "16MiB", "4M" or a number of bytes'
            raise self._fail(key, value, expected) from None
        if size < minimum:
            raise self._fail(key, value, f"a size of at least {minimum} bytes")
        return size

    def duration(self, key: str, default: str | float, *, positive: bool) -> float:
        """A duration in seconds (``parse_duration``); above zero when ``positive``."""
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
        """A list of strings (a single string counts as a list of one), stripped."""
        value = self.raw.get(key, list(default))
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(
            isinstance(v, str) and (allow_empty or v.strip()) for v in value
        ):
            raise self._fail(key, value, 'a list of non-empty strings, e.g. ["a", "b"]')
        return tuple(v.strip() for v in value)

    def optional_string(self, key: str) -> str | None:
        """A non-empty name, or None when the key is absent."""
        value = self.raw.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self._fail(key, value, "a non-empty name")
        return value.strip()
