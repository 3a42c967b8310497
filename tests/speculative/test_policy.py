"""Pure agent decisions with explicit times: FileTracker, priority, ActivityMonitor."""

from __future__ import annotations

from pathlib import PurePosixPath as P

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dits.speculative.policy import (
    ActivityMonitor,
    FileTracker,
    Finalize,
    Forget,
    Grow,
    PriorityClass,
    Restart,
    priority,
)

MIB = 1 << 20
A = P("/w/a.mov")
B = P("/w/b.mov")


# --------------------------------------------------------------------------- FileTracker


def test_a_new_file_is_finalized_after_debounce_without_change() -> None:
    t = FileTracker(debounce=2.0, max_tracked_files=10)
    assert t.observe(A, 100, 1, 7, now=0.0) == []
    assert t.poll(1.9) == []
    assert t.next_deadline() == 2.0
    assert t.poll(2.0) == [Finalize(A)]
    assert t.poll(10.0) == []  # once
    assert t.next_deadline() is None


def test_an_unchanged_observation_does_not_reset_the_debounce() -> None:
    t = FileTracker(2.0, 10)
    t.observe(A, 100, 1, 7, 0.0)
    assert t.observe(A, 100, 1, 7, 1.5) == []
    assert t.poll(2.0) == [Finalize(A)]


def test_a_touched_file_waits_for_a_fresh_debounce() -> None:
    t = FileTracker(2.0, 10)
    t.observe(A, 100, 1, 7, 0.0)
    assert t.observe(A, 100, 2, 7, 1.5) == []  # same size, new mtime: no Grow
    assert t.poll(2.0) == []
    assert t.poll(3.5) == [Finalize(A)]


def test_a_growing_file_gets_grow_decisions_throttled_by_debounce_or_step() -> None:
    t = FileTracker(2.0, 10, grow_step=16 * MIB)
    t.observe(A, 0, 1, 7, 0.0)
    assert t.observe(A, 1 * MIB, 2, 7, 0.5) == []  # neither 16 MiB nor 2 s yet
    assert t.observe(A, 17 * MIB, 3, 7, 1.0) == [Grow(A, 17 * MIB)]  # step reached
    assert t.observe(A, 18 * MIB, 4, 7, 1.5) == []
    assert t.observe(A, 19 * MIB, 5, 7, 3.0) == [Grow(A, 19 * MIB)]  # debounce reached
    assert t.poll(4.9) == []  # still changing recently
    assert t.poll(5.0) == [Finalize(A)]


def test_truncation_and_replacement_restart() -> None:
    t = FileTracker(2.0, 10)
    t.observe(A, 100, 1, 7, 0.0)
    assert t.observe(A, 50, 2, 7, 0.5) == [Restart(A)]
    assert t.observe(A, 50, 3, 8, 1.0) == [Restart(A)]  # new inode (rename over)
    assert t.poll(2.9) == []
    assert t.poll(3.0) == [Finalize(A)]


def test_a_final_file_that_changes_is_finalized_again() -> None:
    t = FileTracker(1.0, 10)
    t.observe(A, 100, 1, 7, 0.0)
    assert t.poll(1.0) == [Finalize(A)]
    assert t.observe(A, 200, 2, 7, 5.0) == []  # grew after a pause: a new round
    assert t.poll(5.5) == []
    assert t.poll(6.0) == [Finalize(A)]


def test_forget_drops_a_path_or_everything_under_a_folder() -> None:
    t = FileTracker(1.0, 10)
    for path in (P("/w/x/1.mov"), P("/w/x/sub/2.mov"), P("/w/xy.mov")):
        t.observe(path, 1, 1, 1, 0.0)
    assert t.forget(P("/w/x")) == [Forget(P("/w/x/1.mov")), Forget(P("/w/x/sub/2.mov"))]
    assert len(t) == 1 and P("/w/xy.mov") in t
    assert t.forget(P("/w/nothing")) == []
    assert t.poll(5.0) == [Finalize(P("/w/xy.mov"))]


def test_over_the_limit_finalized_files_are_forgotten_first() -> None:
    t = FileTracker(1.0, max_tracked_files=2)
    t.observe(A, 1, 1, 1, 0.0)
    t.observe(B, 1, 1, 2, 0.5)
    assert t.poll(1.2) == [Finalize(A)]  # B still within its debounce
    c = P("/w/c.mov")
    assert t.observe(c, 1, 1, 3, 1.3) == [Forget(A)]
    d = P("/w/d.mov")
    assert t.observe(d, 1, 1, 4, 1.4) == [Forget(B)]  # none final: least recently changed
    assert len(t) == 2


