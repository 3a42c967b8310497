"""`dits push`, `dits fetch`, `dits pull`, `dits clone`."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from dits.cli._common import Ctx, emit_json, human_bytes, open_repo, pass_ctx, progress, say
from dits.errors import ConflictError, UsageError
from dits.remotes import TRANSPORTS

if TYPE_CHECKING:
    from dits.ops.sync import PushResult

_RATE_MIN_BYTES = 8 << 20  # less than this sent is too little to measure a rate from

_transport_option = click.option(
    "--transport",
    type=click.Choice(TRANSPORTS),
    default=None,
    help="Override the remote's transport (auto, quic, tcp) for this command.",
)


@click.command("push")
@click.argument("remote", required=False)
@click.argument("branch", required=False)
@click.option("-f", "--force", is_flag=True, help="Allow a move that drops the server's commits.")
@_transport_option
@click.option(
    "--limit-rate",
    metavar="RATE",
    default=None,
    help="Cap the upload, e.g. 20MB/s or 100Mbit/s (default: unlimited).",
)
@click.option("--stats", "show_stats", is_flag=True, help="Show the staging figures.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
@pass_ctx
def push_cmd(
    ctx: Ctx,
    remote: str | None,
    branch: str | None,
    force: bool,
    transport: str | None,
    limit_rate: str | None,
    show_stats: bool,
    as_json: bool,
) -> None:
    """Send BRANCH (default: the current one) to REMOTE (default: origin)."""
    from dits.config_values import parse_rate
    from dits.ops.sync import push
    from dits.speculative.control import yielding_to_push

    try:
        rate = parse_rate(limit_rate) if limit_rate is not None else 0
    except ValueError:
        raise UsageError(
            f"--limit-rate must be a rate such as 20MB/s or 100Mbit/s, not {limit_rate!r}"
        ) from None

    with (
        open_repo(ctx) as repo,
        yielding_to_push(repo.dits_dir),  # a running agent leaves the uplink to this push
        progress(ctx, "pushing", json_mode=as_json) as (total, advance),
    ):
        result = push(
            repo,
            remote,
            branch,
            force=force,
            transport=transport,
            on_total=total,
            on_bytes=advance,
            limit_rate=rate,
        )
        full_seconds = _full_upload_estimate(repo.dits_dir, result)
    if as_json:
        doc = result.to_json()
        doc["estimated_full_upload_seconds"] = full_seconds
        doc["speedup"] = round(full_seconds / result.seconds, 1) if full_seconds else None
        emit_json(doc)
        return
    if result.up_to_date:
        say(ctx, f"{result.remote}/{result.branch} is up to date")
        return
    say(ctx, _push_summary(result, full_seconds))
    old = result.old[:12] if result.old else "(new)"
    say(ctx, f"{result.remote}/{result.branch}: {old} -> {(result.new or '')[:12]}")
    if show_stats:
        if result.staging is None:
            say(ctx, "staging: no chunk had to be sent")
        for line in staging_lines(result.staging or {}):
            say(ctx, line)


def _pct(x: object) -> str:
    return f"{100 * float(x):.0f}%" if isinstance(x, int | float) else "n/a"


def _rate(x: object) -> str:
    return f"{float(x) / 1e6:.1f} MB/s" if isinstance(x, int | float) else "n/a"


def staging_lines(st: dict[str, Any]) -> list[str]:
    """The staging engine's figures for people (``push --stats``, ``speculative status``)."""
    if not st:
        return []
    levels = ", ".join(f"{k} {v}" for k, v in sorted(st.get("levels", {}).items()))
    classes = ", ".join(f"{k} {v}" for k, v in sorted(st.get("chunks_by_class", {}).items()))
    entropy = st.get("mean_entropy")
    net = st.get("network") or {}
    rtt, loss = net.get("rtt"), net.get("loss_rate")
    hits, misses = st.get("stage_ahead_hits", 0), st.get("stage_ahead_misses", 0)
    return [
        f"staging ({st.get('mode')}): {st.get('chunks', 0)} chunks, "
        f"{human_bytes(st.get('plain_bytes', 0))} -> {human_bytes(st.get('wire_bytes', 0))} "
        f"on the wire ({human_bytes(st.get('bytes_saved_by_compression', 0))} saved by "
        f"compression; {levels or 'nothing sent'})",
        f"  stage-ahead hits {_pct(st.get('stage_ahead_hit_rate'))} ({hits}/{hits + misses}); "
        f"CPU-bound {st.get('cpu_bound_seconds', 0):.2f} s, network-bound "
        f"{st.get('network_bound_seconds', 0):.2f} s of {st.get('seconds', 0):.2f} s",
        f"  buffers: peak {human_bytes(st.get('buffer_peak_bytes', 0))} of "
        f"{human_bytes(st.get('buffer_limit_bytes', 0))} "
        f"({_pct(st.get('buffer_utilization'))}), {st.get('buffer_allocations', 0)} allocated, "
        f"{st.get('buffer_reuses', 0)} reused; lookahead {st.get('lookahead_min')}-"
        f"{st.get('lookahead_max')} chunks, up to {st.get('streams_max')} streams, "
        f"{st.get('staging_threads')} staging threads",
        f"  content: {classes or 'not analysed'}"
        + (f" (mean entropy {entropy:.2f} bits/byte)" if entropy is not None else "")
        + f"; prediction accuracy {_pct(st.get('prediction_accuracy'))}, "
        f"{st.get('mispredictions', 0)} fallbacks; decision "
        f"{_pct(st.get('decision_cpu_share'))} of CPU",
        f"  network: {_rate(net.get('throughput'))} (predicted {_rate(net.get('predicted'))}, "
        f"{net.get('trend', 'unknown')})"
        + (f", RTT {1000 * rtt:.1f} ms" if isinstance(rtt, int | float) else "")
        + (f", loss {100 * loss:.2f}%" if isinstance(loss, int | float) else ""),
    ]


