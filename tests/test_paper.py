"""The CoSMoEs BlES speed-up reproduction: its synthetic routing, its one fitted parameter, its prediction."""

import json

import numpy as np
import pytest

from cosmosim.cli import main
from cosmosim.engines.analytic.paper import (
    BLES,
    LINKS,
    NO_OFFLOAD_TOKENS_PER_S,
    OFFLOAD,
    kactive_swaps,
    predict,
    swaps,
    synthetic_routing,
)
from cosmosim.errors import InputError
from cosmosim.inputs.arch import get_arch
from cosmosim.inputs.locality import exrep


def test_synthetic_routing_has_the_asked_exrep_and_says_it_is_synthetic():
    trace = synthetic_routing(0.3, n_sequences=20, seed=1)
    assert trace.experts.shape == (20 * 129, 24, 2) and trace.path is None
    assert exrep(trace.experts, trace.positions)[0] == pytest.approx(0.3, abs=0.01)
    assert trace.meta["source"].startswith("synthetic") and trace.meta["target_arch"] == "phone-moe"
    assert exrep(synthetic_routing(0.0, n_sequences=10).experts, trace.positions[:10 * 129])[0] == 0.0
    with pytest.raises(InputError, match="exrep: expected a fraction"):
        synthetic_routing(1.5)


def test_kactive_swaps_one_expert_per_replacement():
    # Under kactive a layer swaps in exactly the experts its selection gained: L * K * ExRep per token.
    measured, misses = kactive_swaps(0.25, n_sequences=20, seed=2)
    assert misses.shape == (18 * 128, 24)  # the warm-up tenth is not replayed
    assert misses.sum(axis=1).mean() == pytest.approx(24 * 2 * measured, rel=0.03)


def test_a_swap_costs_its_bytes_over_the_link():
    link = LINKS["pcie4"]
    assert link.bytes_per_s == pytest.approx(16e9 * 16 * 128 / 130 / 8)
    result = swaps(OFFLOAD, link, n_sequences=20, seed=3)
    expert_bytes = get_arch("phone-moe").expert_bytes(16)
    assert result.swap_s_per_token == pytest.approx(result.experts_per_token * expert_bytes / link.bytes_per_s, rel=1e-12)


def test_the_fitted_overhead_reproduces_the_offload_row():
    prediction = predict("pcie4", "layer", n_sequences=20)
    per_token_s = 1 / NO_OFFLOAD_TOKENS_PER_S + 24 * prediction.overhead_ms_per_layer / 1e3 + prediction.offload.swap_s_per_token
    assert 1 / per_token_s == pytest.approx(OFFLOAD.tokens_per_s, rel=1e-12)
    assert prediction.speedup == pytest.approx(prediction.bles_tokens_per_s / OFFLOAD.tokens_per_s)


def test_bles_prediction_on_pcie4_is_within_ten_percent_and_moves_with_bandwidth():
    by_link = {name: predict(name, "layer") for name in LINKS}
    assert abs(by_link["pcie4"].bles_error) < 0.10
    # A faster link leaves more of the offload row's time to the per-layer overhead, which BlES
    # does not remove: the predicted speed-up shrinks as the bandwidth grows.
    speedups = [by_link[name].speedup for name in ("pcie3", "pcie4", "pcie5")]
    assert speedups[0] > speedups[1] > speedups[2] > 1
    assert by_link["pcie3"].overhead_ms_per_layer < 0 < by_link["pcie4"].overhead_ms_per_layer
    assert np.isclose(BLES.tokens_per_s / OFFLOAD.tokens_per_s, 1.538, atol=1e-3)


def test_cli_bles_speedup(capsys, tmp_path):
    out_json = tmp_path / "bles.json"
    with pytest.raises(SystemExit) as stop:
        main(["paper", "bles-speedup", "--sequences", "20", "--json", str(out_json)])
    out, _ = capsys.readouterr()
    assert stop.value.code == 0 and "BlES: predicted" in out and "PCIe 5.0" in out
    result = json.loads(out_json.read_text())
    assert result["prediction"]["link"] == "PCIe 4.0 x16" and len(result["sensitivity"]) == 6


@pytest.mark.parametrize("args, expected", [
    (["--link", "pcie9"], "--link: expected one of pcie3, pcie4, pcie5, got 'pcie9'"),
    (["--overhead", "token"], "--overhead: expected one of layer, swap"),
    (["--sequences", "3"], "--sequences: expected >= 10"),
])
def test_cli_bles_speedup_bad_input(capsys, args, expected):
    with pytest.raises(SystemExit) as stop:
        main(["paper", "bles-speedup", *args])
    out, err = capsys.readouterr()
    assert stop.value.code == 2 and expected in err and len(err.strip().splitlines()) == 1


def test_the_documented_prediction():
    """The figures quoted in docs/analytic-model.md and the README (PCIe 4.0, per-layer overhead)."""
    prediction = predict("pcie4", "layer")
    assert prediction.overhead_ms_per_layer == pytest.approx(0.825, abs=0.0005)
    assert prediction.bles_tokens_per_s == pytest.approx(20.94, abs=0.005)
