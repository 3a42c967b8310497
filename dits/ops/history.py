"""`dits log` and `dits show`: walk commits newest first."""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass

from dits.core.ids import ObjectId
from dits.core.objects import Commit
from dits.repository import Repository

__all__ = ["LogEntry", "walk_log"]


@dataclass(frozen=True)
class LogEntry:
    """One commit in history order."""

    oid: ObjectId
    commit: Commit

    def to_json(self) -> dict[str, object]:
        """Machine-readable form for --json."""
        c = self.commit
        return {
            "commit": self.oid.hex(),
            "parents": [p.hex() for p in c.parents],
            "tree": c.tree.hex(),
            "author": {"name": c.author.name, "email": c.author.email},
            "timestamp": c.author.timestamp,
            "tz_offset_min": c.author.tz_offset_min,
            "committer": {"name": c.committer.name, "email": c.committer.email},
            "message": c.message,
        }


def walk_log(repo: Repository, start: ObjectId, limit: int | None = None) -> Iterator[LogEntry]:
    """Yield commits reachable from ``start``, newest committer time first, each once."""
    seen = {start}
    first = repo.get_typed(start, Commit)
    heap = [(-first.committer.timestamp, 0, start, first)]
    counter = 1
    emitted = 0
    while heap and (limit is None or emitted < limit):
        _, _, oid, commit = heapq.heappop(heap)
        yield LogEntry(oid, commit)
        emitted += 1
        for parent in commit.parents:
            if parent not in seen:
                seen.add(parent)
                pc = repo.get_typed(parent, Commit)
                heapq.heappush(heap, (-pc.committer.timestamp, counter, parent, pc))
                counter += 1
