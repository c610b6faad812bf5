"""The discrete-event simulator on tiny cases worked by hand, and its invariants."""

import pytest

from cosmosim.engines.des import simulate
from cosmosim.errors import InputError
from cosmosim.inputs.arch import Architecture
from cosmosim.inputs.synthetic import sticky_trace, trace_from_experts
from cosmosim.results.summary import summarize
from cosmosim.runner import run
from cosmosim.scenario.build import prepare
from cosmosim.scenario.settings import RunConfig

MIB = 1 << 20


TINY_DENSE = Architecture(name="tiny-dense", n_layers=2, d_model=64, n_heads=2, n_kv_heads=2, vocab_size=32,
                          ffn_hidden=128, n_experts=1, top_k=1, wd_rank=None)


def scenario_for(experts, seq_len, *, arch, profile, **config):
    trace = trace_from_experts(experts, seq_len=seq_len, n_experts=arch.n_experts)
    return prepare(profile, trace, arch, RunConfig(prompt_tokens=1, **config))


def test_hits_and_misses_cost_exactly_what_the_parts_add_up_to(tiny_profile, tiny_arch):
    # Sequence 1 is the warm-up; sequence 2: prompt expert 0 (miss), then decode 0, 1, 1, 0 with one
    # cache slot: hit, miss, hit, miss.
    scenario = scenario_for([[0]] * 5 + [[0], [0], [1], [1], [0]], seq_len=5, arch=tiny_arch(), profile=tiny_profile(),
                            cache_experts=1)
    records = simulate(scenario)
    costs = scenario.costs
    read_s = 100e-6 + costs.expert_bytes / 100e6  # latency + transfer: one request, idle device
    expected = []
    for position, miss in zip(range(1, 5), [False, True, False, True]):
        nonexpert = costs.nonexpert_decode(position + 1, 0).time_s + 10e-6
        expected.append(nonexpert + (read_s if miss else 0) + costs.expert_decode.time_s + costs.lm_head.time_s)
    assert records.latency_s == pytest.approx(expected, rel=1e-12)
    assert records.layer_outcomes["miss"].tolist() == [2] and records.layer_outcomes["hit"].tolist() == [2]
    prefill = costs.nonexpert_prefill(1, 0).time_s + 10e-6 + read_s + costs.expert_decode.time_s + costs.lm_head.time_s
    assert records.ttft_s == pytest.approx([prefill], rel=1e-12)


@pytest.mark.parametrize("queue_depth", [1, 2])
def test_two_misses_overlap_reads_with_compute(queue_depth, tiny_profile, tiny_arch):
    # top-2 of 4, cache of 2: the decode token needs experts 2 and 3, both misses.
    arch = tiny_arch(n_experts=4, top_k=2)
    scenario = scenario_for([[[0, 1]]] * 2 + [[[0, 1]], [[2, 3]]], seq_len=2, arch=arch, cache_experts=2,
                            profile=tiny_profile(queue_depth=queue_depth))
    records = simulate(scenario)
    costs = scenario.costs
    latency, transfer, compute = 100e-6, costs.expert_bytes / 100e6, costs.expert_decode.time_s
    router_done = costs.nonexpert_decode(2, 0).time_s + 10e-6
    first = router_done + latency + transfer
    # Queue depth 1: the second read's latency starts after the first read ends; 2: it overlaps.
    second = first + transfer + (latency if queue_depth == 1 else 0)
    end = max(second, first + compute) + compute
    assert records.latency_s == pytest.approx([end + costs.lm_head.time_s], rel=1e-12)
    assert records.breakdown_s["flash_stall"] == pytest.approx(end - router_done - 2 * compute, rel=1e-9)


def test_dense_architecture_runs_without_a_trace(tiny_profile):
    scenario = prepare(tiny_profile(), None, TINY_DENSE, RunConfig(prompt_tokens=4, tokens=512))
    result = summarize(scenario, simulate(scenario), "des")
    assert result["accesses"]["decode"] == 0 and result["flash_mb_per_token"] == 0
    assert result["inputs"]["decode_tokens"] == 2 * (256 - 4)
    assert result["inputs"]["policy"] is None and result["inputs"]["cache_experts"] == 0  # nothing cached, nothing echoed


@pytest.mark.parametrize("setting, flag", [(dict(policy="belady"), "--policy"), (dict(prefetch="oracle"), "--prefetch"),
                                           (dict(cache_mb=10.0), "--cache-mb"), (dict(per_layer_cache=True),
                                                                                  "--per-layer-cache")])
def test_cache_settings_for_a_dense_architecture_are_refused(tiny_profile, setting, flag):
    with pytest.raises(InputError, match=f"is dense: it has no experts to cache or prefetch, so drop {flag}$"):
        prepare(tiny_profile(), None, TINY_DENSE, RunConfig(**setting))


