"""`dits init`."""

from __future__ import annotations

from pathlib import Path

import click

from dits.cli._common import Ctx, pass_ctx, say
from dits.repository import DEFAULT_BRANCH, Repository


@click.command("init")
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("-b", "--initial-branch", default=DEFAULT_BRANCH, show_default=True)
@pass_ctx
def init_cmd(ctx: Ctx, directory: Path | None, initial_branch: str) -> None:
    """Create an empty repository in DIRECTORY (default: here)."""
    root = (ctx.cwd / directory) if directory else ctx.cwd
    root.mkdir(parents=True, exist_ok=True)
    with Repository.init(root.resolve(), branch=initial_branch) as repo:
        say(ctx, f"Initialized empty dits repository in {repo.dits_dir}")
