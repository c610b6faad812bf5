"""Sweeps: the grid, rows equal to single runs, resuming, local processes, Dask, and bad input."""

import json
import time
import tomllib

import pandas as pd
import pytest

from cosmosim.errors import InputError
from cosmosim.inputs.arch_files import SHIPPED_DIR, to_toml
from cosmosim.inputs.synthetic import sticky_trace
from cosmosim.inputs.trace import save_trace
from cosmosim.results import catalog
from cosmosim.runner import run
from cosmosim.scenario.settings import RunConfig
from cosmosim.sweep.dataset import MANIFEST, export_csv, read_results
from cosmosim.sweep.execute import run_sweep
from cosmosim.sweep.grid import grid
from cosmosim.sweep.spec import load_spec, spec_from_dict

TOKENS = 300  # per point: a few requests of the 128-token fixture sequences


def write_trace(path, *, stay: float, bles_lambda: float | None, seed: int = 0):
    trace = sticky_trace(n_tokens=768, n_layers=19, seq_len=128, stay=stay, seed=seed)
    trace.meta["target_arch"] = "wearable-moe"
    if bles_lambda is not None:  # what `cosmosim record` writes; values made up for the test
        trace.meta["training"] = {"val_loss": 4.25 + bles_lambda / 4, "bles_lambda": bles_lambda, "bles_tau": 10.0,
                                  "steps": 100, "config_name": "test"}
    return save_trace(trace, path)


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    folder = tmp_path_factory.mktemp("traces")
    write_trace(folder / "bles0.npz", stay=0.4, bles_lambda=0.0)
    write_trace(folder / "bles1.npz", stay=0.7, bles_lambda=1.0, seed=1)
    return folder


def spec_text(**axes) -> str:
    lines = ['name = "test"', "[axes]"] + [f"{name} = {json.dumps(values)}" for name, values in axes.items()]
    return "\n".join(lines) + "\n"


def write_spec(folder, **axes):
    path = folder / "spec.toml"
    path.write_text(spec_text(**axes))
    return path


BASE_AXES = dict(profile=["wearable"], trace=["bles*.npz"], cache_fraction=[0.3, 0.6], policy=["lru", "belady"],
                 tokens=[TOKENS])


@pytest.fixture()
def spec_path(traces):
    return write_spec(traces, **BASE_AXES)


# ---------------------------------------------------------------------------- grid and rows


def test_grid_merges_combinations_that_mean_the_same_run(traces):
    spec = spec_from_dict({"axes": {"profile": ["wearable"], "arch": ["wearable-moe", "wearable-dense-fa"],
                                    "trace": ["bles0.npz", "bles1.npz"], "cache_mb": [100, 200],
                                    "policy": ["lru", "kactive"]}}, base_dir=traces)
    points = grid(spec)
    # MoE: 2 traces x (2 cache sizes for lru + 1 for kactive, which sizes its own cache); dense: 1.
    assert spec.n_combinations == 16 and len(points) == 2 * 3 + 1
    assert [p.point_id for p in points] == list(range(7))
    dense = [p for p in points if p.arch == "wearable-dense-fa"]
    assert len(dense) == 1 and dense[0].trace is None and dense[0].config.cache_mb is None
    assert all(p.config.cache_mb is None for p in points if p.config.policy == "kactive")


def test_rows_carry_the_single_run_metrics_and_the_trace_facts(tmp_path, traces):
    spec = spec_from_dict({"axes": {"profile": ["wearable"], "trace": ["bles1.npz"], "wd_rank": ["full", 100],
                                    "cache_experts": [40], "tokens": [TOKENS]}}, base_dir=traces)
    run_sweep(spec, tmp_path / "r", progress=False)
    rows = read_results(tmp_path / "r")
    assert rows["point_id"].tolist() == [0, 1] and rows["error"].isna().all()
    full = run("wearable", traces / "bles1.npz", "wearable-moe", RunConfig(cache_experts=40, tokens=TOKENS))
    first = rows.iloc[0]
    assert pd.isna(first["wd_rank"]) and rows.iloc[1]["wd_rank"] == 100
    for metric in catalog.COLUMNS:  # every column is its key in the run's JSON
        expected = catalog.lookup(full, metric)
        assert pd.isna(first[metric.column]) if expected is None else first[metric.column] == expected, metric.key
    assert (first["bles_lambda"], first["val_loss"], first["trace"]) == (1.0, 4.5, "bles1.npz")
    # Rank-100 experts are smaller than full-rank ones, so the same 40 entries take less DRAM.
    assert rows.iloc[1]["expert_mb"] < first["expert_mb"]


