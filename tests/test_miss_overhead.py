"""The profile's per-miss overhead: an optional, cited figure that a decode miss adds to its expert's compute."""

import numpy as np
import pytest

from cosmosim.engines.analytic.engine import analyze
from cosmosim.engines.des import simulate
from cosmosim.errors import InputError
from cosmosim.inputs.profiles import load_profile, profile_from_dict, shipped_profiles
from cosmosim.inputs.synthetic import sticky_trace
from cosmosim.scenario.build import prepare
from cosmosim.scenario.settings import RunConfig

OVERHEAD_US = 250.0


@pytest.mark.parametrize("name", shipped_profiles())
def test_a_profile_without_the_key_prices_no_overhead(name):
    assert load_profile(name).compute.miss_overhead_s == 0.0


def test_the_key_is_cited_and_positive_when_given(tiny_profile_dict):
    assert profile_from_dict(tiny_profile_dict(miss_overhead_us=12.5), source="t.toml").compute.miss_overhead_s == 12.5e-6
    uncited = tiny_profile_dict(miss_overhead_us=12.5)
    del uncited["compute"]["sources"]["miss_overhead_us"]
    with pytest.raises(InputError, match=r"t\.toml: compute\.sources\.miss_overhead_us is missing"):
        profile_from_dict(uncited, source="t.toml")
    with pytest.raises(InputError, match=r"t\.toml: compute\.miss_overhead_us"):
        profile_from_dict(tiny_profile_dict(miss_overhead_us=0), source="t.toml")


@pytest.mark.parametrize("engine", [simulate, analyze])
def test_each_miss_adds_its_overhead_once_when_misses_never_overlap(engine, tiny_profile, tiny_arch):
    """Top-1 routing and a one-expert cache: every decode step misses at most once, and its read starts
    after the previous step ended, so nothing can hide the overhead. The hand-derived answer: each
    token's latency grows by its misses x the overhead, the breakdown books exactly that, and the
    time waiting for flash does not change."""
    arch = tiny_arch(n_layers=2, n_experts=4, top_k=1)
    trace = sticky_trace(n_tokens=64, n_layers=2, n_experts=4, top_k=1, seq_len=16, stay=0.3, seed=5)
    config = RunConfig(cache_experts=1, prompt_tokens=2)
    plain, slowed = (engine(prepare(tiny_profile(miss_overhead_us=overhead), trace, arch, config))
                     for overhead in (None, OVERHEAD_US))
    assert plain.layer_outcomes["miss"].sum() > len(plain.latency_s)  # the case has misses to price
    misses_per_token = (slowed.latency_s - plain.latency_s) / (OVERHEAD_US * 1e-6)
    np.testing.assert_allclose(misses_per_token, np.round(misses_per_token), atol=1e-6)
    assert round(misses_per_token.sum()) == slowed.layer_outcomes["miss"].sum()
    assert slowed.breakdown_s["miss_overhead"] == pytest.approx(slowed.layer_outcomes["miss"].sum() * OVERHEAD_US * 1e-6)
    assert plain.breakdown_s["miss_overhead"] == 0.0
    assert slowed.breakdown_s["flash_stall"] == pytest.approx(plain.breakdown_s["flash_stall"], rel=1e-9, abs=1e-12)
    assert slowed.ttft_s == plain.ttft_s  # prefill misses are not priced with it
