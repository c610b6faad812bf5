"""Compute by operation class (a profile's optional [compute_classes] section): parsing good and bad values,
the default costs unchanged bit for bit on every shipped profile, hand-worked roofline costs with the experts
on a slow unit, both engines pricing through them, and the docs' TOML examples of the optional sections."""

import copy
import re
import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cosmosim.device.costs import Rates, StepCosts, roofline
from cosmosim.engines.des import simulate
from cosmosim.errors import InputError
from cosmosim.inputs.arch import Architecture, get_arch
from cosmosim.inputs.profile_options import ComputeClasses, OpClassCompute, PageCacheSpec
from cosmosim.inputs.profiles import load_profile, profile_from_dict, profiles_dir, shipped_profiles
from cosmosim.inputs.synthetic import trace_from_experts
from cosmosim.runner import run
from cosmosim.scenario.build import prepare
from cosmosim.scenario.settings import RunConfig
from cosmosim.workload.stream import DECODE, PREFILL

SOURCE = "device_profiles/x.toml"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "device-profiles.md"
CLASS_KEYS = ("attention_gemv_gflops", "attention_gemm_gflops", "expert_gemv_gflops", "expert_gemm_gflops",
              "lm_head_gemv_gflops")


def cite(keys) -> dict:
    return {key: "estimate: a test value" for key in keys}


@pytest.fixture
def phone_dict() -> dict:
    return tomllib.loads((profiles_dir() / "phone.toml").read_text())


def tiny_dict(**classes) -> dict:
    """A flat device: 4 GFLOP/s GEMV and 8 GFLOP/s GEMM (fast enough that every tiny-arch operation is bound
    by its 1 GB/s of DRAM), 10 µs per layer; `classes` ({key: GFLOP/s or unit}) becomes [compute_classes]."""
    data = {
        "name": "tiny", "description": "hand-worked test device",
        "flash": {"bandwidth_curve": [{"read_kib": 4, "mb_per_s": 100}], "latency_us": 100, "queue_depth": 1,
                  "max_request_kib": 1024, "sources": cite(["bandwidth_curve", "latency_us", "queue_depth",
                                                            "max_request_kib"])},
        "dram": {"capacity_gib": 1, "app_budget_gib": 0.5, "bandwidth_gb_per_s": 1.0,
                 "sources": cite(["capacity_gib", "app_budget_gib", "bandwidth_gb_per_s"])},
        "compute": {"gemv_gflops": 4.0, "gemm_gflops": 8.0, "layer_overhead_us": 10,
                    "sources": cite(["gemv_gflops", "gemm_gflops", "layer_overhead_us"])},
        "energy": {"flash_pj_per_byte": 100, "dram_pj_per_bit": 10, "pj_per_flop": 1, "idle_mw": 50,
                   "sources": cite(["flash_pj_per_byte", "dram_pj_per_bit", "pj_per_flop", "idle_mw"])},
    }
    if classes:
        data["compute_classes"] = {**classes, "sources": cite(key for key in classes if key.endswith("_gflops"))}
    return data


def tiny_arch() -> Architecture:
    """One MoE layer: d_model 64, 2 heads of 32, two experts of width 128 (top-1), vocab 32, untied head."""
    return Architecture(name="tiny", n_layers=1, d_model=64, n_heads=2, n_kv_heads=2, vocab_size=32,
                        ffn_hidden=128, n_experts=2, top_k=1, wd_rank=None)


# Experts on a slow unit (a CPU cluster at 0.25 / 0.5 GFLOP/s), the rest of the layer on another (an NPU here
# given 0.5 / 1 GFLOP/s so that its own rate, not DRAM, sets the time), the LM head at 0.5 GFLOP/s.
SLOW_EXPERTS = dict(attention_gemv_gflops=0.5, attention_gemm_gflops=1.0, expert_gemv_gflops=0.25,
                    expert_gemm_gflops=0.5, lm_head_gemv_gflops=0.5, attention_unit="npu", expert_unit="cpu",
                    lm_head_unit="npu")