def test_an_infeasible_point_is_a_row_with_its_error(tmp_path, traces):
    spec = spec_from_dict({"axes": {"profile": ["wearable"], "trace": ["bles0.npz"], "cache_experts": [1, 40],
                                    "tokens": [TOKENS]}}, base_dir=traces)
    summary = run_sweep(spec, tmp_path / "r", progress=False)
    rows = read_results(tmp_path / "r")
    assert summary.n_errors == 1 and "smaller than top_k" in rows.loc[0, "error"]
    assert pd.isna(rows.loc[0, "tpot_ms_mean"]) and pd.isna(rows.loc[1, "error"])


def write_shared_arch(folder):
    """The wearable MoE with one shared expert of its routed experts' width (1280) per layer, as a file: the
    expert cache holds one size of expert, so only such shared experts can be cached."""
    data = tomllib.loads((SHIPPED_DIR / "wearable-moe.toml").read_text())
    data.pop("published")  # the shared experts add 19 x 3 x 432 x 1280 weights to Table 1's counts
    data.update(name="wearable-moe-shared", n_shared_experts=1, shared_ffn_hidden=data["ffn_hidden"])
    data["sources"].update(n_shared_experts="test: one shared SwiGLU expert per MoE layer, taken by every token",
                           shared_ffn_hidden="test: the routed experts' width, 1280, so the cache can hold it")
    path = folder / "wearable-moe-shared.toml"
    path.write_text(to_toml(data))
    return path


@pytest.mark.parametrize("engine", ["des", "analytic"])
def test_a_cache_shared_experts_axis_moves_the_shared_experts_from_the_resident_weights_to_the_cache(
        tmp_path, traces, engine):
    arch = write_shared_arch(tmp_path)
    spec = spec_from_dict({"engine": engine, "axes": {
        "profile": ["wearable"], "arch": [str(arch)], "trace": ["bles0.npz"], "cache_experts": [60],
        "cache_shared_experts": [False, True], "tokens": [TOKENS]}}, base_dir=traces)
    assert [point.config.cache_shared_experts for point in grid(spec)] == [False, True]
    run_sweep(spec, tmp_path / "r", progress=False)
    rows = read_results(tmp_path / "r")
    assert rows["error"].isna().all(), rows["error"].tolist()
    resident, cached = rows.iloc[0], rows.iloc[1]
    assert rows["cache_shared_experts"].tolist() == [False, True] and rows["engine"].eq(engine).all()
    # By hand: 19 MoE layers of 8 routed experts, plus the shared one once cached; every expert (shared
    # too) a SwiGLU of 3 x 432 x 1280 16-bit weights, and the same 60 of them in the cache either way.
    expert_mb = 3 * 432 * 1280 * 2 / 1e6
    assert (resident["total_experts"], cached["total_experts"]) == (19 * 8, 19 * 9)
    assert resident["expert_mb"] == pytest.approx(expert_mb, rel=1e-12)
    assert cached["expert_mb"] == pytest.approx(expert_mb, rel=1e-12)
    assert resident["memory_expert_cache_mb"] == pytest.approx(60 * expert_mb, rel=1e-9)
    assert cached["memory_expert_cache_mb"] == pytest.approx(60 * expert_mb, rel=1e-9)
    # Cached, each layer's shared expert leaves the resident weights and its router row (432 16-bit
    # weights) joins them: fewer resident bytes ...
    moved_mb = 19 * (3 * 432 * 1280 - 432) * 2 / 1e6
    assert resident["memory_resident_weights_mb"] - cached["memory_resident_weights_mb"] \
        == pytest.approx(moved_mb, rel=1e-9)
    # ... and more flash reads: the shared experts, taken by every token, hold 19 of the 60 entries,
    # so the routed experts, whose misses are the flash reads, compete for the other 41.
    assert cached["flash_mb_per_token"] > resident["flash_mb_per_token"] > 0
    assert cached["tpot_ms_mean"] > resident["tpot_ms_mean"]
    # The row is the single run with --cache-shared-experts.
    single = run("wearable", traces / "bles0.npz", arch,
                 RunConfig(cache_experts=60, cache_shared_experts=True, tokens=TOKENS), engine)
    assert cached["flash_mb_per_token"] == single["flash_mb_per_token"]
    assert cached["tpot_ms_mean"] == single["tpot_ms"]["mean"]


