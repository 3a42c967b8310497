"""Bearer tokens for dits-remote: per-repository permissions, stored hashed in LMDB.

This module owns the token format, the token database (its own LMDB environment, by default
``<root>/auth``) and the question "what may the holder of this secret do on this repository?".
It does not map the answer to wire errors beyond raising ``UnauthenticatedError``, and it does not
decide which request needs which permission (``remote/service.py`` does both).

Theory of operation
-------------------
* **Token format.** ``dits_<token_id>_<random>``: ``token_id`` is 12 lowercase hex characters
  (public; it names the token in ``list`` and ``revoke`` and in logs), ``random`` is 32 bytes from
  ``secrets.token_bytes`` as 43 characters of unpadded base64url. The whole string (61 ASCII
  characters) is the secret. It is returned once, by ``create``; the store keeps only
  ``sha256(secret)``, so a copy of the database does not let anyone authenticate.
* **Lookup.** ``authenticate`` parses the secret by fixed positions (a base64url body may itself
  contain ``_``), looks the record up by ``token_id`` in one read transaction and compares the
  SHA-256 of the presented secret with ``hmac.compare_digest``. When the id is unknown it compares
  against a dummy hash instead, so both paths do the same work. Only after the hash matched are
  revocation and expiry looked at, and every failure raises the same ``UnauthenticatedError``
  text, so a caller without the secret learns nothing about a token id. (The B-tree lookup of a
  present and an absent key differ by well under a microsecond; token ids are not secret anyway.)
* **No caching.** Each ``authenticate`` call reads the current record, so a ``revoke`` committed
  by any process is honoured by the next call in every process. The server calls it on every
  request, including each request on a long-lived QUIC connection. It costs about 5 us for a valid
  token (parse 1.5, SHA-256 1, read transaction 2; measured with 1,000 tokens stored, py-lmdb
  3.0, Python 3.11, on a loaded 2-core machine), 2 us for a malformed one.
* **Repository scope.** A token names one repository, or ``"*"`` for all. A valid token for
  another repository yields ``Permission.NONE``, exactly like an anonymous caller; the service maps
  NONE to ``NotFoundOrForbiddenError`` so "no access" and "no such repository" look the same
  (RELIABILITY.md section 4, "Leaking repository existence").
* **Permissions** form a ladder: WRITE implies READ and ADMIN implies WRITE and READ. ``create``
  stores the normalised set, so ``Permission.WRITE in perms`` style checks work directly.
* **Processes.** Any number of server worker processes may open the same environment; LMDB
  serialises writers across processes with its own lock, and readers never block. LMDB's
  ``fcntl`` locks belong to the (process, file) pair, so opening the same environment twice in one
  process and closing one handle would silently drop the other's locks: a process-wide registry
  hands every ``TokenStore`` on the same path the one environment (reference counted). A child
  created by ``fork()`` cannot use its parent's handles (they raise ``TokenStoreError``); its
  first ``TokenStore(path)`` closes the inherited environment and opens its own. Do not fork
  while another thread is inside a ``TokenStore`` call.
* **Durability.** LMDB defaults (``sync=True``, ``metasync=True``, ``writemap=False``): a
  ``create`` or ``revoke`` is on disk when it returns. Token writes are rare; the cost (one
  ``fdatasync``) does not matter.

Why ``import lmdb`` here although STYLE.md keeps lmdb inside ``dits/store``: that rule protects the
client's layering; the server's token database is a different, tiny environment with its own
options (synchronous commits, two databases, a fixed map), and ``dits.store.lmdb`` deliberately
offers no generic key-value access. The translation of ``lmdb.Error`` still happens here, at the
boundary, into ``TokenStoreError``.

Record layout (value of ``token_id`` in the ``tokens`` database), little-endian::

    u8 format (1) | u8 permissions | u8 flags (1 revoked, 2 expires) | f64 created | f64 expires
    | 32 bytes sha256(secret) | u8 repo length | repo (ASCII) | label (UTF-8, the rest)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import os
import re
import secrets
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import lmdb

from dits.errors import EXIT_IO, DitsError, UsageError
from dits.protocol.errors import UnauthenticatedError
from dits.protocol.messages import Permission

__all__ = [
    "ALL_REPOS",
    "MAX_LABEL_CHARS",
    "TOKEN_PREFIX",
    "TokenInfo",
    "TokenStore",
    "TokenStoreError",
    "is_valid_repo_name",
    "normalise_permissions",
]

TOKEN_PREFIX: Final = "dits_"
ALL_REPOS: Final = "*"
"""The ``repo`` of a token valid for every repository."""
MAX_LABEL_CHARS: Final = 200

_ID_HEX_LEN: Final = 12
_RANDOM_BYTES: Final = 32
_RANDOM_CHARS: Final = 43  # unpadded base64url of 32 bytes
_TOKEN_LEN: Final = len(TOKEN_PREFIX) + _ID_HEX_LEN + 1 + _RANDOM_CHARS  # 61
_TOKEN_RE: Final = re.compile(
    rb"dits_([0-9a-f]{%d})_[A-Za-z0-9_-]{%d}" % (_ID_HEX_LEN, _RANDOM_CHARS)
)
_ID_RE: Final = re.compile(f"[0-9a-f]{{{_ID_HEX_LEN}}}")
_REPO_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_INVALID_TOKEN: Final = "invalid or revoked token"
# Compared against when the token id is unknown, so that path costs the same as a wrong secret.
_DUMMY_HASH: Final = hashlib.sha256(b"dits-remote: no such token").digest()

_FORMAT: Final = 1
_FLAG_REVOKED: Final = 1
_FLAG_EXPIRES: Final = 2
_RECORD: Final = struct.Struct("<BBBdd32sB")
_PERMS_OFFSET: Final = 1
_ALL_REPOS_BYTES: Final = ALL_REPOS.encode("ascii")
_DB_TOKENS: Final = b"tokens"
_DB_META: Final = b"meta"
_META_FORMAT: Final = b"format"
_MAP_SIZE: Final = 64 << 20  # about 300,000 tokens; a bound on address space, not disk use
_MAX_DBS: Final = 4
_ID_ATTEMPTS: Final = 16
_ALL_PERMISSIONS: Final = int(Permission.READ | Permission.WRITE | Permission.ADMIN)
_PERMISSIONS: Final = tuple(Permission(value) for value in range(_ALL_PERMISSIONS + 1))


class TokenStoreError(DitsError):
    """The token database cannot be opened, read or written (disk, damage, format, closed).

    Never sent to a client as such: the service turns it into ``INTERNAL``, so authentication
    fails closed.
    """

    exit_code = EXIT_IO


@dataclass(frozen=True)
class TokenInfo:
    """What the server knows about a token; everything except the secret.

    Attributes:
        token_id: the public id, 12 lowercase hex characters (also inside the secret).
        repo: the repository the token is for, or ``"*"`` for every repository.
        permissions: the normalised grant (WRITE includes READ, ADMIN includes both).
        label: free text naming the holder or purpose, for ``list``.
        created: creation time, unix seconds on the server's clock.
        expires: unix seconds after which the token is refused, or None for never.
        revoked: whether ``revoke`` was called; revoked tokens are kept for the record.
    """

    token_id: str
    repo: str
    permissions: Permission
    label: str
    created: float
    expires: float | None
    revoked: bool

    def grants(self, repo: str) -> Permission:
        """Return the permissions this token gives on ``repo``, ignoring revocation and expiry."""
        if self.repo == ALL_REPOS or self.repo == repo:
            return self.permissions
        return Permission.NONE


def is_valid_repo_name(name: str) -> bool:
    """Return whether ``name`` is a repository name: ``[A-Za-z0-9][A-Za-z0-9._-]{0,99}``."""
    return isinstance(name, str) and _REPO_RE.fullmatch(name) is not None


def normalise_permissions(permissions: Permission | int) -> Permission:
    """Return ``permissions`` with the implied lower roles added (ADMIN > WRITE > READ).

    Raises:
        UsageError: unknown bits are set.
    """
    value = int(permissions)
    if value < 0 or value & ~_ALL_PERMISSIONS:
        raise UsageError(f"invalid permissions {value:#x}: only READ, WRITE and ADMIN exist")
    if value & Permission.ADMIN:
        value |= Permission.WRITE
    if value & Permission.WRITE:
        value |= Permission.READ
    return Permission(value)


def _encode(info: TokenInfo, digest: bytes) -> bytes:
    flags = _FLAG_REVOKED if info.revoked else 0
    if info.expires is not None:
        flags |= _FLAG_EXPIRES
    repo = info.repo.encode("ascii")
    head = _RECORD.pack(
        _FORMAT,
        int(info.permissions),
        flags,
        info.created,
        info.expires if info.expires is not None else 0.0,
        digest,
        len(repo),
    )
    return head + repo + info.label.encode("utf-8")


def _decode(token_id: str, raw: bytes) -> tuple[TokenInfo, bytes]:
    try:
        fmt, perms, flags, created, expires, digest, repo_len = _RECORD.unpack_from(raw)
        if fmt != _FORMAT:
            raise ValueError(f"record format {fmt}")
        start = _RECORD.size
        repo = raw[start : start + repo_len].decode("ascii")
        label = raw[start + repo_len :].decode("utf-8")
        info = TokenInfo(
            token_id=token_id,
            repo=repo,
            permissions=Permission(perms),
            label=label,
            created=created,
            expires=expires if flags & _FLAG_EXPIRES else None,
            revoked=bool(flags & _FLAG_REVOKED),
        )
    except (struct.error, ValueError) as exc:
        raise TokenStoreError(f"token record {token_id} is damaged: {exc}") from exc
    return info, digest


def _parse_secret(secret: bytes | bytearray | memoryview | str) -> tuple[bytes, str] | None:
    """Return (secret bytes, token_id) for a well-formed secret, or None."""
    if isinstance(secret, str):
        # Length first, so a megabyte of garbage costs nothing; isascii() before encoding.
        if len(secret) != _TOKEN_LEN or not secret.isascii():
            return None
        data = secret.encode("ascii")
    elif isinstance(secret, bytes | bytearray | memoryview):
        if len(secret) != _TOKEN_LEN:
            return None
        data = bytes(secret)
    else:
        return None
    match = _TOKEN_RE.fullmatch(data)
    if match is None:
        return None
    return data, match.group(1).decode("ascii")


# -- the process-wide environment registry ----------------------------------------------------


@dataclass
class _Shared:
    env: lmdb.Environment
    tokens: Any  # lmdb's database handle type (_Database) is not exported
    pid: int
    refs: int = 1


_registry: dict[str, _Shared] = {}
_registry_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # A lock another thread held at fork time would never be released in the child. The
    # parent's entries stay: _open_env recognises them by pid and closes them (see there).
    global _registry_lock
    _registry_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _open_env(path: Path) -> tuple[str, _Shared]:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = os.path.realpath(path)
    except OSError as exc:
        raise TokenStoreError(f"cannot create the token store directory: {exc.strerror}") from exc
    with _registry_lock:
        shared = _registry.get(key)
        if shared is not None and shared.pid == os.getpid():
            shared.refs += 1
            return key, shared
        if shared is not None:
            # Inherited across fork(). py-lmdb refuses a second open of the same files in one
            # process until the first is closed, so close the inherited copy. In the child this
            # only unmaps and closes descriptors: the child holds no fcntl lock and no reader
            # slot of its own, and no transaction is open because every one of ours is scoped
            # to a call (do not fork while another thread is inside a TokenStore call).
            del _registry[key]
            shared.env.close()
        try:
            env = lmdb.open(
                key,
                map_size=_MAP_SIZE,
                max_dbs=_MAX_DBS,
                subdir=True,
                sync=True,
                metasync=True,
                writemap=False,
                mode=0o600,  # the hashes and labels are nobody else's business
            )
        except lmdb.Error as exc:
            raise TokenStoreError(f"cannot open the token store: {exc}") from exc
        try:
            with env.begin(write=True) as txn:
                meta = env.open_db(_DB_META, txn=txn)
                tokens = env.open_db(_DB_TOKENS, txn=txn)
                stored = txn.get(_META_FORMAT, db=meta)
                if stored is None:
                    txn.put(_META_FORMAT, bytes([_FORMAT]), db=meta)
                elif stored != bytes([_FORMAT]):
                    raise TokenStoreError(
                        f"the token store has format {stored.hex()}, this server reads {_FORMAT}"
                    )
        except (lmdb.Error, TokenStoreError) as exc:
            env.close()
            if isinstance(exc, TokenStoreError):
                raise
            raise TokenStoreError(f"cannot open the token store: {exc}") from exc
        shared = _Shared(env=env, tokens=tokens, pid=os.getpid())
        _registry[key] = shared
        return key, shared


def _release_env(key: str, shared: _Shared) -> None:
    with _registry_lock:
        shared.refs -= 1
        if shared.refs > 0 or shared.pid != os.getpid():
            return
        if _registry.get(key) is shared:
            del _registry[key]
        shared.env.close()


class TokenStore:
    """The server's bearer tokens, in the LMDB environment at ``path`` (created if missing).

    Open one per process (the server uses ``<root>/auth``); other processes may have the same
    path open at the same time. Thread-safe.

    Args:
        path: the environment directory.
        clock: returns the current unix time; injected for tests (STYLE.md section 2).

    Raises:
        TokenStoreError: the environment cannot be created or opened, or has another format.
    """

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._key, self._shared = _open_env(Path(path))
        self._closed = False

    def close(self) -> None:
        """Release the environment (closed when the process's last handle on it closes)."""
        if not self._closed:
            self._closed = True
            _release_env(self._key, self._shared)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- administration -------------------------------------------------------------------------

    def create(
        self,
        repo: str,
        permissions: Permission,
        *,
        label: str = "",
        expires_in: float | None = None,
    ) -> tuple[str, TokenInfo]:
        """Create a token and return its secret (the only time it is available) and its info.

        Args:
            repo: a repository name, or ``"*"`` for every repository.
            permissions: READ, WRITE and/or ADMIN; lower roles are added (ADMIN => WRITE => READ).
            label: who or what the token is for; at most 200 printable characters.
            expires_in: seconds from now after which the token is refused; None for never.

        Returns:
            ``(secret, info)``; the secret is ``dits_<token_id>_<43 chars>``.

        Raises:
            UsageError: invalid repository name, permissions, label or lifetime.
            TokenStoreError: the database cannot be written.
        """
        if repo != ALL_REPOS and not is_valid_repo_name(repo):
            raise UsageError(
                f"invalid repository name {repo!r}: use letters, digits, '.', '_' and '-' "
                "(starting with a letter or digit, at most 100 characters), or '*'"
            )
        perms = normalise_permissions(permissions)
        if perms == Permission.NONE:
            raise UsageError("a token must grant at least READ")
        if not isinstance(label, str) or len(label) > MAX_LABEL_CHARS or not label.isprintable():
            raise UsageError(
                f"a token label must be at most {MAX_LABEL_CHARS} printable characters"
            )
        if expires_in is not None and not (math.isfinite(expires_in) and expires_in > 0):
            raise UsageError(f"expires_in must be a positive number of seconds, not {expires_in}")
        created = float(self._clock())
        info_fields: dict[str, Any] = {
            "repo": repo,
            "permissions": perms,
            "label": label,
            "created": created,
            "expires": created + expires_in if expires_in is not None else None,
            "revoked": False,
        }
        body = base64.urlsafe_b64encode(secrets.token_bytes(_RANDOM_BYTES)).rstrip(b"=")
        env, tokens = self._env()
        try:
            with env.begin(write=True, db=tokens) as txn:
                for _ in range(_ID_ATTEMPTS):
                    token_id = secrets.token_hex(_ID_HEX_LEN // 2)
                    secret = f"{TOKEN_PREFIX}{token_id}_{body.decode('ascii')}"
                    info = TokenInfo(token_id=token_id, **info_fields)
                    digest = hashlib.sha256(secret.encode("ascii")).digest()
                    if txn.put(token_id.encode("ascii"), _encode(info, digest), overwrite=False):
                        break
                else:  # 16 collisions of 48-bit random ids: the database is absurdly full
                    raise TokenStoreError("could not allocate a token id")
        except lmdb.Error as exc:
            raise _translate(exc) from exc
        return secret, info

    def list(self) -> list[TokenInfo]:
        """Return every token, revoked and expired ones included, oldest first."""
        env, tokens = self._env()
        try:
            with env.begin(db=tokens) as txn:
                items = [
                    _decode(bytes(key).decode("ascii"), bytes(value))[0]
                    for key, value in txn.cursor()
                ]
        except lmdb.Error as exc:
            raise _translate(exc) from exc
        items.sort(key=lambda info: (info.created, info.token_id))
        return items

    def get(self, token_id: str) -> TokenInfo:
        """Return the info of ``token_id``.

        Raises:
            UsageError: no token has this id.
        """
        env, tokens = self._env()
        if not isinstance(token_id, str) or _ID_RE.fullmatch(token_id) is None:
            raise UsageError(f"unknown token id {token_id!r}")
        try:
            with env.begin(db=tokens) as txn:
                raw = txn.get(token_id.encode("ascii"))
        except lmdb.Error as exc:
            raise _translate(exc) from exc
        if raw is None:
            raise UsageError(f"unknown token id {token_id!r}")
        return _decode(token_id, raw)[0]

    def revoke(self, token_id: str) -> TokenInfo:
        """Revoke ``token_id``; the next ``authenticate`` in any process refuses it.

        Revoking twice is harmless. The record stays (``list`` shows it as revoked).

        Returns:
            The token's info, with ``revoked=True``.

        Raises:
            UsageError: no token has this id.
            TokenStoreError: the database cannot be written.
        """
        env, tokens = self._env()
        if not isinstance(token_id, str) or _ID_RE.fullmatch(token_id) is None:
            raise UsageError(f"unknown token id {token_id!r}")
        key = token_id.encode("ascii")
        try:
            with env.begin(write=True, db=tokens) as txn:
                raw = txn.get(key)
                if raw is None:
                    raise UsageError(f"unknown token id {token_id!r}")
                info, digest = _decode(token_id, raw)
                if not info.revoked:
                    info = TokenInfo(
                        token_id=info.token_id,
                        repo=info.repo,
                        permissions=info.permissions,
                        label=info.label,
                        created=info.created,
                        expires=info.expires,
                        revoked=True,
                    )
                    txn.put(key, _encode(info, digest))
        except lmdb.Error as exc:
            raise _translate(exc) from exc
        return info

    # -- the per-request check ------------------------------------------------------------------

    def verify(self, secret: bytes | str) -> TokenInfo | None:
        """Return the info of the valid token ``secret``, or None for an empty (anonymous) secret.

        Raises:
            UnauthenticatedError: the secret is malformed, unknown, wrong, revoked or expired
                (always the same message).
            TokenStoreError: the database cannot be read (the caller must fail closed).
        """
        checked = self._check(secret)
        if checked is None:
            return None
        return _decode(*checked)[0]

    def authenticate(self, secret: bytes | str, repo: str) -> Permission:
        """Return what the holder of ``secret`` may do on ``repo``.

        Reads the current record every time (no cache), so revocation and expiry take effect
        on the next call.

        Args:
            secret: the bearer token as sent by the client; empty means anonymous.
            repo: the repository the request is about.

        Returns:
            The token's normalised permissions on ``repo``; ``Permission.NONE`` for an anonymous
            caller, for a valid token scoped to another repository and for an invalid repository
            name. The caller maps NONE to ``NotFoundOrForbiddenError``, so "no access" and "no
            such repository" are indistinguishable.

        Raises:
            UnauthenticatedError: the secret is malformed, unknown, wrong, revoked or expired.
            TokenStoreError: the database cannot be read (the caller must fail closed).
        """
        checked = self._check(secret)
        if checked is None or not is_valid_repo_name(repo):
            return Permission.NONE
        raw = checked[1]
        # The hot path reads the two fields it needs instead of building a TokenInfo.
        perms = raw[_PERMS_OFFSET]
        start = _RECORD.size
        token_repo = raw[start : start + raw[_RECORD.size - 1]]
        if token_repo == _ALL_REPOS_BYTES or token_repo == repo.encode("ascii"):
            return _PERMISSIONS[perms & _ALL_PERMISSIONS]
        return Permission.NONE

    def _check(self, secret: bytes | str) -> tuple[str, bytes] | None:
        """Return (token_id, record) of the valid token ``secret``; None when it is empty."""
        if not secret:
            return None
        parsed = _parse_secret(secret)
        if parsed is None:
            raise UnauthenticatedError(_INVALID_TOKEN)
        data, token_id = parsed
        digest = hashlib.sha256(data).digest()
        env, tokens = self._env()
        try:
            with env.begin(db=tokens, buffers=False) as txn:
                raw = txn.get(token_id.encode("ascii"))
        except lmdb.Error as exc:
            raise _translate(exc) from exc
        if raw is None or len(raw) < _RECORD.size:
            hmac.compare_digest(digest, _DUMMY_HASH)
            if raw is None:
                raise UnauthenticatedError(_INVALID_TOKEN)
            raise TokenStoreError(f"token record {token_id} is damaged: too short")
        fmt, _perms, flags, _created, expires, stored, _repo_len = _RECORD.unpack_from(raw)
        if not hmac.compare_digest(digest, stored):
            raise UnauthenticatedError(_INVALID_TOKEN)
        if fmt != _FORMAT:
            raise TokenStoreError(f"token record {token_id} has unknown format {fmt}")
        if flags & _FLAG_REVOKED or (flags & _FLAG_EXPIRES and self._clock() >= expires):
            raise UnauthenticatedError(_INVALID_TOKEN)
        return token_id, raw

    # -- internals ------------------------------------------------------------------------------

    def _env(self) -> tuple[lmdb.Environment, Any]:
        if self._closed:
            raise TokenStoreError("the token store is closed")
        if self._shared.pid != os.getpid():
            raise TokenStoreError("the token store was opened before fork(); open it again")
        return self._shared.env, self._shared.tokens


def _translate(exc: lmdb.Error) -> TokenStoreError:
    if isinstance(exc, lmdb.MapFullError):
        return TokenStoreError("the token store is full")
    return TokenStoreError(f"the token store failed: {type(exc).__name__}")
