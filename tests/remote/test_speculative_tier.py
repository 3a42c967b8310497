"""The server's speculative tier: private uploads, pins, quota, two-phase GC, the server clock.

Real servers (QUIC and TLS/TCP on 127.0.0.1) for what a client sees; ``RemoteService`` with an
injected clock where timing decides (RELIABILITY.md 3.4, T19-T23).
"""

from __future__ import annotations

import asyncio
import json
import random
import struct
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from dits.core.codec import encode_object, object_id
from dits.core.ids import ObjectId, hash_bytes
from dits.core.objects import ChunkRef, Commit, Identity, Manifest, Tree, TreeEntry, TreeEntryKind
from dits.errors import EXIT_IO
from dits.net.client import PACE_SLICE, open_session
from dits.net.local_server import remote_cli
from dits.protocol import (
    BlobKind,
    Encoding,
    MissingObjectsError,
    NotFoundError,
    Permission,
    PutChunk,
    PutObject,
    PutSpeculative,
    QuotaExceededError,
    RefChange,
    encode_message,
)
from remote.clock import ManualClock, ServerClock
from remote.gc import GcReport, PeriodicGc, TempGc
from remote.index import ServerIndex, TempEntry, TempState, uploader_key
from remote.maintenance import server_fsck as fsck_service
from remote.service import RemoteService, Session
from remote.speculative import SpeculativePolicy
from remote.storage.local import LocalStorage
from tests.conftest import DitsRunner, random_bytes
from tests.remote.helpers import Server, make_repo, new_root, server_fsck, start_server, stop_server

# -- in-process helpers --------------------------------------------------------------------------


class _AllowAll:
    def authenticate(self, token: bytes, repo: str) -> Permission:
        return Permission.READ | Permission.WRITE


def _service(root: Path, clock: object = None, **policy: float) -> RemoteService:
    service = RemoteService(
        root,
        LocalStorage(root / "storage"),
        _AllowAll(),
        policy=SpeculativePolicy(**policy),  # type: ignore[arg-type]
        clock=clock,  # type: ignore[arg-type]
    )
    for repo in ("r", "s"):
        if service.index.repo_id(repo) is None:
            service.index.create_repo(repo)
    return service


def _session(service: RemoteService, repo: str = "r", token: str = "t1") -> Session:
    repo_id = service.index.repo_id(repo)
    assert repo_id is not None
    return Session(repo, repo_id, Permission.READ | Permission.WRITE, uploader_key(token))


def _chunks(n: int, seed: int, size: int = 20_000) -> list[bytes]:
    return [random_bytes(size, seed * 1000 + i) for i in range(n)]


def _ids(chunks: list[bytes]) -> tuple[ObjectId, ...]:
    return tuple(hash_bytes(c) for c in chunks)


def _spec_msgs(chunks: list[bytes]) -> list[PutSpeculative]:
    return [PutSpeculative(hash_bytes(c), Encoding.RAW, len(c), c) for c in chunks]


def _objects(chunks: list[bytes], message: str = "c") -> tuple[list[bytes], ObjectId]:
    """Manifest, tree and commit encodings for one file made of ``chunks``; and the tip."""
    size = sum(len(c) for c in chunks)
    manifest = encode_object(
        Manifest(
            "media-v1",
            size,
            hash_bytes(b"".join(chunks)),
            tuple(ChunkRef(hash_bytes(c), len(c)) for c in chunks),
        )
    )
    tree = encode_object(
        Tree((TreeEntry("a.mov", TreeEntryKind.FILE, 0o100644, size, object_id(manifest)),))
    )
    who = Identity("T", "t@example.com", 1700000000, 0)
    commit = encode_object(Commit(object_id(tree), (), who, who, message))
    return [manifest, tree, commit], object_id(commit)


_REFUSALS: list[int] = []  # MISSING_OBJECTS answers seen by _push (chunks listed)


