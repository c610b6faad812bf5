"""ExRep as a design axis: the sweep's `exrep` axis, its figure, and the inverse question
(`largest_exrep`, `cosmosim run --target-tps`), each checked against plain runs done here."""

import json

import numpy as np
import pandas as pd
import pytest

from cosmosim.errors import InputError
from cosmosim.files import CACHE_DIR_ENV
from cosmosim.inputs import synthetic
from cosmosim.inputs.synthetic import highest_exrep_like, sticky_trace, synthesize, synthesized_like
from cosmosim.inputs.trace import load_trace, save_trace
from cosmosim.provenance import sha256_file
from cosmosim.runner import run
from cosmosim.scenario.settings import RunConfig
from cosmosim.sweep.dataset import read_results
from cosmosim.sweep.execute import run_sweep
from cosmosim.sweep.grid import grid
from cosmosim.sweep.report import exrep_effect
from cosmosim.sweep.spec import spec_from_dict
from cosmosim.sweep.target import EVERY, NONE, REACHED, TOLERANCE, largest_exrep

KACTIVE = RunConfig(policy="kactive")


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Synthesised traces go to this test's own cache folder."""
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def like(tmp_path_factory):
    """A recorded-looking trace of the wearable MoE's shape: 16 sequences of 128 tokens."""
    trace = sticky_trace(n_tokens=2048, n_layers=19, seq_len=128, stay=0.5, seed=3)
    trace.meta["target_arch"] = "wearable-moe"
    trace.meta["training"] = {"val_loss": 4.2, "bles_lambda": 0.0, "config_name": "test"}
    return save_trace(trace, tmp_path_factory.mktemp("like") / "like.npz")


def spec(like, **axes):
    return spec_from_dict({"engine": "analytic", "axes": {"profile": ["wearable"], "trace": [str(like)], **axes}},
                          base_dir=like.parent, source="spec.toml")


# ---------------------------------------------------------------------------- the spec and the grid

def test_exrep_axis_needs_traces_and_reachable_values(like):
    highest = highest_exrep_like(load_trace(like))
    with pytest.raises(InputError, match="axes.exrep: 1.5: expected an ExRep in"):
        spec(like, exrep=[0.2, 1.5])
    with pytest.raises(InputError, match="axes.exrep: 'often': expected an ExRep in"):
        spec(like, exrep=["often"])
    with pytest.raises(InputError, match="axes.synth_seed: seeds synthesised traces; add an exrep axis"):
        spec(like, synth_seed=[0, 1])
    with pytest.raises(InputError, match="axes.exrep: needs a trace axis"):
        spec_from_dict({"axes": {"profile": ["wearable"], "arch": ["wearable-moe"], "exrep": [0.1]}},
                       base_dir=like.parent, source="spec.toml")
    assert spec(like, exrep=[0.0, round(highest, 3)]).axis("exrep") == (0.0, round(highest, 3))


def test_grid_gives_recorded_points_no_seed(like):
    points = grid(spec(like, exrep=["recorded", 0.2], synth_seed=[0, 1], policy=["kactive"]))
    assert [(p.exrep, p.synth_seed) for p in points] == [(None, None), (0.2, 0), (0.2, 1)]


# ---------------------------------------------------------------------------- rows equal plain runs

@pytest.mark.parametrize("engine", ["analytic", "des"])
def test_an_exrep_its_trace_cannot_reach_is_an_infeasible_row(like, tmp_path, engine):
    highest = highest_exrep_like(load_trace(like))
    frame_spec = spec_from_dict({"engine": engine, "axes": {"profile": ["wearable"], "trace": [str(like)],
                                 "exrep": [0.1, 0.99], "policy": ["kactive"], "tokens": [300]}},
                                base_dir=like.parent, source="spec.toml")
    run_sweep(frame_spec, tmp_path / "out", engine=engine)
    rows = read_results(tmp_path / "out").set_index("point_id")
    assert pd.isna(rows.loc[0, "error"]) and rows.loc[0, "tokens_per_s"] > 0
    assert rows.loc[1, "error"] == (f"exrep 0.99: outside the range {like}'s expert popularity reaches, "
                                    f"[0, {highest:.4f}]")
    assert pd.isna(rows.loc[1, "tokens_per_s"])


def test_exrep_rows_equal_runs_on_traces_synthesised_here(like, tmp_path):
    summary = run_sweep(spec(like, exrep=["recorded", 0.1, 0.4], policy=["kactive"]), tmp_path / "out")
    assert summary.n_computed == 3
    rows = read_results(tmp_path / "out").set_index("point_id")
    recorded = run("wearable", like, None, KACTIVE, "analytic")
    assert rows.loc[0, "tokens_per_s"] == pytest.approx(recorded["tokens_per_s"], rel=1e-12)
    assert rows.loc[0, "val_loss"] == 4.2 and pd.isna(rows.loc[0, "exrep_target"])
    for point_id, target in ((1, 0.1), (2, 0.4)):
        made = synthesize(like=load_trace(like), exrep_target=target, seed=0)  # directly, no cache
        expected = run("wearable", made, None, KACTIVE, "analytic")
        assert rows.loc[point_id, "tokens_per_s"] == pytest.approx(expected["tokens_per_s"], rel=1e-12)
        assert rows.loc[point_id, "trace_exrep"] == pytest.approx(target, abs=0.01)
        assert rows.loc[point_id, "trace"] == str(like) and rows.loc[point_id, "synth_seed"] == 0
        assert pd.isna(rows.loc[point_id, "val_loss"]) and pd.isna(rows.loc[point_id, "bles_lambda"])


