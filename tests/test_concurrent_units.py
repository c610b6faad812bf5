"""Two compute units at once (a profile's `compute_classes.concurrent`): a MoE layer's shared experts run on
the attention unit beside the routed experts on theirs, so a step's expert phase lasts max(shared, routed).
Parsing, hand-worked step times with the shared experts hidden and exposed, and the simulator, the analytic
engine and the sweep frame against each other with misses."""

import copy
from dataclasses import replace

import pandas as pd
import pytest

from cosmosim.device.costs import StepCosts
from cosmosim.engines.analytic.frame import evaluate_points
from cosmosim.engines.analytic.outcomes import StatsCache
from cosmosim.engines.des import simulate
from cosmosim.errors import InputError
from cosmosim.inputs.arch import get_arch
from cosmosim.inputs.arch_files import find, to_toml
from cosmosim.inputs.profiles import load_profile, profile_from_dict, profiles_dir
from cosmosim.inputs.synthetic import synthesize, trace_from_experts
from cosmosim.inputs.trace import save_trace
from cosmosim.runner import run
from cosmosim.scenario.build import prepare
from cosmosim.scenario.settings import RunConfig
from cosmosim.workload.stream import DECODE, PREFILL
from test_analytic import assert_each_row_as_run_prices_it
from test_compute_classes import SLOW_EXPERTS, tiny_arch, tiny_dict

CONCURRENT = {**SLOW_EXPERTS, "concurrent": True}
FAST_EXPERTS = {**CONCURRENT, "expert_gemv_gflops": 4.0}  # an expert then takes its DRAM time, 49.152 µs


def tiny_shared():
    """The tiny arch with one shared expert of width 128: 3 x 64 x 128 = 24,576 weights, 49,152 FLOPs and
    49,152 bytes a token; 98.304 µs at the attention unit's 0.5 GFLOP/s (its DRAM time is 49.152 µs)."""
    return replace(tiny_arch(), name="tiny+shared", n_shared_experts=1)


def tiny(**classes):
    return profile_from_dict(tiny_dict(**classes), source="tiny.toml")


# ------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize("classes, message", [
    ({"concurrent": True}, "needs attention_unit and expert_unit naming two different units"),
    ({**SLOW_EXPERTS, "expert_unit": "npu", "concurrent": True}, "got 'npu' and 'npu'"),
    ({**SLOW_EXPERTS, "concurrent": "yes"}, r"concurrent must be true or false \(a TOML boolean\), got 'yes'"),
])
def test_concurrent_needs_two_named_units_and_a_boolean(classes, message):
    with pytest.raises(InputError, match=message) as error:
        tiny(**classes)
    assert str(error.value).startswith("tiny.toml: compute_classes.concurrent") and "\n" not in str(error.value)


def test_without_shared_experts_or_without_the_flag_every_cost_is_as_before():
    for arch, classes in ((tiny_arch(), CONCURRENT), (tiny_shared(), SLOW_EXPERTS)):
        costs = StepCosts.build(arch, tiny(**classes), 16)
        assert not costs.concurrent_shared and costs.concurrent_s(DECODE, 1) == 0.0
    plain = StepCosts.build(tiny_arch(), tiny(**SLOW_EXPERTS), 16)
    flagged = StepCosts.build(tiny_arch(), tiny(**CONCURRENT), 16)
    assert flagged.nonexpert_decode(100, 0) == plain.nonexpert_decode(100, 0)


def test_the_shared_experts_leave_the_non_expert_work_and_are_priced_on_their_own():
    together = StepCosts.build(tiny_shared(), tiny(**SLOW_EXPERTS), 16)
    apart = StepCosts.build(tiny_shared(), tiny(**CONCURRENT), 16)
    assert apart.concurrent_shared
    assert together.nonexpert_decode(3, 0).flops - apart.nonexpert_decode(3, 0).flops == 49_152
    assert together.nonexpert_decode(3, 0).dram_bytes - apart.nonexpert_decode(3, 0).dram_bytes == 49_152
    shared = apart.shared_op(DECODE, 1)
    assert (shared.flops, shared.dram_bytes, shared.memory_bound) == (49_152, 49_152, False)
    assert shared.time_s == pytest.approx(98.304e-6, rel=1e-12)
    prompt = apart.shared_op(PREFILL, 4)  # four tokens at the attention unit's 1 GFLOP/s GEMM rate
    assert prompt.flops == 4 * 49_152 and prompt.time_s == pytest.approx(196.608e-6, rel=1e-12)


# ------------------------------------------------------------------------------ by hand: every access a hit


def nonexpert_s(context: int) -> float:
    """The tiny arch's attention, norms and router at context c on the 0.5 GFLOP/s attention unit, plus the
    10 µs layer overhead (tests/test_compute_classes.py works the FLOPs)."""
    return (33_024 + 256 * context) / 0.5e9 + 10e-6


LM_HEAD_S = 4_096 / 0.5e9


