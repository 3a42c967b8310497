"""TokenStore: hashed bearer tokens, per-repository permissions, revocation and expiry."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest

from dits.errors import UsageError
from dits.protocol.errors import UnauthenticatedError
from dits.protocol.messages import Permission
from remote.auth import TokenInfo, TokenStore, TokenStoreError, normalise_permissions

R, W, A = Permission.READ, Permission.WRITE, Permission.ADMIN


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[TokenStore]:
    with TokenStore(tmp_path / "auth", clock=clock) as s:
        yield s


def test_create_list_revoke_round_trip(store: TokenStore, clock: FakeClock) -> None:
    secret, info = store.create("film", W, label="editor laptop", expires_in=3600)
    clock.now += 1
    other_secret, other = store.create("*", A)

    assert info == TokenInfo(
        token_id=info.token_id,
        repo="film",
        permissions=R | W,
        label="editor laptop",
        created=clock.now - 1,
        expires=clock.now - 1 + 3600,
        revoked=False,
    )
    assert store.list() == [info, other]
    assert store.get(info.token_id) == info
    assert store.authenticate(secret, "film") == R | W

    revoked = store.revoke(info.token_id)
    assert revoked.revoked and revoked.token_id == info.token_id
    assert store.list() == [revoked, other]
    assert store.revoke(info.token_id) == revoked  # idempotent
    with pytest.raises(UnauthenticatedError):
        store.authenticate(secret, "film")
    assert store.authenticate(other_secret, "film") == R | W | A


def test_secret_has_the_documented_format(store: TokenStore) -> None:
    secret, info = store.create("film", R)
    assert len(info.token_id) == 12 and int(info.token_id, 16) >= 0
    assert secret.startswith(f"dits_{info.token_id}_")
    body = secret[len("dits_") + 12 + 1 :]
    assert len(body) == 43 and set(body) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    )
    assert store.create("film", R)[0] != secret


def test_secret_is_never_stored(tmp_path: Path) -> None:
    path = tmp_path / "auth"
    with TokenStore(path) as store:
        secrets = [store.create(f"repo{i}", W, label="x")[0] for i in range(20)]
    files = b"".join(p.read_bytes() for p in path.iterdir())
    for secret in secrets:
        assert secret.encode() not in files
        assert secret[18:].encode() not in files  # nor its random part alone
        # The hash is there, so the search looked at the right bytes.
        assert hashlib.sha256(secret.encode()).digest() in files


def test_store_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "auth"
    with TokenStore(path) as store:
        store.create("film", R)
    assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0
    for file in path.iterdir():
        assert stat.S_IMODE(file.stat().st_mode) & 0o077 == 0, file.name


def test_wrong_secret_with_right_id_fails(store: TokenStore) -> None:
    secret, _ = store.create("film", A)
    other, _ = store.create("film", A)
    forged = secret[:18] + other[18:]  # right id, another token's random part
    assert forged != secret
    with pytest.raises(UnauthenticatedError):
        store.authenticate(forged, "film")
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "Q")
    with pytest.raises(UnauthenticatedError):
        store.authenticate(flipped, "film")


def test_unknown_id_fails(store: TokenStore) -> None:
    secret, info = store.create("film", R)
    unknown = "dits_" + ("0" * 12 if info.token_id != "0" * 12 else "1" * 12) + secret[17:]
    with pytest.raises(UnauthenticatedError):
        store.authenticate(unknown, "film")


def test_revocation_is_seen_by_another_handle_at_once(tmp_path: Path) -> None:
    with TokenStore(tmp_path / "auth") as server, TokenStore(tmp_path / "auth") as admin:
        secret, info = admin.create("film", R)
        assert server.authenticate(secret, "film") == R
        admin.revoke(info.token_id)
        with pytest.raises(UnauthenticatedError):
            server.authenticate(secret, "film")


def test_expired_token_fails(store: TokenStore, clock: FakeClock) -> None:
    secret, info = store.create("film", R, expires_in=60)
    assert info.expires == clock.now + 60
    clock.now += 59.9
    assert store.authenticate(secret, "film") == R
    clock.now += 0.1
    with pytest.raises(UnauthenticatedError):
        store.authenticate(secret, "film")
    assert store.list() == [info]  # expired tokens stay listed


def test_all_failures_look_the_same(store: TokenStore, clock: FakeClock) -> None:
    revoked, info = store.create("film", R)
    store.revoke(info.token_id)
    expired, _ = store.create("film", R, expires_in=1)
    clock.now += 2
    good, _ = store.create("film", R)
    messages = set()
    for secret in (revoked, expired, good[:-2] + "AA", "dits_abcdefabcdef_" + good[18:], "junk"):
        with pytest.raises(UnauthenticatedError) as caught:
            store.authenticate(secret, "film")
        messages.add(str(caught.value))
    assert messages == {"invalid or revoked token"}


def test_token_for_another_repo_gives_none(store: TokenStore) -> None:
    secret, _ = store.create("film", A)
    assert store.authenticate(secret, "film") == R | W | A
    assert store.authenticate(secret, "other") == Permission.NONE
    assert store.authenticate(secret, "Film") == Permission.NONE  # names are case-sensitive
    assert store.authenticate(secret, "film2") == Permission.NONE


def test_star_token_works_for_any_repo(store: TokenStore) -> None:
    secret, info = store.create("*", R)
    assert info.repo == "*"
    for repo in ("film", "other", "a", "x" * 100, "a.b_c-d"):
        assert store.authenticate(secret, repo) == R


@pytest.mark.parametrize("repo", ["", "*", "../film", "film/x", ".film", "x" * 101, "fïlm", "a\n"])
def test_invalid_requested_repo_gives_none(store: TokenStore, repo: str) -> None:
    secret, _ = store.create("*", A)
    assert store.authenticate(secret, repo) == Permission.NONE


def test_empty_secret_is_anonymous(store: TokenStore) -> None:
    store.create("film", A)
    assert store.authenticate("", "film") == Permission.NONE
    assert store.authenticate(b"", "film") == Permission.NONE
    assert store.verify(b"") is None


def test_bytes_and_str_secrets_are_equivalent(store: TokenStore) -> None:
    secret, info = store.create("film", W)
    assert store.authenticate(secret.encode(), "film") == R | W
    assert store.verify(secret.encode()) == store.verify(secret) == info


@pytest.mark.parametrize(
    ("asked", "stored"),
    [(R, R), (W, R | W), (A, R | W | A), (R | A, R | W | A), (W | A, R | W | A), (3, R | W)],
)
def test_permissions_are_normalised(
    store: TokenStore, asked: Permission | int, stored: Permission
) -> None:
    assert normalise_permissions(asked) == stored
    secret, info = store.create("film", Permission(asked))
    assert info.permissions == stored
    assert store.get(info.token_id).permissions == stored
    assert store.authenticate(secret, "film") == stored


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"repo": "../etc"}, "invalid repository name"),
        ({"repo": ""}, "invalid repository name"),
        ({"repo": "x" * 101}, "invalid repository name"),
        ({"repo": "a b"}, "invalid repository name"),
        ({"permissions": Permission.NONE}, "at least READ"),
        ({"permissions": 8}, "invalid permissions"),
        ({"label": "x" * 201}, "label"),
        ({"label": "line\nbreak"}, "label"),
        ({"expires_in": 0}, "expires_in"),
        ({"expires_in": -5}, "expires_in"),
        ({"expires_in": float("inf")}, "expires_in"),
        ({"expires_in": float("nan")}, "expires_in"),
    ],
)
def test_create_rejects_bad_arguments(
    store: TokenStore, kwargs: dict[str, Any], fragment: str
) -> None:
    args: dict[str, Any] = {"repo": "film", "permissions": R, **kwargs}
    repo, permissions = args.pop("repo"), args.pop("permissions")
    with pytest.raises(UsageError, match=fragment):
        store.create(repo, permissions, **args)
    assert store.list() == []


def test_revoke_unknown_id_is_a_usage_error(store: TokenStore) -> None:
    store.create("film", R)
    for token_id in ("0123456789ab", "nothex", "", "0123456789AB"):
        with pytest.raises(UsageError, match="unknown token id"):
            store.revoke(token_id)
        with pytest.raises(UsageError, match="unknown token id"):
            store.get(token_id)


def _malformed(good: str, token_id: str) -> list[Any]:
    body = good[18:]
    return [
        "dits__" + body,  # empty id
        f"dits_{token_id}_",  # empty random part
        f"dits_{token_id}",  # no separator
        "dits_",
        "_" + token_id + "_" + body,  # empty prefix
        f"dist_{token_id}_{body}",  # wrong prefix
        f"DITS_{token_id}_{body}",
        f"dits-{token_id}-{body}",
        f"dits_{token_id.upper()}_{body}",  # the id is lowercase hex
        f"dits_{token_id}_{body}=",  # padding
        f"dits_{token_id}_{body[:-1]}",  # one short
        f"dits_{token_id}_{body[:-1]}+",  # standard, not url-safe, base64
        f" {good}",
        f"{good}\n",
        f"{good[:-1]}é",  # non-ASCII, same length
        good[:-1] + "\udcff",  # lone surrogate
        good.encode()[:-1] + b"\xff",  # non-ASCII bytes
        "é" * 61,
        "\x00" * 61,
        good * 2,
        "dits_" + "a" * 10_000_000,  # huge
        b"dits_" + b"a" * 10_000_000,
        bytearray(good.encode()[:-1] + b"\x80"),
        "Bearer " + good,
    ]


def test_malformed_tokens_raise_unauthenticated_only(store: TokenStore) -> None:
    good, info = store.create("*", A)
    for bad in _malformed(good, info.token_id):
        with pytest.raises(UnauthenticatedError):
            store.authenticate(bad, "film")
    assert store.authenticate(good, "film") == R | W | A


def test_a_damaged_record_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "auth"
    with TokenStore(path) as store:
        secret, info = store.create("film", R)
    env = lmdb.open(str(path), max_dbs=4)
    with env.begin(write=True) as txn:
        txn.put(info.token_id.encode(), b"\x01\x01", db=env.open_db(b"tokens", txn=txn))
    env.close()
    with TokenStore(path) as store:
        with pytest.raises(TokenStoreError):
            store.authenticate(secret, "film")
        with pytest.raises(TokenStoreError):
            store.list()


def test_two_handles_in_one_process_share_the_environment(tmp_path: Path) -> None:
    first = TokenStore(tmp_path / "auth")
    second = TokenStore(tmp_path / "auth")
    secret, _ = first.create("film", R)
    first.close()
    first.close()  # idempotent
    assert second.authenticate(secret, "film") == R
    with pytest.raises(TokenStoreError, match="closed"):
        first.authenticate(secret, "film")
    second.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_opens_its_own_environment(tmp_path: Path) -> None:
    path = tmp_path / "auth"
    with TokenStore(path) as parent:
        secret, _ = parent.create("film", R)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit status
            code = 1
            try:
                try:
                    parent.authenticate(secret, "film")
                except TokenStoreError:
                    with TokenStore(path) as child:
                        if child.authenticate(secret, "film") == R:
                            child.create("film", W)
                            code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert len(parent.list()) == 2
        assert parent.authenticate(secret, "film") == R


# -- several processes ------------------------------------------------------------------------


def _create_tokens(path: str, repo: str, count: int, barrier: Any, results: Any) -> None:
    with TokenStore(Path(path)) as store:
        barrier.wait(timeout=60)
        secrets = [store.create(repo, W, label=f"proc {os.getpid()}")[0] for _ in range(count)]
        results.put((repo, secrets))


def _revoke(path: str, token_id: str) -> None:
    with TokenStore(Path(path)) as store:
        store.revoke(token_id)


def test_two_processes_create_tokens_concurrently(tmp_path: Path) -> None:
    path = tmp_path / "auth"
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    count = 15
    procs = [
        ctx.Process(target=_create_tokens, args=(str(path), repo, count, barrier, results))
        for repo in ("alpha", "beta")
    ]
    for proc in procs:
        proc.start()
    created = dict(results.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0

    with TokenStore(path) as store:
        assert len(store.list()) == 2 * count
        for repo, secrets in created.items():
            assert len(secrets) == count
            for secret in secrets:
                assert store.authenticate(secret, repo) == R | W
                assert store.authenticate(secret, "gamma") == Permission.NONE

        # Revocation in another process is honoured by this process's next call.
        victim = created["alpha"][0]
        token_id = victim[5:17]
        assert store.authenticate(victim, "alpha") == R | W
        proc = ctx.Process(target=_revoke, args=(str(path), token_id))
        proc.start()
        proc.join(timeout=60)
        assert proc.exitcode == 0
        with pytest.raises(UnauthenticatedError):
            store.authenticate(victim, "alpha")
