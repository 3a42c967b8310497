"""Repository configuration: TOML in ``.dits/config``, read and written with dotted keys.

Keys are ``section.name`` (``core.fsync``, ``user.name``) or ``section.sub.name`` for sections
with a subsection such as ``remote.origin.url`` (TOML ``[remote.origin]``). Values keep their TOML
types; ``set`` parses the given text as a TOML value when it can (``true``, ``3``, ``[..]``) and
stores it as a string otherwise. Writes are atomic (tmp, fsync, rename).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from dits.errors import UsageError

__all__ = ["DEFAULTS", "Config", "ConfigError"]

# Documented in docs/configuration.md; `dits config list` shows these when unset.
DEFAULTS: dict[str, Any] = {
    "core.compression": True,
    "core.max_file_reads": 3,
    "core.hooks": True,
    "add.threads": 0,  # 0 = one per core
}


class ConfigError(UsageError):
    """The config file is malformed or a key is not of the form section.name."""


def _split_key(key: str) -> list[str]:
    parts = key.split(".")
    if len(parts) < 2 or any(not p for p in parts):
        raise ConfigError(f"config key {key!r} must look like section.name (e.g. user.name)")
    return parts


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


class Config:
    """A TOML config file with dotted-key access."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {}
        if path.exists():
            try:
                self.data = tomllib.loads(path.read_text(encoding="utf-8"))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{path}: malformed config: {exc}") from None

    def get(self, key: str, default: Any = None) -> Any:
        """Return the value at ``key``, else the documented default, else ``default``."""
        node: Any = self.data
        for part in _split_key(key):
            if not isinstance(node, dict) or part not in node:
                return DEFAULTS.get(key, default)
            node = node[part]
        return node

    def set(self, key: str, value: Any) -> None:
        """Set ``key`` (text values are parsed as TOML when possible) and save."""
        parts = _split_key(key)
        if isinstance(value, str):
            value = _parse_value(value)
        node = self.data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(parts[:-1])} is a value, not a section")
            node = child
        node[parts[-1]] = value
        self.save()

    def unset(self, key: str) -> bool:
        """Remove ``key``; return whether it existed."""
        parts = _split_key(key)
        node: Any = self.data
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                return False
        if not isinstance(node, dict) or parts[-1] not in node:
            return False
        del node[parts[-1]]
        self.save()
        return True

    def section(self, *names: str) -> dict[str, Any]:
        """Return a (copy of a) section, e.g. ``section("remote", "origin")``."""
        node: Any = self.data
        for name in names:
            node = node.get(name, {}) if isinstance(node, dict) else {}
        return dict(node) if isinstance(node, dict) else {}

    def items(self) -> list[tuple[str, Any]]:
        """Every set key with its value, flattened to dotted keys, sorted."""
        out: list[tuple[str, Any]] = []

        def walk(prefix: str, node: dict[str, Any]) -> None:
            for k, v in node.items():
                key = f"{prefix}.{k}" if prefix else k
                if isinstance(v, dict):
                    walk(key, v)
                else:
                    out.append((key, v))

        walk("", self.data)
        return sorted(out)

    def save(self) -> None:
        """Write atomically: a crash leaves the old or the new file, never half of one."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        # A config holding a remote's token is a secret: owner-only, like ~/.ssh files.
        mode = 0o600 if self._holds_token() else 0o644
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        os.fchmod(fd, mode)  # O_CREAT's mode is ignored when tmp already existed
        with open(fd, "wb") as fh:
            fh.write(tomli_w.dumps(self.data).encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def _holds_token(self) -> bool:
        remotes = self.data.get("remote", {})
        return isinstance(remotes, dict) and any(
            isinstance(section, dict) and section.get("token") for section in remotes.values()
        )
