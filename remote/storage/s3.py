"""Permanent storage in an S3 bucket (AWS or any S3-compatible endpoint) through boto3.

The only module of dits-remote that imports boto3/botocore; every driver error leaves it as a
:class:`StorageError` with one clear line.

Theory of operation:

* **Create-only** through a conditional PUT, ``If-None-Match: *``: S3 refuses (412
  PreconditionFailed) to replace an existing key, atomically, even under concurrent writers.
  The body carries an explicit SHA-256 checksum, so S3 rejects bytes damaged on the way.
* **412 means "verify", not "failed".** botocore retries a PUT whose response was lost; if the
  first attempt did land, the retry meets our own object and gets 412 (validated against moto,
  docs/storage-backends.md). So on 412 the object is read back and compared: equal bytes are
  "already stored" (False), different bytes are :class:`StorageConflictError`. A 409
  ConditionalRequestConflict (a concurrent conditional write still in flight) is retried.
* **Retries** are botocore's "standard" mode (exponential backoff with jitter, 5 retries by
  default, a retry quota per client); what is still failing afterwards is
  :class:`StorageUnavailableError` (``transient``), for the caller's own retry policy.
* **Start-up probe**: :meth:`S3Storage.probe` writes a key twice and insists on the 412, so an
  S3-compatible service that ignores ``If-None-Match`` (and would silently overwrite) is refused
  before any data goes there.

Credentials come from boto3's standard chain (environment, shared files, instance role); they
never appear in ``url`` or in messages. A boto3 client is thread-safe, so one ``S3Storage`` is
shared by all the server's threads.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
)

from remote.storage.base import (
    StorageConflictError,
    StorageError,
    StorageNotFoundError,
    StorageUnavailableError,
    validate_key,
    validate_prefix,
)

__all__ = ["S3Storage"]

PROBE_PREFIX = ".probe/"
"""Keys the start-up probe writes and deletes again; kept apart from the server's layout."""

_PRECONDITION_FAILED = "PreconditionFailed"  # 412: the key exists
_CONDITIONAL_CONFLICT = "ConditionalRequestConflict"  # 409: a concurrent conditional write
_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound"})  # HEAD answers carry no error body
_DENIED = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"})
_PUT_ROUNDS = 4
_CONFLICT_BACKOFF = 0.05  # seconds, doubled per 409 round
_MAX_MESSAGE = 200  # characters of a server's error message we repeat

_loader: Any = None  # botocore's model loader, shared by all clients (see _make_client)
_loader_lock = threading.Lock()


