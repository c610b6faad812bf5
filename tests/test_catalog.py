"""The metric catalogue: one definition per metric, and everything that names metrics agrees with it."""

import pandas as pd
import pytest

from cosmosim.engines.analytic.frame import METRIC_COLUMNS, PERCENTILE_COLUMNS, evaluate_points, frame_column
from cosmosim.engines.analytic.outcomes import StatsCache
from cosmosim.engines.replay.engine import MEASURED_PARTS
from cosmosim.host.validate import PART_MAP
from cosmosim.inputs.synthetic import sticky_trace
from cosmosim.inputs.trace import save_trace
from cosmosim.results import catalog, metrics_doc
from cosmosim.results.catalog import CATALOG, COLUMNS, MEASURED, MODELLED
from cosmosim.runner import run
from cosmosim.scenario.build import MEMORY_PARTS
from cosmosim.scenario.settings import RunConfig
from cosmosim.sweep.evaluate import RESULT_COLUMNS

# The result columns of the sweep format cosmosim-sweep/1, as results folders on disk hold them:
# renaming, retyping or reordering one makes those folders unreadable (a part of each kind cannot be
# concatenated), so the catalogue's columns must start with these. New columns go after them.
SWEEP_FORMAT_1 = {
    "cache_experts": "Int64", "cache_mb": "Float64", "expert_mb": "Float64", "total_experts": "Int64",
    "offloading_idle": "boolean", "requests": "Int64", "decode_tokens": "Int64", "ttft_ms": "Float64",
    "tpot_ms_mean": "Float64", "tpot_ms_p50": "Float64", "tpot_ms_p95": "Float64", "tpot_ms_p99": "Float64",
    "tokens_per_s": "Float64", "hit_rate": "Float64", "late_hit_rate": "Float64", "prefill_hit_rate": "Float64",
    "flash_mb_per_token": "Float64", "flash_utilisation": "Float64", "peak_dram_mb": "Float64",
    "memory_resident_weights_mb": "Float64", "memory_expert_cache_mb": "Float64", "memory_kv_cache_mb": "Float64",
    "memory_activations_mb": "Float64", "energy_mj_per_token": "Float64", "time_nonexpert_compute_ms": "Float64",
    "time_nonexpert_dram_ms": "Float64", "time_expert_compute_ms": "Float64", "time_expert_dram_ms": "Float64",
    "time_flash_stall_ms": "Float64", "time_layer_overhead_ms": "Float64", "time_lm_head_ms": "Float64",
    "energy_flash_mj": "Float64", "energy_dram_mj": "Float64", "energy_compute_mj": "Float64",
    "energy_static_mj": "Float64", "prefetch_issued": "Int64", "prefetch_accuracy": "Float64",
    "prefetch_wasted_mb": "Float64", "simulated_s": "Float64",
}


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("catalog") / "t.npz"
    return save_trace(sticky_trace(n_tokens=512, n_layers=19, seq_len=128, seed=3), path)


