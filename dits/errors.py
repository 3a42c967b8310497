"""Base error classes: every user-facing failure is a DitsError with a message and an exit code.

Subclasses live next to the code that raises them; this module keeps only the roots and the
exit-code table (documented in docs/exit-codes.md). The CLI maps errors to one line and the code.
"""

from __future__ import annotations

__all__ = [
    "EXIT_CERT_CHANGED",
    "EXIT_CONFLICT",
    "EXIT_CORRUPT",
    "EXIT_ERROR",
    "EXIT_HOOK",
    "EXIT_INTERNAL",
    "EXIT_IO",
    "EXIT_LOCKED",
    "EXIT_NETWORK",
    "EXIT_NOT_A_REPO",
    "EXIT_USAGE",
    "ConflictError",
    "CorruptObjectError",
    "DitsError",
    "HookFailedError",
    "LockedError",
    "NotARepositoryError",
    "ObjectNotFoundError",
    "StorageFullError",
    "UsageError",
]

EXIT_ERROR = 1  # generic failure
EXIT_USAGE = 2  # bad arguments or paths
EXIT_NOT_A_REPO = 3
EXIT_CONFLICT = 4  # would overwrite local changes, non-fast-forward, ...
EXIT_CORRUPT = 5  # integrity failure: hash mismatch, missing object
EXIT_LOCKED = 6  # another writer holds the repository lock
EXIT_IO = 7  # disk full, unreadable file, permission denied
EXIT_HOOK = 8  # a hook refused the operation
EXIT_CERT_CHANGED = 9  # a remote's certificate is not the pinned one
EXIT_NETWORK = 10  # the remote could not be reached or the connection broke; retry
EXIT_INTERNAL = 70  # a bug: traceback printed, please report


class DitsError(Exception):
    """Root of every error dits reports to a person.

    Attributes:
        exit_code: process exit status the CLI uses for this error.
        transient: whether retrying the same operation may succeed.
    """

    exit_code: int = EXIT_ERROR
    transient: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(DitsError):
    """The caller asked for something impossible: bad path, unknown ref, bad option."""

    exit_code = EXIT_USAGE


class NotARepositoryError(DitsError):
    """No .dits directory was found in the path or its parents."""

    exit_code = EXIT_NOT_A_REPO


class ConflictError(DitsError):
    """The operation would lose work or break history (dirty tree, non-fast-forward)."""

    exit_code = EXIT_CONFLICT


class CorruptObjectError(DitsError):
    """Stored bytes do not hash to their id, or cannot be decoded."""

    exit_code = EXIT_CORRUPT


class ObjectNotFoundError(DitsError):
    """A chunk or object that should be present is missing."""

    exit_code = EXIT_CORRUPT


class LockedError(DitsError):
    """Another live process holds the repository's writer lock."""

    exit_code = EXIT_LOCKED
    transient = True


class StorageFullError(DitsError):
    """The disk (or a quota) is full; nothing half-written became visible."""

    exit_code = EXIT_IO


class HookFailedError(DitsError):
    """A repository hook exited non-zero and aborted the operation."""

    exit_code = EXIT_HOOK