# ------------------------------------------------------------------------------ parsing


def test_a_profile_without_the_section_has_none_and_every_class_at_the_compute_rates():
    for name in shipped_profiles():
        profile = load_profile(name)
        assert profile.compute_classes is None
        for op_class in ("attention", "expert", "lm_head"):
            rates = Rates.of(profile, op_class)
            assert rates == Rates(profile.compute.gemv_flops_per_s, profile.compute.gemm_flops_per_s, None)


def test_every_key_parses_to_si_with_its_unit(phone_dict):
    phone_dict["compute_classes"] = {"attention_gemv_gflops": 300, "attention_gemm_gflops": 3600,
                                     "expert_gemv_gflops": 68.26, "expert_gemm_gflops": 420,
                                     "lm_head_gemv_gflops": 250, "attention_unit": "npu", "expert_unit": " cpu ",
                                     "lm_head_unit": "npu", "sources": cite(CLASS_KEYS)}
    classes = profile_from_dict(phone_dict, source=SOURCE).compute_classes
    assert classes == ComputeClasses(attention=OpClassCompute(300e9, 3600e9, "npu"),
                                     expert=OpClassCompute(68.26e9, 420e9, "cpu"),  # the decimal as written
                                     lm_head=OpClassCompute(250e9, None, "npu"))


def test_keys_not_given_fall_back_to_the_compute_section(phone_dict):
    phone_dict["compute_classes"] = {"expert_gemv_gflops": 60, "expert_unit": "cpu",
                                     "sources": cite(["expert_gemv_gflops"])}
    profile = profile_from_dict(phone_dict, source=SOURCE)
    gemv, gemm = profile.compute.gemv_flops_per_s, profile.compute.gemm_flops_per_s
    assert Rates.of(profile, "expert") == Rates(60e9, gemm, "cpu")
    assert Rates.of(profile, "attention") == Rates(gemv, gemm, None)
    assert Rates.of(profile, "lm_head") == Rates(gemv, gemm, None)
    costs = StepCosts.build(tiny_arch(), profile, 16)
    assert costs.units() == {"attention": None, "expert": "cpu", "lm_head": None}


@pytest.mark.parametrize("section", [{"sources": {}}, {"attention_unit": "gpu", "sources": {}}])
def test_a_section_without_numbers_needs_no_citation(phone_dict, section):
    phone_dict["compute_classes"] = section
    classes = profile_from_dict(phone_dict, source=SOURCE).compute_classes
    assert classes.expert == OpClassCompute() and classes.attention.gemv_flops_per_s is None


def test_the_section_hashes_into_the_profile(phone_dict):
    plain = profile_from_dict(copy.deepcopy(phone_dict), source=SOURCE)
    phone_dict["compute_classes"] = {"sources": {}}
    assert profile_from_dict(phone_dict, source=SOURCE).sha256 != plain.sha256


def _section(**values):
    """A [compute_classes] with `values`, each number cited unless `sources` is given."""
    def mutate(data: dict) -> None:
        given = dict(values)
        sources = given.pop("sources", cite(key for key, value in given.items() if key.endswith("_gflops")))
        data["compute_classes"] = {**given, "sources": sources} if sources is not None else given
    return mutate


