"""The wire error table: ``ErrorCode`` and one ``RemoteError`` subclass per code, for both ends.

The server raises these classes (or lets ``error_frame_for`` map a few store errors), sends them
as an ``Error`` message, and the client turns the message back into the *same* class with
``exception_for``. So ``except StaleRefError`` means the same thing on either side of the wire.

Exit codes (``dits/errors.py``, docs/exit-codes.md) were picked by what the user has to do:

* ``EXIT_USAGE`` (2): the user must change something: the token, the repository name, their
  role on the server, the client version (``UNAUTHENTICATED``, ``NOT_FOUND_OR_FORBIDDEN``,
  ``FORBIDDEN``, ``UNSUPPORTED_VERSION``).
* ``EXIT_CONFLICT`` (4): history moved under us (``STALE_REF``, ``NON_FAST_FORWARD``): fetch,
  integrate, push again.
* ``EXIT_CORRUPT`` (5): bytes do not match their id, or data that must exist is missing or
  malformed (``HASH_MISMATCH``, ``NOT_FOUND``, ``MISSING_OBJECTS``, ``INVALID_OBJECT``).
* ``EXIT_IO`` (7): ``QUOTA_EXCEEDED`` and ``STORAGE_FULL``, like a full local disk.
* ``EXIT_LOCKED`` (6): ``BUSY``, "try again later" (transient).
* ``EXIT_ERROR`` (1): the rest: a peer that broke the protocol (a bug or an incompatible
  peer, not something the user can fix by retyping), a limit exceeded, an expired session
  (transient), an internal server error.

Only a ``RemoteError``'s own message crosses the wire. Anything else a server handler lets
escape becomes ``INTERNAL`` with a fixed text, so no path, stack or secret leaks (STYLE.md §5).

This module does no I/O. It must not import ``dits.protocol.messages`` at import time (that
module raises ``ProtocolViolation``); ``error_frame_for`` imports ``Error`` when called.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum
from typing import TYPE_CHECKING, ClassVar

from dits.core.ids import ObjectId
from dits.errors import (
    EXIT_CONFLICT,
    EXIT_CORRUPT,
    EXIT_ERROR,
    EXIT_IO,
    EXIT_LOCKED,
    EXIT_USAGE,
    DitsError,
    LockedError,
    ObjectNotFoundError,
    StorageFullError,
)

if TYPE_CHECKING:
    from dits.protocol.messages import Error

__all__ = [
    "MAX_ERROR_IDS",
    "MAX_ERROR_TEXT",
    "BusyError",
    "ErrorCode",
    "ForbiddenError",
    "HashMismatchError",
    "InternalServerError",
    "InvalidObjectError",
    "MissingObjectsError",
    "NonFastForwardError",
    "NotFoundError",
    "NotFoundOrForbiddenError",
    "ProtocolViolation",
    "QuotaExceededError",
    "RemoteError",
    "ServerStorageFullError",
    "SessionExpiredError",
    "StaleRefError",
    "TooLargeError",
    "UnauthenticatedError",
    "UnsupportedVersionError",
    "error_class_for",
    "error_frame_for",
    "exception_for",
]

MAX_ERROR_IDS = 1000
"""At most this many ids travel in one Error message; ``error_frame_for`` truncates."""

MAX_ERROR_TEXT = 4096
"""``error_frame_for`` shortens messages to this many UTF-8 bytes (the field allows 65,535)."""


class ErrorCode(IntEnum):
    """The u16 ``code`` of an Error message. Values are part of protocol version 1."""

    PROTOCOL_VIOLATION = 1
    UNSUPPORTED_VERSION = 2
    UNAUTHENTICATED = 3
    NOT_FOUND_OR_FORBIDDEN = 4
    FORBIDDEN = 5
    NOT_FOUND = 6
    HASH_MISMATCH = 7
    TOO_LARGE = 8
    STALE_REF = 9
    NON_FAST_FORWARD = 10
    MISSING_OBJECTS = 11
    INVALID_OBJECT = 12
    QUOTA_EXCEEDED = 13
    SESSION_EXPIRED = 14
    BUSY = 15
    INTERNAL = 16
    STORAGE_FULL = 17


class RemoteError(DitsError):
    """An error that crosses the wire: raised by the server, re-raised by the client.

    Attributes:
        code: the ErrorCode sent for this class.
        ids: object or chunk ids the error is about (missing chunks, a bad object), possibly
            truncated to ``MAX_ERROR_IDS`` on the wire.
        ref: the ref name the error is about (a failed compare-and-swap), or "".
    """

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL

    def __init__(self, message: str, *, ids: Sequence[ObjectId] = (), ref: str = "") -> None:
        super().__init__(message)
        self.ids: tuple[ObjectId, ...] = tuple(ids)
        self.ref = ref

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, ids=<{len(self.ids)}>, ref={self.ref!r})"


class ProtocolViolation(RemoteError):
    """The peer sent bytes that are not valid protocol: malformed, out of order or over a limit.

    Decoders raise only this (or its subclass ``TooLargeError``) on bad input. The stream that
    carried the bytes is answered with an Error (server) or abandoned (client) and closed.
    """

    code = ErrorCode.PROTOCOL_VIOLATION


class TooLargeError(ProtocolViolation):
    """A length, count or size exceeds a limit announced in Welcome (``Limits``).

    A subclass of ``ProtocolViolation`` because a peer that knows the limits must not exceed
    them; the distinct code tells the user which limit it was.
    """

    code = ErrorCode.TOO_LARGE


class UnsupportedVersionError(RemoteError):
    """No protocol version offered in Hello is spoken by the other side."""

    code = ErrorCode.UNSUPPORTED_VERSION
    exit_code = EXIT_USAGE


class UnauthenticatedError(RemoteError):
    """The token is missing, unknown, expired or revoked."""

    code = ErrorCode.UNAUTHENTICATED
    exit_code = EXIT_USAGE


class NotFoundOrForbiddenError(RemoteError):
    """The repository does not exist *or* the caller may not read it (deliberately the same)."""

    code = ErrorCode.NOT_FOUND_OR_FORBIDDEN
    exit_code = EXIT_USAGE


class ForbiddenError(RemoteError):
    """The caller may read the repository but lacks the role for this request (write, admin)."""

    code = ErrorCode.FORBIDDEN
    exit_code = EXIT_USAGE


class NotFoundError(RemoteError):
    """A requested chunk or object is absent or not visible to the caller (``ids`` lists it)."""

    code = ErrorCode.NOT_FOUND
    exit_code = EXIT_CORRUPT


class HashMismatchError(RemoteError):
    """Received bytes do not hash to the id they were sent under (``ids`` names it)."""

    code = ErrorCode.HASH_MISMATCH
    exit_code = EXIT_CORRUPT


class StaleRefError(RemoteError):
    """A ref update's expected old value is not the ref's current value (``ref`` names it)."""

    code = ErrorCode.STALE_REF
    exit_code = EXIT_CONFLICT


class NonFastForwardError(RemoteError):
    """A ref update would drop commits and was not forced, or the ref refuses forcing."""

    code = ErrorCode.NON_FAST_FORWARD
    exit_code = EXIT_CONFLICT


class MissingObjectsError(RemoteError):
    """The connectivity check failed: ``ids`` lists (some of) the chunks or objects missing."""

    code = ErrorCode.MISSING_OBJECTS
    exit_code = EXIT_CORRUPT


class InvalidObjectError(RemoteError):
    """An uploaded object does not decode, or fails fsck (for example a hostile tree path)."""

    code = ErrorCode.INVALID_OBJECT
    exit_code = EXIT_CORRUPT


class QuotaExceededError(RemoteError):
    """The upload would take the user or repository over its storage quota."""

    code = ErrorCode.QUOTA_EXCEEDED
    exit_code = EXIT_IO


class SessionExpiredError(RemoteError):
    """The push session's lease ran out before the ref update; start the push again."""

    code = ErrorCode.SESSION_EXPIRED
    exit_code = EXIT_ERROR
    transient = True


