"""Named remotes and certificate pins: what `dits push/fetch/clone` connect to, and whom to trust.

This module owns two small pieces of client state:

* **Remotes** live in the repository config as ``[remote.NAME]`` tables (``url``, optional
  ``token`` and ``transport``). :func:`parse_url` is the one parser of ``dits://`` URLs and
  :func:`get_remote` the one place that resolves a remote name, the ``DITS_TOKEN`` override and
  the transport setting into a :class:`RemoteSpec`.
* **Known hosts** pin each server's self-signed certificate on first use, as ssh's
  ``known_hosts`` does. :meth:`KnownHosts.verifier` is the ``verify`` callback handed to
  :func:`dits.transport.connect`; a changed certificate raises :class:`CertificateChangedError`,
  whose one-line message names the exact ``dits remote trust`` command that accepts the new one.

It does no networking and prints nothing. The environment is read only where a caller passes
none (``env=None`` means ``os.environ``), so tests and the CLI can inject it.

Known-hosts file: ``$XDG_CONFIG_HOME/dits/known_hosts`` (default ``~/.config/dits/known_hosts``),
one ``host:port sha256:<64 hex>`` per line, IPv6 hosts in brackets, ``#`` comments allowed (a
rewrite keeps only the entries). Writers take an exclusive ``flock`` on ``known_hosts.lock`` and
re-read under it, so two clients pinning different hosts at once both land; the file itself is
replaced atomically (unique tmp, fsync, rename) with mode 0600, so readers never see half a file.
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dits.config import Config
from dits.errors import EXIT_CERT_CHANGED, UsageError
from dits.transport import CertificateMismatchError

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_REMOTE",
    "EXIT_CERT_CHANGED",
    "TRANSPORTS",
    "CertificateChangedError",
    "KnownHosts",
    "KnownHostsError",
    "RemoteSpec",
    "RemoteUrl",
    "add_remote",
    "fingerprint_of_der",
    "format_hostport",
    "get_remote",
    "list_remotes",
    "mask_token",
    "normalize_fingerprint",
    "parse_hostport",
    "parse_url",
    "remove_remote",
]

"""Exit status when a remote's certificate differs from the pinned one (docs/exit-codes.md)."""

DEFAULT_PORT = 4433
DEFAULT_REMOTE = "origin"
TRANSPORTS = ("auto", "quic", "tcp")
TOKEN_ENV = "DITS_TOKEN"

URL_FORM = "dits://HOST[:PORT]/REPO"
_URL_HELP = f"expected {URL_FORM} (IPv6 hosts in brackets, e.g. dits://[::1]:4433/films)"

_REPO_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# authority = "[v6]" or name/IPv4, then an optional ":port" (digits checked separately).
_HOSTPORT_RE = re.compile(r"(?:\[(?P<v6>[^\]/]*)\]|(?P<name>[^:/\[\]]*))(?::(?P<port>[^/]*))?")
_NUMERIC_RE = re.compile(r"[0-9.]+")
_FINGERPRINT_RE = re.compile(r"(?i:sha256):(?P<hex>(?:[0-9a-fA-F]{2}:?){31}[0-9a-fA-F]{2})")


# --- URLs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteUrl:
    """A parsed ``dits://host:port/repo``; ``host`` is lowercase, IPv6 without brackets."""

    host: str
    port: int = DEFAULT_PORT
    repo: str = ""

    def __str__(self) -> str:
        return f"dits://{format_hostport(self.host, self.port)}/{self.repo}"

    @property
    def hostport(self) -> str:
        """``host:port`` as it appears in known_hosts and ``dits remote trust``."""
        return format_hostport(self.host, self.port)


