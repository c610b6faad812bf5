"""`main`, the console script: runs `app` and turns whatever ends a command into one line and an exit code.

- a usage error (an unknown option, a value of the wrong type, a missing option or command): one
  line, exit 2;
- bad input (`InputError`) or a file that cannot be read or written (`OSError`): one line, exit 2;
- anything else is a bug: exit 1 with one line saying so; with --debug or COSMOSIM_DEBUG=1 the
  traceback comes first.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback

import typer

from cosmosim.cli.app import DEBUG_ENV, app
from cosmosim.errors import InputError

PROG = "cosmosim"


def usage_message(error: typer.TyperException) -> str:
    """Click's message on one line, the parameter and the value given first, and where help is:
    "--cache-mb: 'abc': Input should be a valid number, ... (see `cosmosim run --help`)"."""
    if isinstance(error, typer.BadParameter) and error.param is not None and error.message:
        cause = error.__cause__  # typer converts values with pydantic, whose error keeps the input
        problems = cause.errors() if hasattr(cause, "errors") else []
        given = [repr(problems[0]["input"])] if problems and "input" in problems[0] else []
        text = ": ".join([" / ".join(error.param.opts), *given, error.message])
    else:
        text = " ".join(error.format_message().split())
    ctx = getattr(error, "ctx", None)
    return text.rstrip(".") + ("" if ctx is None else f" (see `{ctx.command_path} --help`)")


def fail(message: str, code: int) -> None:
    typer.echo(f"{PROG}: {message}", err=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Run the command line `argv` (default: sys.argv[1:]) and exit with its status."""
    args = sys.argv[1:] if argv is None else list(argv)
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    command = typer.main.get_command(app)
    try:
        with command.make_context(PROG, args) as ctx:
            debug = debug or ctx.params["debug"]
            command.invoke(ctx)
    except typer.Exit as stop:  # --help, or a command that ends early
        sys.exit(stop.exit_code)
    except typer.TyperException as error:  # click's usage errors (exit code 2)
        fail(f"error: {usage_message(error)}", error.exit_code)
    except InputError as error:
        fail(f"error: {error}", 2)
    except OSError as error:  # an output path that cannot be written, a file that cannot be read
        if error.errno == errno.EPIPE:  # the reader went away (`| head`): nothing more to say
            sys.exit(1)
        where = f"{error.filename}: " if error.filename else ""
        fail(f"error: {where}{error.strerror or error}", 2)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as error:  # noqa: BLE001: a bug, not the user's doing
        if debug:
            traceback.print_exc()
        what = " ".join([f"{type(error).__name__}:", *str(error).split()]).rstrip(":")
        hint = ("the traceback is above" if debug
                else f"rerun as `{PROG} --debug ...` or with {DEBUG_ENV}=1 for the traceback")
        fail(f"internal error: {what} (a bug in cosmosim; {hint})", 1)
    sys.exit(0)