INVALID = [
    (_section(expert_gemv_gflops=-3), "compute_classes.expert_gemv_gflops must be > 0, got -3"),
    (_section(expert_gemv_gflops=0), "compute_classes.expert_gemv_gflops must be > 0, got 0"),
    (_section(attention_gemm_gflops="fast"), "compute_classes.attention_gemm_gflops must be a number, got 'fast'"),
    (_section(attention_gemv_gflops=True), "compute_classes.attention_gemv_gflops must be a number, got True"),
    (_section(expert_gemm_gflops=float("nan")), "compute_classes.expert_gemm_gflops must be > 0, got nan"),
    (_section(lm_head_gemv_gflops=float("inf")), "compute_classes.lm_head_gemv_gflops must be > 0, got inf"),
    (_section(expert_gemv_gflops=1e9), r"compute_classes.expert_gemv_gflops must be between 1e-06 and 1e\+08 "
                                       r"\(any real device\), got 1000000000\.0"),
    (_section(attention_gemv_gflops=[1]), r"compute_classes.attention_gemv_gflops must be a number, got \[1\]"),
    (_section(lm_head_gemm_gflops=100), "compute_classes.lm_head_gemm_gflops is not a known key: the LM head "
                                        "runs on one token per pass"),
    (_section(router_gemv_gflops=100), "compute_classes.router_gemv_gflops is not a known key"),
    (_section(expert_gemv_gflops=60, sources=None), "compute_classes.sources is missing"),
    (_section(expert_gemv_gflops=60, sources={}), "compute_classes.sources.expert_gemv_gflops is missing: "
                                                  "every number needs a citation"),
    (_section(expert_gemv_gflops=60, sources="a paper"), "compute_classes.sources must be a table"),
    (_section(expert_gemv_gflops=60, sources={"expert_gemv_gflops": " "}),
     "compute_classes.sources.expert_gemv_gflops must be a non-empty citation string"),
    (_section(expert_gemv_gflops=60, sources={"expert_gemv_gflops": "x", "expert_gemm_gflops": "y"}),
     "compute_classes.sources.expert_gemm_gflops cites a field that does not exist"),
    (_section(expert_unit="cpu", sources={"expert_unit": "the SoC's data sheet"}),
     "compute_classes.sources.expert_unit cites a field that does not exist"),
    (_section(expert_unit=""), "compute_classes.expert_unit must be a short label of the unit"),
    (_section(expert_unit=3), "compute_classes.expert_unit must be a short label of the unit .* got 3"),
    (_section(attention_unit="n" * 33), "compute_classes.attention_unit must be a short label"),
    (_section(lm_head_unit="npu\ncpu"), "compute_classes.lm_head_unit must be a short label"),
    (lambda data: data.__setitem__("compute_classes", 3), "compute_classes must be a table, got 3"),
]


@pytest.mark.parametrize("mutate, message", INVALID)
def test_invalid_values_raise_one_line_input_errors(phone_dict, mutate, message):
    mutate(phone_dict)
    with pytest.raises(InputError, match=message) as caught:
        profile_from_dict(phone_dict, source=SOURCE)
    text = str(caught.value)
    assert text.startswith(f"{SOURCE}: ")
    assert "\n" not in text


def test_a_bad_value_in_a_file_names_the_file(tmp_path):
    text = (profiles_dir() / "phone.toml").read_text()
    path = tmp_path / "x.toml"
    path.write_text(text + '\n[compute_classes]\nexpert_gemv_gflops = -1\n\n[compute_classes.sources]\n'
                           'expert_gemv_gflops = "estimate: a typo"\n')
    with pytest.raises(InputError, match=r"x\.toml: compute_classes\.expert_gemv_gflops must be > 0, got -1$"):
        load_profile(path)


# ------------------------------------------------------------------------------ pricing


def _same_costs(a: StepCosts, b: StepCosts) -> None:
    """Every cost both engines read, equal bit for bit."""
    assert a.expert_decode == b.expert_decode and a.lm_head == b.lm_head
    assert a.layer_overhead_s == b.layer_overhead_s and a.expert_bytes == b.expert_bytes
    for n_tokens in (1, 2, 7, 300):
        assert a.expert_prefill(n_tokens) == b.expert_prefill(n_tokens)
    contexts = np.array([1, 2, 17, 1024, 4096])
    for kind in (DECODE, PREFILL):
        table_a, table_b = a.nonexpert_table(kind, contexts), b.nonexpert_table(kind, contexts)
        for name in ("time_s", "flops", "dram_bytes", "memory_bound"):
            assert np.array_equal(getattr(table_a, name), getattr(table_b, name)), name


