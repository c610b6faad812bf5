"""The light commands stay light: none of them imports torch or plotly, which only calibrate,
replay, validate, train, record and report need (each in a fresh interpreter, as a user runs it)."""

import os
import subprocess
import sys

import pytest

from cosmosim.files import CACHE_DIR_ENV
from cosmosim.provenance import REPOSITORY

HEAVY = ("torch", "plotly")
CHECK = """
import sys
from cosmosim.cli import main
try:
    main(sys.argv[1:])
except SystemExit as stop:
    print("exit", stop.code, "imported", *[name for name in {heavy!r} if name in sys.modules], file=sys.stderr)
""".format(heavy=HEAVY)


@pytest.mark.parametrize("args", [
    ["run", "--help"],
    ["run", "--profile", "wearable", "--trace", "traces/bles.npz", "--tokens", "200", "-q"],
    ["arch"],
    ["profiles"],
    ["trace", "info", "traces/bles.npz"],
    ["trace", "synth", "--help"],
    ["trace", "import", "--help"],
    ["trace", "export", "--help"],
    ["run", "--profile", "wearable", "--trace", "traces/bles.npz", "--engine", "analytic", "--target-tps", "1", "-q"],
    ["--help"],
    ["validate", "--help"],
], ids=" ".join)
def test_light_commands_never_import_torch_or_plotly(args, tmp_path):
    done = subprocess.run([sys.executable, "-c", CHECK, *args], cwd=REPOSITORY, capture_output=True, text=True,
                          timeout=120, env={**os.environ, CACHE_DIR_ENV: str(tmp_path)})  # synthesised traces go here
    assert done.stderr.strip().splitlines()[-1] == "exit 0 imported", done.stderr


def test_every_command_is_listed_where_it_is_defined():
    """COMMANDS names each command's module; loading them all registers exactly those commands."""
    import typer

    from cosmosim.cli.app import COMMANDS, app

    group = typer.main.get_group(app)
    for name in COMMANDS:
        assert group.get_command(None, name) is not None, name
    assert set(typer.main.get_group(app).commands) == set(COMMANDS)