observations = st.lists(
    st.tuples(
        st.sampled_from([A, B, P("/w/c.mov")]),
        st.integers(0, 40 * MIB),
        st.integers(0, 3),  # mtime
        st.integers(0, 1),  # inode
        st.floats(0.0, 3.0),  # time step
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(obs=observations, debounce=st.floats(0.0, 2.0), limit=st.integers(1, 3))
def test_tracker_invariants(
    obs: list[tuple[P, int, int, int, float]], debounce: float, limit: int
) -> None:
    t = FileTracker(debounce, limit)
    now = 0.0
    last: dict[P, tuple[int, int, int]] = {}
    changed_at: dict[P, float] = {}
    for path, size, mtime, inode, step in obs:
        now += step
        for decision in t.poll(now):
            # Finalize only once the file has been still for the debounce.
            assert now - changed_at[decision.path] >= debounce
        decisions = t.observe(path, size, mtime, inode, now)
        assert len(t) <= limit
        for d in decisions:
            if isinstance(d, Forget):
                last.pop(d.path, None)
                changed_at.pop(d.path, None)
        before = last.get(path)
        for d in decisions:
            if isinstance(d, Restart):
                assert before is not None and (size < before[0] or inode != before[2])
            if isinstance(d, Grow):
                assert before is not None and size > before[0] and d.stable_upto == size
        if before != (size, mtime, inode):
            changed_at[path] = now
        last[path] = (size, mtime, inode)


# --------------------------------------------------------------------------- priority


def test_priority_orders_classes_then_small_project_files_then_size() -> None:
    keys = [
        priority(PriorityClass.EDITOR, "/c/peaks.prproj", 10),
        priority(PriorityClass.WATCH_DIR, "/r/render.mov", 5 * MIB),
        priority(PriorityClass.WORKTREE, "/w/huge.mov", 900 * MIB),
        priority(PriorityClass.WORKTREE, "/w/edit.prproj", 2 * MIB),
        priority(PriorityClass.WORKTREE, "/w/small.mov", 1 * MIB),
        priority(PriorityClass.WORKTREE, "/w/big.prproj", 40 * MIB),
        priority(PriorityClass.WORKTREE, "/w/notes.txt", 10),
    ]
    order = [k.path for k in sorted(keys)]
    assert order == [
        "/w/notes.txt",  # small project files first, smallest first
        "/w/edit.prproj",
        "/w/small.mov",  # then everything else by size (media is never "small project")
        "/w/big.prproj",
        "/w/huge.mov",
        "/r/render.mov",
        "/c/peaks.prproj",
    ]


@given(
    st.lists(
        st.tuples(
            st.integers(0, 2), st.sampled_from(["a.mov", "b.prproj", "c"]), st.integers(0, 1 << 40)
        ),
        min_size=2,
    )
)
def test_priority_never_puts_a_later_class_first(items: list[tuple[int, str, int]]) -> None:
    keys = sorted(priority(c, n, s) for c, n, s in items)
    assert [k.klass for k in keys] == sorted(k.klass for k in keys)


# --------------------------------------------------------------------------- ActivityMonitor


def test_activity_pauses_while_writing_fast_and_resumes_after_calm() -> None:
    m = ActivityMonitor(active_edit_rate=100, resume_after_idle=30, window=10)
    assert not m.paused(0.0)
    m.record(500, 0.0)  # 50 B/s over the window: calm
    assert not m.paused(0.0)
    m.record(1500, 1.0)  # 200 B/s: active
    assert m.paused(1.0)
    assert m.paused(10.9)  # still in the window
    assert m.rate(11.0) == 0.0
    assert m.paused(40.0)  # 30 s of calm not over yet (last seen active at 10.9)
    assert not m.paused(41.0)


def test_activity_takes_the_higher_of_growth_and_the_editor_meter() -> None:
    m = ActivityMonitor(active_edit_rate=100, resume_after_idle=5, window=10)
    m.record(500, 0.0)  # 50 B/s of growth
    m.record_rate(80, 0.0)
    assert m.rate(0.0) == 80
    assert not m.paused(0.0)
    m.record_rate(150, 1.0)
    assert m.paused(1.0)
    assert m.rate(11.5) == 0.0  # the meter's sample is stale after one window
    assert m.paused(15.9)
    assert not m.paused(16.0)


def test_resume_after_idle_zero_still_pauses_while_active() -> None:
    m = ActivityMonitor(active_edit_rate=10, resume_after_idle=0, window=1)
    m.record(100, 0.0)
    assert m.paused(0.5)
    assert not m.paused(1.0)


def test_activity_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        ActivityMonitor(0, 1)
    with pytest.raises(ValueError):
        FileTracker(-1, 10)


@settings(max_examples=200, deadline=None)
@given(
    samples=st.lists(st.tuples(st.floats(0.0, 5.0), st.integers(0, 5000)), max_size=50),
    rate=st.integers(1, 500),
    idle=st.floats(0.0, 20.0),
)
def test_activity_stays_paused_for_resume_after_idle_after_each_burst(
    samples: list[tuple[float, int]], rate: int, idle: float
) -> None:
    m = ActivityMonitor(rate, idle, window=2.0)
    now = 0.0
    last_active: float | None = None
    for step, nbytes in samples:
        now += step
        m.record(nbytes, now)
        if m.rate(now) > rate:
            last_active = now
        if last_active is not None and now - last_active < idle:
            assert m.paused(now)
    if last_active is not None:
        assert not m.paused(last_active + idle + 2.0 + 1e-6) or m.rate(now) > rate
