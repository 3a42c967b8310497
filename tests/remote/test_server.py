"""A real dits-remote (subprocess, QUIC and TLS/TCP on 127.0.0.1) driven by the real client."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dits.core.ids import ObjectId, hash_bytes
from dits.errors import EXIT_NETWORK
from dits.net.client import open_session
from dits.net.local_server import remote_cli
from dits.protocol import (
    BlobKind,
    Encoding,
    ForbiddenError,
    HashMismatchError,
    MissingObjectsError,
    Ping,
    Pong,
    PutChunk,
    RefChange,
)
from dits.remotes import RemoteSpec, parse_url
from tests.conftest import DitsRunner, mounted_tmpfs, random_bytes
from tests.remote.helpers import (
    REPO_ROOT,
    Server,
    hostile_tree,
    make_repo,
    new_root,
    server_fsck,
    start_server,
    stop_server,
    tree_digest,
)


@pytest.mark.parametrize("transport", ["quic", "tcp"])
def test_push_then_clone_round_trip(server: Server, tmp_path: Path, transport: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    dits = DitsRunner(work)
    files = {
        "shots/a.mov": random_bytes(3_000_000, 1),
        "shots/b.mov": random_bytes(1_500_000, 2),
        "edit.prproj": b"<xml>" * 2000,
        "empty.txt": b"",
    }
    make_repo(dits, files)
    dits("remote", "add", "origin", server.url(), "--token", server.write_token)
    dits("config", "remote.origin.transport", transport)
    code, out, err = dits("push", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["transport"] == transport
    assert report["chunks_sent"] == report["chunks_total"] > 10
    assert report["objects_sent"] == report["objects_total"] >= 5
    # Pushing again sends nothing.
    code, out, _ = dits("push", "--json")
    assert json.loads(out)["up_to_date"] is True
    clone_dir = tmp_path / "clone"
    code, out, err = DitsRunner(tmp_path)(
        "clone",
        server.url(),
        str(clone_dir),
        "--token",
        server.read_token,
        "--transport",
        transport,
        "--json",
    )
    assert code == 0, err
    assert json.loads(out)["chunks_received"] == report["chunks_total"]
    assert tree_digest(clone_dir) == tree_digest(work)
    assert DitsRunner(clone_dir)("status", "--json")[0] == 0
    fsck = server_fsck(server.root)
    assert fsck.returncode == 0 and json.loads(fsck.stdout)["clean"] is True


def test_second_push_sends_only_new_chunks(server: Server, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    dits = DitsRunner(work)
    big = random_bytes(4_000_000, 3)
    make_repo(dits, {"timeline.mov": big})
    dits("remote", "add", "origin", server.url(), "--token", server.write_token)
    assert dits("push")[0] == 0
    (work / "timeline.mov").write_bytes(big[:2_000_000] + b"new frames" + big[2_000_000:])
    dits("add", ".")
    dits("commit", "-m", "edit")
    code, out, err = dits("push", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["chunks_sent"] <= 2
    assert report["percent_already_on_server"] > 80


def test_the_server_log_shows_where_a_ref_update_spent_its_time(
    server: Server, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    dits = DitsRunner(work)
    make_repo(dits, {"a.mov": random_bytes(3_000_000, 5)})
    dits("remote", "add", "origin", server.url(), "--token", server.write_token)
    assert dits("push")[0] == 0
    lines = [
        ln for ln in (server.root / "server.log").read_text().splitlines() if "update-refs" in ln
    ]
    assert lines, "no update-refs line"
    phases = re.search(r"\((walk [0-9.]+ pin [0-9.]+ .*)\)$", lines[-1])
    assert phases, lines[-1]
    assert [w for w in phases.group(1).split()[::2]] == [
        "walk",
        "pin",
        "store",
        "commit",
        "release",
    ]


def test_read_only_and_bad_tokens_cannot_push(server: Server, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    dits = DitsRunner(work)
    make_repo(dits, {"a.bin": random_bytes(100_000, 4)})
    dits("remote", "add", "origin", server.url(), "--token", server.read_token)
    code, _, err = dits("push")
    assert code == 2 and "may not push" in err
    dits("config", "remote.origin.token", "dits_000000000000_" + "A" * 43)
    code, _, err = dits("push")
    assert code == 2 and "invalid or revoked token" in err
    dits("config", "remote.origin.token", server.other_token)  # valid, but for another repo
    code, _, err = dits("push")
    assert code == 2 and "not found or not accessible" in err


def test_concurrent_pushers_one_wins_the_other_pulls(server: Server, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    da = DitsRunner(a)
    make_repo(da, {"base.txt": b"base\n"})
    da("remote", "add", "origin", server.url(), "--token", server.write_token)
    assert da("push")[0] == 0
    db = DitsRunner(tmp_path)
    assert db("clone", server.url(), str(b), "--token", server.write_token)[0] == 0
    db = DitsRunner(b)
    (a / "from_a.txt").write_text("a")
    da("add", ".")
    da("commit", "-m", "a")
    (b / "from_b.txt").write_text("b")
    db("add", ".")
    db("commit", "-m", "b")
    assert da("push")[0] == 0
    code, _, err = db("push")
    assert code == 4 and "pull" in err
    code, _, err = db("pull")
    assert code == 0, err
    assert (b / "from_a.txt").read_text() == "a"
    assert db("push")[0] == 0


def test_server_rejects_bad_bytes_and_keeps_serving(server: Server) -> None:
    async def scenario() -> None:
        session = await open_session(server.spec(server.write_token))
        try:
            data = random_bytes(1000, 5)
            wrong = ObjectId(hash_bytes(b"something else"))
            with pytest.raises(HashMismatchError):
                await session.put([PutChunk(wrong, Encoding.RAW, len(data), data)])
            # Nothing was recorded for the lying id.
            assert await session.have(BlobKind.CHUNK, [wrong]) == set()
            (pong,) = await session.request([Ping(b"12345678")])
            assert isinstance(pong, Pong)
            # Garbage on a fresh stream: an error for that stream, the server lives on.
            reader, writer = await session.conn.open_stream()
            writer.write(b"\xff" * 64)
            writer.write_eof()
            try:
                answer = await reader.read()  # an Error frame, or a reset stream
                assert answer[:1] in (b"", b"\x7f")
            except ConnectionResetError:
                pass
            writer.close()
            (pong,) = await session.request([Ping(b"abcdefgh")])
            assert isinstance(pong, Pong)
        finally:
            await session.close()

    asyncio.run(scenario())


def test_have_is_scoped_and_hashes_are_not_capabilities(server: Server, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    dits = DitsRunner(work)
    data = random_bytes(600_000, 6)
    make_repo(dits, {"secret.mov": data})
    dits("remote", "add", "origin", server.url(), "--token", server.write_token)
    assert dits("push")[0] == 0
    from dits.repository import Repository

    repo = Repository.open(work)
    chunk_ids = list(repo.chunks.iter_ids())
    tip = repo.head_commit()
    repo.close()
    assert tip is not None

    async def scenario() -> None:
        session = await open_session(server.spec(server.other_token, repo="other"))
        try:
            assert await session.have(BlobKind.CHUNK, chunk_ids) == set()
            with pytest.raises(MissingObjectsError):
                await session.update_refs([RefChange("refs/heads/main", None, tip)])
        finally:
            await session.close()
        session = await open_session(server.spec(server.read_token))
        try:
            with pytest.raises(ForbiddenError):
                await session.put([PutChunk(chunk_ids[0], Encoding.RAW, 1, b"x")])
        finally:
            await session.close()

    asyncio.run(scenario())


def test_interrupted_push_resumes(server: Server, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    dits = DitsRunner(work)
    make_repo(dits, {"a.mov": random_bytes(2_000_000, 7)})
    dits("remote", "add", "origin", server.url(), "--token", server.write_token)
    from dits.repository import Repository

    repo = Repository.open(work)
    ids = list(repo.chunks.iter_ids())
    half = [(oid, repo.chunks.get(oid)) for oid in ids[: len(ids) // 2]]
    repo.close()

    async def partial_upload() -> None:  # what a push killed after some batches leaves behind
        session = await open_session(server.spec(server.write_token))
        try:
            await session.put([PutChunk(o, Encoding.RAW, len(d), d) for o, d in half])
        finally:
            await session.close()

    asyncio.run(partial_upload())
    code, out, err = dits("push", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["chunks_sent"] == len(ids) - len(half)


def test_changed_server_certificate_is_refused(server: Server, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    dits = DitsRunner(work)
    make_repo(dits, {"a.txt": b"a"})
    dits("remote", "add", "origin", server.url(), "--token", server.write_token)
    assert dits("push")[0] == 0  # pins the certificate
    stop_server(server.proc)
    for name in ("cert.pem", "key.pem"):
        (server.root / "tls" / name).unlink()
    server.proc, port = start_server(server.root, "--listen", f"127.0.0.1:{server.port}")
    assert port == server.port
    code, _, err = dits("push")
    assert code == 9
    assert "dits remote trust" in err


def test_push_and_clone_with_s3_permanent_storage(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str, s3_admin: object
) -> None:
    root = tmp_path / "srv"
    token = new_root(root)
    proc, port = start_server(
        root, "--storage", f"s3://{s3_bucket}/dits", "--s3-endpoint", s3_endpoint
    )
    try:
        work = tmp_path / "work"
        work.mkdir()
        dits = DitsRunner(work)
        make_repo(dits, {"a.mov": random_bytes(1_200_000, 8), "b.txt": b"notes\n"})
        dits("remote", "add", "origin", f"dits://127.0.0.1:{port}/proj", "--token", token)
        code, _, err = dits("push", "--json")
        assert code == 0, err
        listed = s3_admin.list_objects_v2(Bucket=s3_bucket, Prefix="dits/")  # type: ignore[attr-defined]
        keys = [item["Key"] for item in listed.get("Contents", ())]
        assert keys and all(k.startswith("dits/packs/") for k in keys)
        clone_dir = tmp_path / "clone"
        code, _, err = DitsRunner(tmp_path)(
            "clone", f"dits://127.0.0.1:{port}/proj", str(clone_dir), "--token", token
        )
        assert code == 0, err
        assert tree_digest(clone_dir) == tree_digest(work)
    finally:
        stop_server(proc)
    fsck = server_fsck(root, "--storage", f"s3://{s3_bucket}/dits", "--s3-endpoint", s3_endpoint)
    assert fsck.returncode == 0, fsck.stderr
    assert json.loads(fsck.stdout)["clean"] is True


@pytest.mark.parametrize("name", ["..", ".dits", ".DITS", "a/b", "nul\x00", ".dits."])
def test_hostile_tree_names_are_refused_on_receipt(server: Server, name: str) -> None:
    from dits.core.codec import object_id
    from dits.protocol import InvalidObjectError, PutObject

    data = hostile_tree(name)

    async def scenario() -> None:
        session = await open_session(server.spec(server.write_token))
        try:
            with pytest.raises(InvalidObjectError):
                await session.put([PutObject(object_id(data), data)])
            assert await session.have(BlobKind.OBJECT, [object_id(data)]) == set()
        finally:
            await session.close()

    asyncio.run(scenario())


def test_absurd_frames_and_zstd_bombs_get_errors_and_the_server_lives_on(
    server: Server,
) -> None:
    import struct

    import zstandard

    from dits.protocol import TooLargeError

    async def scenario() -> None:
        session = await open_session(server.spec(server.write_token))
        try:
            for garbage in (
                struct.pack("<BBHI", 0x14, 1, 0, 0xFFFFFFFF),  # a 4 GiB PutChunk frame
                struct.pack("<BBHI", 0x7E, 1, 0, 4) + b"abcd",  # unknown type
                struct.pack("<BBHI", 0x12, 1, 0, 100) + b"short",  # truncated, then EOF
            ):
                reader, writer = await session.conn.open_stream()
                writer.write(garbage)
                writer.write_eof()
                try:
                    await asyncio.wait_for(reader.read(), 10)
                except ConnectionResetError:
                    pass
                writer.abort()
            bomb = zstandard.ZstdCompressor(level=19).compress(bytes(256 << 20))
            with pytest.raises(TooLargeError):
                await session.put([PutChunk(ObjectId(bytes(32)), Encoding.ZSTD, 1 << 20, bomb)])
            (pong,) = await session.request([Ping(b"stillup!")])
            assert isinstance(pong, Pong)
        finally:
            await session.close()

    asyncio.run(scenario())


def test_revoked_token_stops_working_on_an_open_connection(server: Server) -> None:
    from dits.protocol import UnauthenticatedError

    async def scenario() -> None:
        session = await open_session(server.spec(server.write_token))
        try:
            await session.list_refs()
            token_id = server.write_token.split("_")[1]
            await asyncio.to_thread(
                remote_cli, "token", "revoke", "--root", str(server.root), token_id
            )
            with pytest.raises(UnauthenticatedError):
                await session.list_refs()
        finally:
            await session.close()

    asyncio.run(scenario())


def test_push_survives_a_killed_client_and_a_killed_server(server: Server, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    dits = DitsRunner(work)
    make_repo(dits, {"a.mov": random_bytes(24_000_000, 9), "b.mov": random_bytes(8_000_000, 10)})
    dits("remote", "add", "origin", server.url(), "--token", server.write_token)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    # The client dies mid-push.
    client = subprocess.Popen(
        [sys.executable, "-m", "dits.cli.main", "push"],
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.2)
    client.kill()
    client.wait()
    # The server dies (kill -9) during the next push, and comes back on the same port.
    client = subprocess.Popen(
        [sys.executable, "-m", "dits.cli.main", "push"],
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.8)
    server.proc.kill()
    _, err = client.communicate(timeout=60)
    if client.returncode != 0:  # the usual case: the server died under the push
        assert client.returncode == EXIT_NETWORK, err
        assert err.count("\n") == 1 and "Traceback" not in err and "run the command again" in err
    # With nothing listening, a push fails the same way, in one line.
    code, _, err = dits("push")
    assert code == EXIT_NETWORK and err.count("\n") == 1, err
    server.proc, _ = start_server(server.root, "--listen", f"127.0.0.1:{server.port}")
    code, out, err = dits("push", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["up_to_date"] or report["chunks_sent"] <= report["chunks_total"]
    clone_dir = tmp_path / "clone"
    code, _, err = DitsRunner(tmp_path)(
        "clone", server.url(), str(clone_dir), "--token", server.read_token
    )
    assert code == 0, err
    assert tree_digest(clone_dir) == tree_digest(work)
    fsck = server_fsck(server.root)
    assert fsck.returncode == 0 and json.loads(fsck.stdout)["clean"] is True


def test_several_worker_processes_serve_one_port(tmp_path: Path) -> None:
    import socket

    root = tmp_path / "srv"
    token = new_root(root)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc, _ = start_server(root, "--listen", f"127.0.0.1:{port}", "--workers", "2")
    try:
        work = tmp_path / "work"
        work.mkdir()
        dits = DitsRunner(work)
        make_repo(dits, {"a.mov": random_bytes(2_000_000, 11)})
        dits("remote", "add", "origin", f"dits://127.0.0.1:{port}/proj", "--token", token)
        dits("config", "remote.origin.transport", "tcp")
        code, _, err = dits("push")
        assert code == 0, err
        clone_dir = tmp_path / "clone"
        code, _, err = DitsRunner(tmp_path)(
            "clone",
            f"dits://127.0.0.1:{port}/proj",
            str(clone_dir),
            "--token",
            token,
            "--transport",
            "tcp",
        )
        assert code == 0, err
        assert tree_digest(clone_dir) == tree_digest(work)
    finally:
        stop_server(proc)


def test_interrupted_clone_resumes(server: Server, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    dits = DitsRunner(work)
    make_repo(dits, {"a.mov": random_bytes(30_000_000, 12)})
    dits("remote", "add", "origin", server.url(), "--token", server.write_token)
    assert dits("push")[0] == 0
    clone_dir = tmp_path / "clone"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    args = [
        sys.executable,
        "-m",
        "dits.cli.main",
        "clone",
        server.url(),
        str(clone_dir),
        "--token",
        server.read_token,
    ]
    first = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Killed as soon as the clone has made its repository, long before 30 MB can arrive
    # (test_clone_stream.py kills one after some files are complete).
    deadline = time.monotonic() + 30
    while not (clone_dir / ".dits" / "config").exists() and time.monotonic() < deadline:
        time.sleep(0.002)
    first.kill()
    assert first.wait() != 0, "the first clone finished before it could be interrupted"
    code, _, err = DitsRunner(tmp_path)(
        "clone", server.url(), str(clone_dir), "--token", server.read_token, "--json"
    )
    assert code == 0, err
    assert tree_digest(clone_dir) == tree_digest(work)
    code, _, err = DitsRunner(tmp_path)("clone", server.url("other"), str(clone_dir))
    assert code == 2 and "already a dits repository" in err


def test_permanent_storage_failure_fails_the_push_and_the_ref_stays(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str, s3_admin: Any
) -> None:
    root = tmp_path / "srv"
    token = new_root(root)
    proc, port = start_server(
        root, "--storage", f"s3://{s3_bucket}/dits", "--s3-endpoint", s3_endpoint
    )
    try:
        work = tmp_path / "work"
        work.mkdir()
        dits = DitsRunner(work)
        make_repo(dits, {"a.mov": random_bytes(500_000, 13)})
        dits("remote", "add", "origin", f"dits://127.0.0.1:{port}/proj", "--token", token)
        assert dits("push")[0] == 0
        before = json.loads(dits("push", "--json")[1])["new"]
        (work / "b.mov").write_bytes(random_bytes(500_000, 14))
        dits("add", ".")
        dits("commit", "-m", "second")
        # The bucket's write permission goes away: every PUT now fails for good.
        s3_admin.put_bucket_policy(
            Bucket=s3_bucket,
            Policy=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Deny",
                            "Principal": "*",
                            "Action": "s3:PutObject",
                            "Resource": f"arn:aws:s3:::{s3_bucket}/*",
                        }
                    ],
                }
            ),
        )
        code, _, err = dits("push")
        assert code != 0 and err.strip().count("\n") == 0  # one line, no traceback
        refs = _server_refs(server_url=f"dits://127.0.0.1:{port}/proj", token=token)
        assert refs["refs/heads/main"].hex() == before
        s3_admin.delete_bucket_policy(Bucket=s3_bucket)
        assert dits("push")[0] == 0  # the retry after the outage goes through
    finally:
        stop_server(proc)


def _server_refs(server_url: str, token: str) -> dict[str, ObjectId]:
    async def read() -> dict[str, ObjectId]:
        session = await open_session(RemoteSpec("origin", parse_url(server_url), token, "auto"))
        try:
            return (await session.list_refs()).as_dict()
        finally:
            await session.close()

    return asyncio.run(read())


def test_remote_gc_runs_beside_a_live_server(server: Server) -> None:
    report = json.loads(remote_cli("gc", "--root", str(server.root), "--json"))
    assert report["entries_expired"] == report["blobs_removed"] == report["bytes_freed"] == 0
    assert report["marked"] == report["swept"] == report["orphans_removed"] == 0
    stats = json.loads(remote_cli("stats", "--root", str(server.root), "--json"))
    assert stats["repositories"] == ["other", "proj"]


def test_pre_push_hook_sees_the_refs_and_can_refuse(server: Server, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    dits = DitsRunner(work)
    make_repo(dits, {"a.txt": b"a"})
    dits("remote", "add", "origin", server.url(), "--token", server.write_token)
    hook = work / ".dits" / "hooks" / "pre-push"
    hook.parent.mkdir(exist_ok=True)
    seen = tmp_path / "seen.txt"
    hook.write_text(f'#!/bin/sh\necho "$1 $2" > {seen}\ncat >> {seen}\nexit 1\n')
    hook.chmod(0o755)
    code, _, err = dits("push")
    assert code == 8, err
    lines = seen.read_text().splitlines()
    assert lines[0] == f"origin {server.url()}"
    local_ref, local_commit, remote_ref, remote_commit = lines[1].split()
    assert (local_ref, remote_ref, remote_commit) == ("refs/heads/main",) * 2 + ("0" * 64,)
    assert _server_refs(server.url(), server.write_token) == {}  # nothing was pushed
    hook.write_text("#!/bin/sh\nexit 0\n")
    assert dits("push")[0] == 0
    refs = _server_refs(server.url(), server.write_token)
    assert refs["refs/heads/main"].hex() == local_commit


def test_fetch_updates_remote_tracking_branches_and_logs_name_the_token(
    server: Server, tmp_path: Path
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    da = DitsRunner(a)
    make_repo(da, {"one.txt": b"1"})
    da("remote", "add", "origin", server.url(), "--token", server.write_token)
    assert da("push")[0] == 0
    assert DitsRunner(tmp_path)("clone", server.url(), str(b), "--token", server.read_token)[0] == 0
    (a / "two.txt").write_text("2")
    da("add", ".")
    da("commit", "-m", "two")
    assert da("push")[0] == 0
    code, out, err = DitsRunner(b)("fetch", "--json")
    assert code == 0, err
    report = json.loads(out)
    tip = json.loads(da("log", "--json")[1])[0]["commit"]
    assert report["updated"] == {"main": tip}
    assert report["objects_received"] >= 3 and report["chunks_received"] == 1
    assert not (b / "two.txt").exists()  # fetch never touches the working tree
    log = (server.root / "server.log").read_text()
    token_id = server.write_token.split("_")[1]
    assert re.search(rf"\[\d+\] INFO dits.remote: \d+\.\d+ hello repo=proj token={token_id} ", log)
    assert re.search(r"\d+\.\d+ update-refs repo=proj refs/heads/main promoted=\d+", log)


def test_transport_flag_overrides_the_remote_for_push_fetch_and_pull(
    server: Server, tmp_path: Path
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    da = DitsRunner(a)
    make_repo(da, {"one.txt": b"1"})
    da("remote", "add", "origin", server.url(), "--token", server.write_token)
    da("config", "remote.origin.transport", "quic")
    code, out, err = da("push", "--transport", "tcp", "--json")
    assert code == 0 and json.loads(out)["transport"] == "tcp", err
    db = DitsRunner(b)
    args = ("clone", server.url(), str(b), "--token", server.read_token, "--transport", "quic")
    assert DitsRunner(tmp_path)(*args)[0] == 0
    (a / "two.txt").write_text("2")
    da("add", ".")
    da("commit", "-m", "two")
    assert da("push", "--json")[0] == 0
    code, out, err = db("fetch", "--transport", "tcp", "--json")
    assert code == 0 and json.loads(out)["transport"] == "tcp", err
    code, out, err = db("pull", "--transport", "tcp", "--json")
    assert code == 0 and json.loads(out)["fetch"]["transport"] == "tcp", err
    assert (b / "two.txt").read_text() == "2"


def test_a_dead_server_is_noticed_at_once_over_quic(server: Server) -> None:
    """kill -9 leaves no CONNECTION_CLOSE; the port-unreachable answer must end the session
    well before QUIC's 60 s idle timeout, and a QUIC connect to it must fail just as fast."""

    async def scenario() -> float:
        session = await open_session(server.spec(server.read_token, transport="quic"))
        try:
            assert session.transport == "quic"
            (pong,) = await session.request([Ping(b"alive???")])
            assert isinstance(pong, Pong)
            server.proc.kill()
            started = time.monotonic()
            with pytest.raises(ConnectionError):
                for _ in range(50):  # the first request may go out before the ICMP is back
                    await session.request([Ping(b"anyone??")])
                    await asyncio.sleep(0.1)
            return time.monotonic() - started
        finally:
            await session.close()

    assert asyncio.run(scenario()) < 5
    started = time.monotonic()
    code, _, err = DitsRunner(server.root)(
        "clone", server.url(), str(server.root / "c"), "--transport", "quic"
    )
    assert code == EXIT_NETWORK and "port unreachable" in err
    assert time.monotonic() - started < 5
    assert not (server.root / "c").exists()  # a clone that got nothing leaves nothing
    server.proc, _ = start_server(server.root, "--listen", f"127.0.0.1:{server.port}")