def _push(
    service: RemoteService, session: Session, chunks: list[bytes], ref: str, *, pause: float = 0
) -> int:
    """What a client push does, re-sending on MISSING_OBJECTS; returns chunks re-sent."""
    by_id = {hash_bytes(c): c for c in chunks}
    objects, tip = _objects(chunks, ref)
    resent = 0
    for _ in range(20):
        present = service.have(session, BlobKind.CHUNK, tuple(by_id))
        missing = [oid for oid, here in zip(by_id, present, strict=True) if not here]
        resent += len(missing)
        service.put_chunks(
            session, [PutChunk(i, Encoding.RAW, len(by_id[i]), by_id[i]) for i in missing]
        )
        service.put_objects(session, [PutObject(object_id(o), o) for o in objects])
        if pause:
            time.sleep(random.uniform(0, pause))
        try:
            service.update_refs(session, (RefChange(ref, None, tip),))
            return resent
        except MissingObjectsError as exc:
            assert set(exc.ids) <= set(by_id), "only chunks may expire under a push"
            _REFUSALS.append(len(exc.ids))
    raise AssertionError("the push never completed")


def _bytes_behind_every_entry(service: RemoteService) -> None:
    """I3: every temp entry names bytes the temporary store still has."""
    named = {oid for _, oid, _, _, _ in service.index.iter_temp()}
    assert service.temp.has_many(named) == named


def _spec_state(service: RemoteService, oid: ObjectId) -> TempState | None:
    for _, entry_id, _, _, entry in service.index.iter_temp():
        if entry_id == oid and entry.speculative:
            return entry.state
    return None


# -- a real server: visibility, promotion, quota ---------------------------------------------


@pytest.mark.parametrize(
    "entry",
    [
        TempEntry(True, 1000, 5.0, 6.0),
        TempEntry(False, 7, 5.0, 9.0, TempState.CONDEMNED, condemned_at=9.5, pinned_until=50.0),
        TempEntry(True, 1 << 40, 1.0, 2.0, pinned_until=10.0),
    ],
)
def test_freshening_encoded_entries_is_the_dataclass_round_trip(entry: TempEntry) -> None:
    for now, pin_until in ((20.0, 30.0), (20.0, 60.0)):
        expected = entry.freshened(now, pin_until).encode()
        assert TempEntry.freshen_encoded(entry.encode(), now, pin_until) == expected
    legacy = struct.pack("<d", 3.0)  # an entry written before the speculative tier
    assert TempEntry.freshen_encoded(legacy, 4.0, 8.0) == (
        TempEntry.decode(legacy).freshened(4.0, 8.0).encode()
    )


def test_speculative_chunks_are_private_to_their_token_and_repository(
    server: Server, tmp_path: Path
) -> None:
    root = str(server.root)
    colleague = remote_cli("token", "create", "--root", root, "--repo", "proj", "--write")
    everywhere = remote_cli("token", "create", "--root", root, "--repo", "*", "--write")
    chunks = _chunks(4, 1)
    ids = list(_ids(chunks))
    puts = [PutChunk(i, Encoding.RAW, len(c), c) for i, c in zip(ids, chunks, strict=True)]

    async def scenario() -> None:
        mine = await open_session(server.spec(everywhere, transport="quic"))
        try:
            result = await mine.put_speculative(puts)
            assert (result.accepted, result.stored_new) == (4, 4)
            assert await mine.have(BlobKind.CHUNK, ids) == set(ids)
            with pytest.raises(NotFoundError):  # never readable before a push promotes it
                async for _ in mine.get(BlobKind.CHUNK, ids[:1]):
                    pass
        finally:
            await mine.close()
        for token, repo in (
            (colleague, "proj"),  # same repository, another token
            (server.read_token, "proj"),
            (server.other_token, "other"),  # another repository
            (everywhere, "other"),  # the same token in another repository
        ):
            session = await open_session(server.spec(token, repo=repo, transport="tcp"))
            try:
                assert await session.have(BlobKind.CHUNK, ids) == set()
                with pytest.raises(NotFoundError):
                    async for _ in session.get(BlobKind.CHUNK, ids[:1]):
                        pass
            finally:
                await session.close()

    asyncio.run(scenario())