# ---------------------------------------------------------------------------- resuming


class Stop(Exception):
    pass


def stop_after(n_parts: int):
    written = []

    def hook(path):
        written.append(path)
        if len(written) == n_parts:
            raise Stop
    return hook


def test_interrupted_sweep_resumes_to_exactly_the_rows_of_an_uninterrupted_one(tmp_path, spec_path):
    whole = run_sweep(spec_path, tmp_path / "whole", points_per_part=1, progress=False)
    assert whole.n_computed == whole.n_points == 8

    with pytest.raises(Stop):
        run_sweep(spec_path, tmp_path / "resumed", points_per_part=1, progress=False, on_part_written=stop_after(3))
    assert len(read_results(tmp_path / "resumed")) == 3
    (tmp_path / "resumed" / ".part-0000005.parquet.x.tmp").write_bytes(b"torn by a kill")  # left by a killed write
    again = run_sweep(spec_path, tmp_path / "resumed", points_per_part=2, progress=False)
    assert (again.n_already_done, again.n_computed) == (3, 5)
    assert not list((tmp_path / "resumed").glob(".part-*.tmp"))
    pd.testing.assert_frame_equal(read_results(tmp_path / "resumed"), read_results(tmp_path / "whole"))

    done = run_sweep(spec_path, tmp_path / "resumed", progress=False)
    assert (done.n_already_done, done.n_computed, done.parts_written) == (8, 0, 0)


@pytest.mark.parametrize("damage, message", [
    (lambda rows: rows.assign(stranger=1), "column 'stranger' is not a sweep column"),
    (lambda rows: rows.drop(columns=["hit_rate"]), "column 'hit_rate' is missing"),
    (lambda rows: rows.assign(hit_rate="high"), "column 'hit_rate' holds large_string, expected Float64"),
])
def test_a_foreign_part_names_its_file_and_column(tmp_path, spec_path, damage, message):
    out = tmp_path / "r"
    run_sweep(spec_path, out, progress=False)
    first = sorted(out.glob("part-*.parquet"))[0]
    foreign = out / "part-9999999.parquet"
    damage(pd.read_parquet(first).assign(point_id=lambda rows: rows["point_id"] + 10**6)).to_parquet(foreign)
    for action in (lambda: read_results(out), lambda: run_sweep(spec_path, out, progress=False)):
        with pytest.raises(InputError, match=f"{foreign}: {message}"):
            action()


def test_a_different_spec_or_trace_is_refused(tmp_path, traces, spec_path):
    run_sweep(spec_path, tmp_path / "r", progress=False)
    changed = write_spec(traces, **{**BASE_AXES, "policy": ["lru", "lfu"]})
    with pytest.raises(InputError, match="different sweep.*axes changed"):
        run_sweep(changed, tmp_path / "r", progress=False)
    with pytest.raises(InputError, match="different sweep.*engine changed|--engine"):
        run_sweep(spec_path.parent / "spec.toml", tmp_path / "r", engine="analytic", progress=False)


def test_a_changed_trace_file_is_refused(tmp_path):
    path = write_trace(tmp_path / "t.npz", stay=0.5, bles_lambda=None)
    spec = write_spec(tmp_path, profile=["wearable"], trace=["t.npz"], cache_experts=[40], tokens=[TOKENS])
    run_sweep(spec, tmp_path / "r", progress=False)
    write_trace(path, stay=0.5, bles_lambda=None, seed=7)
    with pytest.raises(InputError, match="traces changed"):
        run_sweep(spec, tmp_path / "r", progress=False)


