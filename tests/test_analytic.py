"""The analytic model against the simulator it must agree with, and against plain references."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cosmosim.engines.analytic.engine import analyze
from cosmosim.engines.analytic.frame import evaluate_points, frame_column
from cosmosim.engines.analytic.latency import expert_phase_s
from cosmosim.engines.analytic.outcomes import StatsCache, _miss_count_table
from cosmosim.engines.analytic.reuse import COLD, lru_depths
from cosmosim.engines.des import simulate
from cosmosim.errors import InputError
from cosmosim.inputs.synthetic import sticky_trace, trace_from_experts
from cosmosim.inputs.trace import save_trace
from cosmosim.results import catalog
from cosmosim.runner import run
from cosmosim.scenario.build import prepare
from cosmosim.scenario.settings import RunConfig
from cosmosim.workload.stream import DECODE


def assert_same_records(des, analytic):
    for outcome, counts in des.layer_outcomes.items():
        assert analytic.layer_outcomes[outcome].tolist() == counts.tolist(), outcome
    assert analytic.prefill_outcomes == des.prefill_outcomes
    assert analytic.peak_cache_entries == des.peak_cache_entries
    for name in ("latency_s", "flash_bytes", "flops", "dram_bytes"):
        assert getattr(analytic, name) == pytest.approx(getattr(des, name), rel=1e-9), name
    assert analytic.ttft_s == pytest.approx(des.ttft_s, rel=1e-9)
    assert analytic.breakdown_s == pytest.approx(des.breakdown_s, rel=1e-9, abs=1e-12)  # DES: absolute-time rounding
    assert analytic.total_s == pytest.approx(des.total_s, rel=1e-9)
    assert analytic.flash_busy_s == pytest.approx(des.flash_busy_s, rel=1e-9)


def test_pinning_keeps_a_deep_expert_of_the_step_resident(tiny_profile, tiny_arch):
    # One layer, top-2 of 4, a global cache of 2. Prompt token (0, 1); decode (2, 3) misses twice; then
    # (1, 3): 3 is at depth 0, 1 at depth 2. Plain LRU would evict 3 when loading 1 and then miss 3;
    # the simulator pins the step's experts, so 3 stays: exactly one miss.
    arch = tiny_arch(n_experts=4, top_k=2)
    warmup = [[[0, 1]], [[0, 1]], [[0, 1]]]
    experts = warmup + [[[0, 1]], [[2, 3]], [[1, 3]]]
    trace = trace_from_experts(experts, seq_len=3, n_experts=4)
    scenario = prepare(tiny_profile(queue_depth=2), trace, arch, RunConfig(prompt_tokens=1, cache_experts=2))
    depths = lru_depths(scenario.workload)
    assert depths.tolist() == [COLD, COLD, COLD, COLD, 2, 0]  # read at the start of each decode step
    des, analytic = simulate(scenario), analyze(scenario)
    assert des.layer_outcomes["hit"].tolist() == [1] and des.layer_outcomes["miss"].tolist() == [3]
    assert_same_records(des, analytic)


def reference_depths(workload, per_layer):
    """Distinct keys (of the same partition) accessed since the key's last access, up to the step
    start (decode) or the access (prefill): the definition, computed the slow way."""
    keys, offsets = workload.access_key, workload.step_offsets
    n_experts = workload.n_experts
    depths = []
    for step, kind in enumerate(workload.step_kind):
        for clock in range(offsets[step], offsets[step + 1]):
            horizon = offsets[step] if kind == DECODE else clock
            key = keys[clock]
            earlier = np.flatnonzero(keys[:clock] == key)
            if earlier.size == 0:
                depths.append(COLD)
                continue
            between = keys[earlier[-1] + 1:horizon]
            if per_layer:
                between = between[between // n_experts == key // n_experts]
            depths.append(len(set(between.tolist())))
    return depths


@pytest.mark.parametrize("per_layer", [False, True])
def test_lru_depths_match_their_definition(per_layer, tiny_profile, tiny_arch):
    trace = sticky_trace(n_tokens=300, n_layers=3, seq_len=30, stay=0.3, seed=4)
    scenario = prepare(tiny_profile(), trace, tiny_arch(n_layers=3, n_experts=8, top_k=2),
                       RunConfig(prompt_tokens=3, cache_experts=6))
    assert lru_depths(scenario.workload, per_layer).tolist() == reference_depths(scenario.workload, per_layer)


@settings(max_examples=40, deadline=None)
@given(n_layers=st.integers(1, 3), n_experts=st.integers(2, 6), top_k=st.integers(1, 3), stay=st.floats(0, 0.9),
       seed=st.integers(0, 10_000), queue_depth=st.sampled_from([1, 3]), prompt_tokens=st.integers(1, 4),
       setup=st.sampled_from([("lru", False), ("lru", True), ("belady", False), ("belady", True), ("kactive", False)]),
       size=st.floats(0, 1), miss_overhead_us=st.sampled_from([None, 40.0]))
def test_analytic_records_equal_the_simulators(n_layers, n_experts, top_k, stay, seed, queue_depth, prompt_tokens, setup,
                                              size, miss_overhead_us, tiny_profile, tiny_arch):
    top_k = min(top_k, n_experts)
    policy, per_layer = setup
    trace = sticky_trace(n_tokens=240, n_layers=n_layers, n_experts=n_experts, top_k=top_k, seq_len=24, stay=stay,
                         seed=seed)
    arch = tiny_arch(n_layers=n_layers, n_experts=n_experts, top_k=top_k)
    partitions = n_layers if per_layer else 1
    per_partition = top_k + round(size * (n_experts * n_layers // partitions - top_k))
    cache = None if policy == "kactive" else per_partition * partitions
    config = RunConfig(policy=policy, cache_experts=cache, per_layer_cache=per_layer, prompt_tokens=prompt_tokens)
    scenario = prepare(tiny_profile(queue_depth=queue_depth, latency_us=150, miss_overhead_us=miss_overhead_us), trace,
                       arch, config)
    assert_same_records(simulate(scenario), analyze(scenario))


def fold(ready, compute):
    """The simulator's rule written out: each job starts when ready and the unit is free."""
    end = 0.0
    for r, c in sorted(zip(ready, compute), key=lambda pair: pair[0]):
        end = max(end, r) + c
    return end


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 1e-3)), min_size=1, max_size=8),
       st.lists(st.floats(1e-6, 1e-3), min_size=8, max_size=8))