def test_synthesised_trace_is_made_once_then_read_from_the_cache(like, monkeypatch):
    sha256 = sha256_file(like)
    first = synthesized_like(like, sha256, 0.3, seed=2)

    def synthesize_again(**kwargs):
        raise RuntimeError("synthesised again")

    monkeypatch.setattr(synthetic, "synthesize", synthesize_again)
    assert synthesized_like(like, sha256, 0.3, seed=2) == first
    assert load_trace(first).meta["synthetic"]["seed"] == 2
    with pytest.raises(RuntimeError, match="synthesised again"):  # another seed is another trace, made anew
        synthesized_like(like, sha256, 0.3, seed=3)


def test_exrep_figure_draws_lines_points_and_the_papers_values(like, tmp_path):
    run_sweep(spec(like, exrep=["recorded", 0.1, 0.3], policy=["kactive"]), tmp_path / "out")
    figure = exrep_effect(read_results(tmp_path / "out"))
    names = [trace.name for trace in figure.data]
    assert any(name.endswith("(recorded)") for name in names)
    lines = [trace for trace in figure.data if trace.mode == "lines+markers"]
    assert lines and all(len(line.x) == 2 for line in lines)  # the two synthesised ExReps
    marked = sorted({round(shape.x0, 4) for shape in figure.layout.shapes})  # in both panels
    assert marked == [0.0655, 0.4382]


# ---------------------------------------------------------------------------- the inverse question

def test_largest_exrep_agrees_with_a_plain_scan(like):
    """The bisection's answer against runs at every 0.02 of ExRep, made here without the search."""
    target = 10.0
    answer = largest_exrep("wearable", like, target, config=KACTIVE)
    assert answer.verdict == REACHED
    passing, failing = [p for p in answer.probes if p.exrep == answer.largest_exrep][0], \
        [p for p in answer.probes if p.exrep == answer.smallest_failing_exrep][0]
    assert passing.tokens_per_s >= target > failing.tokens_per_s
    assert failing.exrep_target - passing.exrep_target <= TOLERANCE
    source = load_trace(like)
    scan = []
    for exrep_target in np.arange(0.0, highest_exrep_like(source), 0.02):
        made = synthesize(like=source, exrep_target=float(exrep_target), seed=0)
        speed = run("wearable", made, None, KACTIVE, "analytic")["tokens_per_s"]
        scan.append((made.meta["synthetic"]["measured_exrep"], speed))
    largest_scanned = max(exrep for exrep, speed in scan if speed >= target)
    assert answer.largest_exrep == pytest.approx(largest_scanned, abs=0.02 + TOLERANCE)


def test_no_exrep_suffices_when_the_cache_cannot_hold_a_tokens_experts(like):
    answer = largest_exrep("wearable", like, 5.0, config=RunConfig(cache_experts=11))
    assert answer.verdict == NONE and answer.largest_exrep is None
    assert "11 experts cannot hold a token's working set of 38" in answer.reason
    assert len(answer.probes) == 1 and answer.probes[0].hit_rate == 0


def test_every_exrep_suffices_for_a_slow_target(like):
    answer = largest_exrep("wearable", like, 0.5, config=KACTIVE)
    assert answer.verdict == EVERY and len(answer.probes) == 2
    assert answer.largest_exrep == pytest.approx(answer.reachable[1], abs=0.01)


def test_run_target_tps_on_the_command_line(like, tmp_path, cli):
    out = tmp_path / "answer.json"
    code, stdout, _ = cli("run", "--profile", "wearable", "--trace", like, "--engine", "analytic", "--policy",
                          "kactive", "--target-tps", "10", "--json", out)
    assert code in (0, None), stdout
    answer = json.loads(out.read_text())
    assert answer["verdict"] == REACHED and "largest ExRep:" in stdout
    again = largest_exrep("wearable", like, 10.0, config=KACTIVE)  # from the cache: the same probes
    assert (answer["largest_exrep"], len(answer["probes"])) == (again.largest_exrep, len(again.probes))
    for args, message in ((["--target-tps", "0"], "--target-tps: expected a positive number"),
                          (["--target-tps", "5", "--timeline", tmp_path / "t.json"], "--timeline and --target-tps")):
        code, _, stderr = cli("run", "--profile", "wearable", "--trace", like, *args)
        assert code == 2 and message in stderr and stderr.count("\n") == 1
