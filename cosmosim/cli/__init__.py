"""The `cosmosim` command line: thin typer commands over the library's pure functions.

Bad input anywhere raises `InputError`; `main` prints it on one line and exits with code 2, so a
user never sees a traceback for something they can fix.
"""

from __future__ import annotations

import sys

import click
import typer

from cosmosim.errors import InputError

app = typer.Typer(
    name="cosmosim",
    help="Simulate on-device decoding of CoSMoEs-style Mixture-of-Experts models from real routing traces.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Each module adds its commands to `app` (imported for that side effect).
from cosmosim.cli import catalog, run, trace  # noqa: E402,F401


def main(argv: list[str] | None = None) -> None:
    try:
        code = app(args=argv, prog_name="cosmosim", standalone_mode=False)
    except click.ClickException as error:  # usage errors: unknown flag, bad type
        error.show()
        code = error.exit_code
    except click.Abort:
        typer.echo("cosmosim: aborted", err=True)
        code = 130
    except InputError as error:
        typer.echo(f"cosmosim: error: {error}", err=True)
        code = 2
    except (FileNotFoundError, PermissionError, IsADirectoryError) as error:
        typer.echo(f"cosmosim: error: {error.filename}: {error.strerror}", err=True)
        code = 2
    sys.exit(code if isinstance(code, int) else 0)