def test_expert_phase_closed_form_is_the_fold(accesses, gaps):
    miss = np.array([m for m, _ in accesses])
    compute = np.array([c for _, c in accesses])
    read_done = np.cumsum(gaps)  # reads of one size end in issue order
    ready = np.where(miss, read_done[np.maximum(np.cumsum(miss) - 1, 0)], 0.0)
    assert expert_phase_s(compute, miss, read_done) == pytest.approx(fold(ready, compute), rel=1e-12, abs=1e-18)


def test_miss_count_table_counts_steps_by_misses():
    depths = np.array([[0, 5], [1, 2], [3, COLD], [COLD, COLD]])
    table = _miss_count_table(depths, max_capacity=6)
    for capacity in range(7):
        misses = (depths >= capacity).sum(axis=1)
        assert table[capacity].tolist() == np.bincount(misses, minlength=3).tolist()


def test_analytic_engine_refuses_what_it_does_not_model(tiny_profile, tiny_arch):
    trace = sticky_trace(n_tokens=512, n_layers=2, seq_len=64)
    arch = tiny_arch(n_layers=2, n_experts=8, top_k=2)
    with pytest.raises(InputError, match="--prefetch oracle is not modelled"):
        run(tiny_profile(), trace, arch, RunConfig(prefetch="oracle", cache_experts=4), engine="analytic")
    with pytest.raises(InputError, match="--policy lfu is not modelled"):
        run(tiny_profile(), trace, arch, RunConfig(policy="lfu", cache_experts=4), engine="analytic")
    with pytest.raises(InputError, match="--engine: expected one of des, analytic"):
        run(tiny_profile(), trace, arch, RunConfig(cache_experts=4), engine="closed")


