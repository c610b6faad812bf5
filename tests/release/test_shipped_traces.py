"""Release check of shipped data: the traces in traces/ are recorded by this repository's own code,
each says how it was made, each is small enough to ship, and the README's table is the one their
statistics give. (tests/release/ holds checks of what the project ships; the unit tests beside it
check code.)"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cosmosim.cli import app
from cosmosim.inputs.trace import load_trace

REPOSITORY = Path(__file__).resolve().parents[2]
TRACES = sorted((REPOSITORY / "traces").glob("*.npz"))
MINIS = REPOSITORY / "traces" / "minis.json"
# The retraining in progress (scripts/make_traces.sh with NEXT=1): held to the same standard, each
# summarised in its own folder's minis.json.
NEXT_TRACES = sorted((REPOSITORY / "traces" / "next").glob("*.npz"))
TRAINING_FIELDS = {"config_name", "run", "seed", "steps", "tokens_seen", "train_time_s", "train_loss", "val_loss",
                   "commit", "corpus_manifest_sha256", "bles_lambda", "bles_tau"}


def is_commit_of_this_repository(commit: str) -> bool:
    done = subprocess.run(["git", "-C", str(REPOSITORY), "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True)
    return done.returncode == 0


def test_the_promised_traces_are_shipped():
    names = {path.stem for path in TRACES}
    assert {"moe", "wd", "bles"} <= names
    assert len([n for n in names if n.startswith("bles-l")]) >= 4  # the BlES ladder
    assert all(n in {"moe", "wd", "bles"} or n.startswith(("bles-l", "wd-r")) for n in names), names


@pytest.mark.parametrize("path", TRACES + NEXT_TRACES, ids=lambda p: str(p.relative_to(REPOSITORY / "traces")))
def test_shipped_trace_is_valid_small_and_says_how_it_was_made(path):
    trace = load_trace(path)  # validates the arrays and meta
    assert path.stat().st_size <= 5 * 2**20
    assert trace.experts.shape[0] >= 16_384 and trace.gates.dtype == np.float16
    assert trace.domains is not None and len(set(trace.domains.tolist())) == len(trace.meta["domain_names"])
    training = trace.meta["training"]
    assert TRAINING_FIELDS <= set(training), TRAINING_FIELDS - set(training)
    assert training["steps"] > 0 and training["val_loss"] > 0
    for commit in (trace.meta["commit"], training["commit"]):  # the recording's and the training's
        assert is_commit_of_this_repository(commit), f"{path.name}: {commit} is not a commit of this repository"
    minis = json.loads((path.parent / "minis.json").read_text())
    assert minis[training["run"]]["val_loss"] == pytest.approx(training["val_loss"])


def test_bles_trace_is_a_ladder_point_and_says_why():
    bles = load_trace(REPOSITORY / "traces" / "bles.npz")
    selection = bles.meta["selection"]
    chosen = load_trace(REPOSITORY / "traces" / selection["chosen"])
    np.testing.assert_array_equal(bles.experts, chosen.experts)
    assert selection["val_loss_cost"] <= 0.03 and selection["baseline"] == "moe.npz"
    ladder = {p.name for p in TRACES if p.name.startswith("bles-l")}
    assert set(selection["ladder"]) == ladder and selection["chosen"] in selection["candidates"]
    assert set(selection["candidates"]) <= ladder


def test_readme_table_is_the_one_the_traces_give():
    args = ["trace", "stats", *map(str, TRACES), "--markdown", "--minis", str(MINIS)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.output.strip() in (REPOSITORY / "README.md").read_text(), "regenerate the README's trace table"