class S3Storage:
    """Objects in ``bucket`` under ``prefix/``; see the module docstring for the write protocol.

    Attributes:
        url: ``s3://bucket`` or ``s3://bucket/prefix``.
        client: the botocore S3 client; tests register event hooks on ``client.meta.events``.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_retries: int = 5,
        max_pool_connections: int = 16,
        client: Any = None,
    ) -> None:
        """Create the client (no request is sent; :meth:`probe` checks the endpoint).

        Args:
            bucket: an existing bucket.
            prefix: key prefix inside the bucket ("" for the whole bucket), a valid key.
            endpoint_url: an S3-compatible service (path-style addressing); None for AWS.
            region: AWS region; None follows the standard chain (``AWS_DEFAULT_REGION``, ...).
            connect_timeout: seconds per connection attempt.
            read_timeout: seconds without a byte before an attempt counts as failed.
            max_retries: retries per request after the first attempt (botocore standard mode).
            max_pool_connections: HTTP connections kept; at least the server's thread count.
            client: a ready botocore client, used instead of building one.

        Raises:
            ValueError: empty bucket name or invalid prefix.
        """
        if not bucket or "/" in bucket:
            raise ValueError(f"invalid S3 bucket name {bucket!r}")
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)
        self.bucket = bucket
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self._base = f"{prefix}/" if prefix else ""
        self.client = client or _make_client(
            endpoint_url, region, connect_timeout, read_timeout, max_retries, max_pool_connections
        )

    def __repr__(self) -> str:
        return f"S3Storage({self.url!r})"

    # -- writes ----------------------------------------------------------------------------

    def put(self, key: str, data: bytes | memoryview) -> bool:
        """Conditional create, 412 resolved by read-back; see :meth:`PermanentStorage.put`."""
        validate_key(key)
        body = bytes(data) if isinstance(data, memoryview) else data
        with self._errors("store", key):
            for round_ in range(_PUT_ROUNDS):
                lost_race = self._put_if_absent(self._base + key, body)
                if lost_race is None:
                    return True
                if lost_race == _PRECONDITION_FAILED:
                    if self._matches(key, body) is not None:
                        return False
                    continue  # deleted between the 412 and our read: create it again
                time.sleep(_CONFLICT_BACKOFF * 2**round_)  # 409: the other write is in flight
        raise StorageUnavailableError(f"cannot store {key!r} in {self.url}: the key kept changing")

    def _put_if_absent(self, name: str, body: bytes) -> str | None:
        """Send the conditional PUT; None if it created the object, else the 412/409 code."""
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=name,
                Body=body,
                IfNoneMatch="*",
                ChecksumAlgorithm="SHA256",
            )
        except ClientError as err:
            code = _code(err)
            if code in (_PRECONDITION_FAILED, _CONDITIONAL_CONFLICT):
                return code
            raise
        return None

    def _matches(self, key: str, body: bytes) -> bool | None:
        """True if the stored object equals ``body``; None if it is gone; conflict otherwise."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._base + key)
        except ClientError as err:
            if _code(err) in _NOT_FOUND:
                return None
            raise
        stream = response["Body"]
        try:
            # Compare sizes before reading, so a conflicting large object costs no download.
            if response["ContentLength"] != len(body) or stream.read() != body:
                raise StorageConflictError(f"key {key!r} already holds different bytes")
        finally:
            stream.close()
        return True

    def delete(self, key: str) -> None:
        """Remove the object; S3 deletes are idempotent already."""
        validate_key(key)
        with self._errors("delete", key):
            try:
                self.client.delete_object(Bucket=self.bucket, Key=self._base + key)
            except ClientError as err:
                if _code(err) not in _NOT_FOUND:  # some S3-compatibles answer 404
                    raise

    # -- reads -----------------------------------------------------------------------------

    def get(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        """Whole or ranged GET; see :meth:`PermanentStorage.get`."""
        validate_key(key)
        if start < 0 or (length is not None and length < 0):
            raise ValueError(f"invalid range: start={start}, length={length}")
        if length == 0:  # HTTP cannot ask for zero bytes; still report a missing key
            if self.size(key) is None:
                raise StorageNotFoundError(f"no object stored under key {key!r}")
            return b""
        ranged = start > 0 or length is not None
        extra = {"Range": _range_header(start, length)} if ranged else {}
        with self._errors("read", key):
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=self._base + key, **extra)
            except ClientError as err:
                if _code(err) == "InvalidRange":  # 416: the object exists, start is past its end
                    return b""
                raise
            data: bytes = response["Body"].read()
        if ranged and "ContentRange" not in response:
            # Some S3-compatibles answer a Range request with the whole object (200): cut it here.
            data = data[start : None if length is None else start + length]
        return data

    def size(self, key: str) -> int | None:
        """HEAD the object: its ContentLength, or None if absent."""
        validate_key(key)
        with self._errors("stat", key):
            try:
                response = self.client.head_object(Bucket=self.bucket, Key=self._base + key)
            except ClientError as err:
                if _code(err) in _NOT_FOUND:
                    return None
                raise
        length: int = response["ContentLength"]
        return length

    def list(self, prefix: str = "") -> Iterator[str]:
        """Paginated ListObjectsV2 (lexicographic in practice, not part of the contract)."""
        validate_prefix(prefix)  # here, not in the generator: bad prefixes fail at the call
        return self._iter_keys(prefix)

    def _iter_keys(self, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        cut = len(self._base)
        with self._errors("list", prefix):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._base + prefix):
                for item in page.get("Contents", ()):
                    key = item["Key"][cut:]
                    if _is_key(key):  # skip foreign objects a shared bucket may hold
                        yield key

    # -- start-up --------------------------------------------------------------------------

    def probe(self) -> None:
        """Check credentials, bucket, create-only PUTs and ranged GETs with a throw-away key.

        Raises:
            StorageError: one line naming what failed, e.g. an endpoint that ignores
                ``If-None-Match``.
        """
        key = f"{PROBE_PREFIX}{secrets.token_hex(8)}"
        first, second = b"dits-remote probe: first write", b"dits-remote probe: 2nd write"
        try:
            self.put(key, first)  # raises for a missing bucket, bad credentials, no endpoint
            with self._errors("probe", key):
                second_refused = self._put_if_absent(self._base + key, second) is not None
            if not second_refused or self.get(key) != first:
                raise StorageError(
                    f"{self.url}: the endpoint ignores If-None-Match and overwrote an object; "
                    "dits-remote needs create-only (conditional) PUTs and refuses this endpoint"
                )
            if self.get(key, 6, 6) != first[6:12]:
                raise StorageError(f"{self.url}: the endpoint returned wrong bytes for a Range GET")
        finally:
            self._delete_quietly(key)

    def _delete_quietly(self, key: str) -> None:
        try:
            self.delete(key)
        except StorageError:
            pass  # the probe's own error says more; a leftover probe key is harmless

    def close(self) -> None:
        """Close the client's connection pool."""
        self.client.close()

    @contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        """Translate botocore errors into StorageError subclasses with one clear line."""
        try:
            yield
        except (ClientError, BotoCoreError) as err:
            raise _translate(err, f"{action} {key!r} in {self.url}" if key else action) from err