def test_a_full_server_disk_fails_the_push_cleanly(tmp_path: Path) -> None:
    """The server's disk fills mid-push: the client is told so in one line (exit 7, not an
    internal error), no ref moves, and once space is back the same push goes through."""
    with mounted_tmpfs(tmp_path / "disk", "24m") as disk:
        root = disk / "srv"
        token = new_root(root)
        proc, port = start_server(root)
        try:
            work = tmp_path / "work"
            work.mkdir()
            dits = DitsRunner(work)
            make_repo(dits, {"render.mov": random_bytes(40 << 20, 21)})
            url = f"dits://127.0.0.1:{port}/proj"
            assert dits("remote", "add", "origin", url, "--token", token)[0] == 0
            code, _, err = dits("push")
            assert code == 7, err
            assert "out of storage space" in err and "internal" not in err
            assert "Traceback" not in err
            assert remote_refs(port, token) == {}
            # The server lives on: space comes back (the tmpfs grows), the push completes.
            subprocess.run(["mount", "-o", "remount,size=256m", str(disk)], check=True)
            code, _, err = dits("push")
            assert code == 0, err
            assert list(remote_refs(port, token)) == ["refs/heads/main"]
        finally:
            stop_server(proc)
        fsck = server_fsck(root)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def remote_refs(port: int, token: str) -> dict[str, ObjectId]:
    async def ask() -> dict[str, ObjectId]:
        spec = RemoteSpec("origin", parse_url(f"dits://127.0.0.1:{port}/proj"), token, "auto")
        session = await open_session(spec)
        try:
            return (await session.list_refs("refs/heads/")).as_dict()
        finally:
            await session.close()

    return asyncio.run(ask())
