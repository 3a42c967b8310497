"""Promotion inside the service (no transport): copied packs, linked temp packs, fsck."""

from __future__ import annotations

from pathlib import Path

import pytest

import remote.service
from dits.core.codec import encode_object, object_id
from dits.core.ids import ObjectId, hash_bytes
from dits.core.objects import ChunkRef, Commit, Identity, Manifest, Tree, TreeEntry, TreeEntryKind
from dits.protocol import BlobKind, Encoding, Permission, PutChunk, PutObject, RefChange
from remote.index import uploader_key
from remote.maintenance import server_fsck
from remote.service import RemoteService, Session
from remote.storage.local import LocalStorage
from tests.conftest import random_bytes


class _AllowAll:
    def authenticate(self, token: bytes, repo: str) -> Permission:
        return Permission.READ | Permission.WRITE


def _push(
    service: RemoteService, session: Session, chunks: list[bytes], ref: str = "refs/heads/main"
) -> ObjectId:
    ids = [hash_bytes(c) for c in chunks]
    service.put_chunks(
        session, [PutChunk(i, Encoding.RAW, len(c), c) for i, c in zip(ids, chunks, strict=True)]
    )
    size = sum(len(c) for c in chunks)
    manifest = encode_object(
        Manifest(
            "media-v1",
            size,
            hash_bytes(b"".join(chunks)),
            tuple(ChunkRef(i, len(c)) for i, c in zip(ids, chunks, strict=True)),
        )
    )
    tree = encode_object(
        Tree((TreeEntry("a.mov", TreeEntryKind.FILE, 0o100644, size, object_id(manifest)),))
    )
    who = Identity("T", "t@example.com", 1700000000, 0)
    commit = encode_object(Commit(object_id(tree), (), who, who, "c"))
    service.put_objects(session, [PutObject(object_id(o), o) for o in (manifest, tree, commit)])
    tip = object_id(commit)
    service.update_refs(session, (RefChange(ref, None, tip),))
    return tip


def _service(tmp_path: Path, temp_pack_size: int) -> tuple[RemoteService, Session]:
    service = RemoteService(
        tmp_path / "srv",
        LocalStorage(tmp_path / "srv" / "storage"),
        _AllowAll(),
        temp_pack_size=temp_pack_size,
    )
    repo_id = service.index.create_repo("r")
    session = Session("r", repo_id, Permission.READ | Permission.WRITE, uploader_key("t1"))
    return service, session


def test_sealed_temp_packs_are_linked_not_copied(tmp_path: Path) -> None:
    service, session = _service(tmp_path, temp_pack_size=300_000)
    chunks = [random_bytes(100_000, i) for i in range(12)]
    _push(service, session, chunks)
    packs = list((tmp_path / "srv" / "storage" / "packs").rglob("*"))
    files = [p for p in packs if p.is_file()]
    # Sealed temp packs became permanent packs by hard link; the rest was copied.
    assert any(p.read_bytes()[:8] == b"DITSPACK" for p in files)
    ids = tuple(hash_bytes(c) for c in chunks)
    blobs = list(service.get(session, BlobKind.CHUNK, ids))
    assert [bytes(b.data) for b in blobs] == chunks
    service.temp_maintenance()  # temp copies go; the linked permanent packs stay readable
    assert [bytes(b.data) for b in service.get(session, BlobKind.CHUNK, ids)] == chunks
    report = server_fsck(service)
    assert report.clean, report.problems
    service.close()


def test_small_pushes_are_copied_into_packs(tmp_path: Path) -> None:
    service, session = _service(tmp_path, temp_pack_size=256 << 20)
    chunks = [random_bytes(50_000, 100 + i) for i in range(5)]
    _push(service, session, chunks)
    files = [p for p in (tmp_path / "srv" / "storage" / "packs").rglob("*") if p.is_file()]
    assert files and all(p.read_bytes()[:8] != b"DITSPACK" for p in files)
    ids = tuple(hash_bytes(c) for c in chunks)
    assert [bytes(b.data) for b in service.get(session, BlobKind.CHUNK, ids)] == chunks
    assert server_fsck(service).clean
    service.close()


def test_gc_expires_abandoned_uploads_only(tmp_path: Path) -> None:
    service, session = _service(tmp_path, temp_pack_size=300_000)
    pushed = [random_bytes(100_000, 200 + i) for i in range(3)]
    _push(service, session, pushed)
    abandoned = [random_bytes(100_000, 300 + i) for i in range(6)]
    ids = [hash_bytes(c) for c in abandoned]
    service.put_chunks(
        session, [PutChunk(i, Encoding.RAW, len(c), c) for i, c in zip(ids, abandoned, strict=True)]
    )
    assert service.have(session, BlobKind.CHUNK, tuple(ids)) == [True] * 6
    assert service.expire_temp(3600)["entries_expired"] == 0  # young uploads stay
    report = service.expire_temp(0)
    assert report["entries_expired"] == 6 and report["blobs_removed"] == 6
    assert service.have(session, BlobKind.CHUNK, tuple(ids)) == [False] * 6
    assert service.temp.stats().count == 0
    pushed_ids = tuple(hash_bytes(c) for c in pushed)
    assert [bytes(b.data) for b in service.get(session, BlobKind.CHUNK, pushed_ids)] == pushed
    assert server_fsck(service).clean
    service.close()


def test_a_big_push_closes_the_open_temp_pack_and_links_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(remote.service, "_LINK_MIN_BYTES", 200_000)
    service, session = _service(tmp_path, temp_pack_size=256 << 20)
    chunks = [random_bytes(100_000, 400 + i) for i in range(4)]
    _push(service, session, chunks)
    files = [p for p in (tmp_path / "srv" / "storage" / "packs").rglob("*") if p.is_file()]
    # Nothing was copied: the one permanent pack is the temp pack itself, by hard link.
    assert len(files) == 1 and files[0].read_bytes()[:8] == b"DITSPACK"
    linked_size = files[0].stat().st_size
    assert files[0].stat().st_nlink == 2
    # The next upload goes to a new temp pack: the linked file never changes again.
    later = [random_bytes(100_000, 500 + i) for i in range(3)]
    _push(service, session, later, ref="refs/heads/other")
    assert files[0].stat().st_size == linked_size
    service.temp_maintenance()
    ids = tuple(hash_bytes(c) for c in chunks + later)
    assert [bytes(b.data) for b in service.get(session, BlobKind.CHUNK, ids)] == chunks + later
    assert server_fsck(service).clean
    service.close()
