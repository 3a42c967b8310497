"""`dits add`, `dits rm`, `dits mv`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import click

from dits.cli._common import Ctx, emit_json, human_bytes, open_repo, pass_ctx, progress, say
from dits.errors import EXIT_IO, DitsError
from dits.ops.add import KnownManifest, add_paths
from dits.ops.paths import move, remove


class PartialAddError(DitsError):
    """Some files could not be added; the rest were staged."""

    exit_code = EXIT_IO


@contextlib.contextmanager
def _agent_manifests(dits_dir: Path) -> Iterator[KnownManifest | None]:
    """The speculative agent's manifests, when it has ever run in this repository."""
    from dits.speculative.control import AgentPaths

    paths = AgentPaths(dits_dir)
    if not paths.cache.exists():
        yield None
        return
    from dits.store.speculative import SpeculativeCache

    cache = SpeculativeCache(paths.cache)
    try:
        yield cache.manifest_for
    finally:
        cache.close()


@click.command("add")
@click.argument("paths", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
@pass_ctx
def add_cmd(ctx: Ctx, paths: tuple[str, ...], as_json: bool) -> None:
    """Stage files (recursively) for the next commit."""
    with open_repo(ctx) as repo, _agent_manifests(repo.dits_dir) as known:
        specs = [repo.worktree.repo_path(p, ctx.cwd) for p in paths]
        with progress(ctx, "adding", json_mode=as_json) as (set_total, advance):
            result = add_paths(repo, specs, on_plan=set_total, on_bytes=advance, known=known)
        if as_json:
            emit_json(result.to_json())
        else:
            s = result.stats
            for line in result.errors:
                click.echo(f"warning: {line}", err=True)
            changed = len(result.added) + len(result.modified) + len(result.removed)
            say(
                ctx,
                f"staged {changed} change(s): {len(result.added)} added, "
                f"{len(result.modified)} modified, {len(result.removed)} removed; "
                f"{result.unchanged} unchanged",
            )
            if result.from_agent:
                say(ctx, f"{len(result.from_agent)} file(s) already chunked by the agent")
            if s.chunks:
                say(
                    ctx,
                    f"read {human_bytes(s.bytes_read)} in {s.chunks} chunks; "
                    f"{s.new_chunks} new ({human_bytes(s.new_bytes)}), "
                    f"{s.chunks - s.new_chunks} already stored",
                )
        if result.errors:
            raise PartialAddError(f"{len(result.errors)} path(s) could not be added")


@click.command("rm")
@click.argument("paths", nargs=-1, required=True)
@click.option("--cached", is_flag=True, help="Untrack only; keep the files.")
@click.option("-f", "--force", is_flag=True, help="Delete files even with local changes.")
@pass_ctx
def rm_cmd(ctx: Ctx, paths: tuple[str, ...], cached: bool, force: bool) -> None:
    """Remove files from the index (and the working tree)."""
    with open_repo(ctx) as repo:
        specs = [repo.worktree.repo_path(p, ctx.cwd) for p in paths]
        result = remove(repo, specs, cached=cached, force=force)
        for path in result.removed:
            say(ctx, f"rm '{path}'")


@click.command("mv")
@click.argument("source")
@click.argument("dest")
@pass_ctx
def mv_cmd(ctx: Ctx, source: str, dest: str) -> None:
    """Rename a tracked file or folder."""
    with open_repo(ctx) as repo:
        result = move(
            repo, repo.worktree.repo_path(source, ctx.cwd), repo.worktree.repo_path(dest, ctx.cwd)
        )
        for old, new in result.moved:
            say(ctx, f"renamed '{old}' -> '{new}'")
