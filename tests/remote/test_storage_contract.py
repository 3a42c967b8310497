"""One conformance suite for every permanent-storage backend (remote/storage/base.py contract).

Restic-style: every contract test runs against the local folder and against S3 through moto on
127.0.0.1; set ``DITS_TEST_S3_URL=s3://bucket/prefix`` (and ``DITS_TEST_S3_ENDPOINT`` for a
non-AWS service) to run it against a real service too, with the caller's own credentials.
Backend-specific cases follow: S3 fault injection through botocore event hooks, and the local
folder's disk-full, crash-leftover and durability-ordering cases.
"""

from __future__ import annotations

import errno
import os
import random
import secrets
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dits.errors import EXIT_CORRUPT, EXIT_IO
from dits.errors import StorageFullError as DitsStorageFullError
from remote.storage import (
    LocalStorage,
    PermanentStorage,
    StorageConflictError,
    StorageError,
    StorageFullError,
    StorageNotFoundError,
    StorageUnavailableError,
    open_storage,
    validate_key,
)
from remote.storage.local import TMP_PREFIX
from tests.conftest import mounted_tmpfs

# Read at collection time: the autouse clean_env fixture scrubs DITS_* before each test runs.
REAL_S3_URL = os.environ.get("DITS_TEST_S3_URL", "")
REAL_S3_ENDPOINT = os.environ.get("DITS_TEST_S3_ENDPOINT") or None
BACKENDS = ["local", "s3", *(["s3-real"] if REAL_S3_URL else [])]
REPO_ROOT = Path(__file__).resolve().parents[2]
KIB = 1 << 10


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture(params=BACKENDS)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PermanentStorage]:
    """Each backend, empty."""
    store: PermanentStorage
    if request.param == "local":
        store = LocalStorage(tmp_path / "perm")
    elif request.param == "s3":
        store = _moto_storage(request)
    else:
        url = f"{REAL_S3_URL.rstrip('/')}/contract-{secrets.token_hex(4)}"
        store = open_storage(url, s3_endpoint=REAL_S3_ENDPOINT)
    yield store
    if request.param == "s3-real":
        for key in list(store.list()):
            store.delete(key)
    store.close()


def _moto_storage(request: pytest.FixtureRequest, **options: Any) -> Any:
    from remote.storage.s3 import S3Storage

    bucket = request.getfixturevalue("s3_bucket")
    endpoint = request.getfixturevalue("s3_endpoint")
    return S3Storage(bucket, "perm", endpoint_url=endpoint, **options)


# -- the contract ------------------------------------------------------------------------------


def test_put_then_get_returns_the_bytes(storage: PermanentStorage) -> None:
    data = payload(300 * KIB)
    assert storage.put("chunks/ab/ab01", data) is True
    assert storage.get("chunks/ab/ab01") == data
    assert storage.size("chunks/ab/ab01") == len(data)


def test_empty_object_and_memoryview_input(storage: PermanentStorage) -> None:
    data = payload(5000, seed=1)
    assert storage.put("empty", b"") is True
    assert storage.get("empty") == b""
    assert storage.size("empty") == 0
    assert storage.put("view", memoryview(data)[1000:3000]) is True
    assert storage.get("view") == data[1000:3000]


@pytest.mark.parametrize(
    ("start", "length"),
    [
        (0, 10),
        (1, 1),
        (100, None),
        (0, None),
        (0, 4096),
        (4000, 96),
        (4090, 100),
        (4095, None),
        (4096, 5),
        (9999, 1),
        (7, 0),
    ],
)
def test_ranged_get_behaves_like_a_slice(
    storage: PermanentStorage, start: int, length: int | None
) -> None:
    data = payload(4096, seed=2)
    storage.put("packs/p1", data)
    expected = data[start : None if length is None else start + length]
    assert storage.get("packs/p1", start, length) == expected


def test_ranged_get_rejects_negative_ranges(storage: PermanentStorage) -> None:
    storage.put("k", b"abc")
    with pytest.raises(ValueError):
        storage.get("k", -1)
    with pytest.raises(ValueError):
        storage.get("k", 0, -1)