class BusyError(RemoteError):
    """The server is overloaded or the resource is locked; retry later with backoff."""

    code = ErrorCode.BUSY
    exit_code = EXIT_LOCKED
    transient = True


class InternalServerError(RemoteError):
    """The server failed in a way it does not describe (details stay in its log)."""

    code = ErrorCode.INTERNAL
    exit_code = EXIT_ERROR


class ServerStorageFullError(RemoteError):
    """The server's disk (or bucket) had no room for what was sent. Nothing the request
    carried became visible and no ref moved; the operator must free space."""

    code = ErrorCode.STORAGE_FULL
    exit_code = EXIT_IO


_CLASSES: dict[ErrorCode, type[RemoteError]] = {
    cls.code: cls
    for cls in (
        ProtocolViolation,
        TooLargeError,
        UnsupportedVersionError,
        UnauthenticatedError,
        NotFoundOrForbiddenError,
        ForbiddenError,
        NotFoundError,
        HashMismatchError,
        StaleRefError,
        NonFastForwardError,
        MissingObjectsError,
        InvalidObjectError,
        QuotaExceededError,
        SessionExpiredError,
        BusyError,
        InternalServerError,
        ServerStorageFullError,
    )
}
assert len(_CLASSES) == len(ErrorCode), "every ErrorCode needs exactly one class"