def test_a_folder_that_is_not_a_sweep_is_refused(tmp_path, spec_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not an empty folder"):
        run_sweep(spec_path, tmp_path / "busy", progress=False)
    with pytest.raises(InputError, match="no sweep.json"):
        read_results(tmp_path / "busy")


# ---------------------------------------------------------------------------- parallel execution


def test_local_processes_give_the_rows_of_one_process(tmp_path, spec_path):
    run_sweep(spec_path, tmp_path / "one", progress=False)
    summary = run_sweep(spec_path, tmp_path / "two", workers=2, points_per_part=2, progress=False)
    assert summary.parts_written == 4
    pd.testing.assert_frame_equal(read_results(tmp_path / "two"), read_results(tmp_path / "one"))


def test_dask_local_cluster_gives_the_rows_of_one_process(tmp_path, spec_path):
    from distributed import LocalCluster

    run_sweep(spec_path, tmp_path / "one", progress=False)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1",
                      dashboard_address=None) as cluster:
        summary = run_sweep(spec_path, tmp_path / "dask", scheduler=cluster.scheduler_address, points_per_part=3,
                            progress=False)
    assert summary.n_computed == 8
    pd.testing.assert_frame_equal(read_results(tmp_path / "dask"), read_results(tmp_path / "one"))


def test_unreachable_scheduler_is_a_clear_error_after_the_timeout(tmp_path, spec_path):
    started = time.perf_counter()
    with pytest.raises(InputError, match=r"--scheduler tcp://127.0.0.1:9: no Dask scheduler answered within 1 s"):
        run_sweep(spec_path, tmp_path / "r", scheduler="tcp://127.0.0.1:9", connect_timeout_s=1, progress=False)
    assert time.perf_counter() - started < 15
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------- bad specs


@pytest.mark.parametrize("axes, message", [
    ({"colour": ["red"]}, "axes.colour: not a known axis"),
    ({"policy": ["fifo"]}, "axes.policy: 'fifo': expected one of lru"),
    ({"policy": []}, "axes.policy: empty"),
    ({"policy": "lru"}, "axes.policy: expected an array"),
    ({"policy": ["lru", "lru"]}, "axes.policy: a value is listed twice"),
    ({"weight_bits": ["q9_x"]}, "axes.weight_bits: 'q9_x': expected bits per weight in .1, 32. or a format"),
    ({"expert_bits": [0.5]}, "axes.expert_bits: 0.5: expected bits per weight"),
    ({"weight_bits": ["q4_K", 4.5]}, "axes.weight_bits: a value is listed twice"),
    ({"profile": ["nowhere"]}, "axes.profile: 'nowhere': unknown device profile"),
    ({"arch": ["phone-huge"]}, "axes.arch: 'phone-huge': expected one of"),
    ({"trace": ["missing.npz"]}, "axes.trace: .*missing.npz: no such trace file"),
    ({"trace": ["nothing-*.npz"]}, "axes.trace: 'nothing-\\*.npz' matches no file"),
    ({"trace": ["not-a-trace.npz"]}, "axes.trace: .*not a readable .npz trace"),
    ({"wd_rank": [5000]}, "axes.wd_rank: 5000: .*wd_rank must be an integer in"),
    ({"wd_rank": ["half"]}, "axes.wd_rank: 'half': expected an integer >= 1 or 'full'"),
    ({"cache_mb": [100], "cache_experts": [10]}, "give one cache-size axis"),
    ({"cache_fraction": [1.5]}, "axes.cache_fraction: 1.5: expected a fraction in"),
    ({"tokens": [0]}, "axes.tokens: 0: expected an integer >= 1"),
])
def test_bad_spec_values_are_one_line_input_errors(tmp_path, traces, axes, message):
    (tmp_path / "not-a-trace.npz").write_bytes(b"no zip here")
    for name in ("bles0.npz",):
        (tmp_path / name).write_bytes((traces / name).read_bytes())
    base = {"profile": ["wearable"], "trace": ["bles0.npz"]}
    with pytest.raises(InputError, match=message) as caught:
        load_spec(write_spec(tmp_path, **{**base, **axes}))
    assert "\n" not in str(caught.value) and "spec.toml" in str(caught.value)