def test_a_dense_run_of_absurdly_many_tokens_is_refused_before_allocating(tiny_profile):
    with pytest.raises(InputError, match="--tokens: expected <= 10,000,000"):
        prepare(tiny_profile(), None, TINY_DENSE, RunConfig(tokens=10**9))


def test_results_are_deterministic_and_more_cache_never_hurts_belady(tiny_profile, tiny_arch):
    trace = sticky_trace(n_tokens=4096, n_layers=4, seq_len=128, seed=3)
    arch = tiny_arch(n_layers=4, n_experts=8, top_k=2)
    results = [run(tiny_profile(queue_depth=4), trace, arch, RunConfig(policy="belady", cache_experts=n))
               for n in (4, 8, 16, 4)]
    assert results[0] == results[3]
    for result in results:  # the time breakdown adds up to the mean TPOT
        assert sum(result["breakdown"]["time_ms_per_token"].values()) == pytest.approx(result["tpot_ms"]["mean"], rel=1e-9)
    misses = [r["accesses"]["miss"] for r in results[:3]]
    assert misses[0] >= misses[1] >= misses[2]
    lru = run(tiny_profile(queue_depth=4), trace, arch, RunConfig(policy="lru", cache_experts=8))
    assert results[1]["accesses"]["miss"] <= lru["accesses"]["miss"]
    assert results[1]["tpot_ms"]["mean"] <= lru["tpot_ms"]["mean"]


def test_kactive_equals_per_layer_lru_of_top_k(tiny_profile, tiny_arch):
    trace = sticky_trace(n_tokens=2048, n_layers=3, seq_len=128, seed=5)
    arch = tiny_arch(n_layers=3, n_experts=8, top_k=2)
    kactive = run(tiny_profile(), trace, arch, RunConfig(policy="kactive"))
    per_layer = run(tiny_profile(), trace, arch, RunConfig(policy="lru", cache_experts=6, per_layer_cache=True))
    assert kactive["accesses"] == per_layer["accesses"] and kactive["tpot_ms"] == per_layer["tpot_ms"]
    with pytest.raises(InputError, match="fixes the cache itself"):
        run(tiny_profile(), trace, arch, RunConfig(policy="kactive", cache_experts=6))


def test_oracle_prefetch_never_worse_and_next_layer_reports_accuracy(tiny_profile, tiny_arch):
    trace = sticky_trace(n_tokens=4096, n_layers=4, seq_len=128, stay=0.3, seed=1)
    arch = tiny_arch(n_layers=4, n_experts=8, top_k=2)
    config = dict(policy="lru", cache_experts=16)
    base = run(tiny_profile(queue_depth=4), trace, arch, RunConfig(**config))
    oracle = run(tiny_profile(queue_depth=4), trace, arch, RunConfig(prefetch="oracle", **config))
    guess = run(tiny_profile(queue_depth=4), trace, arch, RunConfig(prefetch="next-layer", **config))
    assert oracle["tpot_ms"]["mean"] < base["tpot_ms"]["mean"]
    assert oracle["prefetch"]["accuracy"] == pytest.approx(1.0)
    assert 0 < guess["prefetch"]["accuracy"] < 1 and guess["prefetch"]["issued"] > 0


def test_layer_mapping_warns_and_mismatched_experts_fail(tiny_profile, tiny_arch):
    trace = sticky_trace(n_tokens=1024, n_layers=2, seq_len=128)
    result = run(tiny_profile(), trace, tiny_arch(n_layers=4, n_experts=8, top_k=2), RunConfig(cache_experts=8))
    assert any("floor(i * 2 / 4)" in w for w in result["warnings"])
    assert len(result["hit_rate_per_layer"]) == 4
    with pytest.raises(InputError, match="top-2 of 8 experts"):
        run(tiny_profile(), trace, tiny_arch(n_layers=2, n_experts=4, top_k=2), RunConfig(cache_experts=8))


def test_whole_cache_means_offloading_idle(tiny_profile, tiny_arch):
    trace = sticky_trace(n_tokens=1024, n_layers=2, seq_len=128)
    result = run(tiny_profile(), trace, tiny_arch(n_layers=2, n_experts=8, top_k=2), RunConfig(cache_experts=100))
    assert result["inputs"]["offloading_idle"] and result["accesses"]["miss"] + result["accesses"]["prefill_miss"] <= 16
    assert any("offloading is idle" in w for w in result["warnings"])


def test_per_layer_partitions_report_the_cache_they_simulate(tiny_profile, tiny_arch):
    trace = sticky_trace(n_tokens=1024, n_layers=4, seq_len=128)
    result = run(tiny_profile(), trace, tiny_arch(n_layers=4, n_experts=8, top_k=2),
                 RunConfig(cache_experts=10, per_layer_cache=True))
    assert result["inputs"]["cache_experts"] == 8
    assert any("hold 8 (2 per layer)" in w for w in result["warnings"])
