"""`dits demo`: the main job on embedded defaults, end to end, with real figures.

Creates a sample media project (a synthetic video container, an image sequence, a project
file), commits it, starts a local ``dits-remote`` (embedded defaults: a local folder, a
self-signed certificate, QUIC on 127.0.0.1) and pushes; then makes an editor's typical change (a
few seconds re-rendered in the middle of the video, one frame re-graded, the project file
saved), pre-uploads the edit as the speculative agent would (`speculative sync`), commits
(taking the agent's manifests instead of re-reading the files) and pushes again, reports what
the second commit stored and sent versus what it reused, clones the repository into a second
folder and checks the files are identical.
"""

from __future__ import annotations

import random
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import click

from dits.cli._common import Ctx, emit_json, human_bytes, pass_ctx, say
from dits.net.local_server import LocalServer, remote_cli
from dits.ops.add import add_paths
from dits.ops.commit import commit
from dits.ops.diff import diff_snapshots
from dits.ops.maintenance import fsck
from dits.ops.sync import clone, push
from dits.remotes import KnownHosts, add_remote
from dits.repository import Repository
from dits.speculative.control import AgentPaths
from dits.speculative.oneshot import sync_folder
from dits.speculative.stager import racy_window_for
from dits.store.speculative import SpeculativeCache


@contextmanager
def local_server(root: Path) -> Iterator[tuple[str, str]]:
    """A dits-remote on 127.0.0.1 (ephemeral port) serving repository ``demo``: (url, token)."""
    remote_cli("init", "--root", str(root), "demo")
    token = remote_cli("token", "create", "--root", str(root), "--repo", "demo", "--write")
    with LocalServer(root) as server:
        yield server.url("demo"), token


_T = TypeVar("_T")


def resumed_once(
    ctx: Ctx, server_root: Path, what: str, step: Callable[[], _T], resumes: list[str]
) -> _T:
    """Run ``step``; if the connection broke, say so and run it once more (it resumes).

    A push, sync or clone resumes where it stopped, which is what a person would do after
    "the connection to the remote broke". The server's log is named for a second failure."""
    try:
        return step()
    except ConnectionError as exc:
        log = server_root / "server.log"
        note = f"{what}: the connection broke ({exc}); resuming once (server log: {log})"
        click.echo(f"dits: {note}", err=True)
        resumes.append(note)
        return step()


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def _frames(rng: random.Random, count: int, size: int, seed_offset: int = 0) -> list[bytes]:
    # Self-delimiting frames (size + 'icpf' header) of incompressible payload, like ProRes.
    out = []
    for i in range(count):
        body = random.Random(seed_offset + i).randbytes(size - 8)
        out.append(struct.pack(">I4s", size, b"icpf") + body)
    del rng
    return out


_FTYP_BODY = b"qt  \x00\x00\x02\x00qt  "


