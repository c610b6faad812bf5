"""Sustained-load throttling worked by hand: a dense model on a slow device whose compute halves after
30 s of load, against a plain replay of the rule written here; the profile section's bad values."""

import dataclasses

import numpy as np
import pytest

from cosmosim.engines.des import simulate
from cosmosim.errors import InputError
from cosmosim.inputs.profile_options import ThrottleSpec
from cosmosim.inputs.profiles import profile_from_dict
from cosmosim.runner import run
from cosmosim.scenario.build import prepare
from cosmosim.scenario.settings import RunConfig
from cosmosim.workload.stream import DECODE

CURVE = ((0.0, 1.0), (30.0, 0.5))  # full speed, falling linearly to half at 30 s of load


def slow_profile(tiny_profile, throttle: ThrottleSpec | None):
    """The tiny device at a thousandth of its FLOP rate: a dense pass takes ~0.15 s, so a run lasts minutes."""
    base = tiny_profile()
    compute = dataclasses.replace(base.compute, gemv_flops_per_s=1e6, gemm_flops_per_s=2e6)
    return dataclasses.replace(base, compute=compute, throttle=throttle)


def replay_by_hand(kinds: list[int], base_s: list[float], spec: ThrottleSpec, idle_gap_s: float) -> list[float]:
    """Each pass at full speed takes base_s; throttled it takes base_s / compute_fraction(load at its start).
    The load grows with the clock while requests run and falls by cool_rate per idle second between them."""
    clock, load_at_request, request_start, durations = 0.0, 0.0, 0.0, []
    for i, (kind, base) in enumerate(zip(kinds, base_s)):
        if kind != DECODE:  # a request begins
            idle = idle_gap_s if i else 0.0
            served = clock - request_start
            clock += idle
            load_at_request = max(0.0, load_at_request + served - spec.cool_rate * idle)
            request_start = clock
        load = load_at_request + clock - request_start
        fraction = float(np.interp(load, *zip(*spec.compute_curve)))
        durations.append(base / fraction)
        clock += durations[-1]
    return durations


def pass_kinds_and_base(scenario) -> tuple[list[int], list[float]]:
    records = simulate(scenario)
    kinds = scenario.workload.step_kind[::scenario.workload.n_layers].tolist()
    decode, prefill = iter(records.latency_s.tolist()), iter(records.ttft_s)
    return kinds, [next(decode) if kind == DECODE else next(prefill) for kind in kinds]


@pytest.mark.parametrize("idle_gap_s, cool_rate", [(0.0, 1.0), (8.0, 2.0)])
def test_throttled_passes_follow_the_curve_at_their_load(tiny_profile, tiny_arch, idle_gap_s, cool_rate):
    spec = ThrottleSpec(compute_curve=CURVE, flash_curve=((0.0, 1.0),), cool_rate=cool_rate)
    arch = dataclasses.replace(tiny_arch(n_layers=2), n_experts=1, top_k=1)  # dense
    config = RunConfig(tokens=1024, dense_sequence_len=256, idle_gap_s=idle_gap_s)
    kinds, base_s = pass_kinds_and_base(prepare(slow_profile(tiny_profile, None), None, arch, config))
    expected = replay_by_hand(kinds, base_s, spec, idle_gap_s)

    throttled = prepare(slow_profile(tiny_profile, spec), None, arch, config)
    records = simulate(throttled)
    decode = [duration for kind, duration in zip(kinds, expected) if kind == DECODE]
    prefill = [duration for kind, duration in zip(kinds, expected) if kind != DECODE]
    np.testing.assert_allclose(records.latency_s, decode, rtol=1e-9)
    np.testing.assert_allclose(records.ttft_s, prefill, rtol=1e-9)
    n_requests = kinds.count(0)
    assert records.total_s == pytest.approx(sum(expected) + (n_requests - 1) * idle_gap_s, rel=1e-12)


def test_steady_state_tpot_is_twice_peak_and_above_the_first_minute(tiny_profile, tiny_arch):
    """Back to back the load is the clock: tokens starting after 30 s run at half speed, so the steady mean is
    exactly twice their full-speed mean; the first minute mixes full-speed and slowing tokens."""
    spec = ThrottleSpec(compute_curve=CURVE, flash_curve=((0.0, 1.0),), cool_rate=1.0)
    arch = dataclasses.replace(tiny_arch(n_layers=2), n_experts=1, top_k=1)  # dense
    config = RunConfig(tokens=1024, dense_sequence_len=256)
    base = run(slow_profile(tiny_profile, None), None, arch, config)
    result = run(slow_profile(tiny_profile, spec), None, arch, config)
    throttle = result["throttle"]
    assert base["throttle"]["tpot_steady_ms"] is None and base["throttle"]["steady_from_s"] is None

    records = simulate(prepare(slow_profile(tiny_profile, spec), None, arch, config))
    starts = records.token_end_s - records.latency_s
    steady = starts >= throttle["steady_from_s"]
    base_records = simulate(prepare(slow_profile(tiny_profile, None), None, arch, config))
    assert throttle["tpot_steady_ms"] == pytest.approx(2e3 * base_records.latency_s[steady].mean(), rel=1e-9)
    assert throttle["steady_from_s"] >= 30.0 and result["simulated_s"] > 60.0
    first_minute = records.latency_s[records.token_end_s <= 60.0]
    assert throttle["tpot_first_minute_ms"] == pytest.approx(1e3 * first_minute.mean())
    assert throttle["tpot_first_minute_ms"] < throttle["tpot_steady_ms"]
    assert base["tpot_ms"]["mean"] < result["tpot_ms"]["mean"]


