"""Permanent storage backends of dits-remote: a local folder (default) and S3.

The contract is :class:`PermanentStorage` in ``base.py``; :func:`open_storage` picks a backend
from a URL. The S3 backend (and boto3) is imported only when an ``s3://`` URL asks for it.
"""

from __future__ import annotations

from remote.storage.base import (
    PermanentStorage,
    StorageConflictError,
    StorageError,
    StorageFullError,
    StorageNotFoundError,
    StorageUnavailableError,
    open_storage,
    validate_key,
    validate_prefix,
)
from remote.storage.local import LocalStorage

__all__ = [
    "LocalStorage",
    "PermanentStorage",
    "StorageConflictError",
    "StorageError",
    "StorageFullError",
    "StorageNotFoundError",
    "StorageUnavailableError",
    "open_storage",
    "validate_key",
    "validate_prefix",
]
