"""How a command line ends: usage errors and bad input as one line with exit code 2, a bug as one
line with exit code 1 (its traceback only with --debug or COSMOSIM_DEBUG=1), and --help listing
the choices of the registries."""

import pytest

from cosmosim.cli.app import DEBUG_ENV
from cosmosim.device.policies import POLICIES
from cosmosim.device.prefetch import PREFETCHERS
from cosmosim.runner import ENGINES
from cosmosim.inputs.precision import FORMATS


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("args, expected", [
    (["run", "--profile", "wearable", "--cache-mb", "abc"], "cosmosim: error: --cache-mb: 'abc': "),
    (["run", "--profile", "wearable", "--weight-bits", "q9_X"], "cosmosim: error: --weight-bits: expected bits per weight"),
    (["run", "--profile", "wearable", "--expert-bits", "0.5"], "cosmosim: error: --expert-bits: expected bits per weight"),
    (["run", "--profile", "wearable", "--no-such-flag"], "cosmosim: error: No such option: --no-such-flag"),
    (["run", "--trace", "traces/bles.npz"], "cosmosim: error: Missing option '--profile'"),
    (["trace", "info"], "cosmosim: error: Missing argument 'path'"),
    ([], "cosmosim: error: Missing command (see `cosmosim --help`)"),
    (["trace"], "cosmosim: error: Missing command (see `cosmosim trace --help`)"),
    (["frobnicate"], "cosmosim: error: No such command 'frobnicate'"),
    (["--no-such-flag"], "cosmosim: error: No such option: --no-such-flag"),
])
def test_usage_error_is_one_line_and_exit_2(cli, args, expected):
    code, out, err = cli(*args)
    line = one_line(err)
    assert code == 2 and out == "" and line.startswith(expected)
    assert "╭" not in line and "Usage:" not in line


def test_input_error_is_one_line_and_exit_2(cli):
    code, _, err = cli("run", "--profile", "mars", "--arch", "wearable-dense-fa")
    assert code == 2 and one_line(err).startswith("cosmosim: error: unknown device profile 'mars'")


@pytest.fixture
def bug(monkeypatch):
    """`cosmosim profiles` fails the way a bug does: an exception no one raised on purpose."""
    import cosmosim.cli.catalog

    def broken():
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cosmosim.cli.catalog, "shipped_profiles", broken)
    monkeypatch.delenv(DEBUG_ENV, raising=False)


def test_a_bug_is_an_internal_error_with_exit_1(cli, bug):
    code, out, err = cli("profiles")
    line = one_line(err)
    assert code == 1 and "Traceback" not in err + out
    assert line.startswith("cosmosim: internal error: ZeroDivisionError: division by zero")
    assert "--debug" in line and f"{DEBUG_ENV}=1" in line


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(cli, monkeypatch, bug, how):
    if how == "env":
        monkeypatch.setenv(DEBUG_ENV, "1")
    code, _, err = cli(*(["--debug"] if how == "flag" else []), "profiles")
    assert code == 1 and err.startswith("Traceback") and "in broken" in err
    assert err.strip().splitlines()[-1].startswith("cosmosim: internal error: ZeroDivisionError")


def test_help_is_not_an_error(cli):
    code, out, err = cli("run", "--help")
    assert code == 0 and "--profile" in out and err == ""


def test_run_help_lists_the_registries(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one option a line, so no name is wrapped
    _, out, _ = cli("run", "--help")
    lines = {flag: next(line for line in out.splitlines() if f" {flag} " in line)
             for flag in ("--policy", "--prefetch", "--weight-bits", "--engine")}
    for flag, registry in (("--policy", POLICIES), ("--prefetch", PREFETCHERS), ("--weight-bits", FORMATS),
                           ("--engine", ENGINES)):
        assert all(str(name) in lines[flag] for name in registry), lines[flag]
