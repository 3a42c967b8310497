"""`dits-remote fsck`: every permanent byte re-hashed, every repository's closure checked, and
the temporary tier's entries checked against its bytes and the speculative quota counters."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from dits.core.codec import decode_object
from dits.core.compression import decode_stored
from dits.core.ids import ObjectId, hash_bytes, short_id
from dits.core.objects import Commit, Manifest, Tree
from dits.protocol import BlobKind
from remote.index import BlobLocation
from remote.service import RemoteService, pack_key
from remote.storage import StorageError

__all__ = ["FsckReport", "server_fsck"]


@dataclass
class FsckReport:
    blobs: int = 0
    packs: int = 0
    repos: int = 0
    problems: list[str] = field(default_factory=list)
    orphan_packs: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, object]:
        return {
            "blobs": self.blobs,
            "packs": self.packs,
            "repos": self.repos,
            "clean": self.clean,
            "problems": self.problems,
            "orphan_packs": self.orphan_packs,
        }


def server_fsck(service: RemoteService) -> FsckReport:
    """Read every pack once, check each blob's bytes against its id, then walk every ref."""
    report = FsckReport()
    by_pack: dict[bytes, list[tuple[BlobKind, ObjectId, BlobLocation]]] = defaultdict(list)
    for kind, oid, where in service.index.iter_blobs():
        by_pack[where.pack].append((kind, oid, where))
    limit = max(service.limits.max_object_size, service.limits.max_chunk_size)
    objects: dict[ObjectId, bytes] = {}
    for pack, entries in by_pack.items():
        report.packs += 1
        try:
            data = service.storage.get(pack_key(pack))
        except StorageError as exc:
            report.problems.append(f"pack {pack.hex()[:12]}: {exc}")
            continue
        for kind, oid, where in entries:
            report.blobs += 1
            stored = data[where.offset : where.offset + where.stored_size]
            try:
                plain = decode_stored(stored, max_size=limit)
            except ValueError as exc:
                report.problems.append(f"{kind.name.lower()} {short_id(oid)}: {exc}")
                continue
            if hash_bytes(plain) != oid:
                report.problems.append(f"{kind.name.lower()} {short_id(oid)}: wrong bytes")
            elif kind is BlobKind.OBJECT:
                objects[oid] = plain
    _check_temp(service, report)
    known = {pack_key(p) for p in by_pack}
    report.orphan_packs = [k for k in service.storage.list("packs/") if k not in known]
    for name, repo_id in service.index.repos().items():
        report.repos += 1
        for ref, tip in service.index.refs(repo_id).items():
            _walk(service, name, repo_id, ref, tip, objects, report)
    return report


def _check_temp(service: RemoteService, report: FsckReport) -> None:
    """Every temp entry names bytes the temporary store has (RELIABILITY I3), and each
    token's speculative quota counter equals the sizes of its speculative entries."""
    named, wrong = service.index.temp_audit()
    for token, (counted, actual) in sorted(wrong.items()):
        report.problems.append(
            f"token {token}: speculative quota counter says {counted} bytes, entries hold {actual}"
        )
    lacking = set(named) - service.temp.has_many(named)
    if lacking:
        # A server running beside fsck may have swept some since (entry first, then bytes):
        # only entries that still exist are problems.
        still = {oid for _, oid, _, _, _ in service.index.iter_temp()} & lacking
        for oid in sorted(still):
            report.problems.append(f"temp entry {short_id(oid)} names bytes that are gone")


def _walk(
    service: RemoteService,
    repo: str,
    repo_id: int,
    ref: str,
    tip: ObjectId,
    objects: dict[ObjectId, bytes],
    report: FsckReport,
) -> None:
    stack = [(BlobKind.OBJECT, tip)]
    seen: set[tuple[BlobKind, ObjectId]] = set()
    with service.index.read() as txn:
        while stack:
            kind, oid = stack.pop()
            if (kind, oid) in seen:
                continue
            seen.add((kind, oid))
            if not service.index.is_visible(txn, repo_id, kind, oid):
                report.problems.append(f"{repo} {ref}: {short_id(oid)} is not visible")
            if service.index.location(txn, kind, oid) is None:
                report.problems.append(f"{repo} {ref}: {short_id(oid)} is not stored")
                continue
            if kind is BlobKind.CHUNK:
                continue
            raw = objects.get(oid)
            if raw is None:
                continue  # already reported as unreadable
            obj = decode_object(raw)
            if isinstance(obj, Commit):
                stack.append((BlobKind.OBJECT, obj.tree))
                stack.extend((BlobKind.OBJECT, p) for p in obj.parents)
            elif isinstance(obj, Tree):
                stack.extend((BlobKind.OBJECT, e.id) for e in obj.entries)
            elif isinstance(obj, Manifest):
                stack.extend((BlobKind.CHUNK, c.id) for c in obj.chunks)