def test_list_filters_by_plain_string_prefix(storage: PermanentStorage) -> None:
    keys = ["chunks/ab/ab01", "chunks/ab/ab02", "chunks/ac/ac01", "packs/0001", "packsx", "top"]
    for i, key in enumerate(keys):
        storage.put(key, payload(10, seed=i))
    assert sorted(storage.list()) == sorted(keys)
    assert sorted(storage.list("chunks/")) == keys[:3]
    assert sorted(storage.list("chunks/ab")) == keys[:2]
    assert sorted(storage.list("chunks/ab/ab0")) == keys[:2]
    assert sorted(storage.list("chunks/ab/ab02")) == ["chunks/ab/ab02"]
    assert sorted(storage.list("pack")) == ["packs/0001", "packsx"]
    assert list(storage.list("nothing/")) == []
    assert list(storage.list("chunks/zz/")) == []


def test_delete_is_idempotent(storage: PermanentStorage) -> None:
    storage.put("chunks/ab/gone", b"bytes")
    storage.delete("chunks/ab/gone")
    storage.delete("chunks/ab/gone")
    storage.delete("never/existed")
    assert storage.size("chunks/ab/gone") is None
    assert list(storage.list()) == []
    assert storage.put("chunks/ab/gone", b"again") is True  # a deleted key can be created anew


def test_put_of_the_same_bytes_twice_returns_false(storage: PermanentStorage) -> None:
    data = payload(70 * KIB, seed=3)
    assert storage.put("chunks/cd/cd01", data) is True
    assert storage.put("chunks/cd/cd01", data) is False
    assert storage.put("chunks/cd/cd01", memoryview(data)) is False
    assert storage.get("chunks/cd/cd01") == data


@pytest.mark.parametrize("other", [b"same length!", b"shorter", b"a little longer!", b""])
def test_put_of_different_bytes_conflicts_and_keeps_the_original(
    storage: PermanentStorage, other: bytes
) -> None:
    original = b"original...."
    storage.put("chunks/ef/ef01", original)
    with pytest.raises(StorageConflictError) as caught:
        storage.put("chunks/ef/ef01", other)
    assert caught.value.exit_code == EXIT_CORRUPT
    assert storage.get("chunks/ef/ef01") == original


def test_concurrent_puts_of_one_key_create_it_once(storage: PermanentStorage) -> None:
    data = payload(512 * KIB, seed=4)
    start = threading.Barrier(8)
    results: list[bool | BaseException] = []

    def writer() -> None:
        start.wait()
        try:
            results.append(storage.put("chunks/01/0123", data))
        except BaseException as err:  # collected: an error in a thread must fail the test
            results.append(err)

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results, key=repr) == [False] * 7 + [True]
    assert storage.get("chunks/01/0123") == data
    assert list(storage.list()) == ["chunks/01/0123"]


def test_missing_key_raises_not_found(storage: PermanentStorage) -> None:
    storage.put("chunks/aa/present", b"x")
    for start, length in [(0, None), (5, 10), (0, 0)]:
        with pytest.raises(StorageNotFoundError):
            storage.get("chunks/aa/absent", start, length)
    assert storage.size("chunks/aa/absent") is None
    with pytest.raises(StorageNotFoundError) as caught:
        storage.get("no/such/key")
    assert caught.value.exit_code == EXIT_CORRUPT
    assert not caught.value.transient


HOSTILE_KEYS = [
    "",
    "/etc/passwd",
    "../escape",
    "a/../../escape",
    "..",
    ".",
    "a/./b",
    "a//b",
    "a/",
    "a\\b",
    "a b",
    "a\x00b",
    "a\nb",
    "caf\u00e9",
    "~tmp.0123",
    "chunks/~x",
    "x" * 256,
    "a/" * 450 + "b",
]