@pytest.mark.parametrize("arch_name", ["wearable-moe", "phone-moe", "phone-dense-fa", "qwen2-57b-a14b"])
@pytest.mark.parametrize("name", shipped_profiles())
def test_the_default_prices_every_shipped_profile_as_before(name, arch_name):
    """No section, an empty one, units only, or one restating the [compute] figures: the same costs, which are
    the [compute] section's rooflines."""
    profile, arch = load_profile(name), get_arch(arch_name)
    compute, dram = profile.compute, profile.dram.bandwidth_bytes_per_s
    plain = StepCosts.build(arch, profile, 4)
    both = OpClassCompute(compute.gemv_flops_per_s, compute.gemm_flops_per_s, "cpu")
    restated = ComputeClasses(attention=both, expert=both, lm_head=replace(both, gemm_flops_per_s=None))
    units_only = ComputeClasses(attention=OpClassCompute(unit="npu"), expert=OpClassCompute(unit="cpu"))
    for classes in (ComputeClasses(), units_only, restated):
        _same_costs(plain, StepCosts.build(arch, replace(profile, compute_classes=classes), 4))
    if arch.is_moe:
        assert plain.expert_decode == roofline(arch.expert_flops_per_token(), arch.expert_bytes(4),
                                               compute.gemv_flops_per_s, dram)
        assert plain.expert_prefill(7) == roofline(7 * arch.expert_flops_per_token(), arch.expert_bytes(4),
                                                   compute.gemm_flops_per_s, dram)
    lm_bytes = arch.lm_head_params() * 4 / 8 + arch.vocab_size * 4
    assert plain.lm_head == roofline(arch.lm_head_flops_per_token(), lm_bytes, compute.gemv_flops_per_s, dram)


# The tiny arch by hand: q, k, v, o 4 x 64 x 64 = 16,384, two norms 128 and a router 2 x 64 = 128: 16,640
# non-expert weights (33,280 bytes at 16 bits) and 2 x (16,640 - 128) = 33,024 FLOPs of projections per token;
# attention 2 x 2 x 2 heads x 32 = 256 FLOPs per key; K and V 2 x 64 x 2 bytes = 256 bytes per token.
# An expert: 3 x 64 x 128 = 24,576 weights, 49,152 bytes and 49,152 FLOPs per token. The LM head: 32 x 64
# weights, 4,096 FLOPs, 4,096 bytes + 32 fp32 logits = 4,224 bytes. DRAM moves 1 byte per ns.
HAND = {
    # name: (slow experts: time, memory-bound; default: time, memory-bound), seconds
    "expert_decode": ((49_152 / 0.25e9, False), (49_152e-9, True)),  # 196.608 µs on the CPU
    "expert_prefill_4": ((4 * 49_152 / 0.5e9, False), (49_152e-9, True)),  # 393.216 µs
    "nonexpert_decode_100": (((33_024 + 256 * 100) / 0.5e9, False), ((33_280 + 256 * 100) * 1e-9, True)),
    "nonexpert_prefill_4": (((4 * 33_024 + 256 * 4 * 5 / 2) / 1e9, False), ((33_280 + 2 * 4 * 256) * 1e-9, True)),
    "lm_head": ((4_096 / 0.5e9, False), (4_224e-9, True)),  # 8.192 µs
}


def _priced(costs: StepCosts) -> dict:
    return {"expert_decode": costs.expert_decode, "expert_prefill_4": costs.expert_prefill(4),
            "nonexpert_decode_100": costs.nonexpert_decode(100, 0), "nonexpert_prefill_4": costs.nonexpert_prefill(4, 0),
            "lm_head": costs.lm_head}