@pytest.mark.parametrize("engine", ["des", "analytic"])
@pytest.mark.parametrize("classes, expert_s, exposed_s", [
    (SLOW_EXPERTS, None, 0.0),  # one timeline: the shared experts are non-expert work, then the routed expert
    (CONCURRENT, 196.608e-6, 0.0),  # the routed expert (196.608 µs) hides the shared one (98.304 µs)
    (FAST_EXPERTS, 49.152e-6, 98.304e-6 - 49.152e-6),  # the shared expert outlasts it by 49.152 µs
], ids=["one-timeline", "hidden", "exposed"])
def test_a_decode_token_by_hand(engine, classes, expert_s, exposed_s):
    arch, config = tiny_shared(), RunConfig(prompt_tokens=1, cache_experts=1)
    trace = trace_from_experts([[0]] * 10, seq_len=5, n_experts=2)
    profile = tiny(**classes)

    def token_s(context: int) -> float:
        if expert_s is None:
            return nonexpert_s(context) + 49_152 / 0.5e9 + 196.608e-6 + LM_HEAD_S
        return nonexpert_s(context) + max(98.304e-6, expert_s) + LM_HEAD_S

    if engine == "des":  # the second sequence's tokens: contexts 2..5
        records = simulate(prepare(profile, trace, arch, config))
        assert list(records.latency_s) == pytest.approx([token_s(c) for c in range(2, 6)], rel=1e-12)
    summary = run(profile, trace, arch, config, engine)
    assert summary["hit_rate"] == 1.0
    assert summary["tpot_ms"]["mean"] == pytest.approx(1e3 * sum(token_s(c) for c in range(2, 6)) / 4, rel=1e-9)
    time_ms = summary["breakdown"]["time_ms_per_token"]
    assert time_ms["shared_exposed"] == pytest.approx(1e3 * exposed_s, rel=1e-9, abs=1e-15)
    assert time_ms["flash_stall"] == pytest.approx(0.0, abs=1e-12)
    assert sum(time_ms.values()) == pytest.approx(summary["tpot_ms"]["mean"], rel=1e-9)


# ------------------------------------------------------------------------------ the engines with misses

# A phone whose NPU runs the dense work slowly at batch 1 (10 GFLOP/s GEMV) beside the CPU's routed experts.
PHONE_NPU = """
[compute_classes]
attention_gemv_gflops = 10
attention_unit = "npu"
expert_unit = "cpu"
lm_head_unit = "npu"
concurrent = true

[compute_classes.sources]
attention_gemv_gflops = "estimate: a test value, slow enough that the shared expert outlasts some routed phases"
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("concurrent")
    profile = folder / "phone-npu.toml"
    profile.write_text((profiles_dir() / "phone.toml").read_text().replace('name = "phone"', 'name = "phone-npu"')
                       + PHONE_NPU)
    data = copy.deepcopy(find("wearable-moe").data)
    data.update(name="wearable-shared", n_shared_experts=1, shared_ffn_hidden=640)
    data["sources"].update(n_shared_experts="a test shape", shared_ffn_hidden="a test shape")
    arch_path = folder / "wearable-shared.toml"
    arch_path.write_text(to_toml(data))
    trace = synthesize(exrep_target=0.3, n_layers=19, n_experts=8, top_k=2, n_tokens=2048, seq_len=128, seed=3)
    return {"profile": profile, "arch": arch_path, "trace": save_trace(trace, folder / "synthetic.npz")}


CONFIGS = [RunConfig(policy="lru", cache_experts=40, prompt_tokens=8), RunConfig(policy="lru", cache_experts=120),
           RunConfig(policy="belady", cache_experts=60), RunConfig(policy="kactive")]


@pytest.mark.parametrize("config", CONFIGS, ids=["lru-40", "lru-120", "belady-60", "kactive"])
def test_both_engines_agree_with_misses(files, config):
    assert StepCosts.build(get_arch(files["arch"]), load_profile(files["profile"]), 16).concurrent_shared
    des, analytic = (run(str(files["profile"]), str(files["trace"]), get_arch(files["arch"]), config, engine)
                     for engine in ("des", "analytic"))
    assert des["accesses"] == analytic["accesses"]
    assert analytic["ttft_ms"] == pytest.approx(des["ttft_ms"], rel=1e-9)
    assert analytic["tpot_ms"] == pytest.approx(des["tpot_ms"], rel=1e-9)
    for group, parts in des["breakdown"].items():
        assert analytic["breakdown"][group] == pytest.approx(parts, rel=1e-9, abs=1e-12), group
    exposed_ms = des["breakdown"]["time_ms_per_token"]["shared_exposed"]
    assert 0 < exposed_ms < 19 * 0.166  # all-hit steps expose the shared expert (166 µs at 10 GFLOP/s; two
    # routed ones take 97 µs), steps with a miss hide it


def test_the_sweep_frame_prices_each_point_as_run_does(files):
    points = pd.DataFrame([dict(profile=str(files["profile"]), arch=str(files["arch"]), trace=str(files["trace"]),
                                policy=config.policy, cache_experts=config.cache_experts, per_layer_cache=False,
                                prompt_tokens=config.prompt_tokens) for config in CONFIGS])
    points["cache_experts"] = points["cache_experts"].astype("Int64")
    assert_each_row_as_run_prices_it(points, evaluate_points(points, percentiles=True, cache=StatsCache()))