def test_a_flash_throttled_to_half_reads_like_a_flash_of_half_the_bandwidth(tiny_profile, tiny_arch):
    """A flat flash curve at 0.5 and full compute: every read takes what it takes on a device with half
    the bandwidth (latency unchanged), so the two replays agree token for token."""
    from cosmosim.inputs.synthetic import sticky_trace

    trace = sticky_trace(n_tokens=1024, n_layers=2, seq_len=128, seed=4)
    arch, config = tiny_arch(n_layers=2, n_experts=8, top_k=2), RunConfig(cache_experts=4)
    spec = ThrottleSpec(compute_curve=((0.0, 1.0),), flash_curve=((0.0, 0.5),), cool_rate=1.0)
    throttled = run(dataclasses.replace(tiny_profile(mb_per_s=100.0), throttle=spec), trace, arch, config)
    halved = run(tiny_profile(mb_per_s=50.0), trace, arch, config)
    assert throttled["tpot_ms"]["mean"] == pytest.approx(halved["tpot_ms"]["mean"], rel=1e-12)
    assert throttled["flash_utilisation"] == pytest.approx(halved["flash_utilisation"], rel=1e-12)


def test_the_analytic_engine_refuses_a_throttled_profile(tiny_profile, tiny_arch):
    spec = ThrottleSpec(compute_curve=CURVE, flash_curve=((0.0, 1.0),), cool_rate=1.0)
    arch = dataclasses.replace(tiny_arch(), n_experts=1, top_k=1)  # dense
    with pytest.raises(InputError, match="throttles under sustained load.*use --engine des"):
        run(slow_profile(tiny_profile, spec), None, arch, RunConfig(tokens=256), engine="analytic")


GOOD = {"compute_curve": [{"load_s": 0, "fraction": 1.0}, {"load_s": 60, "fraction": 0.6}], "cool_rate": 0.5,
        "sources": {"compute_curve": "a measurement", "cool_rate": "estimate: a guess"}}


def test_a_throttle_section_parses_and_interpolates(tiny_profile_dict):
    spec = profile_from_dict({**tiny_profile_dict(), "throttle": GOOD}, source="t.toml").throttle
    assert spec.compute_curve == ((0.0, 1.0), (60.0, 0.6)) and spec.flash_curve == ((0.0, 1.0),)
    assert spec.compute_fraction(30) == pytest.approx(0.8) and spec.compute_fraction(600) == 0.6
    assert spec.steady_load_s == 60.0 and spec.flash_fraction(1e6) == 1.0


@pytest.mark.parametrize("change, message", [
    ({"compute_curve": [{"load_s": 5, "fraction": 1.0}]}, r"throttle.compute_curve\[0\].load_s must be 0"),
    ({"compute_curve": [{"load_s": 0, "fraction": 1.0}, {"load_s": 0, "fraction": 0.5}]}, r"\[1\].load_s must be >"),
    ({"compute_curve": [{"load_s": 0, "fraction": 1.5}]}, r"fraction must be in \(0, 1\]"),
    ({"compute_curve": [{"load_s": 0, "fraction": 0}]}, r"fraction must be in \(0, 1\]"),
    ({"compute_curve": [{"load_s": 0, "fraction": "fast"}]}, r"fraction must be a number"),
    ({"compute_curve": [{"load_s": 0}]}, r"\[0\].fraction is missing"),
    ({"compute_curve": []}, r"compute_curve must be an array of 1 to 64"),
    ({"cool_rate": -1}, r"throttle.cool_rate must be > 0"),
    ({"flash_curve": [{"load_s": 0, "fraction": 0.9}]}, r"throttle.sources.flash_curve is missing"),
    ({"hot": 1}, r"throttle.hot is not a known key"),
])
def test_bad_throttle_values_name_the_field(tiny_profile_dict, change, message):
    with pytest.raises(InputError, match=message):
        profile_from_dict({**tiny_profile_dict(), "throttle": {**GOOD, **change}}, source="t.toml")


def test_the_verdict_says_sustained_load_slows_the_device(tiny_profile, tiny_arch):
    spec = ThrottleSpec(compute_curve=CURVE, flash_curve=((0.0, 1.0),), cool_rate=1.0)
    arch = dataclasses.replace(tiny_arch(n_layers=2), n_experts=1, top_k=1)  # dense
    result = run(slow_profile(tiny_profile, spec), None, arch, RunConfig(tokens=1024, dense_sequence_len=256))
    throttle = result["throttle"]
    finding = next(f for f in result["verdict"]["findings"] if f["rule"] == "sustained_load")
    first, steady = throttle["tpot_first_minute_ms"], throttle["tpot_steady_ms"]
    assert finding["weight"] == pytest.approx((steady - first) / steady)
    shown = lambda ms: f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"  # noqa: E731  (how a verdict writes a figure)
    assert f"TPOT {shown(first)} ms in the first minute, {shown(steady)} ms at the steady state" in finding["line"]
    assert finding["suggestions"] == [{"flag": "--idle-gap-s", "value": None}]
    base = run(slow_profile(tiny_profile, None), None, arch, RunConfig(tokens=1024, dense_sequence_len=256))
    assert all(f["rule"] != "sustained_load" for f in base["verdict"]["findings"])
