"""The `cosmosim` typer app, whose command modules load only when their command is asked for.

Each module of this package adds its commands to `app`. The top-level group imports a module the
first time one of its commands is looked up, so `cosmosim run` loads what a run needs and never
torch (calibrate, replay, train) or plotly (report); `cosmosim --help` loads them all to list them.
"""

from __future__ import annotations

import importlib

import typer
from typer.core import TyperGroup

# command -> the module of cosmosim.cli that defines it, in the order --help lists them
COMMANDS = {
    "run": "run", "trace": "trace", "profiles": "catalog", "arch": "catalog", "sweep": "sweep",
    "report": "sweep", "paper": "paper", "calibrate": "host", "replay": "host", "validate": "host",
    "corpus": "models", "mini": "models", "train": "models", "record": "models", "llama-cpp": "llama",
}
DEBUG_ENV = "COSMOSIM_DEBUG"


class LazyCommands(TyperGroup):
    """The top-level group: lists COMMANDS, and imports a command's module when it is looked up."""

    def list_commands(self, ctx) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx, cmd_name: str):
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            importlib.import_module(f"cosmosim.cli.{COMMANDS[cmd_name]}")
            self.commands.update(typer.main.get_group(app).commands)  # what that import registered
        return self.commands.get(cmd_name)


app = typer.Typer(
    name="cosmosim",
    cls=LazyCommands,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def options(
    debug: bool = typer.Option(False, "--debug", help=f"On an internal error, show its traceback (or set {DEBUG_ENV}=1)."),
) -> None:
    """Simulate on-device decoding of CoSMoEs-style Mixture-of-Experts models from real routing traces."""
    # `main` reads --debug from the parsed context: it decides how an error that ends the command is shown.
