"""Routed experts in two sizes (--expert-bits hot=BITS,cold=BITS): parsing, the byte-counting cache
against a plain byte LRU written here, both engines against each other and against hand-worked step
times, and the refusals."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cosmosim.device.cache import ExpertCache
from cosmosim.device.policies import POLICIES, PolicyContext
from cosmosim.engines.analytic.engine import access_hits, cache_layout
from cosmosim.engines.analytic.sized import sized_phase_s
from cosmosim.errors import InputError
from cosmosim.inputs.precision import parse_expert_bits
from cosmosim.inputs.profiles import FlashSpec, load_profile
from cosmosim.runner import run
from cosmosim.scenario.build import prepare
from cosmosim.scenario.settings import RunConfig
from cosmosim.workload.stream import DECODE, access_stream
from test_lru_reference import reference_lru_hits

TRACES = Path(__file__).resolve().parent.parent / "traces"
TOKENS = 8 * 128
HOT = dict(expert_bits=4, hot_expert_bits=8)


def test_expert_bits_read_one_size_or_two():
    assert parse_expert_bits("q4_K", "--expert-bits") == {"expert_bits": 4.5}
    assert parse_expert_bits("hot=q8_0,cold=4", "--expert-bits") == {"expert_bits": 4, "hot_expert_bits": 8.5}
    assert parse_expert_bits("hot=8, cold=4, count=16", "x")["hot_experts"] == 16
    assert parse_expert_bits("cold=4,hot=8,mb=12.5", "x")["hot_mb"] == 12.5


@pytest.mark.parametrize("text, expected", [
    ("hot=8", "both hot=BITS and cold=BITS"), ("hot=8,cold=4,count=2,mb=3", "not both"),
    ("hot=8,cold=4,warm=6", "expected hot=BITS"), ("hot=8,cold=4,count=two", "whole number"),
    ("hot=99,cold=4", "--expert-bits hot"), ("hot=8,hot=4", "expected hot=BITS"),
])
def test_bad_expert_bits_get_one_line(text, expected):
    with pytest.raises(InputError, match=expected) as error:
        parse_expert_bits(text, "--expert-bits")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("config, expected", [
    (RunConfig(**HOT, cache_experts=40), "--cache-experts: counts experts of one size"),
    (RunConfig(**HOT, cache_shared_experts=True), "--cache-shared-experts"),
    (RunConfig(**HOT, loader="mmap"), "--loader mmap"),
    (RunConfig(expert_bits=4, hot_experts=3), "--expert-bits hot= is not given"),
    (RunConfig(**HOT, hot_experts=3, hot_mb=5), "a count or a budget, not both"),
    (RunConfig(**HOT, hot_experts=10_000), "at most the 152 routed experts"),
    (RunConfig(**HOT, hot_mb=0.1), "holds no hot expert"),
    (RunConfig(**HOT, warmup_fraction=0), "warm-up routes nothing"),
    (RunConfig(**HOT, cache_mb=2), "smaller than top_k=2 of the largest experts"),
])
def test_contradictions_are_refused_in_one_line(config, expected):
    with pytest.raises(InputError, match=expected) as error:
        prepare("wearable", TRACES / "bles.npz", None, config)
    assert "\n" not in str(error.value)


def test_the_hot_experts_are_the_warm_ups_most_used():
    scenario = prepare("wearable", TRACES / "bles.npz", None, RunConfig(**HOT, tokens=TOKENS))
    sizes, usage = scenario.expert_sizes, scenario.workload.warmup_usage
    assert sizes.n_hot == 152 // 4  # the default: a quarter of them
    assert usage[sizes.hot_key].min() >= usage[~sizes.hot_key].max()
    assert sizes.hot_bytes == 2 * sizes.cold_bytes == scenario.arch.expert_bytes(8)
    budget = prepare("wearable", TRACES / "bles.npz", None, RunConfig(**HOT, hot_mb=10, tokens=TOKENS)).expert_sizes
    assert budget.n_hot == int(10e6 // sizes.hot_bytes)


@pytest.mark.parametrize("name, cache_mb, hot", [("bles.npz", 80, 38), ("bles.npz", 60, 20), ("moe.npz", 45, 60),
                                                 ("wd.npz", 40, 10)])
def test_both_engines_hit_what_a_plain_byte_lru_hits(name, cache_mb, hot):
    config = RunConfig(**HOT, hot_experts=hot, cache_mb=cache_mb, tokens=TOKENS)
    scenario = prepare("wearable", TRACES / name, None, config)
    key_bytes = scenario.expert_sizes.key_bytes
    expected = np.array(reference_lru_hits(access_stream(scenario.workload).steps(), int(cache_mb * 1e6),
                                           lambda key: int(key_bytes[key])))
    layout = cache_layout("lru", "none", scenario.cache, scenario.workload.n_layers, key_bytes)
    assert np.array_equal(access_hits(scenario.workload, layout), expected)
    decode = scenario.workload.step_kind[np.repeat(np.arange(scenario.workload.step_kind.size),
                                                   np.diff(scenario.workload.step_offsets))] == DECODE
    for engine in ("des", "analytic"):
        result = run("wearable", TRACES / name, None, config, engine=engine)
        assert result["accesses"]["hit"] == int(expected[decode].sum()), engine
    assert 0 < expected.mean() < 1


@pytest.mark.parametrize("extra", [dict(cache_mb=50), dict(cache_mb=100, per_layer_cache=True), dict(policy="kactive"),
                                   dict(cache_mb=400), dict(hot_experts=1, cache_mb=20)])
@pytest.mark.parametrize("miss_overhead_s", [0.0, 3e-4])
def test_the_engines_agree_with_experts_of_two_sizes(extra, miss_overhead_s):
    config = RunConfig(**HOT, tokens=TOKENS, prompt_tokens=16, **extra)
    wearable = load_profile("wearable")
    profile = replace(wearable, compute=replace(wearable.compute, miss_overhead_s=miss_overhead_s))
    des, analytic = (run(profile, TRACES / "bles.npz", None, config, engine=engine) for engine in ("des", "analytic"))
    assert des["accesses"] == analytic["accesses"]
    for key in ("flash_mb_per_token", "energy_mj_per_token", "peak_dram_mb"):
        assert des[key] == pytest.approx(analytic[key], rel=1e-9), key
    assert des["tpot_ms"]["mean"] == pytest.approx(analytic["tpot_ms"]["mean"], rel=1e-9)
    assert des["ttft_ms"] == pytest.approx(analytic["ttft_ms"], rel=1e-9)
    for part, ms in des["breakdown"]["time_ms_per_token"].items():
        assert ms == pytest.approx(analytic["breakdown"]["time_ms_per_token"][part], rel=1e-9, abs=1e-12), part


def test_two_equal_sizes_are_one_size():
    one = RunConfig(expert_bits=4, cache_mb=40, tokens=TOKENS)
    two = RunConfig(expert_bits=4, hot_expert_bits=4, cache_mb=40, tokens=TOKENS)
    for engine in ("des", "analytic"):
        a, b = (run("wearable", TRACES / "moe.npz", None, c, engine=engine) for c in (one, two))
        assert a["accesses"] == b["accesses"]
        assert a["tpot_ms"]["mean"] == pytest.approx(b["tpot_ms"]["mean"], rel=1e-12)


def test_hot_experts_cost_more_flash_and_time_than_cold_ones():
    base = dict(cache_mb=60, tokens=TOKENS)
    cold = run("wearable", TRACES / "bles.npz", None, RunConfig(expert_bits=4, **base))
    hot = run("wearable", TRACES / "bles.npz", None, RunConfig(**HOT, **base))
    assert hot["flash_mb_per_token"] > cold["flash_mb_per_token"]
    assert hot["tpot_ms"]["mean"] > cold["tpot_ms"]["mean"]
    assert hot["inputs"]["hot_experts"] == 38 and hot["inputs"]["hot_mb"] == pytest.approx(38 * 1.65888)
    assert hot["memory_mb"]["expert_cache"] == pytest.approx(60)  # what the cache reserves, in bytes


def test_belady_of_two_sizes_runs_as_a_heuristic_in_the_simulator_only():
    config = RunConfig(**HOT, policy="belady", cache_mb=50, tokens=TOKENS)
    assert run("wearable", TRACES / "bles.npz", None, config)["hit_rate"] > 0
    with pytest.raises(InputError, match="heuristic"):
        run("wearable", TRACES / "bles.npz", None, config, engine="analytic")


@pytest.mark.parametrize("policy, prefetch", [("lfu", "none"), ("pinned", "none"), ("lru", "next-layer"),
                                              ("belady", "oracle")])
def test_every_policy_keeps_a_byte_cache_within_its_bytes(policy, prefetch):
    scenario = prepare("wearable", TRACES / "bles.npz", None,
                       RunConfig(**HOT, policy=policy, prefetch=prefetch, cache_mb=40, tokens=TOKENS))
    assert run("wearable", TRACES / "bles.npz", None, scenario.config)["hit_rate"] > 0
    cache, key_bytes = scenario.expert_cache(), scenario.expert_sizes.key_bytes
    workload = scenario.workload
    for step in range(workload.step_kind.size):
        keys = workload.access_key[workload.step_offsets[step]:workload.step_offsets[step + 1]].tolist()
        for clock, key in zip(range(workload.step_offsets[step], workload.step_offsets[step + 1]), keys):
            if key not in cache:
                cache.insert(key, clock, 0.0, set(keys) if workload.step_kind[step] == DECODE else {key})  # as the DES pins
            cache.touch(key, clock)
        assert sum(int(key_bytes[key]) for key in cache.ready_s) <= 40_000_000


def test_a_pinned_cache_pins_what_fits_beside_top_k_of_the_largest():
    key_bytes = np.array([5, 1, 1, 5, 1, 1])
    context = PolicyContext(capacity=17, n_experts=6, top_k=2, next_use=np.zeros(0, np.int64),
                            warmup_usage=np.array([9, 8, 7, 6, 5, 4]), key_bytes=key_bytes)
    policy = POLICIES["pinned"](context)
    assert policy.pinned_keys == {0, 1, 2}  # 5 + 1 + 1 fit in 17 - 2 x 5; the next, 5 more, does not
    cache = ExpertCache(POLICIES["lru"], 10, 1, context, key_bytes=key_bytes.tolist())
    for clock, key in enumerate([0, 1, 2, 4, 3]):  # 5+1+1+1 = 8, then 5 more: evict 0 (5 bytes) and no more
        if key not in cache:
            cache.insert(key, clock, 0.0, {key})
        cache.touch(key, clock)
    assert set(cache.ready_s) == {1, 2, 4, 3} and cache.stats.evictions == 1


def test_a_steps_phase_is_priced_by_hand():
    """Two slots: a cold hit (compute 1 ms) and a hot miss (compute 2 ms, 8 MB at 1 GB/s after 0.1 ms).
    The hit computes at once; the miss's read arrives at 8.1 ms and its compute ends at 10.1 ms.
    Swapped (the miss cold: 4 MB, 4.1 ms; the hit hot): max(2 + 1, 4.1 + 1) = 5.1 ms."""
    flash = FlashSpec(bandwidth_curve=((4096, 1e9),), latency_s=1e-4, queue_depth=4, max_request_bytes=64 << 20)
    compute_s = np.array([[1e-3, 2e-3], [2e-3, 1e-3], [1e-3, 2e-3]])
    miss = np.array([[False, True], [False, True], [False, False]])
    nbytes = np.array([[4e6, 8e6], [8e6, 4e6], [4e6, 8e6]])
    assert sized_phase_s(flash, compute_s, miss, nbytes) == pytest.approx([10.1e-3, 5.1e-3, 3e-3])