def error_class_for(code: ErrorCode) -> type[RemoteError]:
    """Return the exception class for ``code``."""
    return _CLASSES[code]


def _clip_utf8(text: str, limit: int) -> str:
    # "replace" turns lone surrogates into "?", so the result always encodes strictly.
    return text.encode("utf-8", "replace")[:limit].decode("utf-8", "ignore")


def error_frame_for(exc: BaseException) -> Error:
    """Return the Error message a server sends for ``exc``.

    ``RemoteError`` subclasses keep their message (clipped to ``MAX_ERROR_TEXT`` bytes), ids
    (first ``MAX_ERROR_IDS``) and ref. A store's ``ObjectNotFoundError`` becomes ``NOT_FOUND``
    ``LockedError`` becomes ``BUSY`` and ``StorageFullError`` ``STORAGE_FULL``, with fixed
    texts; anything else becomes
    ``INTERNAL`` with a fixed text, so server paths and secrets never reach the client.

    Args:
        exc: the exception a request handler raised.

    Returns:
        The Error message to send as the final frame of the response.
    """
    from dits.protocol.messages import Error  # runtime import: messages imports this module

    if isinstance(exc, RemoteError):
        return Error(
            code=exc.code,
            message=_clip_utf8(exc.message, MAX_ERROR_TEXT),
            ids=exc.ids[:MAX_ERROR_IDS],
            ref=_clip_utf8(exc.ref, MAX_ERROR_TEXT),
        )
    if isinstance(exc, ObjectNotFoundError):
        return Error(code=ErrorCode.NOT_FOUND, message="object not found", ids=(), ref="")
    if isinstance(exc, LockedError):
        return Error(code=ErrorCode.BUSY, message="server busy, retry later", ids=(), ref="")
    if isinstance(exc, StorageFullError):
        return Error(
            code=ErrorCode.STORAGE_FULL,
            message="the server is out of storage space; nothing of this request was kept "
            "(ask its operator to free space, then run the command again)",
            ids=(),
            ref="",
        )
    return Error(code=ErrorCode.INTERNAL, message="internal server error", ids=(), ref="")


def exception_for(error: Error) -> RemoteError:
    """Return the exception a client raises for a received Error message.

    An unknown code (from a newer server) becomes ``InternalServerError`` naming the code.

    Args:
        error: the decoded Error message.

    Returns:
        An instance of the class ``error_frame_for`` was called with on the server (for the
        codes of ``ErrorCode``); the caller raises it.
    """
    try:
        cls = _CLASSES[ErrorCode(error.code)]
    except ValueError:
        return InternalServerError(
            f"server error (unknown code {error.code}): {error.message}",
            ids=error.ids,
            ref=error.ref,
        )
    return cls(error.message, ids=error.ids, ref=error.ref)