def leaf_keys(result: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in result.items():
        keys += leaf_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [prefix + key]
    return keys


def test_every_entry_is_whole_and_named_once():
    assert len({metric.key for metric in CATALOG}) == len(CATALOG)
    assert len({metric.column for metric in COLUMNS}) == len(COLUMNS)
    assert {metric.section for metric in CATALOG} == set(catalog.SECTIONS)
    for metric in CATALOG:
        assert metric.unit and metric.definition and "|" not in metric.definition and "\n" not in metric.definition
        assert metric.engines and set(metric.engines) <= set(catalog.EVERY), metric.key
        assert (metric.compared_as is not None) == metric.key.startswith(catalog.TIME_GROUP + "."), metric.key
    for metric in COLUMNS:
        assert metric.dtype in ("Float64", "Int64", "boolean") and set(MODELLED) <= set(metric.engines), metric.key


def test_the_sweep_columns_of_format_1_are_kept():
    assert list(RESULT_COLUMNS.items())[:len(SWEEP_FORMAT_1)] == list(SWEEP_FORMAT_1.items())


@pytest.mark.parametrize("engine", MODELLED)
def test_a_run_reports_exactly_the_catalogue_keys(trace_file, engine):
    result = run("wearable", trace_file, "wearable-moe", RunConfig(cache_experts=40, tokens=64), engine=engine)
    not_metrics = ("engine", "inputs", "provenance", "warnings", "verdict")  # verdict: cosmosim.results.verdict
    reported = [key for key in leaf_keys(result) if key.split(".")[0] not in not_metrics]
    assert sorted(reported) == sorted(metric.key for metric in catalog.computed_by(engine))
    for metric in COLUMNS:
        catalog.lookup(result, metric)  # the resolved inputs a sweep keeps are in the scenario's `inputs`


def test_the_analytic_frame_has_one_column_per_catalogue_column(trace_file):
    assert sorted((*METRIC_COLUMNS, *PERCENTILE_COLUMNS)) == sorted(map(frame_column, COLUMNS))
    point = pd.DataFrame([dict(profile="wearable", arch="wearable-moe", trace=str(trace_file), cache_experts=40)])
    out = evaluate_points(point, percentiles=True, cache=StatsCache())
    assert list(out.columns) == [*point.columns, *METRIC_COLUMNS, *PERCENTILE_COLUMNS]
    # Only a metric whose column is also an input column is renamed: the request and what it resolved to.
    assert {frame_column(m) for m in COLUMNS} - {m.column for m in COLUMNS} == {"cache_experts_used", "cache_mb_used"}


def test_nest_refuses_a_metric_the_catalogue_does_not_list_or_a_missing_one():
    values = {metric.key: 0 for metric in catalog.computed_by("replay")}
    nested = catalog.nest(values, "replay")
    assert nested["tpot_ms"]["p95"] == 0 and nested["breakdown"]["time_ms_per_token"]["bookkeeping"] == 0
    with pytest.raises(ValueError, match=r"not in the metric catalogue: \['tpot_ms.p90'\]"):
        catalog.nest({**values, "tpot_ms.p90": 0}, "replay")
    del values["read_mb"]
    with pytest.raises(ValueError, match=r"catalogued but not computed: \['read_mb'\]"):
        catalog.nest(values, "replay")


def test_the_parts_are_those_their_computations_book():
    assert catalog.parts(catalog.MEMORY_GROUP) == MEMORY_PARTS  # fields of cosmosim.scenario.build.Memory
    assert set(catalog.parts(catalog.TIME_GROUP, MEASURED[0])) == set(MEASURED_PARTS)  # the replay's timers


def test_validation_compares_every_time_part_once():
    assert PART_MAP == {
        "attention_router_overhead": (("attention_router", "bookkeeping"),
                                      ("nonexpert_compute", "nonexpert_dram", "layer_overhead")),
        "expert_compute": (("expert_compute",), ("expert_compute", "expert_dram", "shared_exposed", "miss_overhead")),
        "flash_wait": (("flash_wait",), ("flash_stall",)),
        "lm_head": (("lm_head",), ("lm_head",)),
    }
    for side, engine in ((0, MEASURED[0]), (1, MODELLED[0])):
        booked = [part for parts in PART_MAP.values() for part in parts[side]]
        assert sorted(booked) == sorted(catalog.parts(catalog.TIME_GROUP, engine))


def test_the_doc_tables_are_the_catalogue():
    text = metrics_doc.DOC.read_text(encoding="utf-8")
    assert metrics_doc.sections_in(text) == list(catalog.SECTIONS), "docs/metrics.md: one table per section"
    assert metrics_doc.render(text) == text, "docs/metrics.md differs from the catalogue: python -m cosmosim.results.metrics_doc"


def test_the_doc_check_sees_a_hand_edit():
    text = metrics_doc.DOC.read_text(encoding="utf-8")
    edited = text.replace("| `hit_rate` | `hit_rate` | fraction |", "| `hit_rate` | `hit_rate` | percent |")
    assert edited != text and metrics_doc.render(edited) == text
    with pytest.raises(ValueError, match="no catalogue section 'Throughput'"):
        metrics_doc.render("<!-- catalogue: Throughput -->\n<!-- /catalogue -->")