@pytest.mark.parametrize("key", HOSTILE_KEYS, ids=repr)
def test_hostile_keys_are_rejected(storage: PermanentStorage, key: str) -> None:
    calls: list[Callable[[], object]] = [
        lambda: storage.put(key, b"x"),
        lambda: storage.get(key),
        lambda: storage.size(key),
        lambda: storage.delete(key),
    ]
    for call in calls:
        with pytest.raises(ValueError):
            call()
    assert list(storage.list()) == []


@pytest.mark.parametrize("prefix", ["../", "/", "/abs", "a//", "a/../", "a/~b/", "a b"])
def test_hostile_list_prefixes_are_rejected(storage: PermanentStorage, prefix: str) -> None:
    with pytest.raises(ValueError):
        storage.list(prefix)


def test_probe_passes_and_leaves_nothing(storage: PermanentStorage) -> None:
    storage.probe()
    assert list(storage.list()) == []


def test_errors_are_dits_errors_with_the_io_exit_code() -> None:
    assert StorageError("x").exit_code == EXIT_IO
    assert StorageUnavailableError("x").transient
    assert issubclass(StorageFullError, DitsStorageFullError)
    assert StorageFullError("x").exit_code == EXIT_IO


def test_validate_key_accepts_the_server_layout() -> None:
    for key in ["chunks/ab/" + "ab" * 32, "packs/" + "0" * 64, "a", "A-Z_0.9", ".probe/x"]:
        validate_key(key)


def test_open_storage_picks_the_backend_from_the_url(tmp_path: Path, aws_env: None) -> None:
    local = open_storage((tmp_path / "a b").as_uri())
    assert isinstance(local, LocalStorage)
    assert local.root == tmp_path / "a b"
    assert open_storage(str(tmp_path / "plain")).url == (tmp_path / "plain").as_uri()
    s3 = open_storage("s3://bucket/some/prefix/", s3_endpoint="http://127.0.0.1:9")
    assert s3.url == "s3://bucket/some/prefix"
    s3.close()
    for bad in ["ftp://host/x", "file://otherhost/x", "s3://bucket/../x"]:
        with pytest.raises(ValueError):
            open_storage(bad)


# -- S3: fault injection through botocore event hooks ------------------------------------------


