"""What every benchmark shares: its `--json` option, and where its JSON object and its human table go.

- `--json` alone (or `--json -`): one JSON object on stdout, the human table on stderr, so
  `python benchmarks/X.py --json | python -m json.tool` works;
- `--json PATH`: the object written to PATH (atomically), the human table on stdout as without it;
- no `--json`: the human table on stdout only.

PATH must end in `.json`: with a benchmark that takes positional files, `--json SPEC.toml` would
otherwise overwrite an input (put `--json` after the positional arguments, or pass `--json -`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout

from cosmosim.files import atomic_write_json

STDOUT = "-"


def add_json_option(parser: argparse.ArgumentParser, what: str) -> None:
    """`--json [PATH]`, reporting `what` (a phrase: "the rates and ratios")."""
    parser.add_argument("--json", nargs="?", const=STDOUT, metavar="PATH",
                        help=f"also report {what} as one JSON object: with no PATH (or -) print it to stdout "
                             "and send the human table to stderr; with PATH (ending in .json) write it there")


def parse(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """`parser.parse_args()`, refusing a `--json PATH` that does not end in .json."""
    args = parser.parse_args()
    if args.json not in (None, STDOUT) and not args.json.endswith(".json"):
        parser.error(f"--json {args.json}: PATH must end in .json "
                     "(to print to stdout, put --json after the positional arguments or pass --json -)")
    return args


@contextmanager
def human_output(target: str | None) -> Iterator[None]:
    """While the benchmark runs, its prints go to stderr when the JSON object takes stdout."""
    if target != STDOUT:
        yield
        return
    sys.stdout.flush()
    with redirect_stdout(sys.stderr):
        yield


def emit(target: str | None, data: dict) -> None:
    """Print `data` to stdout, write it to the file `target`, or do nothing without `--json`."""
    if target is None:
        return
    if target == STDOUT:
        json.dump(data, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        sys.stdout.flush()
    else:
        atomic_write_json(target, data)
