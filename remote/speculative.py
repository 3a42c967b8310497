"""The speculative tier's upload side: policy, and one PutSpeculative request (issue 4, §4).

The background agent uploads chunks before the user pushes (``PutSpeculative``). The server
verifies them like push uploads and keeps them as *speculative* temp entries of the uploading
token (``remote.index``): same key layout as push uploads (kind, id, repository, uploader),
flag bit 0 set, with created / last_touched / size / state / condemned_at / pinned_until.

Theory of operation:

* **Private until promoted** (RELIABILITY rule 5, "a hash is not a capability"). A speculative
  chunk counts in "have" only for the token that uploaded it, in the repository it uploaded
  it to; it is never readable through Get, fetch or clone; another token or repository never
  learns it exists. Being stricter than "anyone who may push to the repository" costs a
  colleague at most a re-upload, while the looser rule would let anyone with a write token
  probe, through "have", which clips someone else's agent is uploading before they push.
* **Quota.** Each token may hold ``quota`` plain bytes of speculative entries, counted in the
  index in the same transaction that adds or removes entries (``add_speculative``,
  ``promote``, ``sweep_candidate``, ``forget_speculative``). A request the quota refuses
  stores nothing: the batch that overflows is never recorded, and the entries its earlier
  batches created are removed again (``SpeculativeUpload.abort``), except any that a "have"
  answer pinned meanwhile.
* **Durability** is the push path's: bytes into the temporary store, one group-commit flush
  (``RemoteService.flush_temp``), then the entries. The quota is checked twice: before any
  byte is written (so a full quota costs no disk), and again inside the committing
  transaction (concurrent requests of one token). Bytes written for a refused batch are
  deleted at once when no entry names them, or by the next ``gc``.
* **Lifetime** (``remote.gc``): a "have" that counts an entry pins it for ``pin_lease``; a ref
  update pins what it promotes for ``promotion_lease``; unpinned entries untouched for ``ttl``
  are condemned, and swept ``grace`` later if nothing touched them meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dits.core.ids import ObjectId
from dits.protocol import (
    BlobKind,
    Permission,
    PutSpeculative,
    QuotaExceededError,
    decode_chunk_data,
    verify_chunk,
)
from remote.index import format_bytes, uploader_name

if TYPE_CHECKING:
    from remote.service import RemoteService, Session

__all__ = ["SpeculativePolicy", "SpeculativeUpload"]

HOUR = 3600.0


@dataclass(frozen=True)
class SpeculativePolicy:
    """The speculative tier's knobs (``dits-remote serve`` options; seconds and bytes).

    Attributes:
        ttl: unpinned speculative entries untouched this long are condemned (72 h).
        grace: condemned entries are swept this long after the mark, if still condemned (1 h).
        pin_lease: how long a "have" answer protects what it counted (10 min).
        promotion_lease: how long a ref update protects what it is promoting (1 h).
        quota: speculative bytes each token may hold; 0 refuses speculative uploads (100 GiB).
        push_ttl: push uploads untouched this long are abandoned and expired (72 h).
    """

    ttl: float = 72 * HOUR
    grace: float = 1 * HOUR
    pin_lease: float = 600.0
    promotion_lease: float = 1 * HOUR
    quota: int = 100 << 30
    push_ttl: float = 72 * HOUR

    def __post_init__(self) -> None:
        for name in ("ttl", "grace", "pin_lease", "promotion_lease", "push_ttl"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.quota < 0:
            raise ValueError("quota must not be negative")


@dataclass
class SpeculativeUpload:
    """One PutSpeculative request: its batches go through ``add``; ``abort`` undoes them."""

    service: RemoteService
    session: Session
    created: list[ObjectId] = field(default_factory=list)

    def add(self, msgs: list[PutSpeculative]) -> tuple[int, int]:
        """Verify and store one batch of the request. Returns (accepted, new entries).

        Raises:
            QuotaExceededError: the batch would take the token over its quota; nothing of
                this batch is recorded (the caller aborts the request).
            HashMismatchError / TooLargeError / ProtocolViolation: a bad chunk; nothing of
                this batch is recorded.
        """
        svc, session = self.service, self.session
        session.require(Permission.WRITE)
        quota = svc.policy.quota
        if quota == 0:
            raise QuotaExceededError("this server takes no speculative uploads")
        chunks: dict[ObjectId, bytes | memoryview] = {}
        for msg in msgs:
            data = decode_chunk_data(msg, svc.limits.max_chunk_size)
            verify_chunk(msg.id, data)  # every received byte, even for ids we already hold
            chunks[msg.id] = data
        ids = list(chunks)
        here = svc.index.present(session.repo_id, session.uploader, BlobKind.CHUNK, ids)
        fresh = [(oid, chunks[oid]) for oid, known in zip(ids, here, strict=True) if not known]
        held_already = [oid for oid, known in zip(ids, here, strict=True) if known]
        charge = sum(len(data) for _, data in fresh)
        if charge and svc.index.held_bytes(session.uploader) + charge > quota:
            raise self._full(quota)  # before writing a byte
        try:
            with svc.temp_bytes_lock.shared():
                if fresh:
                    svc.temp.put_many(fresh)
                    svc.flush_temp()
                created = svc.index.add_speculative(
                    session.repo_id,
                    session.uploader,
                    [(oid, len(data)) for oid, data in fresh],
                    held_already,
                    svc.clock.now(),
                    quota,
                )
        except QuotaExceededError:
            svc.release_temp_bytes([oid for oid, _ in fresh], wait=0.0)
            raise
        self.created += created
        svc.counters["speculative_chunks_received"] += len(msgs)
        svc.counters["bytes_received"] += sum(len(d) for d in chunks.values())
        return len(msgs), len(created)

    def abort(self) -> None:
        """Remove the entries this request created (unless a "have" pinned them since)."""
        if not self.created:
            return
        svc, s = self.service, self.session
        orphaned = svc.index.forget_speculative(
            s.repo_id, s.uploader, self.created, svc.clock.now()
        )
        self.created = []
        svc.release_temp_bytes([oid for _, oid in orphaned], wait=0.0)

    def _full(self, quota: int) -> QuotaExceededError:
        return QuotaExceededError(
            f"speculative quota of {format_bytes(quota)} for token "
            f"{uploader_name(self.session.uploader)} is full; push or wait for expiry"
        )
