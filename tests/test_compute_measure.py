"""calibrate's GEMV figure and the drift probe's repeats of it: the same weighted rate, checked by hand
on fixed timings (no clock)."""

from __future__ import annotations

import pytest

import cosmosim.host.compute_measure as compute_measure
from cosmosim.host.compute_measure import TINY, gemv_rates, matmul_shapes, measure_matmul
from cosmosim.host.effort import QUICK
from cosmosim.inputs.arch import get_arch

CALL_S = 1e-6  # the fake per-call cost


def fake_seconds(rows, shape, effort, repeats=1):
    """A tiny matrix costs CALL_S; any other costs CALL_S plus 1 ns per weight, x (1 + repeat)."""
    if shape == (TINY, TINY):
        return [CALL_S] * repeats
    return [CALL_S + shape[0] * shape[1] * 1e-9 * (1 + index) for index in range(repeats)]


def by_hand(arch, slowdown: float) -> float:
    """FLOP/s weighted by use per token: every use's FLOPs over every use's net seconds."""
    flops = seconds = 0.0
    for (out, inp), count in matmul_shapes(arch).items():
        flops += count * 2 * out * inp
        seconds += count * out * inp * 1e-9 * slowdown
    return flops / seconds


@pytest.fixture
def fixed_timings(monkeypatch):
    monkeypatch.setattr(compute_measure, "_seconds_per_linear", fake_seconds)


def test_calibrates_gemv_at_the_hand_weighted_rate(fixed_timings):
    arch = get_arch("wearable-moe")
    overall, per_shape, by_class = measure_matmul(arch, 1, QUICK, lambda message: None)
    assert overall == pytest.approx(by_hand(arch, 1.0))
    assert overall == pytest.approx(2e9)  # 2 FLOPs per weight at 1 ns per weight
    assert {row["class"] for row in per_shape} == set(by_class)


def test_the_probe_repeats_the_same_figure(fixed_timings):
    arch = get_arch("wearable-moe")
    rates = gemv_rates(arch, QUICK, 3)
    assert rates == pytest.approx([by_hand(arch, slowdown) for slowdown in (1.0, 2.0, 3.0)])
    assert rates[0] == pytest.approx(measure_matmul(arch, 1, QUICK, lambda message: None)[0])


def test_real_repeats_share_one_setup_and_each_is_a_positive_rate():
    rates = gemv_rates(get_arch("wearable-moe"), QUICK, 2)
    assert len(rates) == 2 and all(rate > 0 for rate in rates)