def make_project(root: Path, video_mb: int) -> None:
    """Write the sample project."""
    rng = random.Random(7)
    frame = 256 << 10
    frames = _frames(rng, max(8, (video_mb << 20) // frame), frame)
    media = root / "media"
    media.mkdir(parents=True, exist_ok=True)
    mdat = b"".join(frames)
    (media / "timeline_export.mov").write_bytes(
        _box(b"ftyp", _FTYP_BODY) + _box(b"mdat", mdat) + _box(b"moov", b"\x00" * 4096)
    )
    seq = media / "grade"
    seq.mkdir(exist_ok=True)
    for i in range(24):
        (seq / f"frame_{i:04d}.dpx").write_bytes(random.Random(1000 + i).randbytes(512 << 10))
    (root / "project.prproj").write_text(
        "<Project>\n"
        + "".join(f'  <Clip id="{i}" in="{i * 24}" out="{i * 24 + 48}"/>\n' for i in range(2000))
        + "</Project>\n"
    )


def edit_project(root: Path) -> None:
    """An editor's session: re-render 3 s (72 frames) mid-timeline, re-grade a frame, save."""
    path = root / "media" / "timeline_export.mov"
    data = bytearray(path.read_bytes())
    frame = 256 << 10
    header = 8 + len(_FTYP_BODY) + 8  # ftyp box + mdat header: the first frame starts here
    n_frames = (len(data) - header - 4104) // frame
    first = n_frames // 2
    for i in range(first, min(first + 72, n_frames)):
        start = header + i * frame + 8
        data[start : start + frame - 8] = random.Random(99_000 + i).randbytes(frame - 8)
    data[-4096:] = b"\x01" * 4096  # the moov box is rewritten by every export
    path.write_bytes(bytes(data))
    (root / "media" / "grade" / "frame_0007.dpx").write_bytes(random.Random(5).randbytes(512 << 10))
    text = (root / "project.prproj").read_text().replace('id="1000"', 'id="1000" label="fixed"')
    (root / "project.prproj").write_text(text)


@click.command("demo")
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--size-mb", default=256, show_default=True, help="Size of the sample video.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON figures.")
@pass_ctx
def demo_cmd(ctx: Ctx, directory: Path | None, size_mb: int, as_json: bool) -> None:
    """Create a sample media project, commit, edit, commit, and show the dedup figures."""
    if as_json:
        ctx.quiet = True  # stdout carries the JSON document only
    base = (ctx.cwd / directory) if directory else Path(tempfile.mkdtemp(prefix="dits-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    if any(base.iterdir()):
        raise click.UsageError(f"{base} is not empty; give an empty or new folder")
    root, server_root, clone_root = base / "project", base / "server", base / "clone"
    root.mkdir()
    server_root.mkdir()
    # Pins go to a file of the demo's own, not to the user's known_hosts.
    hosts = KnownHosts(base / "known_hosts")
    say(ctx, f"sample project in {root}")
    make_project(root, size_mb)
    name, email = "Demo Editor", "editor@example.com"
    figures: dict[str, object] = {"directory": str(base)}
    resumes: list[str] = []
    figures["connection_resumes"] = resumes
    with local_server(server_root) as (url, token), Repository.init(root) as repo:
        t0 = time.perf_counter()
        first = add_paths(repo, [""])
        t1 = time.perf_counter()
        c1 = commit(
            repo, "First cut", now=int(time.time()), tz_offset_min=0, name=name, email=email
        )
        say(
            ctx,
            f"commit 1 {c1.oid.hex()[:12]}: {len(first.added)} files, "
            f"{human_bytes(first.stats.bytes_read)} in {first.stats.chunks} chunks, "
            f"added at {first.stats.bytes_read / max(t1 - t0, 1e-9) / 1e6:.0f} MB/s",
        )
        add_remote(repo.config, "origin", url, token=token)
        push1 = resumed_once(
            ctx, server_root, "push 1", lambda: push(repo, known_hosts=hosts), resumes
        )
        say(
            ctx,
            f"push 1 to {url} over {push1.transport}: {push1.chunks_sent} chunks, "
            f"{human_bytes(push1.bytes_sent)} in {push1.seconds:.2f} s",
        )
        edit_project(root)
        # The agent stages a saved file once it has settled (its debounce, 2 s by default); a
        # manifest of a file modified within the racy window of its staging is not recorded
        # (the file could still change within its timestamp's granularity). Wait that out.
        settle = max(
            racy_window_for(p.stat()) - (time.time() - p.stat().st_mtime)
            for p in root.rglob("*")
            if p.is_file() and ".dits" not in p.relative_to(root).parts
        )
        time.sleep(max(settle, 0.0) + 0.01)
        # What the background agent does while the editor saves: chunk and pre-upload.
        presync = resumed_once(
            ctx,
            server_root,
            "speculative sync",
            lambda: sync_folder(repo, root, "origin", known_hosts=hosts),
            resumes,
        )
        say(
            ctx,
            f"speculative sync of the edited project: {presync.chunks_uploaded} new chunks "
            f"({human_bytes(presync.bytes_uploaded)}) pre-uploaded, "
            f"{presync.chunks_skipped} already on the server",
        )
        t2 = time.perf_counter()
        with SpeculativeCache(AgentPaths(repo.dits_dir).cache) as cache:
            second = add_paths(repo, [""], known=cache.manifest_for)
        t3 = time.perf_counter()
        message = "Re-rendered the middle, regraded a frame"
        c2 = commit(repo, message, now=int(time.time()), tz_offset_min=0, name=name, email=email)
        diff = diff_snapshots(repo, c1.oid.hex(), c2.oid.hex())
        total = sum(f.new_size for f in diff.files)
        changed = sum(f.bytes_changed for f in diff.files)
        for f in diff.files:
            say(
                ctx,
                f"  {f.path}: {f.chunks_reused}/{f.chunks} chunks reused, "
                f"{human_bytes(f.bytes_changed)} new of {human_bytes(f.new_size)}",
            )
        say(
            ctx,
            f"commit 2 {c2.oid.hex()[:12]}: {len(second.modified)} files changed, "
            f"{human_bytes(changed)} new for {human_bytes(total)} of changed files "
            f"({100 * (1 - changed / max(total, 1)):.1f}% reused); added in {t3 - t2:.2f} s, "
            f"{len(second.from_agent)} of them from the agent's manifests without re-reading",
        )
        push2 = resumed_once(
            ctx, server_root, "push 2", lambda: push(repo, known_hosts=hosts), resumes
        )
        pct = 100 * push2.chunks_present / max(push2.chunks_total, 1)
        say(
            ctx,
            f"push 2: {push2.chunks_present} of {push2.chunks_total} chunks already on server "
            f"({pct:.1f}%, {human_bytes(push2.bytes_skipped)} pre-synced); sent "
            f"{push2.chunks_sent} chunks, {human_bytes(push2.bytes_sent)} in "
            f"{push2.seconds:.2f} s",
        )
        check = fsck(repo)
        say(
            ctx,
            f"fsck: {'clean' if check.clean else 'PROBLEMS'} "
            f"({check.chunks_checked} chunks verified)",
        )
        stats = repo.chunks.stats()
        cloned, fetched = resumed_once(
            ctx,
            server_root,
            "clone",
            lambda: clone(url, clone_root, token=token, known_hosts=hosts),
            resumes,
        )
        cloned.close()
        identical = _same_files(root, clone_root)
        say(
            ctx,
            f"clone into {clone_root}: {fetched.chunks_received} chunks, "
            f"{human_bytes(fetched.bytes_received)} in {fetched.seconds:.2f} s; files "
            f"{'identical' if identical else 'DIFFER'}",
        )
        figures.update(
            {
                "commit1": c1.oid.hex(),
                "commit2": c2.oid.hex(),
                "first_add_bytes": first.stats.bytes_read,
                "first_add_seconds": t1 - t0,
                "second_add_new_bytes": second.stats.new_bytes,
                "changed_files_bytes": total,
                "reused_percent": 100 * (1 - changed / max(total, 1)),
                "store_plain_bytes": stats.plain_bytes,
                "store_bytes_at_rest": stats.stored_bytes,
                "fsck_clean": check.clean,
                "push1": push1.to_json(),
                "speculative_sync": presync.to_json(),
                "second_add_files_from_agent": len(second.from_agent),
                "push2": push2.to_json(),
                "clone": fetched.to_json(),
                "clone_identical": identical,
            }
        )
        say(
            ctx,
            f"store: {stats.count} chunks, {human_bytes(stats.plain_bytes)} "
            f"({human_bytes(stats.stored_bytes)} at rest) for two versions of "
            f"{human_bytes(first.stats.bytes_read)}",
        )
    if not (check.clean and identical):
        raise click.ClickException("the demo found a problem (see above)")
    if as_json:
        emit_json(figures)


def _same_files(a: Path, b: Path) -> bool:
    def listing(root: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(root)): p.read_bytes()
            for p in root.rglob("*")
            if p.is_file() and ".dits" not in p.relative_to(root).parts
        }

    return listing(a) == listing(b)