@pytest.mark.parametrize("case", [0, 1], ids=["slow-experts", "default"])
def test_each_class_at_its_own_rate_by_hand(case):
    data = tiny_dict(**SLOW_EXPERTS) if case == 0 else tiny_dict()
    costs = StepCosts.build(tiny_arch(), profile_from_dict(data, source="tiny.toml"), 16)
    for name, cost in _priced(costs).items():
        time_s, memory_bound = HAND[name][case]
        assert cost.time_s == pytest.approx(time_s, rel=1e-12), name
        assert cost.memory_bound is memory_bound, name
    assert costs.expert_decode.flops == 49_152 and costs.expert_decode.dram_bytes == 49_152
    assert costs.units() == ({"attention": "npu", "expert": "cpu", "lm_head": "npu"} if case == 0
                             else {"attention": None, "expert": None, "lm_head": None})


def test_only_the_class_given_changes():
    """Experts alone on the slow unit: the expert costs change, attention and the LM head do not."""
    arch = tiny_arch()
    plain = _priced(StepCosts.build(arch, profile_from_dict(tiny_dict(), source="tiny.toml"), 16))
    slow = _priced(StepCosts.build(arch, profile_from_dict(tiny_dict(expert_gemv_gflops=0.25), source="t.toml"), 16))
    assert slow["expert_decode"].time_s == pytest.approx(196.608e-6, rel=1e-12)
    assert slow["expert_prefill_4"] == plain["expert_prefill_4"]  # its GEMM rate falls back to [compute]'s
    for name in ("nonexpert_decode_100", "nonexpert_prefill_4", "lm_head"):
        assert slow[name] == plain[name]


@pytest.mark.parametrize("engine", ["des", "analytic"])
def test_both_engines_price_the_classes_by_hand(engine):
    """Every access a hit (one expert, cached): a decode token at context c takes its non-expert step, the
    layer overhead, one expert and the LM head, one after another on one compute timeline."""
    arch, config = tiny_arch(), RunConfig(prompt_tokens=1, cache_experts=1)
    trace = trace_from_experts([[0]] * 10, seq_len=5, n_experts=2)
    profile = profile_from_dict(tiny_dict(**SLOW_EXPERTS), source="tiny.toml")

    def token_s(context: int) -> float:
        return (33_024 + 256 * context) / 0.5e9 + 10e-6 + 49_152 / 0.25e9 + 4_096 / 0.5e9

    if engine == "des":  # the second sequence's tokens: contexts 2..5 (the prompt token, then each decoded one)
        records = simulate(prepare(profile, trace, arch, config))
        assert list(records.latency_s) == pytest.approx([token_s(c) for c in range(2, 6)], rel=1e-12)
    summary = run(profile, trace, arch, config, engine)
    assert summary["hit_rate"] == 1.0
    assert summary["tpot_ms"]["mean"] == pytest.approx(1e3 * sum(token_s(c) for c in range(2, 6)) / 4, rel=1e-9)


# ------------------------------------------------------------------------------ the docs' examples


def _doc_examples() -> dict[str, dict]:
    """Each ```toml block of docs/device-profiles.md that opens with an optional section, by that section."""
    blocks = re.findall(r"```toml\n(.*?)```", DOCS.read_text(), flags=re.S)
    examples = {}
    for block in blocks:
        first = re.match(r"\s*(?:#.*\n\s*)*\[(\w+)\]", block)
        if first and first.group(1) in ("compute_classes", "throttle", "page_cache"):
            examples[first.group(1)] = tomllib.loads(block)
    return examples


def test_the_docs_examples_of_the_optional_sections_load(phone_dict):
    examples = _doc_examples()
    assert set(examples) == {"compute_classes", "throttle", "page_cache"}
    for example in examples.values():
        phone_dict.update(example)
    profile = profile_from_dict(phone_dict, source=SOURCE)
    assert profile.compute_classes.expert.unit == "cpu" and profile.compute_classes.attention.unit == "npu"
    assert profile.throttle is not None and profile.throttle.compute_curve[0] == (0.0, 1.0)
    assert profile.page_cache != PageCacheSpec()