def test_both_engines_report_the_same_keys(tiny_profile, tiny_arch):
    trace = sticky_trace(n_tokens=1024, n_layers=2, seq_len=128, seed=6)
    arch = tiny_arch(n_layers=2, n_experts=8, top_k=2)
    des = run(tiny_profile(), trace, arch, RunConfig(cache_experts=6), engine="des")
    analytic = run(tiny_profile(), trace, arch, RunConfig(cache_experts=6), engine="analytic")
    assert analytic.keys() == des.keys() and analytic["engine"] == "analytic"
    assert analytic["tpot_ms"] == pytest.approx(des["tpot_ms"], rel=1e-9)
    assert analytic["accesses"] == des["accesses"]


# -- evaluate_points ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trace_file(tmp_path_factory):
    trace = sticky_trace(n_tokens=1536, n_layers=19, seq_len=128, seed=7)
    return save_trace(trace, tmp_path_factory.mktemp("traces") / "sticky.npz")


def design_points(trace_file):
    rows = [
        dict(profile="wearable", arch="wearable-moe", policy="lru", cache_experts=40),
        dict(profile="wearable", arch="wearable-moe", policy="lru", cache_experts=152),
        dict(profile="wearable", arch="wearable-moe", policy="lru", cache_experts=76, per_layer_cache=True),
        dict(profile="phone", arch="wearable-moe", policy="belady", cache_experts=30),
        dict(profile="phone", arch="wearable-moe", policy="belady", cache_experts=95, per_layer_cache=True),
        dict(profile="phone", arch="phone-moe", policy="kactive", weight_bits=8, prompt_tokens=4),
        dict(profile="phone", arch="phone-moe", policy="lru", wd_rank=360, cache_mb=2000.0),
        dict(profile="wearable", arch="wearable-wd", wd_rank="full", policy="lru", weight_bits=4),  # budget default
        dict(profile="wearable", arch="wearable-dense-fa", tokens=600),
    ]
    points = pd.DataFrame(rows)
    points["trace"] = [None if arch.endswith("dense-fa") else str(trace_file) for arch in points["arch"]]
    points["cache_experts"] = points["cache_experts"].astype("Int64")
    points["per_layer_cache"] = points["per_layer_cache"].fillna(False).astype(bool)
    return points


def expected_row(point) -> dict:
    """`run(engine="analytic")` of one point, flattened the way evaluate_points names its columns."""
    value = lambda name: None if pd.isna(point.get(name, None)) else point[name]  # noqa: E731
    from cosmosim.inputs.arch import get_arch

    arch = get_arch(point["arch"])
    rank = value("wd_rank")
    if rank is not None:
        arch = arch.with_wd_rank(None if rank == "full" else int(rank))
    config = RunConfig(policy=value("policy") or "lru", per_layer_cache=bool(point["per_layer_cache"]),
                       cache_experts=None if value("cache_experts") is None else int(point["cache_experts"]),
                       cache_mb=value("cache_mb"), weight_bits=int(value("weight_bits") or 16),
                       prompt_tokens=int(value("prompt_tokens") or 16),
                       tokens=None if value("tokens") is None else int(point["tokens"]))
    result = run(point["profile"], value("trace"), arch, config, engine="analytic")
    return {frame_column(metric): catalog.lookup(result, metric) for metric in catalog.COLUMNS}


def assert_each_row_as_run_prices_it(points, out) -> None:
    """Every metric column of `out` (evaluate_points of `points`) equals `run --engine analytic` of its row."""
    for label, point in points.iterrows():
        for name, expected in expected_row(point).items():
            got = out.loc[label, name]
            if expected is None:
                assert pd.isna(got), (label, name)
            else:
                assert float(got) == pytest.approx(float(expected), rel=1e-9, abs=1e-12), (label, name)


def test_evaluate_points_equals_the_analytic_engine_row_by_row(trace_file):
    points = design_points(trace_file)
    out = evaluate_points(points, percentiles=True, cache=StatsCache())
    assert list(out.columns[:len(points.columns)]) == list(points.columns)
    assert_each_row_as_run_prices_it(points, out)


