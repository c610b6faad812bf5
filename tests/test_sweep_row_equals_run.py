"""A sweep row and `cosmosim run` describe the same point the same way (issue: the analytic frame
once rebuilt the cache by hand and skipped the per-layer rounding that `run` applies)."""

from pathlib import Path

import pandas as pd
import pytest

from cosmosim.analytic import evaluate_points
from cosmosim.runner import run
from cosmosim.scenario.settings import RunConfig
from cosmosim.sweep.evaluate import evaluate_point
from cosmosim.sweep.grid import grid
from cosmosim.sweep.spec import spec_from_dict

TRACE = Path(__file__).resolve().parent.parent / "traces" / "bles.npz"
TOKENS = 1500
# 19-layer wearable MoE: 50 and 45 are not multiples of 19, so per-layer partitions round them down.
POINTS = [dict(policy="lru", cache_experts=50, per_layer_cache=True), dict(policy="belady", cache_experts=45,
          per_layer_cache=True), dict(policy="lru", cache_experts=50), dict(policy="kactive")]


@pytest.mark.parametrize("point", POINTS, ids=lambda p: "-".join(str(v) for v in p.values()))
def test_an_analytic_frame_row_equals_run(point):
    row = evaluate_points(pd.DataFrame([{"profile": "wearable", "arch": "wearable-moe", "trace": str(TRACE),
                                         "tokens": TOKENS, **point}])).iloc[0]
    result = run("wearable", TRACE, "wearable-moe", RunConfig(tokens=TOKENS, **point), engine="analytic")
    assert row["cache_experts_used"] == result["inputs"]["cache_experts"]
    assert row["cache_mb_used"] == pytest.approx(result["inputs"]["cache_mb"], rel=1e-12)
    for column, value in (("hit_rate", result["hit_rate"]), ("tpot_ms_mean", result["tpot_ms"]["mean"]),
                          ("peak_dram_mb", result["peak_dram_mb"]), ("ttft_ms", result["ttft_ms"])):
        assert row[column] == pytest.approx(value, rel=1e-9), column


@pytest.mark.parametrize("engine", ["analytic", "des"])
def test_a_sweep_row_equals_run(engine):
    spec = spec_from_dict({"engine": engine, "axes": {
        "profile": ["wearable"], "trace": [str(TRACE)], "arch": ["wearable-moe"], "policy": ["lru"],
        "cache_experts": [50], "per_layer_cache": [True], "tokens": [TOKENS]}}, base_dir=TRACE.parent)
    (point,) = grid(spec)
    row = evaluate_point(point, spec.engine)
    result = run("wearable", TRACE, "wearable-moe", RunConfig(policy="lru", cache_experts=50, per_layer_cache=True,
                                                              tokens=TOKENS), engine=engine)
    assert row["cache_experts"] == result["inputs"]["cache_experts"] == 38
    assert row["hit_rate"] == pytest.approx(result["hit_rate"], rel=1e-9)
    assert row["tpot_ms_mean"] == pytest.approx(result["tpot_ms"]["mean"], rel=1e-9)
