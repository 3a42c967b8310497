"""Shared CLI plumbing: the context object, repository opening, output, progress bars."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from dits.repository import Repository

__all__ = ["Ctx", "emit_json", "open_repo", "pass_ctx", "progress", "say"]


@dataclass
class Ctx:
    """Global options."""

    cwd: Path
    quiet: bool = False
    debug: bool = False


pass_ctx = click.make_pass_decorator(Ctx)


def open_repo(ctx: Ctx) -> Repository:
    """Find and open the repository containing the working folder."""
    return Repository.discover(ctx.cwd)


def say(ctx: Ctx, text: str = "", *, err: bool = False) -> None:
    """Print unless -q."""
    if not ctx.quiet:
        click.echo(text, err=err)


def emit_json(data: Any) -> None:
    """Print one JSON document."""
    click.echo(json.dumps(data, indent=2, sort_keys=True))


@contextmanager
def progress(
    ctx: Ctx, description: str, *, json_mode: bool = False
) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """Yield (set_total, advance) callbacks driving a bytes progress bar on a terminal.

    Nothing is drawn when stderr is not a terminal, with -q, or with --json.
    """
    if ctx.quiet or json_mode or not sys.stderr.isatty():
        yield (lambda _total: None), (lambda _n: None)
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task(description, total=None)
    with bar:
        yield (lambda total: bar.update(task, total=total)), (lambda n: bar.advance(task, n))


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover
