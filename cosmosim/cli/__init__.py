"""The `cosmosim` command line: thin typer commands over the library's pure functions.

Bad input anywhere raises `InputError`; `main` prints it on one line and exits with code 2, so a
user never sees a traceback for something they can fix.
"""

from __future__ import annotations

import sys

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
from cosmosim.cli import catalog, host, models, paper, run, sweep, trace  # noqa: E402,F401


def main(argv: list[str] | None = None) -> None:
    """Entry point: typer handles usage errors itself (exit 2); input errors are ours to print."""
    try:
        app(args=argv, prog_name="cosmosim")  # standalone: exits with the command's status
    except InputError as error:
        typer.echo(f"cosmosim: error: {error}", err=True)
        sys.exit(2)
    except OSError as error:  # an output path that cannot be written, a file that cannot be read
        where = f"{error.filename}: " if error.filename else ""
        typer.echo(f"cosmosim: error: {where}{error.strerror or error}", err=True)
        sys.exit(2)