def _full_upload_estimate(dits_dir: Path, result: PushResult) -> float | None:
    """Seconds sending every chunk of this push would have taken, at the push rate measured
    now (when enough was sent to measure it) or by the last push that could; None if never."""
    from dits.speculative.control import AgentPaths
    from dits.store.speculative import SpeculativeCache

    if result.up_to_date or not result.chunk_bytes_total:
        return None
    paths = AgentPaths(dits_dir)
    paths.ensure()
    cache = SpeculativeCache(paths.cache)
    try:
        if result.chunk_bytes_sent >= _RATE_MIN_BYTES and result.upload_seconds > 0:
            rate: float | None = result.chunk_bytes_sent / result.upload_seconds
            cache.set_value("push_rate", rate)  # type: ignore[arg-type]
        else:
            rate = cache.get_value("push_rate")
    finally:
        cache.close()
    return result.chunk_bytes_total / rate if rate else None


def _push_summary(result: PushResult, full_seconds: float | None) -> str:
    faster = (
        f" ({full_seconds / result.seconds:.0f}x faster)"
        if full_seconds and result.seconds > 0 and full_seconds > result.seconds
        else ""
    )
    if result.chunks_total and not result.chunks_sent:
        return (
            f"Instant push! All {result.chunks_total} chunks already on server "
            f"({human_bytes(result.bytes_skipped)} skipped); {result.objects_sent} objects in "
            f"{result.seconds:.2f} s over {result.transport}{faster}"
        )
    pct = (
        100 * result.bytes_skipped / result.chunk_bytes_total if result.chunk_bytes_total else 100.0
    )
    return (
        f"{result.chunks_sent}/{result.chunks_total} chunks uploaded ({pct:.1f}% pre-synced), "
        f"{human_bytes(result.chunk_bytes_sent)} uploaded, "
        f"{human_bytes(result.bytes_skipped)} skipped, {result.objects_sent} objects, "
        f"{result.seconds:.2f} s over {result.transport}{faster}"
    )