def test_a_push_promotes_speculative_chunks_and_moves_the_figures(
    server: Server, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    dits = DitsRunner(work)
    make_repo(dits, {"cut.mov": random_bytes(1_500_000, 2)})
    from dits.repository import Repository

    repo = Repository.open(work)
    ids = list(repo.chunks.iter_ids())
    chunks = [(oid, repo.chunks.get(oid)) for oid in ids]
    repo.close()
    early = chunks[: len(chunks) * 2 // 3]  # what the agent managed to pre-upload
    paced: list[int] = []

    async def pace(n: int) -> None:
        paced.append(n)

    async def pre_upload() -> int:
        session = await open_session(server.spec(server.write_token, transport="tcp"))
        try:
            before = session.bytes_sent
            await session.put_speculative(
                [PutChunk(o, Encoding.RAW, len(d), d) for o, d in early], pace=pace
            )
            return session.bytes_sent - before
        finally:
            await session.close()

    sent = asyncio.run(pre_upload())
    encoded = sum(
        memoryview(buf).nbytes
        for i, (o, d) in enumerate(early)
        for buf in encode_message(
            PutSpeculative(o, Encoding.RAW, len(d), d),
            final=i == len(early) - 1,
            max_payload=8 * 1024 * 1024 + 64,
        )
    )
    assert sum(paced) == sent == encoded
    assert max(paced) <= PACE_SLICE and len(paced) > len(early)
    held = sum(len(d) for _, d in early)
    stats = json.loads(remote_cli("stats", "--root", str(server.root), "--json"))
    assert stats["speculative_bytes_held"] == held
    assert stats["speculative_held_by_token"] == {server.write_token.split("_")[1]: held}

    dits("remote", "add", "origin", server.url(), "--token", server.write_token)
    code, out, err = dits("push", "--json")
    assert code == 0, err
    assert json.loads(out)["chunks_sent"] == len(chunks) - len(early)
    fsck = server_fsck(server.root)
    assert fsck.returncode == 0 and json.loads(fsck.stdout)["clean"] is True
    stats = json.loads(remote_cli("stats", "--root", str(server.root), "--json"))
    assert stats["speculative_bytes_held"] == 0
    assert stats["speculative_bytes_promoted"] == held
    assert stats["speculative_bytes_expired"] == 0
    assert stats["speculative_hit_rate"] == 1.0
    assert stats["speculative_held_by_token"] == {}
    assert stats["temp"] == 0


@pytest.mark.parametrize("transport", ["quic", "tcp"])
def test_quota_refuses_the_whole_request_and_stores_nothing(tmp_path: Path, transport: str) -> None:
    root = tmp_path / "srv"
    token = new_root(root)
    proc, port = start_server(root, "--speculative-quota", "10MiB")
    spec_url = f"dits://127.0.0.1:{port}/proj"
    try:
        small = _chunks(2, 3, size=1 << 20)
        big = _chunks(48, 4, size=1 << 20)  # 48 MiB: refused at its first batch, mid-request

        async def scenario() -> None:
            from dits.remotes import RemoteSpec, parse_url

            spec = RemoteSpec("origin", parse_url(spec_url), token, transport)
            session = await open_session(spec)
            try:
                await session.put_speculative(
                    [PutChunk(hash_bytes(c), Encoding.RAW, len(c), c) for c in small]
                )
                # Refused while the client is still sending the second batch; over TCP the
                # Error must reach it all the same, and the connection stays usable.
                with pytest.raises(QuotaExceededError) as caught:
                    await session.put_speculative(
                        [PutChunk(hash_bytes(c), Encoding.RAW, len(c), c) for c in big]
                    )
                assert caught.value.exit_code == EXIT_IO == 7
                assert "speculative quota of 10 MiB for token" in str(caught.value)
                assert "push or wait for expiry" in str(caught.value)
                assert await session.have(BlobKind.CHUNK, list(_ids(big))) == set()
                assert await session.have(BlobKind.CHUNK, list(_ids(small))) == set(_ids(small))
            finally:
                await session.close()

        asyncio.run(scenario())
        stats = json.loads(remote_cli("stats", "--root", str(root), "--json"))
        assert stats["speculative_bytes_held"] == 2 << 20
        assert stats["speculative_bytes_uploaded"] == 2 << 20
    finally:
        stop_server(proc)
    # The first batch's bytes went with its entries, or are orphans the next gc removes.
    report = json.loads(remote_cli("gc", "--root", str(root), "--json"))
    service = _service(root)
    try:
        assert service.temp.has_many(_ids(big)) == set()
        assert service.temp.has_many(_ids(small)) == set(_ids(small))
    finally:
        service.close()
    assert report["swept"] == 0


def test_a_zero_quota_turns_speculative_uploads_off(tmp_path: Path) -> None:
    service = _service(tmp_path / "srv", quota=0)
    session = _session(service)
    with pytest.raises(QuotaExceededError, match="no speculative uploads"):
        service.put_speculative(session, _spec_msgs(_chunks(1, 5)))
    assert service.temp.stats().count == 0
    service.close()


def test_serve_collects_expired_speculative_uploads(tmp_path: Path) -> None:
    root = tmp_path / "srv"
    token = new_root(root)
    proc, port = start_server(
        root, "--gc-interval", "0.1", "--speculative-ttl", "300ms", "--speculative-grace", "0.3"
    )
    try:
        chunks = _chunks(3, 6)

        async def upload() -> None:
            from dits.remotes import RemoteSpec, parse_url

            spec = RemoteSpec("o", parse_url(f"dits://127.0.0.1:{port}/proj"), token, "auto")
            session = await open_session(spec)
            try:
                await session.put_speculative(
                    [PutChunk(hash_bytes(c), Encoding.RAW, len(c), c) for c in chunks]
                )
            finally:
                await session.close()

        asyncio.run(upload())
        deadline = time.monotonic() + 15
        while True:
            stats = json.loads(remote_cli("stats", "--root", str(root), "--json"))
            if stats["speculative_bytes_expired"] == sum(len(c) for c in chunks):
                break
            assert time.monotonic() < deadline, stats
            time.sleep(0.2)
        assert stats["speculative_bytes_held"] == 0 and stats["temp"] == 0
    finally:
        stop_server(proc)


def test_gc_command_marks_then_sweeps_and_reports(tmp_path: Path) -> None:
    root = tmp_path / "srv"
    new_root(root)
    service = _service(root)
    service.put_speculative(_session(service, "proj"), _spec_msgs(_chunks(2, 7)))
    service.close()
    args = ("gc", "--root", str(root), "--json", "--speculative-ttl", "0", "--speculative-grace")
    first = json.loads(remote_cli(*args, "1h"))
    assert first == GcReport(marked=2).to_json()
    second = json.loads(remote_cli(*args, "0"))
    assert second["marked"] == 0 and second["swept"] == 2 and second["blobs_removed"] == 2
    assert second["speculative_bytes_expired"] == 40_000
    text = remote_cli("gc", "--root", str(root))
    assert "speculative: 0 condemned, 0 deleted" in text


# -- pins, leases and the two GC phases (injected clock) -------------------------------------


def test_a_have_pins_what_it_counts_until_the_push_lands(tmp_path: Path) -> None:
    clock = ManualClock()
    service = _service(tmp_path / "srv", clock, ttl=60, grace=60, pin_lease=600)
    session = _session(service)
    gc = TempGc(service)
    chunks = _chunks(3, 8)
    service.put_speculative(session, _spec_msgs(chunks))
    assert service.have(session, BlobKind.CHUNK, _ids(chunks)) == [True] * 3
    clock.advance(300)  # TTL long past since the answer, but the pin holds
    assert gc.mark() == 0
    clock.advance(200)
    report = GcReport()
    gc.sweep(report)
    assert report.swept == 0
    objects, tip = _objects(chunks)
    service.put_objects(session, [PutObject(object_id(o), o) for o in objects])
    service.update_refs(session, (RefChange("refs/heads/main", None, tip),))
    assert fsck_service(service).clean
    assert service.index.speculative_figures()[0].promoted == 60_000
    service.close()


def test_ttl_expiry_is_two_phase_and_bytes_go_after_their_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ManualClock()
    service = _service(tmp_path / "srv", clock, ttl=3600, grace=600)
    session = _session(service)
    gc = TempGc(service)
    chunks = _chunks(3, 11)
    ids = _ids(chunks)
    service.put_speculative(session, _spec_msgs(chunks))
    deleted: list[ObjectId] = []
    delete_many = service.temp.delete_many

    def checked_delete(wanted: list[ObjectId]) -> int:
        assert service.index.unheld(wanted) == list(wanted), "bytes deleted before the entry"
        deleted.extend(wanted)
        return delete_many(wanted)

    monkeypatch.setattr(service.temp, "delete_many", checked_delete)
    clock.advance(3599)
    assert gc.run().marked == 0  # not yet past the TTL
    clock.advance(2)
    first = gc.run()
    assert (first.marked, first.swept) == (3, 0)  # condemned, kept for the grace period
    clock.advance(599)
    assert gc.run().swept == 0
    assert service.temp.has_many(ids) == set(ids)
    clock.advance(2)
    report = gc.run()
    assert (report.swept, report.blobs_removed, report.speculative_bytes_expired) == (3, 3, 60_000)
    assert sorted(deleted) == sorted(ids) and service.temp.has_many(ids) == set()
    assert service.have(session, BlobKind.CHUNK, ids) == [False] * 3
    figures, per_token = service.index.speculative_figures()
    assert (figures.held, figures.expired, figures.promoted, per_token) == (0, 60_000, 0, {})
    service.close()


def test_a_have_resurrects_a_condemned_chunk(tmp_path: Path) -> None:
    clock = ManualClock()
    service = _service(tmp_path / "srv", clock, ttl=60, grace=60, pin_lease=600)
    session = _session(service)
    gc = TempGc(service)
    chunks = _chunks(2, 9)
    service.put_speculative(session, _spec_msgs(chunks))
    clock.advance(61)
    assert gc.mark() == 2
    assert _spec_state(service, _ids(chunks)[0]) is TempState.CONDEMNED
    assert service.have(session, BlobKind.CHUNK, _ids(chunks)[:1]) == [True]
    assert _spec_state(service, _ids(chunks)[0]) is TempState.LIVE
    clock.advance(61)
    report = GcReport()
    gc.sweep(report)
    assert report.swept == 1  # the other one, unused, goes; bytes after the entry
    assert service.temp.has_many(_ids(chunks)) == {_ids(chunks)[0]}
    assert service.index.speculative_figures()[0].expired == 20_000
    _bytes_behind_every_entry(service)
    service.close()


def test_an_expired_pin_is_swept_and_the_ref_update_names_it(tmp_path: Path) -> None:
    """T21's shape: a client stalls past its pin lease; the commit is refused with the list
    of missing chunks, never accepted, and re-sending them lets it through."""
    clock = ManualClock()
    service = _service(tmp_path / "srv", clock, ttl=60, grace=60, pin_lease=600)
    session = _session(service)
    gc = TempGc(service)
    chunks = _chunks(3, 10)
    ids = _ids(chunks)
    service.put_speculative(session, _spec_msgs(chunks))
    assert service.have(session, BlobKind.CHUNK, ids) == [True] * 3
    objects, tip = _objects(chunks)
    service.put_objects(session, [PutObject(object_id(o), o) for o in objects])
    clock.advance(700)  # the client was suspended: pin lease and TTL both ran out
    assert gc.mark() == 3
    clock.advance(61)
    report = GcReport()
    gc.sweep(report)
    assert report.swept == 3 and report.blobs_removed == 3
    with pytest.raises(MissingObjectsError) as caught:
        service.update_refs(session, (RefChange("refs/heads/main", None, tip),))
    assert set(caught.value.ids) == set(ids)
    assert service.index.refs(session.repo_id) == {}
    resend = [PutChunk(i, Encoding.RAW, len(c), c) for i, c in zip(ids, chunks, strict=True)]
    service.put_chunks(session, resend)
    service.update_refs(session, (RefChange("refs/heads/main", None, tip),))
    assert fsck_service(service).clean
    service.close()


def test_a_gc_paused_between_mark_and_sweep_decides_nothing_stale(tmp_path: Path) -> None:
    """T20: mark, then a long pause in which pushes pin or resurrect condemned chunks; the
    sweep that resumes with its old snapshot deletes none of them."""
    clock = ManualClock()
    ttl = 60.0
    service = _service(tmp_path / "srv", clock, ttl=ttl, grace=ttl, pin_lease=600)
    session = _session(service)
    gc = TempGc(service)
    sets = [_chunks(3, 20 + i) for i in range(6)]
    for chunks in sets:
        service.put_speculative(session, _spec_msgs(chunks))
    clock.advance(ttl + 1)
    assert gc.mark() == 18
    clock.advance(ttl + 1)
    snapshot = service.index.sweep_candidates(clock.now(), ttl)  # decided, then "SIGSTOP"
    assert len(snapshot) == 18
    used, unused = sets[:4], sets[4:]
    for i, chunks in enumerate(used[:2]):  # pushes that land during the pause
        assert _push(service, session, chunks, f"refs/heads/p{i}") == 0
    for chunks in used[2:]:  # pushes that only asked "have" so far (pinned, resurrected)
        assert service.have(session, BlobKind.CHUNK, _ids(chunks)) == [True] * 3
    clock.advance(3 * ttl)  # "SIGCONT" after 3x TTL
    swept = [service.index.sweep_candidate(k, clock.now(), ttl) for k in snapshot]
    gone = {s[1] for s in swept if s is not None}
    assert gone == {oid for chunks in unused for oid in _ids(chunks)}
    for i, chunks in enumerate(used[2:]):
        assert _push(service, session, chunks, f"refs/heads/q{i}") == 0
    assert fsck_service(service).clean
    _bytes_behind_every_entry(service)
    service.close()


def test_a_wall_clock_jump_does_not_expire_anything_early(tmp_path: Path) -> None:
    """T22: the server's wall clock jumps ahead (and back, across a restart) while the
    monotonic clock runs on; TTL decisions follow the monotonic clock only."""
    wall = [1_700_000_000.0]
    mono = [100.0]
    root = tmp_path / "srv"

    def make(floor: float) -> ServerClock:
        return ServerClock(floor, wall=lambda: wall[0], monotonic=lambda: mono[0])

    service = _service(root, make(0.0), ttl=3600, grace=600)
    session = _session(service)
    chunks = _chunks(2, 30)
    service.put_speculative(session, _spec_msgs(chunks))
    wall[0] += 4 * 86400  # NTP, a resumed VM, `date -s`: days ahead
    mono[0] += 60
    gc = TempGc(service)
    report = gc.run()
    assert report.marked == 0 and report.swept == 0
    assert service.index.present(session.repo_id, session.uploader, BlobKind.CHUNK, _ids(chunks))
    service.close()  # persists the server's time
    wall[0] -= 4 * 86400 + 600  # and back, below the persisted time, across a restart
    clock = make(_persisted_time(root))
    service = _service(root, clock, ttl=3600, grace=600)
    assert clock.now() >= 1_700_000_000.0 + 60
    report = TempGc(service).run()
    assert report.marked == 0
    mono[0] += 3601  # an honest hour later: now they may go
    assert TempGc(service).run().marked == 2
    service.close()


def _persisted_time(root: Path) -> float:
    index = ServerIndex(root / "index")
    try:
        return index.load_clock()
    finally:
        index.close()


def test_a_refused_batch_leaves_no_entries_and_no_quota(tmp_path: Path) -> None:
    service = _service(tmp_path / "srv", quota=50_000)
    session = _session(service)
    upload = service.speculative_upload(session)
    assert upload.add(_spec_msgs(_chunks(2, 40))) == (2, 2)
    with pytest.raises(QuotaExceededError):
        upload.add(_spec_msgs(_chunks(1, 41)))
    upload.abort()
    figures, per_token = service.index.speculative_figures()
    assert figures.held == 0 and figures.uploaded == 0 and per_token == {}
    assert service.index.stats()["temp"] == 0
    assert service.temp.stats().count == 0
    service.close()


# -- T19: GC racing pushes, on real time -------------------------------------------------------


def test_gc_racing_pushes_never_loses_a_chunk_a_commit_needs(tmp_path: Path) -> None:
    """T19 (scaled down): short TTL, grace and pin lease; a collector every 50 ms; 20 pushes
    whose speculative chunks often expire mid-negotiation. Every push lands, re-sending what
    it is told is missing; no ref reaches a missing chunk."""
    service = _service(
        tmp_path / "srv", None, ttl=0.15, grace=0.15, pin_lease=0.2, promotion_lease=30
    )
    collector = PeriodicGc(service, 0.05)
    collector.start()
    resent = [0] * 20
    errors: list[BaseException] = []
    shared = _chunks(2, 99, size=8_000)

    def pusher(worker: int) -> None:
        rng = random.Random(worker)
        try:
            for n in range(worker, 20, 4):
                session = _session(service, token=f"t{n % 3}")
                # One chunk shared with other pushes (and tokens): one copy of its bytes.
                chunks = [*_chunks(4, 100 + n, size=8_000), shared[n % 2]]
                service.put_speculative(session, _spec_msgs(chunks))
                time.sleep(rng.uniform(0, 0.5))  # the user pushes a little later
                resent[n] = _push(service, session, chunks, f"refs/heads/b{n}", pause=0.8)
        except BaseException as exc:
            errors.append(exc)

    _REFUSALS.clear()
    started = time.monotonic()
    threads = [threading.Thread(target=pusher, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    collector.stop()
    assert not errors, errors
    assert time.monotonic() - started < 20
    session = _session(service)
    assert len(service.index.refs(session.repo_id)) == 20
    report = fsck_service(service)
    assert report.clean, report.problems
    _bytes_behind_every_entry(service)
    assert collector.passes > 0
    assert sum(resent) > 0 and _REFUSALS, "the race was not exercised"
    print(f"T19: {sum(resent)} chunks re-sent over 20 pushes, {len(_REFUSALS)} refusals")
    service.close()


# -- T23: a model-based state machine ----------------------------------------------------------


class SpeculativeTierMachine(RuleBasedStateMachine):
    """Rules: speculative upload, "have", push (with re-send), GC mark and sweep, clock
    advances, restart. Invariants after every step: I1 (refs reach only stored, visible
    chunks), I2 (nothing answered present and still pinned is gone), I3 (bytes behind every
    entry), quota counter = sum of speculative entries."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.tmp = tempfile.TemporaryDirectory()
        self.root = Path(self.tmp.name) / "srv"
        self.clock = ManualClock()
        self.policy = dict(ttl=60.0, grace=30.0, pin_lease=1000.0)
        self.service = _service(self.root, self.clock, **self.policy)
        self.session = _session(self.service)
        self.sets = [_chunks(2, 500 + i, size=2_000) for i in range(2)]
        self.pinned: dict[ObjectId, float] = {}  # model: id -> pin end, from "have" answers
        self.pushed = 0

    def teardown(self) -> None:
        self.service.close()
        self.tmp.cleanup()

    @initialize()
    def agent_uploads_everything(self) -> None:
        for chunks in self.sets:
            self.service.put_speculative(self.session, _spec_msgs(chunks))

    @rule(i=st.integers(0, 1))
    def spec_upload(self, i: int) -> None:
        self.service.put_speculative(self.session, _spec_msgs(self.sets[i]))

    @rule(i=st.integers(0, 1))
    def negotiate(self, i: int) -> None:
        ids = _ids(self.sets[i])
        answer = self.service.have(self.session, BlobKind.CHUNK, ids)
        end = self.clock.now() + self.policy["pin_lease"]
        for oid, here in zip(ids, answer, strict=True):
            if here:
                self.pinned[oid] = end

    @rule(i=st.integers(0, 1))
    def commit(self, i: int) -> None:
        self.pushed += 1
        _push(self.service, self.session, self.sets[i], f"refs/heads/m{self.pushed}")

    # The collector's phases take a clock step first: a GC runs later than what it judges.
    @rule(seconds=st.sampled_from([0.0, 31.0, 61.0]))
    def gc_mark(self, seconds: float) -> None:
        self.clock.advance(seconds)
        TempGc(self.service).mark()

    @rule(seconds=st.sampled_from([0.0, 31.0, 61.0]))
    def gc_sweep(self, seconds: float) -> None:
        self.clock.advance(seconds)
        TempGc(self.service).sweep(GcReport())

    @rule(seconds=st.sampled_from([31.0, 61.0, 101.0]))
    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def crash_and_restart_server(self) -> None:
        self.service.close()
        self.service = _service(self.root, self.clock, **self.policy)
        self.session = _session(self.service)

    @invariant()
    def refs_reach_only_stored_chunks(self) -> None:  # I1
        report = fsck_service(self.service)
        assert report.clean, report.problems

    @invariant()
    def pinned_answers_hold(self) -> None:  # I2
        now = self.clock.now()
        live = [oid for oid, end in self.pinned.items() if end > now]
        here = self.service.index.present(
            self.session.repo_id, self.session.uploader, BlobKind.CHUNK, live
        )
        assert all(here), "a chunk answered present and still pinned was deleted"

    @invariant()
    def bytes_behind_entries_and_quota_adds_up(self) -> None:  # I3
        _bytes_behind_every_entry(self.service)
        held = sum(e.size for _, _, _, _, e in self.service.index.iter_temp() if e.speculative)
        assert self.service.index.speculative_figures()[0].held == held


SpeculativeTierMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_speculative_tier_state_machine = SpeculativeTierMachine.TestCase
