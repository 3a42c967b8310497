"""Group commit: many threads wait on one durable flush instead of one flush each.

Every upload batch must be on stable storage before the index entry that promises it is
(RELIABILITY.md rule 6). Done per batch, four upload streams each pay a pack fsync plus two
LMDB syncs in turn, and the disk's flush latency, not its bandwidth, sets the push rate. Here
the first thread to arrive becomes the leader and flushes everything submitted so far in one
call; threads that arrive while it flushes queue their items for the next flush, which one of
them leads. Each caller returns only after a flush that included its items succeeded, and
gets that flush's exception otherwise.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

_T = TypeVar("_T")


class GroupCommit(Generic[_T]):
    """Coalesce ``submit(items)`` calls from many threads into few ``flush(all_items)`` calls."""

    def __init__(self, flush: Callable[[list[_T]], None]) -> None:
        self._flush = flush
        self._cond = threading.Condition()
        self._pending: list[_T] = []
        self._pending_round = 1  # the round the pending items will be flushed in
        self._done_round = 0  # the last round whose flush has finished
        self._flushing = False
        self._errors: dict[int, BaseException] = {}
        self._waiters: dict[int, int] = {}  # round -> callers still to read its outcome
        self.rounds = 0  # flushes run, for stats and tests

    def submit(self, items: list[_T]) -> None:
        """Block until ``items`` are flushed; re-raise the flush's error if it failed."""
        with self._cond:
            self._pending.extend(items)
            mine = self._pending_round
            self._waiters[mine] = self._waiters.get(mine, 0) + 1
            while self._done_round < mine:
                if self._flushing:
                    self._cond.wait()
                    continue
                batch, self._pending = self._pending, []
                this_round = self._pending_round
                self._pending_round += 1
                self._flushing = True
                self._cond.release()
                error: BaseException | None = None
                try:
                    self._flush(batch)
                except BaseException as exc:  # handed to every waiter of this round
                    error = exc
                finally:
                    self._cond.acquire()
                    self.rounds += 1
                    self._flushing = False
                    self._done_round = this_round
                    if error is not None:
                        self._errors[this_round] = error
                    self._cond.notify_all()
            error = self._errors.get(mine)
            self._waiters[mine] -= 1
            if not self._waiters[mine]:
                del self._waiters[mine]
                self._errors.pop(mine, None)
        if error is not None:
            raise error
