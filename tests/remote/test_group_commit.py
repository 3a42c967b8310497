"""GroupCommit: every caller returns after a flush that covered its items, errors reach them all."""

from __future__ import annotations

import threading
import time

from remote.group_commit import GroupCommit


def test_concurrent_submits_share_flushes_and_return_after_theirs() -> None:
    flushed: list[int] = []
    lock = threading.Lock()

    def flush(items: list[int]) -> None:
        time.sleep(0.01)  # a slow disk: others pile up behind the leader
        with lock:
            flushed.extend(items)

    group: GroupCommit[int] = GroupCommit(flush)
    returned_before_flushed: list[int] = []

    def submitter(base: int) -> None:
        for i in range(10):
            item = base * 100 + i
            group.submit([item])
            with lock:
                if item not in flushed:
                    returned_before_flushed.append(item)

    threads = [threading.Thread(target=submitter, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert returned_before_flushed == []
    assert sorted(flushed) == sorted(b * 100 + i for b in range(8) for i in range(10))
    assert group.rounds < 80  # coalesced: fewer flushes than submissions


def test_a_failed_flush_reaches_every_caller_of_that_round_only() -> None:
    gate = threading.Event()
    calls: list[list[str]] = []

    def flush(items: list[str]) -> None:
        calls.append(items)
        if len(calls) == 1:
            gate.wait(5)  # hold round 1 so round 2 collects both followers
            return
        if len(calls) == 2:
            raise OSError(28, "No space left on device")

    group: GroupCommit[str] = GroupCommit(flush)
    outcomes: dict[str, str] = {}

    def run(name: str) -> None:
        try:
            group.submit([name])
            outcomes[name] = "ok"
        except OSError as exc:
            outcomes[name] = exc.strerror or ""

    leader = threading.Thread(target=run, args=("leader",))
    leader.start()
    while not calls:
        time.sleep(0.001)
    followers = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    for t in followers:
        t.start()
    time.sleep(0.05)
    gate.set()
    for t in (leader, *followers):
        t.join(5)
    assert outcomes == {
        "leader": "ok",
        "a": "No space left on device",
        "b": "No space left on device",
    }
    assert sorted(calls[1]) == ["a", "b"]
    group.submit(["later"])  # the next round is unaffected
    assert calls[-1] == ["later"]