@click.command("fetch")
@click.argument("remote", required=False)
@_transport_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
@pass_ctx
def fetch_cmd(ctx: Ctx, remote: str | None, transport: str | None, as_json: bool) -> None:
    """Download new commits from REMOTE (default: origin) into remote-tracking branches."""
    from dits.ops.sync import fetch

    with open_repo(ctx) as repo, progress(ctx, "fetching", json_mode=as_json) as (total, adv):
        result = fetch(repo, remote, transport=transport, on_total=total, on_bytes=adv)
    if as_json:
        emit_json(result.to_json())
        return
    for branch, tip in sorted(result.updated.items()):
        say(ctx, f"{result.remote}/{branch} -> {tip[:12]}")
    say(
        ctx,
        f"received {result.objects_received} objects and {result.chunks_received} chunks, "
        f"{human_bytes(result.bytes_received)} in {result.seconds:.2f} s",
    )


@click.command("pull")
@click.argument("remote", required=False)
@_transport_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
@pass_ctx
def pull_cmd(ctx: Ctx, remote: str | None, transport: str | None, as_json: bool) -> None:
    """Fetch, then fast-forward or merge file by file the current branch."""
    from dits.cli.cmd_commit import git_identity
    from dits.ops.commit import identity
    from dits.ops.merge import integrate
    from dits.ops.sync import REMOTES, fetch
    from dits.remotes import get_remote

    with open_repo(ctx) as repo:
        spec = get_remote(repo.config, remote)
        with progress(ctx, "fetching", json_mode=as_json) as (total, adv):
            fetched = fetch(repo, spec.name, transport=transport, on_total=total, on_bytes=adv)
        branch = repo.current_branch()
        theirs = repo.refs.get_ref(REMOTES + f"{spec.name}/{branch}")
        if theirs is None:
            raise UsageError(f"{spec.name} has no branch {branch}; nothing to pull")
        name, email = identity(repo, git_identity())
        now = int(os.environ.get("DITS_COMMIT_TIME", "0")) or int(time.time())
        result = integrate(
            repo,
            theirs,
            name=name,
            email=email,
            now=now,
            tz_offset_min=time.localtime(now).tm_gmtoff // 60,
        )
    if as_json:
        emit_json({"fetch": fetched.to_json(), "merge": result.to_json()})
    elif result.kind != "conflict":
        say(
            ctx,
            f"{result.kind}: {branch} at {(result.commit or b'').hex()[:12]}, "
            f"{len(result.updated)} file(s) updated",
        )
    if result.kind == "conflict":
        listing = ", ".join(result.conflicts[:20]) + (" ..." if len(result.conflicts) > 20 else "")
        raise ConflictError(
            f"pull stopped: {len(result.conflicts)} file(s) changed on both sides: {listing}; "
            f"your version is in {branch}, theirs in {spec.name}/{branch}"
        )


@click.command("clone")
@click.argument("url")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False), required=False)
@click.option("--token", default=None, help="Bearer token (else DITS_TOKEN).")
@_transport_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
@pass_ctx
def clone_cmd(
    ctx: Ctx,
    url: str,
    directory: Path | None,
    token: str | None,
    transport: str | None,
    as_json: bool,
) -> None:
    """Copy the repository at URL (dits://host:port/repo) into DIRECTORY."""
    from dits.ops.sync import clone
    from dits.remotes import parse_url

    target = ctx.cwd / (directory or Path(parse_url(url).repo))
    with progress(ctx, "cloning", json_mode=as_json) as (total, adv):
        repo, result = clone(
            url, target, token=token, transport=transport, on_total=total, on_bytes=adv
        )
    repo.close()
    if as_json:
        emit_json({**result.to_json(), "directory": str(target)})
        return
    say(
        ctx,
        f"cloned into {target}: {result.objects_received} objects, {result.chunks_received} "
        f"chunks, {human_bytes(result.bytes_received)} in {result.seconds:.2f} s "
        f"over {result.transport}",
    )