@pytest.mark.parametrize("text, message", [
    (b"[axes\nprofile = 1", "not a valid UTF-8 TOML file"),
    (b"\xff\xfe", "not a valid UTF-8 TOML file"),
    (b'title = "x"\n[axes]\nprofile = ["wearable"]', "'title' is not a known key"),
    (b'name = "x"\n', "axes: expected a non-empty"),
    (b'[axes]\npolicy = ["lru"]', "axes.profile: required"),
    (b'[axes]\nprofile = ["wearable"]', "axes: give an arch axis, or a trace axis"),
    (b'[axes]\nprofile = ["wearable"]\narch = ["wearable-moe"]', "axes.trace: required"),
])
def test_unreadable_or_incomplete_specs_are_input_errors(tmp_path, text, message):
    path = tmp_path / "spec.toml"
    path.write_bytes(text)
    with pytest.raises(InputError, match=message):
        load_spec(path)
    with pytest.raises(InputError, match="no such sweep spec file"):
        load_spec(tmp_path / "absent.toml")


def test_bad_run_options_are_input_errors(tmp_path, spec_path):
    with pytest.raises(InputError, match="--engine: expected one of"):
        run_sweep(spec_path, tmp_path / "r", engine="quantum", progress=False)
    with pytest.raises(InputError, match="--workers: expected >= 1"):
        run_sweep(spec_path, tmp_path / "r", workers=0, progress=False)
    with pytest.raises(InputError, match="give one"):
        run_sweep(spec_path, tmp_path / "r", workers=2, scheduler="tcp://127.0.0.1:9", progress=False)


# ---------------------------------------------------------------------------- command line and CSV




def test_cli_sweep_with_csv_then_report(cli, tmp_path, spec_path):
    code, out, _ = cli("sweep", spec_path, "--out", tmp_path / "r", "--csv", tmp_path / "r.csv", "--quiet")
    assert code == 0 and out == ""
    frame = pd.read_csv(tmp_path / "r.csv")
    assert len(frame) == 8 and frame["point_id"].tolist() == list(range(8))
    assert json.loads((tmp_path / "r" / MANIFEST).read_text())["n_points"] == 8
    code, out, _ = cli("report", tmp_path / "r", "--out", tmp_path / "report.html")
    assert code == 0 and (tmp_path / "report.html").stat().st_size > 1_000_000  # plotly.js inlined


def test_cli_bad_spec_exits_2_with_one_line(cli, tmp_path, traces):
    spec = write_spec(tmp_path, profile=["wearable"], policy=["fifo"])
    code, _, err = cli("sweep", spec, "--out", tmp_path / "r")
    assert code == 2 and err.count("\n") == 1 and "axes.policy: 'fifo'" in err


def test_export_csv_round_trips_the_rows(tmp_path, spec_path):
    run_sweep(spec_path, tmp_path / "r", progress=False)
    rows = read_results(tmp_path / "r")
    back = pd.read_csv(export_csv(rows, tmp_path / "rows.csv"))
    assert list(back.columns) == list(rows.columns)
    assert back["tpot_ms_mean"].tolist() == pytest.approx(rows["tpot_ms_mean"].astype(float).tolist(), rel=1e-12)


def test_a_trace_without_target_arch_needs_an_arch_axis(tmp_path):
    save_trace(sticky_trace(n_tokens=256, n_layers=4, seq_len=64), tmp_path / "anonymous.npz")
    with pytest.raises(InputError, match="'anonymous.npz' names no target architecture.*add an arch axis"):
        load_spec(write_spec(tmp_path, profile=["wearable"], trace=["anonymous.npz"]))
    spec = load_spec(write_spec(tmp_path, profile=["wearable"], arch=["wearable-moe"], trace=["anonymous.npz"]))
    assert len(grid(spec)) == 1


def test_analytic_parts_are_vectorised_and_equal_to_single_runs(traces):
    """The analytic engine evaluates a whole part at once; every row equals the per-point path."""
    from cosmosim.sweep.evaluate import as_frame, evaluate_part, evaluate_point

    spec = spec_from_dict({"axes": {"profile": ["wearable", "phone"], "trace": ["bles0.npz"],
                                    "arch": ["wearable-moe", "wearable-dense-fa"], "policy": ["lru", "belady", "kactive"],
                                    "cache_fraction": [0.25, 0.5], "tokens": [TOKENS]}}, base_dir=traces)
    points = grid(spec)
    fast = evaluate_part(points, "analytic").drop(columns=["warnings"])
    one_by_one = as_frame([evaluate_point(point, "analytic") for point in points]).drop(columns=["warnings"])
    pd.testing.assert_frame_equal(fast, one_by_one, rtol=1e-9)