def test_evaluate_points_reuses_statistics_and_rereads_a_changed_trace(tmp_path):
    path = save_trace(sticky_trace(n_tokens=1024, n_layers=19, seq_len=128, seed=1), tmp_path / "t.npz")
    points = pd.DataFrame([dict(profile="wearable", arch="wearable-moe", trace=str(path), cache_experts=40)])
    cache = StatsCache()
    first = evaluate_points(points, cache=cache)
    assert evaluate_points(points, cache=cache)["tpot_ms_mean"].item() == first["tpot_ms_mean"].item()
    save_trace(sticky_trace(n_tokens=1024, n_layers=19, seq_len=128, stay=0.0, seed=2), path)
    changed = evaluate_points(points, cache=cache)
    assert changed["hit_rate"].item() < first["hit_rate"].item()  # no locality left: the new file was read


@pytest.mark.parametrize("row, expected", [
    (dict(policy="fifo"), "points row 0: --policy: expected one of"),
    (dict(policy="lfu", cache_experts=40), "points row 0: --engine analytic: --policy lfu is not modelled"),
    (dict(prefetch="oracle", cache_experts=40), "--prefetch oracle is not modelled"),
    (dict(cache_experts=1), "smaller than top_k=2"),
    (dict(cache_experts=2.5), "column cache_experts: expected an integer, got 2.5"),
    (dict(wd_rank="half"), "column wd_rank: expected an integer rank or 'full', got 'half'"),
    (dict(arch="phone-xl"), "unknown architecture 'phone-xl'"),
    (dict(trace="missing.npz"), "missing.npz: no such trace file"),
    (dict(arch="wearable-dense-fa"), "is dense: it routes nothing, so drop --trace"),
])
def test_evaluate_points_bad_input_names_the_row(trace_file, row, expected):
    point = {"profile": "wearable", "arch": "wearable-moe", "trace": str(trace_file), **row}
    with pytest.raises(InputError) as error:
        evaluate_points(pd.DataFrame([point]), cache=StatsCache())
    assert expected in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(InputError, match="column 'arch' is missing"):
        evaluate_points(pd.DataFrame([dict(profile="wearable")]))


def test_evaluate_points_can_record_errors_per_row(trace_file):
    points = pd.DataFrame([dict(profile="wearable", arch="wearable-moe", trace=str(trace_file), cache_experts=size)
                           for size in (40, 1)])
    out = evaluate_points(points, on_error="record", cache=StatsCache())
    assert pd.isna(out.loc[0, "error"]) and out.loc[0, "tpot_ms_mean"] > 0
    assert "smaller than top_k=2" in out.loc[1, "error"] and pd.isna(out.loc[1, "tpot_ms_mean"])
    assert pd.isna(out.loc[1, "offloading_idle"]) and pd.isna(out.loc[1, "cache_experts_used"])


# -- command line ---------------------------------------------------------------------------------------



def test_cli_engine_analytic_writes_the_same_keys(cli, tmp_path, trace_file):
    import json

    outputs = {}
    for engine in ("des", "analytic"):
        path = tmp_path / f"{engine}.json"
        code, out, _ = cli("run", "--profile", "wearable", "--trace", str(trace_file), "--arch", "wearable-moe",
                           "--cache-experts", "40", "--engine", engine, "--json", str(path))
        assert code == 0 and f"engine {engine}" in out
        outputs[engine] = json.loads(path.read_text())
    assert outputs["analytic"].keys() == outputs["des"].keys()
    assert outputs["analytic"]["accesses"] == outputs["des"]["accesses"]


@pytest.mark.parametrize("args, expected", [
    (["--engine", "closed"], "--engine: expected one of des, analytic, got 'closed'"),
    (["--engine", "analytic", "--policy", "pinned"], "--policy pinned is not modelled"),
    (["--engine", "analytic", "--timeline", "{tmp}/t.json"], "--timeline: only --engine des has a timeline"),
])
def test_cli_engine_bad_input_is_one_line_and_exit_2(cli, tmp_path, trace_file, args, expected):
    base = ["run", "--profile", "wearable", "--trace", str(trace_file), "--arch", "wearable-moe", "--cache-experts", "40"]
    code, out, err = cli(*base, *[a.format(tmp=tmp_path) for a in args])
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err + out
