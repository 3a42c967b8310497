"""`dits speculative start|stop|status|pause|resume|clear|sync|coverage`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from dits.cli._common import Ctx, emit_json, human_bytes, open_repo, pass_ctx, progress, say
from dits.errors import UsageError
from dits.speculative.control import AgentNotRunningError, AgentPaths, agent_running, request


@click.group("speculative")
def speculative_cmd() -> None:
    """The background agent that pre-uploads the chunks of what you save."""


def _paths(ctx: Ctx) -> tuple[Path, AgentPaths]:
    with open_repo(ctx) as repo:
        return repo.root, AgentPaths(repo.dits_dir)


@speculative_cmd.command("start")
@pass_ctx
def start_cmd(ctx: Ctx) -> None:
    """Start the agent for this repository (detached; it survives the terminal)."""
    from dits.speculative.daemon import spawn

    root, paths = _paths(ctx)
    pid = spawn(root, paths.dir.parent)
    say(ctx, f"speculative agent started (pid {pid}); log: {paths.log}")


@speculative_cmd.command("stop")
@pass_ctx
def stop_cmd(ctx: Ctx) -> None:
    """Stop the agent (what it queued is found again by the next start)."""
    from dits.speculative.daemon import stop_agent

    _, paths = _paths(ctx)
    pid = stop_agent(paths.dir.parent)
    say(ctx, "speculative agent was not running" if pid is None else f"stopped agent {pid}")


@speculative_cmd.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def status_cmd(ctx: Ctx, as_json: bool) -> None:
    """ACTIVE, PAUSED or STOPPED, with what the agent processed, queued and uploaded."""
    from dits.speculative.engine import stopped_status

    _, paths = _paths(ctx)
    deadline = time.monotonic() + 5.0
    while True:
        try:
            doc = request(paths, "status")
            doc.pop("ok", None)
            break
        except AgentNotRunningError:
            if not agent_running(paths):
                doc = stopped_status(paths)
                break
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # starting or exiting: the lock is held without a listener
    if as_json:
        emit_json(doc)
        return
    _print_status(ctx, doc)


def _print_status(ctx: Ctx, doc: dict[str, Any]) -> None:
    state = doc["state"]
    reason = f" ({', '.join(doc['reasons'])})" if doc.get("reasons") else ""
    pid = f", pid {doc['pid']}" if doc.get("pid") else ""
    say(ctx, f"agent: {state}{reason}{pid}")
    say(ctx, f"files processed: {doc['files_processed']}, files waiting: {doc['queue_depth']}")
    say(
        ctx,
        f"chunks queued: {doc['chunks_queued']} ({human_bytes(doc['bytes_queued'])}), "
        f"uploaded: {doc['chunks_uploaded']} ({human_bytes(doc['bytes_uploaded'])}), "
        f"already on server: {doc['chunks_skipped']} ({human_bytes(doc['bytes_skipped'])})",
    )
    say(ctx, f"upload rate: {human_bytes(doc['upload_rate'])}/s, failures: {doc['failures']}")
    if doc.get("last_error"):
        say(ctx, f"last error: {doc['last_error']}")
    if doc.get("remote") is None and state != "STOPPED":
        say(ctx, "no remote configured: chunks are staged locally only")
    from dits.cli.cmd_sync import staging_lines

    for line in staging_lines(doc.get("staging") or {}):
        say(ctx, line)


@speculative_cmd.command("pause")
@pass_ctx
def pause_cmd(ctx: Ctx) -> None:
    """Stop chunking and uploading until `resume` (the queue is kept)."""
    _, paths = _paths(ctx)
    request(paths, "pause")
    say(ctx, "speculative agent paused")


@speculative_cmd.command("resume")
@pass_ctx
def resume_cmd(ctx: Ctx) -> None:
    """Continue after `pause`."""
    _, paths = _paths(ctx)
    request(paths, "resume")
    say(ctx, "speculative agent resumed")


@speculative_cmd.command("clear")
@pass_ctx
def clear_cmd(ctx: Ctx) -> None:
    """Empty the upload queue (staged chunks stay in the local store)."""
    _, paths = _paths(ctx)
    answer = request(paths, "clear")
    say(ctx, f"dropped {answer.get('dropped', 0)} queued chunks")


@speculative_cmd.command("sync")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--remote", default=None, help="Remote to upload to (default: origin).")
@click.option(
    "--max-bandwidth",
    default=None,
    help="Cap the upload (e.g. 20MB/s); default: no cap, this is an explicit request.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def sync_cmd(
    ctx: Ctx, directory: Path, remote: str | None, max_bandwidth: str | None, as_json: bool
) -> None:
    """Chunk and pre-upload every file under DIRECTORY now (with or without the agent)."""
    from dits.speculative.config import parse_rate
    from dits.speculative.oneshot import sync_folder

    rate = parse_rate(max_bandwidth) if max_bandwidth else 0
    folder = (ctx.cwd / directory).resolve()
    if not folder.is_dir():
        raise UsageError(f"{directory}: not a folder")
    with open_repo(ctx) as repo, progress(ctx, "pre-uploading", json_mode=as_json) as (tot, adv):
        result = sync_folder(
            repo,
            folder,
            remote,
            max_bandwidth=rate,
            on_total=tot,
            on_bytes=adv,
        )
    if as_json:
        emit_json(result.to_json())
        return
    say(
        ctx,
        f"{result.files} files, {result.chunks} chunks ({human_bytes(result.bytes)}): "
        f"uploaded {result.chunks_uploaded} ({human_bytes(result.bytes_uploaded)}), "
        f"{result.chunks_skipped} already on the server, in {result.seconds:.2f} s",
    )
    for error in result.errors:
        say(ctx, f"skipped {error}", err=True)


@speculative_cmd.command("coverage")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--remote", default=None, help="Remote to ask (default: origin).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def coverage_cmd(ctx: Ctx, files: tuple[Path, ...], remote: str | None, as_json: bool) -> None:
    """How much of FILES is already on the server, and how long a push would take."""
    from dits.speculative.oneshot import coverage

    with open_repo(ctx) as repo:
        paths = [(ctx.cwd / f).resolve() for f in files]
        for path in paths:
            if not path.is_file():
                raise UsageError(f"{path}: not a file")
        report = coverage(repo, paths, remote)
    if as_json:
        emit_json(report.to_json())
        return
    for f in report.files:
        say(
            ctx,
            f"{f.path}: {f.chunks_on_server}/{f.chunks} chunks on server ({f.percent:.1f}%), "
            f"{human_bytes(f.bytes_remaining)} to send",
        )
    eta = report.estimated_push_seconds
    say(
        ctx,
        f"total: {report.percent:.1f}% on server, {human_bytes(report.bytes_remaining)} to send"
        + (
            f", about {eta:.1f} s at {human_bytes(report.upload_rate or 0)}/s"
            if eta is not None
            else " (no upload rate measured yet)"
        )
        + ("" if report.source == "server" else " (from the agent's cache: server unreachable)"),
    )
