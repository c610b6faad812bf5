"""The simulator's fast path (`engines/des/lru_path.py`) against its general path: equal records, to the
last bit, on every shipped trace and every setting the fast path takes; and the cases it must not take."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cosmosim.engines.des import Simulation
from cosmosim.engines.des.lru_path import takes_fast_path
from cosmosim.inputs.profiles import load_profile
from cosmosim.scenario.build import prepare
from cosmosim.scenario.settings import RunConfig

TRACES = sorted((Path(__file__).resolve().parent.parent / "traces").glob("*.npz"))
SETTINGS = [dict(cache_experts=38), dict(policy="kactive"), dict(cache_experts=76, per_layer_cache=True),
            dict(cache_experts=120, prompt_tokens=64, idle_gap_s=0.5), dict(cache_experts=40, miss_overhead=True)]


def records_of(scenario, fast_path: bool):
    simulation = Simulation(scenario, fast_path=fast_path)
    return simulation.run(), simulation


def assert_equal_records(fast, general):
    for name in ("latency_s", "flash_bytes", "flops", "dram_bytes", "token_end_s"):
        assert np.array_equal(getattr(fast, name), getattr(general, name)), name
    assert np.isnan(fast.token_load_s).all() and np.isnan(general.token_load_s).all()
    assert fast.ttft_s == general.ttft_s
    assert fast.breakdown_s == general.breakdown_s
    for outcome, counts in general.layer_outcomes.items():
        assert fast.layer_outcomes[outcome].tolist() == counts.tolist(), outcome
    assert fast.prefill_outcomes == general.prefill_outcomes
    assert (fast.total_s, fast.flash_busy_s, fast.peak_cache_entries) == \
        (general.total_s, general.flash_busy_s, general.peak_cache_entries)


@pytest.mark.parametrize("trace", TRACES, ids=lambda path: path.stem)
@pytest.mark.parametrize("setting", SETTINGS, ids=lambda setting: ",".join(f"{k}={v}" for k, v in setting.items()))
def test_the_fast_path_records_what_the_general_path_records(trace, setting):
    setting = dict(setting)
    profile = "wearable"
    if setting.pop("miss_overhead", False):
        wearable = load_profile("wearable")
        profile = replace(wearable, compute=replace(wearable.compute, miss_overhead_s=2e-4))
    scenario = prepare(profile, trace, None, RunConfig(tokens=1024, **setting))
    (fast, simulation), (general, _) = records_of(scenario, True), records_of(scenario, False)
    assert takes_fast_path(simulation)
    assert_equal_records(fast, general)
    assert fast.layer_outcomes["miss"].sum() > 0  # a case with misses to price


@pytest.mark.parametrize("setting", [dict(policy="lfu", cache_experts=38), dict(cache_experts=38, prefetch="next-layer"),
                                     dict(loader="mmap"), dict(expert_bits=4, hot_expert_bits=8,
                                                                                  cache_mb=50)])
def test_other_cases_take_the_general_path(setting):
    scenario = prepare("wearable", TRACES[0], None, RunConfig(tokens=256, **setting))
    assert not takes_fast_path(Simulation(scenario))


def test_a_timeline_takes_the_general_path():
    scenario = prepare("wearable", TRACES[0], None, RunConfig(tokens=256, cache_experts=38))
    assert takes_fast_path(Simulation(scenario)) and not takes_fast_path(Simulation(scenario, timeline=[]))
