"""Garbage collection of the temporary tier: speculative expiry in two phases, abandoned pushes,
orphaned temp bytes. Never touches permanent storage.

Theory of operation (RELIABILITY.md 2.3 steps 4-5; the invariants I2 and I3):

1. **Mark.** Speculative entries that are LIVE, unpinned (``pinned_until <= now``) and untouched
   for more than ``ttl`` become CONDEMNED with ``condemned_at = now``. Each is re-checked inside
   the short write transaction that condemns it.
2. **Sweep**, at least ``grace`` later. The candidates come from a snapshot and are trusted for
   nothing: each one gets its own small write transaction that re-checks CONDEMNED ∧ unpinned ∧
   ``now - condemned_at > grace``, removes the entry and moves its bytes from "held" (and from
   its token's quota) to "expired". Only after that commit are the temp bytes deleted, and only
   if no temp entry names them any more (checked again under the exclusive temp-bytes lock,
   ``remote.bytes_lock``).

Why a chunk answered "present" is never swept before the push that relies on it: a "have"
answer that counts a temp entry pins it, touches it and makes it LIVE again in the *same*
write transaction (``ServerIndex.have_and_pin``). LMDB serialises write transactions, so every
sweep transaction either ran before that answer (the answer then says "absent" and the client
uploads the chunk) or after it (and sees the pin, or the fresh ``state``, and keeps the entry).
A GC paused between its mark and its sweep (kopia #1949, T20) therefore decides nothing stale.
A ref update re-checks and pins everything it will promote for the promotion lease in one
transaction (``ServerIndex.pin_temp``); what has gone by then is reported as missing, and the
client sends it again.

Concurrency with promotion. In this process, each sweep transaction and the byte deletion
after it run under ``RemoteService.promote_lock``, so a sweep never interleaves with a
promotion here. Across worker processes (and a ``dits-remote gc`` run beside ``serve``) there
is no shared lock: the pins make it unnecessary, because a promotion only reads bytes of
entries it pinned in a committed transaction, and a sweep never removes a pinned entry or
bytes that any entry names. Two collectors running at once are harmless: a candidate the
other one swept is simply gone when re-checked.

Time is the server's clock only (``remote.clock``, I5). The periodic collector runs inside
``dits-remote serve`` (first worker process only); ``dits-remote gc`` runs one pass.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from dits.core.ids import ObjectId

if TYPE_CHECKING:
    from remote.service import RemoteService

__all__ = ["GcReport", "PeriodicGc", "TempGc"]

log = logging.getLogger("dits.remote")

_SWEEP_GROUP = 256  # swept entries whose bytes are deleted together (one temp transaction)
_DELETE_WAIT = 5.0  # seconds a collector waits for uploads to release the temp-bytes lock


@dataclass
class GcReport:
    """What one collection did. JSON keys of ``dits-remote gc --json``."""

    marked: int = 0
    swept: int = 0
    speculative_bytes_expired: int = 0
    entries_expired: int = 0
    blobs_removed: int = 0
    orphans_removed: int = 0
    bytes_freed: int = 0

    def to_json(self) -> dict[str, int]:
        return asdict(self)


class TempGc:
    """One service's collector; ``run`` is one full pass."""

    def __init__(self, service: RemoteService, stop: threading.Event | None = None) -> None:
        self.service = service
        self.stop = stop or threading.Event()

    def mark(self) -> int:
        svc = self.service
        return svc.index.mark_expired(svc.clock.now(), svc.policy.ttl)

    def sweep(self, report: GcReport) -> None:
        """Sweep every candidate condemned more than ``grace`` ago (see the module docstring)."""
        svc = self.service
        grace = svc.policy.grace
        candidates = svc.index.sweep_candidates(svc.clock.now(), grace)
        unnamed: list[ObjectId] = []
        for key in candidates:
            if self.stop.is_set():
                break
            with svc.promote_lock:
                swept = svc.index.sweep_candidate(key, svc.clock.now(), grace)
            if swept is None:
                continue  # touched, pinned or resurrected since the snapshot: it stays
            _, oid, size, still_named = swept
            report.swept += 1
            report.speculative_bytes_expired += size
            if not still_named:
                unnamed.append(oid)
            if len(unnamed) >= _SWEEP_GROUP:
                report.blobs_removed += self._delete_bytes(unnamed)
                unnamed = []
        report.blobs_removed += self._delete_bytes(unnamed)

    def _delete_bytes(self, ids: list[ObjectId]) -> int:
        if not ids:
            return 0
        with self.service.promote_lock:  # after the entries' commits, never beside a promotion
            return self.service.release_temp_bytes(ids, wait=_DELETE_WAIT)

    def remove_orphans(self) -> int:
        """Delete temp bytes no entry names: leftovers of a crash between an entry's removal
        and its bytes' deletion, or of a deletion that found the lock busy."""
        svc = self.service
        ids = list(svc.temp.iter_ids())
        removed = 0
        for start in range(0, len(ids), 4096):
            if self.stop.is_set():
                break
            removed += svc.release_temp_bytes(ids[start : start + 4096], wait=_DELETE_WAIT)
        return removed

    def run(self, *, push_ttl: float | None = None) -> GcReport:
        """One pass: mark, sweep, expire abandoned push uploads, remove orphans, repack."""
        svc = self.service
        report = GcReport()
        report.marked = self.mark()
        self.sweep(report)
        pushed = svc.expire_temp(svc.policy.push_ttl if push_ttl is None else push_ttl)
        report.entries_expired = pushed["entries_expired"]
        report.blobs_removed += pushed["blobs_removed"]
        report.bytes_freed = pushed["bytes_freed"]  # expire_temp repacked the temp tier
        report.orphans_removed = self.remove_orphans()
        if report.orphans_removed:
            report.bytes_freed += svc.temp.repack().bytes_freed
        svc.index.save_clock(svc.clock.now())
        return report


class PeriodicGc:
    """Runs ``TempGc.run`` every ``interval`` seconds in a daemon thread (``serve``)."""

    def __init__(self, service: RemoteService, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._gc = TempGc(service, self._stop)
        self._thread = threading.Thread(target=self._loop, name="dits-remote-gc", daemon=True)
        self.passes = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current candidate and wait: the service closes right after."""
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                report = self._gc.run()
            except Exception:  # a failed pass is logged; the next one tries again
                log.exception("gc pass failed")
                continue
            self.passes += 1
            if report.marked or report.swept or report.entries_expired or report.orphans_removed:
                log.info("gc %s", " ".join(f"{k}={v}" for k, v in report.to_json().items()))