def _make_client(
    endpoint_url: str | None,
    region: str | None,
    connect_timeout: float,
    read_timeout: float,
    max_retries: int,
    max_pool_connections: int,
) -> Any:
    config = Config(
        # botocore's Config key "max_attempts" counts retries: 5 means up to 6 requests.
        retries={"mode": "standard", "max_attempts": max_retries},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=max_pool_connections,
        # Custom endpoints (MinIO, Ceph, moto, an IP address) rarely have wildcard DNS.
        s3={"addressing_style": "path" if endpoint_url else "auto"},
    )
    # A fresh session per client resolves credentials afresh; sharing the data loader parses the
    # service model once per process (0.14 s per client otherwise, 0.02 s with it).
    core = botocore.session.get_session()
    global _loader
    with _loader_lock:
        if _loader is None:
            _loader = core.get_component("data_loader")
        core.register_component("data_loader", _loader)
    session = boto3.session.Session(botocore_session=core)
    return session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


def _range_header(start: int, length: int | None) -> str:
    return f"bytes={start}-" if length is None else f"bytes={start}-{start + length - 1}"


def _is_key(name: str) -> bool:
    try:
        validate_key(name)
    except ValueError:
        return False
    return True


def _code(err: ClientError) -> str:
    code: str = err.response.get("Error", {}).get("Code", "")
    return code


def _translate(err: Exception, what: str) -> StorageError:
    """Map one botocore exception to the StorageError a caller can act on."""
    if isinstance(err, ClientError):
        return _translate_client_error(err, what)
    if isinstance(err, NoCredentialsError | PartialCredentialsError):
        return StorageError(
            f"cannot {what}: no S3 credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            "a profile in ~/.aws, or an instance role)"
        )
    if isinstance(err, ConnectionError | HTTPClientError | IncompleteReadError):
        return StorageUnavailableError(
            f"cannot {what}: endpoint unreachable or timed out after retries ({type(err).__name__})"
        )
    return StorageError(f"cannot {what}: {type(err).__name__}: {err}")


def _translate_client_error(err: ClientError, what: str) -> StorageError:
    code = _code(err)
    meta = err.response.get("ResponseMetadata", {})
    status = meta.get("HTTPStatusCode", 0)
    attempts = meta.get("RetryAttempts", 0) + 1
    message = str(err.response.get("Error", {}).get("Message", ""))[:_MAX_MESSAGE]
    if code in _NOT_FOUND:
        return StorageNotFoundError(f"cannot {what}: no such key")
    if code == "NoSuchBucket":
        return StorageError(f"cannot {what}: the bucket does not exist")
    if code in _DENIED or status in (401, 403):
        return StorageError(f"cannot {what}: access denied ({code or status})")
    if status >= 500 or code in ("SlowDown", "RequestTimeout", "Throttling"):
        return StorageUnavailableError(
            f"cannot {what}: {code or 'error'} (HTTP {status}) after {attempts} attempts"
        )
    return StorageError(f"cannot {what}: {code} (HTTP {status}) {message}".rstrip())