class _RawBody:
    """The part of urllib3's response that botocore reads from a synthetic AWSResponse."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


def _s3_error(request: Any, status: int, code: str) -> Any:
    from botocore.awsrequest import AWSResponse

    body = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
    return AWSResponse(request.url, status, {"Content-Type": "application/xml"}, _RawBody(body))


class FaultInjector:
    """``before-send`` hook: answers a share of requests with a 5xx instead of sending them.

    Never more than ``max_streak`` in a row (requests are sequential in these tests, so that is
    per request), so botocore's 5 attempts always suffice and the test cannot flake.
    """

    def __init__(self, rate: float, seed: int = 7, max_streak: int = 3) -> None:
        self.rate = rate
        self.rng = random.Random(seed)
        self.max_streak = max_streak
        self.streak = 0
        self.injected = 0
        self.passed = 0

    def __call__(self, request: Any, **_: Any) -> Any:
        if self.streak < self.max_streak and self.rng.random() < self.rate:
            self.streak += 1
            self.injected += 1
            # Mostly 503 ServiceUnavailable; every 8th a SlowDown (throttling: longer backoff).
            code = "SlowDown" if self.injected % 8 == 0 else "ServiceUnavailable"
            return _s3_error(request, 503, code)
        self.streak = 0
        self.passed += 1
        return None


def test_s3_put_retried_after_success_resolves_412_by_verification(
    request: pytest.FixtureRequest,
) -> None:
    store = _moto_storage(request)
    data = payload(256 * KIB, seed=5)
    retried: list[int] = []

    def lose_first_response(response: Any, attempts: int, **_: Any) -> int | None:
        # The PUT landed (200) but we pretend its response was lost: botocore sends it again.
        if response is not None and response[0].status_code == 200 and not retried:
            retried.append(attempts)
            return 0
        return None

    store.client.meta.events.register("needs-retry.s3.PutObject", lose_first_response)
    assert store.put("chunks/ab/retried", data) is False  # "already stored": our own first try
    assert retried == [1]
    assert store.get("chunks/ab/retried") == data
    with pytest.raises(StorageConflictError):  # the same path still catches real conflicts
        store.put("chunks/ab/retried", data[:-1] + b"!")
    store.close()


def test_s3_injected_5xx_are_retried_and_data_is_intact(
    request: pytest.FixtureRequest, fast_backoff: None
) -> None:
    store = _moto_storage(request)
    injector = FaultInjector(rate=0.3)
    store.client.meta.events.register("before-send.s3", injector)
    blobs = {f"chunks/{i:02x}/{i:04x}": payload(16 * KIB, seed=i) for i in range(40)}
    for key, data in blobs.items():
        assert store.put(key, data) is True
    assert sorted(store.list()) == sorted(blobs)
    for key, data in blobs.items():
        assert store.get(key) == data
        assert store.get(key, 100, 50) == data[100:150]
        assert store.size(key) == len(data)
    assert store.put(next(iter(blobs)), next(iter(blobs.values()))) is False
    assert injector.injected >= 30, injector.injected  # roughly 30 % of ~200 requests
    store.close()


def test_s3_persistent_5xx_becomes_transient_storage_error(
    request: pytest.FixtureRequest, fast_backoff: None
) -> None:
    store = _moto_storage(request, max_retries=2)
    store.client.meta.events.register(
        "before-send.s3", lambda request, **_: _s3_error(request, 500, "InternalError")
    )
    with pytest.raises(StorageUnavailableError, match="after 3 attempts") as caught:
        store.put("chunks/ab/x", b"x")
    assert caught.value.transient
    assert "\n" not in str(caught.value)
    store.close()


def test_s3_probe_refuses_an_endpoint_that_ignores_if_none_match(
    request: pytest.FixtureRequest,
) -> None:
    store = _moto_storage(request)

    def strip_condition(request: Any, **_: Any) -> None:
        del request.headers["If-None-Match"]  # before signing, like a stub that ignores it

    store.client.meta.events.register("before-sign.s3.PutObject", strip_condition)
    with pytest.raises(StorageError, match="If-None-Match"):
        store.probe()
    assert list(store.list("")) == []  # the probe key was cleaned up
    store.close()


def test_s3_missing_bucket_and_dead_endpoint_give_one_clear_line(
    request: pytest.FixtureRequest, s3_endpoint: str, aws_env: None, fast_backoff: None
) -> None:
    from remote.storage.s3 import S3Storage

    missing = S3Storage("no-such-bucket-dits", endpoint_url=s3_endpoint)
    with pytest.raises(StorageError, match="bucket does not exist") as caught:
        missing.probe()
    assert not caught.value.transient
    missing.close()

    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    dead = S3Storage("bucket", endpoint_url=f"http://127.0.0.1:{dead_port}", max_retries=1)
    with pytest.raises(StorageUnavailableError, match="unreachable") as caught:
        dead.get("chunks/ab/x")
    assert caught.value.transient
    dead.close()


def test_s3_silent_endpoint_times_out_retries_and_fails_cleanly(
    aws_env: None, fast_backoff: None
) -> None:
    """An endpoint that accepts connections and never answers: each attempt times out, is
    retried, and the put ends in one transient error instead of hanging."""
    from remote.storage.s3 import S3Storage

    attempts: list[socket.socket] = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    stop = threading.Event()

    def accept_and_stay_silent() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            attempts.append(conn)  # never read from, never answered

    thread = threading.Thread(target=accept_and_stay_silent, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    silent = S3Storage(
        "bucket", endpoint_url=f"http://127.0.0.1:{port}", read_timeout=0.3, max_retries=2
    )
    started = time.monotonic()
    try:
        with pytest.raises(StorageUnavailableError, match="timed out") as caught:
            silent.put("chunks/ab/x", b"payload")
        assert caught.value.transient
        assert time.monotonic() - started < 10
        assert len(attempts) == 3  # the first try and two retries, each on a new connection
    finally:
        silent.close()
        stop.set()
        thread.join(5)
        for conn in attempts:
            conn.close()
        listener.close()


def test_s3_list_skips_foreign_objects(request: pytest.FixtureRequest, s3_admin: Any) -> None:
    store = _moto_storage(request)
    store.put("chunks/ab/mine", b"x")
    s3_admin.put_object(Bucket=store.bucket, Key="perm/not a key", Body=b"y")
    s3_admin.put_object(Bucket=store.bucket, Key="elsewhere/k", Body=b"z")
    assert list(store.list()) == ["chunks/ab/mine"]
    store.close()


# -- local folder ------------------------------------------------------------------------------


def test_local_crash_leftovers_are_not_listed_and_are_swept(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "perm")
    store.put("chunks/ab/kept", b"kept")
    # A real crash: the process dies between writing the temporary file and linking it.
    script = (
        "import os, sys\n"
        "from remote.storage.local import LocalStorage\n"
        "os.link = lambda *a, **k: os._exit(137)\n"
        "LocalStorage(sys.argv[1]).put('chunks/ab/crashed', b'partial' * 1000)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(store.root)],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        check=False,
    )
    assert proc.returncode == 137
    leftovers = list(store.root.rglob(f"{TMP_PREFIX}*"))
    assert len(leftovers) == 1
    assert list(store.list()) == ["chunks/ab/kept"]
    assert store.size("chunks/ab/crashed") is None

    assert store.sweep_tmp(older_than=3600) == 0  # young: may belong to a put in progress
    assert store.sweep_tmp(older_than=3600, now=time.time() + 7200) == 1
    assert not leftovers[0].exists()
    assert store.put("chunks/ab/crashed", b"whole") is True


def test_local_put_orders_fsync_before_link_before_dir_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStorage(tmp_path / "perm")
    events: list[str] = []
    real_fsync, real_link = os.fsync, os.link

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        real_fsync(fd)

    def link(src: Any, dst: Any, **kwargs: Any) -> None:
        events.append("link")
        real_link(src, dst, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    store.put("chunks/ab/new", b"durable")
    # Two new folders, each fsynced into its parent; then data, link, and the link's folder.
    assert events == ["fsync-dir", "fsync-dir", "fsync-file", "link", "fsync-dir"]


def test_local_key_and_folder_cannot_share_a_name(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "perm")
    store.put("a/b", b"x")
    with pytest.raises(StorageConflictError):
        store.put("a", b"y")
    store.put("c", b"x")
    with pytest.raises(StorageConflictError):
        store.put("c/d", b"y")
    with pytest.raises(StorageNotFoundError):
        store.get("a")
    assert store.size("c/d") is None
    assert sorted(store.list()) == ["a/b", "c"]


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (needs root and mount privileges; skipped otherwise)."""
    with mounted_tmpfs(tmp_path / "tiny", "1m") as mount_point:
        yield mount_point


def test_local_disk_full_raises_and_leaves_nothing_visible(tiny_disk: Path) -> None:
    store = LocalStorage(tiny_disk / "perm")
    first = payload(600 * KIB, seed=8)
    assert store.put("packs/first", first) is True
    with pytest.raises(StorageFullError) as caught:
        store.put("packs/second", payload(600 * KIB, seed=9))
    assert isinstance(caught.value, DitsStorageFullError)
    assert caught.value.exit_code == EXIT_IO
    assert str(tiny_disk) not in str(caught.value)  # messages never leak server paths
    assert list(store.list()) == ["packs/first"]
    assert not list(store.root.rglob(f"{TMP_PREFIX}*"))  # the temporary file went too
    assert store.get("packs/first") == first
    store.delete("packs/first")
    assert store.put("packs/second", payload(600 * KIB, seed=9)) is True


def test_local_other_os_errors_name_the_key_not_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStorage(tmp_path / "perm")

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(StorageError, match="cannot store 'k'") as caught:
        store.put("k", b"x")
    assert str(tmp_path) not in str(caught.value)
    assert not list(store.root.rglob(f"{TMP_PREFIX}*"))