def format_hostport(host: str, port: int) -> str:
    """``example.com:4433``, ``[::1]:4433``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_authority(text: str, what: str, help_text: str) -> tuple[str, int]:
    m = _HOSTPORT_RE.fullmatch(text)
    if not m:
        raise UsageError(f"bad {what} {text!r}: {help_text}")
    if m["v6"] is None and text.count(":") > 1:
        raise UsageError(f"bad {what} {text!r}: put an IPv6 address in brackets, as [::1]:4433")
    if m["v6"] is not None:
        try:
            host = str(ipaddress.IPv6Address(m["v6"]))
        except ValueError:
            raise UsageError(f"bad {what} {text!r}: {m['v6']!r} is not an IPv6 address") from None
    else:
        host = m["name"].lower()
        if not _HOSTNAME_RE.fullmatch(host) or len(host) > 253:
            raise UsageError(f"bad {what} {text!r}: {help_text}")
        if _NUMERIC_RE.fullmatch(host):
            try:
                host = str(ipaddress.IPv4Address(host))
            except ValueError:
                raise UsageError(f"bad {what} {text!r}: {host!r} is not an IPv4 address") from None
    port = DEFAULT_PORT
    if m["port"] is not None:
        if not m["port"].isascii() or not m["port"].isdigit() or not 0 < int(m["port"]) < 65536:
            raise UsageError(f"bad {what} {text!r}: port must be a number from 1 to 65535")
        port = int(m["port"])
    return host, port


def parse_url(text: str) -> RemoteUrl:
    """Parse ``dits://host[:port]/repo``.

    Args:
        text: the URL; the port defaults to 4433, an IPv6 host must be in brackets, and the repo
            name matches ``[A-Za-z0-9][A-Za-z0-9._-]{0,99}`` (no further path, query or slash).

    Returns:
        The parsed URL; ``str()`` of it is the canonical spelling.

    Raises:
        UsageError: anything else, with a one-line message naming the expected form.
    """
    if not isinstance(text, str) or not text.startswith("dits://"):
        raise UsageError(f"bad remote URL {text!r}: {_URL_HELP}")
    authority, slash, repo = text[len("dits://") :].partition("/")
    if not slash or not _REPO_RE.fullmatch(repo):
        raise UsageError(f"bad remote URL {text!r}: {_URL_HELP}")
    host, port = _parse_authority(authority, "remote URL", _URL_HELP)
    return RemoteUrl(host=host, port=port, repo=repo)


def parse_hostport(text: str) -> tuple[str, int]:
    """Parse ``host[:port]``, ``[v6][:port]`` or a whole ``dits://`` URL into (host, port).

    Raises:
        UsageError: not one of those forms.
    """
    if text.startswith("dits://"):
        url = parse_url(text)
        return url.host, url.port
    return _parse_authority(text, "host", "expected HOST[:PORT] (IPv6 as [ADDR]:PORT)")


# --- remotes in the config ----------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteSpec:
    """Everything needed to reach one remote.

    Attributes:
        name: the config name (``origin``), or the URL itself for an unnamed remote.
        url: where it is.
        token: the bearer token, or None; kept out of ``repr`` so it never lands in a log.
        transport: ``"auto"``, ``"quic"`` or ``"tcp"``.
        token_source: ``"env"`` (``DITS_TOKEN``), ``"config"`` or None.
    """

    name: str
    url: RemoteUrl
    token: str | None = field(default=None, repr=False)
    transport: str = "auto"
    token_source: str | None = None


def validate_remote_name(name: str) -> None:
    """Raise UsageError unless ``name`` matches ``[A-Za-z0-9][A-Za-z0-9._-]*``."""
    if not _NAME_RE.fullmatch(name):
        raise UsageError(
            f"bad remote name {name!r}: use letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


def _remote_table(config: Config) -> dict[str, Any]:
    table = config.data.get("remote", {})
    return table if isinstance(table, dict) else {}


def _names(config: Config) -> list[str]:
    return sorted(k for k, v in _remote_table(config).items() if isinstance(v, dict))


def _unknown(name: str, names: list[str]) -> UsageError:
    if not names:
        return UsageError(
            f"no remote named {name!r}; none configured "
            f"(add one with: dits remote add {DEFAULT_REMOTE} {URL_FORM})"
        )
    return UsageError(f"no remote named {name!r}; configured: {', '.join(names)}")


def _transport(config: Config | None, section: Mapping[str, Any], where: str) -> str:
    value = section.get("transport")
    key = f"{where}.transport"
    if value is None:
        value = "auto" if config is None else config.get("core.transport", "auto")
        key = "core.transport"
    if value not in TRANSPORTS:
        raise UsageError(f"{key} must be one of {', '.join(TRANSPORTS)}, not {value!r}")
    return str(value)


def _token(
    section: Mapping[str, Any], env: Mapping[str, str] | None
) -> tuple[str | None, str | None]:
    env = os.environ if env is None else env
    if env.get(TOKEN_ENV):
        return env[TOKEN_ENV], "env"
    value = section.get("token")
    if value is None or value == "":
        return None, None
    # `dits config set remote.x.token 1234` stores an int; a token is text either way.
    return str(value), "config"


def _spec(config: Config, name: str, env: Mapping[str, str] | None) -> RemoteSpec:
    section = config.section("remote", name)
    where = f"remote.{name}"
    raw = section.get("url")
    if raw is None:
        raise UsageError(f"remote {name!r} has no url (set it: dits config set {where}.url URL)")
    try:
        url = parse_url(raw)
    except UsageError as exc:
        raise UsageError(f"{where}.url: {exc}") from None
    token, source = _token(section, env)
    return RemoteSpec(
        name=name,
        url=url,
        token=token,
        transport=_transport(config, section, where),
        token_source=source,
    )


def get_remote(
    config: Config | None, name: str | None = None, *, env: Mapping[str, str] | None = None
) -> RemoteSpec:
    """Resolve a remote by name.

    Args:
        config: the repository config; None (no repository yet) allows only a URL ``name``.
        name: a configured remote, a ``dits://`` URL (an unnamed remote, as ``clone`` needs), or
            None for ``origin`` (or the only remote, when exactly one is configured).
        env: the environment; None reads ``os.environ``. ``DITS_TOKEN`` there wins over
            ``remote.NAME.token``.

    Returns:
        The remote, with its token and transport (``remote.NAME.transport``, else
        ``core.transport``, else ``"auto"``).

    Raises:
        UsageError: unknown remote (the message lists the configured ones), bad URL or transport.
    """
    if name is not None and name.startswith("dits://"):
        token, source = _token({}, env)
        return RemoteSpec(
            name=name,
            url=parse_url(name),
            token=token,
            transport=_transport(config, {}, "remote"),
            token_source=source,
        )
    names = [] if config is None else _names(config)
    if name is None:
        if DEFAULT_REMOTE in names:
            name = DEFAULT_REMOTE
        elif len(names) == 1:
            name = names[0]
        elif names:
            raise UsageError(
                f"no remote named {DEFAULT_REMOTE!r} and several configured "
                f"({', '.join(names)}); name one"
            )
        else:
            raise _unknown(DEFAULT_REMOTE, names)
    if config is None or name not in names:
        raise _unknown(name, names)
    return _spec(config, name, env)


def list_remotes(config: Config, *, env: Mapping[str, str] | None = None) -> list[RemoteSpec]:
    """Every configured remote, sorted by name (see :func:`get_remote` for ``env``).

    Raises:
        UsageError: a remote's URL or transport in the config is malformed.
    """
    return [_spec(config, name, env) for name in _names(config)]


def add_remote(
    config: Config,
    name: str,
    url: str | RemoteUrl,
    *,
    token: str | None = None,
    transport: str | None = None,
) -> RemoteSpec:
    """Add ``[remote.NAME]`` to the config and save it.

    The URL is stored in its canonical spelling. The token is stored verbatim as a string (never
    reparsed as TOML); prefer ``DITS_TOKEN`` on shared machines, since the config is a plain file.

    Returns:
        The new remote as :func:`get_remote` would see it without ``DITS_TOKEN``.

    Raises:
        UsageError: bad name, URL or transport, or the name is taken.
    """
    validate_remote_name(name)
    parsed = url if isinstance(url, RemoteUrl) else parse_url(url)
    if transport is not None and transport not in TRANSPORTS:
        raise UsageError(f"transport must be one of {', '.join(TRANSPORTS)}, not {transport!r}")
    if name in _names(config):
        raise UsageError(f"remote {name!r} already exists (dits remote remove {name} first)")
    table = config.data.get("remote")
    if not isinstance(table, dict):
        if table is not None:
            raise UsageError("config key 'remote' is a value, not a section; remove it first")
        table = config.data["remote"] = {}
    section: dict[str, Any] = {"url": str(parsed)}
    if token:
        section["token"] = token
    if transport is not None:
        section["transport"] = transport
    table[name] = section
    config.save()
    return _spec(config, name, env={})


def remove_remote(config: Config, name: str) -> None:
    """Delete ``[remote.NAME]`` and save; pinned certificates are kept (they are per host).

    Raises:
        UsageError: no such remote (the message lists the configured ones).
    """
    names = _names(config)
    if name not in names:
        raise _unknown(name, names)
    table = _remote_table(config)
    del table[name]
    if not table:
        config.data.pop("remote", None)
    config.save()


def mask_token(token: str | None) -> str:
    """``"unset"``, or a form that shows a token is set without revealing it (``****wxyz``)."""
    if not token:
        return "unset"
    # Show the last four only when that leaves at least 12 characters hidden.
    return "****" + token[-4:] if len(token) >= 16 else "****"


# --- known hosts --------------------------------------------------------------------------------


class KnownHostsError(UsageError):
    """The known_hosts file or a fingerprint given to it is malformed."""


class CertificateChangedError(CertificateMismatchError):
    """A server presented a certificate other than the one pinned for its host:port.

    A subclass of the transport's CertificateMismatchError (so ``connect`` passes it through
    unchanged and never falls back to another transport) with its own exit code.

    Attributes:
        host, port: the server.
        old: the pinned fingerprint.
        new: the fingerprint the server presented.
    """

    exit_code = EXIT_CERT_CHANGED
    transient = False

    def __init__(self, host: str, port: int, old: str, new: str) -> None:
        hostport = format_hostport(host, port)
        super().__init__(
            f"certificate of {hostport} changed: pinned {old}, server sent {new}; "
            "this could be an impostor, or the server's certificate was replaced; "
            f"if you expected it, accept it with: dits remote trust {hostport} {new}"
        )
        self.host, self.port, self.old, self.new = host, port, old, new


def fingerprint_of_der(der: bytes) -> str:
    """``"sha256:"`` + lowercase hex SHA-256 of a DER certificate, as ``dits.transport.tls``."""
    return "sha256:" + hashlib.sha256(der).hexdigest()


def normalize_fingerprint(text: str) -> str:
    """Return ``sha256:<64 lowercase hex>``; accepts any case and ``AB:CD:..`` separators.

    Raises:
        KnownHostsError: not a sha256 fingerprint.
    """
    m = _FINGERPRINT_RE.fullmatch(text.strip())
    if not m:
        raise KnownHostsError(f"bad fingerprint {text!r}: expected sha256:<64 hex digits>")
    return "sha256:" + m["hex"].replace(":", "").lower()


class KnownHosts:
    """Certificate pins, ``host:port -> sha256:<hex>``, trusted on first use."""

    def __init__(self, path: Path | None = None) -> None:
        """Use ``path``, or :meth:`default_path` when None."""
        self.path = path if path is not None else self.default_path()

    @staticmethod
    def default_path(env: Mapping[str, str] | None = None) -> Path:
        """``$XDG_CONFIG_HOME/dits/known_hosts``, else ``~/.config/dits/known_hosts``."""
        env = os.environ if env is None else env
        xdg = env.get("XDG_CONFIG_HOME", "")
        if xdg and os.path.isabs(xdg):  # the XDG spec says to ignore relative values
            base = Path(xdg)
        else:
            home = env.get("HOME")
            base = (Path(home) if home else Path.home()) / ".config"
        return base / "dits" / "known_hosts"

    def entries(self) -> dict[str, str]:
        """Every pin, ``{"host:port": "sha256:..."}``, in file order.

        Raises:
            KnownHostsError: a line is malformed (a pin file is never half-trusted).
        """
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except UnicodeDecodeError:
            raise KnownHostsError(f"{self.path}: not UTF-8 text") from None
        out: dict[str, str] = {}
        for lineno, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            try:
                if len(parts) != 2:
                    raise UsageError("wrong number of fields")
                host, port = _parse_authority(parts[0], "host", "expected HOST:PORT")
                fingerprint = normalize_fingerprint(parts[1])
            except UsageError as exc:
                raise KnownHostsError(
                    f"{self.path}:{lineno}: malformed line ({exc}); "
                    "expected 'host:port sha256:<hex>'"
                ) from None
            out[format_hostport(host, port)] = fingerprint
        return out

    def get(self, host: str, port: int) -> str | None:
        """The pinned fingerprint of host:port, or None."""
        return self.entries().get(self._key(host, port))

    def check(self, host: str, port: int, fingerprint: str) -> bool:
        """Compare a server's fingerprint with the pin, pinning it on first use.

        Returns:
            True when host:port had no pin and ``fingerprint`` was recorded; False when it
            matched the pin.

        Raises:
            CertificateChangedError: a different fingerprint is pinned.
            KnownHostsError: malformed fingerprint or known_hosts file.
        """
        key, new = self._key(host, port), normalize_fingerprint(fingerprint)
        if self._compare(key, new, self.entries(), host, port):
            return False
        with self._locked():
            entries = self.entries()  # another client may have pinned it meanwhile
            if self._compare(key, new, entries, host, port):
                return False
            entries[key] = new
            self._write(entries)
        return True

    def trust(self, host: str, port: int, fingerprint: str) -> str | None:
        """Pin ``fingerprint`` for host:port, replacing any earlier pin; return the earlier one."""
        key, new = self._key(host, port), normalize_fingerprint(fingerprint)
        with self._locked():
            entries = self.entries()
            old = entries.get(key)
            if old != new:
                entries[key] = new
                self._write(entries)
        return old

    def forget(self, host: str, port: int) -> bool:
        """Drop the pin of host:port; return whether there was one."""
        key = self._key(host, port)
        with self._locked():
            entries = self.entries()
            if entries.pop(key, None) is None:
                return False
            self._write(entries)
        return True

    def verifier(
        self, host: str, port: int, *, on_pinned: Callable[[str], None] | None = None
    ) -> Callable[[bytes], None]:
        """The ``verify`` callback for :func:`dits.transport.connect`.

        Args:
            host, port: the server as the user named it (the pin is per name, as in ssh).
            on_pinned: called with the fingerprint when it is pinned on first use, so the CLI
                can say so.

        Returns:
            A function of the server's DER certificate that returns on a match or first use and
            raises :class:`CertificateChangedError` otherwise.
        """

        def verify(der: bytes) -> None:
            fingerprint = fingerprint_of_der(der)
            if self.check(host, port, fingerprint) and on_pinned is not None:
                on_pinned(fingerprint)

        return verify

    # -- internals --

    @staticmethod
    def _key(host: str, port: int) -> str:
        # Normalise as parse_url does, so "LOCALHOST" and "[0::1]" match their pins.
        host, port = _parse_authority(format_hostport(host, port), "host", "expected HOST:PORT")
        return format_hostport(host, port)

    @staticmethod
    def _compare(key: str, new: str, entries: Mapping[str, str], host: str, port: int) -> bool:
        old = entries.get(key)
        if old is None:
            return False
        if old != new:
            raise CertificateChangedError(host, port, old, new)
        return True

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _write(self, entries: Mapping[str, str]) -> None:
        lines = ["# dits known hosts: host:port sha256:<hex>; see `dits remote trust --help`"]
        lines += [f"{key} {fp}" for key, fp in entries.items()]
        data = ("\n".join(lines) + "\n").encode("utf-8")
        # A unique tmp name: a writer that bypassed the lock can at worst lose, never corrupt.
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".known_hosts.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
