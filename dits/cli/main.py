"""Entry point: the click group, global options, and the one place errors become exit codes."""

from __future__ import annotations

import asyncio
import errno
import importlib
import os
import sys
import traceback
from pathlib import Path

import click

from dits import __version__
from dits.cli._common import Ctx
from dits.errors import EXIT_INTERNAL, EXIT_IO, EXIT_NETWORK, DitsError

EXIT_CODES_HELP = """\b
Exit codes: 0 ok, 1 error, 2 usage, 3 not a repository, 4 conflict,
5 corrupt or missing data, 6 locked, 7 I/O (disk full, unreadable),
8 refused by a hook, 9 server certificate changed, 70 internal error (see docs/exit-codes.md)."""


# Commands are imported only when invoked: start-up time is most of a `dits status` on a
# clean tree, and each command module pulls in its own dependencies.
_COMMANDS = {
    "init": ("dits.cli.cmd_init", "init_cmd"),
    "add": ("dits.cli.cmd_add", "add_cmd"),
    "rm": ("dits.cli.cmd_add", "rm_cmd"),
    "mv": ("dits.cli.cmd_add", "mv_cmd"),
    "status": ("dits.cli.cmd_status", "status_cmd"),
    "commit": ("dits.cli.cmd_commit", "commit_cmd"),
    "log": ("dits.cli.cmd_log", "log_cmd"),
    "show": ("dits.cli.cmd_log", "show_cmd"),
    "diff": ("dits.cli.cmd_diff", "diff_cmd"),
    "branch": ("dits.cli.cmd_branch", "branch_cmd"),
    "switch": ("dits.cli.cmd_branch", "switch_cmd"),
    "checkout": ("dits.cli.cmd_branch", "checkout_cmd"),
    "restore": ("dits.cli.cmd_branch", "restore_cmd"),
    "fsck": ("dits.cli.cmd_maint", "fsck_cmd"),
    "gc": ("dits.cli.cmd_maint", "gc_cmd"),
    "config": ("dits.cli.cmd_config", "config_cmd"),
    "remote": ("dits.cli.cmd_remote", "remote_cmd"),
    "push": ("dits.cli.cmd_sync", "push_cmd"),
    "fetch": ("dits.cli.cmd_sync", "fetch_cmd"),
    "pull": ("dits.cli.cmd_sync", "pull_cmd"),
    "clone": ("dits.cli.cmd_sync", "clone_cmd"),
    "demo": ("dits.cli.cmd_demo", "demo_cmd"),
    "speculative": ("dits.cli.cmd_speculative", "speculative_cmd"),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _COMMANDS:
            return None
        module_name, attr = _COMMANDS[cmd_name]
        command: click.Command = getattr(importlib.import_module(module_name), attr)
        return command


@click.group(
    cls=_LazyGroup, epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.option(
    "-C", "cwd", type=click.Path(file_okay=False, path_type=Path), help="Run as if started in DIR."
)
@click.option("-q", "--quiet", is_flag=True, help="Print only errors.")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(__version__, prog_name="dits")
@click.pass_context
def cli(ctx: click.Context, cwd: Path | None, quiet: bool, debug: bool) -> None:
    """dits: version control for video projects."""
    ctx.obj = Ctx(cwd=(cwd or Path.cwd()).absolute(), quiet=quiet, debug=debug)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; map every error to one line on stderr and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("DITS_DEBUG") == "1"
    try:
        cli.main(args=args, prog_name="dits", standalone_mode=False)
    except click.exceptions.Abort:  # click's form of Ctrl-C (KeyboardInterrupt)
        click.echo("dits: interrupted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except DitsError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"dits: error: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("dits: interrupted", err=True)
        return 130
    except (ConnectionError, asyncio.IncompleteReadError) as exc:
        if debug:
            traceback.print_exc()
        what = str(exc) or type(exc).__name__
        click.echo(
            f"dits: error: the connection to the remote broke ({what}); run the command again: "
            "an interrupted push, fetch or clone resumes where it stopped",
            err=True,
        )
        return EXIT_NETWORK
    except OSError as exc:
        if debug:
            traceback.print_exc()
        if exc.errno == errno.ENOSPC:
            click.echo("dits: error: no space left on device", err=True)
        else:
            where = f" ({exc.filename})" if exc.filename else ""
            click.echo(f"dits: error: {exc.strerror or exc}{where}", err=True)
        return EXIT_IO
    except Exception:
        traceback.print_exc()
        click.echo("dits: internal error; please report it with the traceback above", err=True)
        return EXIT_INTERNAL
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
