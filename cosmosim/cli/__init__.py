"""The `cosmosim` command line: thin typer commands over the library's pure functions.

`app` (cli/app.py) holds the commands, each module of this package adding its own; `main`
(cli/main.py) runs it and prints whatever ends a command on one line: exit code 2 for a usage
error or bad input, 1 for a bug.
"""

from cosmosim.cli.app import app
from cosmosim.cli.main import main

__all__ = ["app", "main"]
