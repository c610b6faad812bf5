"""The verdict: each rule fires on a run built to trigger it, its numbers are the result's own
(recomputed here from the result dict), and every what-if matches an actual run at that setting."""

import json
import re
from dataclasses import replace

import pytest

from cosmosim.engines.replay import storage
from cosmosim.engines.replay.run import replay
from cosmosim.inputs.arch import Architecture, get_arch
from cosmosim.inputs.profiles import load_profile
from cosmosim.inputs.synthetic import sticky_trace
from cosmosim.inputs.trace import save_trace
from cosmosim.results import verdict as verdict_module
from cosmosim.results.summary import verdict_of
from cosmosim.results.verdict import MAX_LINES, Finding, verdict
from cosmosim.runner import run
from cosmosim.scenario.build import prepare
from cosmosim.scenario.settings import RunConfig

# The time parts of each group, written out here rather than read from the catalogue.
GROUPS = {
    "flash_wait": ("flash_stall", "flash_wait"),
    "expert_compute": ("expert_compute", "expert_dram"),
    "attention_router_overhead": ("nonexpert_compute", "nonexpert_dram", "layer_overhead", "attention_router",
                                  "bookkeeping"),
    "lm_head": ("lm_head",),
}
WEARABLE_BUDGET_MB = load_profile("wearable").dram.app_budget_bytes / 1e6


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory):
    trace = sticky_trace(n_tokens=2048, n_layers=19, seq_len=128, seed=2)
    trace.meta["target_arch"] = "wearable-moe"
    return save_trace(trace, tmp_path_factory.mktemp("verdict") / "t.npz")


@pytest.fixture(scope="module")
def runs(trace_file):
    """`runs(engine="des", **settings)`: the result of the wearable MoE on the trace, computed once."""
    done = {}

    def get(engine="des", arch="wearable-moe", profile="wearable", **settings):
        key = (engine, str(arch), profile, tuple(sorted(settings.items())))
        if key not in done:
            done[key] = run(profile, trace_file, arch, RunConfig(**settings), engine=engine)
        return done[key]
    return get


def share(result: dict, group: str) -> float:
    parts = result["breakdown"]["time_ms_per_token"]
    return sum(parts.get(part, 0.0) for part in GROUPS[group]) / result["tpot_ms"]["mean"]


def group_ms(result: dict, group: str) -> float:
    return share(result, group) * result["tpot_ms"]["mean"]


def finding(result: dict, rule: str) -> dict:
    shown = {f["rule"]: f for f in result["verdict"]["findings"]}
    assert rule in shown, (rule, result["verdict"]["lines"])
    return shown[rule]


def suggestion(found: dict, flag: str, value=None) -> dict:
    return next(s for s in found["suggestions"] if s["flag"] == flag and (value is None or s["value"] == value))


def check_share_text(line: str, result: dict, group: str) -> None:
    """"94% of TPOT (507 of 540 ms)": the share and both times are the result's."""
    pct, part_ms, tpot_ms = re.search(r"(\d+)% of TPOT \(([\d.]+) of ([\d.]+) ms\)", line).groups()
    assert int(pct) == round(100 * share(result, group))
    assert float(part_ms) == pytest.approx(group_ms(result, group), rel=5e-3)
    assert float(tpot_ms) == pytest.approx(result["tpot_ms"]["mean"], rel=5e-3)


# ----------------------------------------------------------------------------- (b) the working set

def test_a_global_cache_smaller_than_a_tokens_working_set(runs):
    result = runs()  # the main job's shape: the app budget leaves 11 experts, global LRU
    working_set = result["accesses"]["decode"] // result["inputs"]["decode_tokens"]
    held = result["inputs"]["cache_experts"]
    assert (working_set, held, result["hit_rate"]) == (19 * 2, 11, 0.0)
    found = finding(result, "working_set")
    assert result["verdict"]["findings"][0]["rule"] == "working_set"  # it supersedes dominant_part's flash line
    assert found["limit"] == result["verdict"]["limit"] == "flash_wait"
    assert found["share"] == pytest.approx(share(result, "flash_wait"), rel=1e-12)
    line = found["line"]
    assert f"a token needs {working_set} experts (19 moe layers × top-2) and the cache holds {held}" in line.lower()
    assert "every expert is read from flash (hit rate 0.00)" in line
    check_share_text(line, result, "flash_wait")
    assert line in result["verdict"]["lines"] and result["verdict"]["lines"][0] == line


@pytest.mark.parametrize("bits", [8, 4])
def test_the_capacity_at_fewer_bits_is_what_a_run_at_those_bits_gets(runs, bits):
    found = finding(runs(), "working_set")
    offered = suggestion(found, "--weight-bits", bits)
    actual = runs(weight_bits=bits)
    assert offered["cache_experts"] == actual["inputs"]["cache_experts"]
    assert offered["expert_mb"] == pytest.approx(actual["inputs"]["expert_mb"], rel=1e-12)
    assert offered["peak_dram_mb"] == pytest.approx(actual["peak_dram_mb"], rel=1e-12)  # the cache fills
    assert offered["fits_budget"] == (actual["peak_dram_mb"] <= WEARABLE_BUDGET_MB)
    if bits == 8:
        assert f"at --weight-bits 8 the cache holds {actual['inputs']['cache_experts']} experts" in found["line"].lower()


@pytest.mark.parametrize("settings", [dict(), dict(cache_mb=150.0, per_layer_cache=True), dict(cache_experts=60),
                                      dict(policy="kactive"), dict(cache_experts=100, weight_bits=8)])
def test_every_bit_width_what_if_is_what_a_run_at_those_bits_gets(runs, settings):
    offered = [s for s in runs(**settings)["verdict"]["suggestions"] if s["flag"] == "--weight-bits"]
    assert offered
    for option in offered:
        actual = runs(**{**settings, "weight_bits": option["value"]})
        assert option["cache_experts"] == actual["inputs"]["cache_experts"], option
        assert option["peak_dram_mb"] == pytest.approx(actual["peak_dram_mb"], rel=1e-12), option


def test_kactive_and_a_cache_that_holds_the_working_set_are_what_those_runs_get(runs):
    found = finding(runs(), "working_set")
    kactive, actual = suggestion(found, "--policy", "kactive"), runs(policy="kactive")
    assert kactive["cache_experts"] == actual["inputs"]["cache_experts"] == 38
    assert kactive["peak_dram_mb"] == pytest.approx(actual["peak_dram_mb"], rel=1e-12)
    assert f"--policy kactive keeps the 38 a token needs (peak DRAM {actual['peak_dram_mb']:.0f} MB, over the " \
           f"{WEARABLE_BUDGET_MB:.0f} MB app budget)" in found["line"]
    sized = suggestion(found, "--cache-mb")
    assert runs(cache_mb=sized["value"])["inputs"]["cache_experts"] == sized["cache_experts"] == 38
    assert runs(cache_mb=sized["value"] - 0.1)["inputs"]["cache_experts"] == 37  # the smallest budget, to 0.1 MB


def test_belady_with_a_cache_below_the_working_set_reads_most_but_not_all_from_flash(runs):
    result = runs(policy="belady")
    line = finding(result, "working_set")["line"]
    assert 0 < result["hit_rate"] < 1
    assert f"{1 - result['hit_rate']:.0%} of expert accesses read flash (hit rate {result['hit_rate']:.2f})" in line


# ----------------------------------------------------------------------------- (c) a cache that holds everything

def test_a_cache_that_holds_every_expert_blames_the_rest(runs):
    result = runs(weight_bits=4)  # the budget holds all 152 experts at 4 bits
    assert result["inputs"]["offloading_idle"] and result["hit_rate"] > 0.99
    found = finding(result, "all_cached")
    rest = [g for g in GROUPS if g != "flash_wait"]
    limit = max(rest, key=lambda g: share(result, g))
    assert found["limit"] == limit and found["share"] == pytest.approx(share(result, limit), rel=1e-12)
    assert found["line"].startswith(f"The cache holds all 152 experts (hit rate {result['hit_rate']:.2f})")
    parts = result["breakdown"]["time_ms_per_token"]
    bound = "DRAM bandwidth" if parts["nonexpert_dram"] + parts["expert_dram"] >= \
        parts["nonexpert_compute"] + parts["expert_compute"] else "arithmetic"
    assert f"the limit is {bound}" in found["line"]
    assert f"waiting for flash is {share(result, 'flash_wait'):.0%} of TPOT".replace(" 0%", " <1%") in found["line"]
    assert not any(s["flag"] == "--weight-bits" for s in found["suggestions"])  # 4 is the fewest


def test_the_wd_what_if_is_what_a_wd_architecture_gets(runs):
    found = finding(runs(weight_bits=4), "all_cached")
    wd = next(s for s in found["suggestions"] if s.get("change") == "wd_rank")
    arch = get_arch("wearable-moe")
    assert wd["wd_rank"] == arch.d_model // 2
    actual = runs(weight_bits=4, arch=arch.with_wd_rank(wd["wd_rank"]))
    assert wd["expert_mb"] == pytest.approx(actual["inputs"]["expert_mb"], rel=1e-6)
    assert wd["expert_scale"] == pytest.approx(arch.with_wd_rank(wd["wd_rank"]).expert_params() / arch.expert_params())
    assert f"WD experts at rank {wd['wd_rank']} are {wd['expert_scale']:.3g}× the bytes and FLOPs" in found["line"]


# ----------------------------------------------------------------------------- (d) DRAM against the app budget

def test_a_run_over_the_app_budget_says_so_first_and_what_fits(runs):
    result = runs(cache_experts=60)  # 60 experts of 3.3 MB on top of 284 MB resident: over 322 MB
    assert result["peak_dram_mb"] > WEARABLE_BUDGET_MB
    first = result["verdict"]["findings"][0]
    assert first["rule"] == "over_budget" and first["limit"] == "dram_budget" and first["weight"] > 1
    assert first["line"].startswith(f"Peak DRAM is {result['peak_dram_mb']:.0f} MB, over the wearable app budget of "
                                    f"{WEARABLE_BUDGET_MB:.0f} MB")
    at_8 = suggestion(first, "--weight-bits", 8)
    assert at_8["peak_dram_mb"] == pytest.approx(runs(cache_experts=60, weight_bits=8)["peak_dram_mb"], rel=1e-12)
    assert f"at --weight-bits 8 it needs {at_8['peak_dram_mb']:.0f} MB" in first["line"]
    most = suggestion(first, "--cache-experts")
    assert most["value"] == runs()["inputs"]["cache_experts"]  # the most that fits: what the budget gives
    assert len(result["verdict"]["lines"]) == 2  # and what limits its speed
    assert result["verdict"]["findings"][1]["limit"] == result["verdict"]["limit"]


def test_a_cache_given_by_hand_near_the_budget_is_noted(runs):
    result = runs(cache_experts=11)  # the budget's 11 experts, given by hand: 99.6% of the budget
    assert 0.95 * WEARABLE_BUDGET_MB <= result["peak_dram_mb"] <= WEARABLE_BUDGET_MB
    found = finding(result, "near_budget")
    assert found["weight"] == 0 and result["verdict"]["findings"][-1] == found
    assert f"{result['peak_dram_mb'] / WEARABLE_BUDGET_MB:.0%} of the wearable app budget" in found["line"]
    assert "near_budget" not in [f["rule"] for f in runs()["verdict"]["findings"]]  # sized from the budget: by design


# ----------------------------------------------------------------------------- (a) the dominant part

@pytest.mark.parametrize("settings, group", [
    (dict(cache_experts=100, weight_bits=8), "flash_wait"),
    (dict(cache_experts=152), "expert_compute"),
])
def test_the_dominant_part_is_the_largest_share_of_tpot(runs, settings, group):
    result = runs(**settings)
    assert max(GROUPS, key=lambda g: share(result, g)) == group == result["verdict"]["limit"]
    assert result["verdict"]["share"] == pytest.approx(share(result, group), rel=1e-12)
    assert result["verdict"]["parts"] == pytest.approx({g: share(result, g) for g in GROUPS}, rel=1e-12)
    shown = [f for f in result["verdict"]["findings"] if f["limit"] == group]
    assert len(shown) == 1 and shown[0]["share"] == pytest.approx(share(result, group), rel=1e-12)


def test_the_dominant_part_of_a_flash_bound_run(runs):
    result = runs(cache_experts=100, weight_bits=8)  # above the working set, below every expert
    found = finding(result, "dominant_part")
    assert found["line"].startswith("Waiting for flash: ")
    check_share_text(found["line"], result, "flash_wait")
    assert f"hit rate {result['hit_rate']:.2f}, {result['flash_mb_per_token']:.3g} MB read per token" in found["line"]
    at_4 = suggestion(found, "--weight-bits", 4)  # a count given by hand: more bits keep it, each expert shrinks
    assert at_4["cache_experts"] == runs(cache_experts=100, weight_bits=4)["inputs"]["cache_experts"] == 100
    assert f"each expert is {at_4['expert_mb']:.3g} MB instead of {result['inputs']['expert_mb']:.3g}" in found["line"]


def test_the_dominant_part_of_a_dense_model(runs):
    result = run("wearable", None, "wearable-dense-fa", RunConfig(tokens=300))
    group = max(GROUPS, key=lambda g: share(result, g))
    found = next(f for f in result["verdict"]["findings"] if f["limit"] == group)
    assert found["rule"] == "dominant_part" and found["share"] == pytest.approx(share(result, group), rel=1e-12)
    check_share_text(found["line"], result, group)
    assert not {"working_set", "all_cached"} & {f["rule"] for f in result["verdict"]["findings"]}


# ----------------------------------------------------------------------------- ranking, engines, the registry

@pytest.mark.parametrize("settings", [dict(), dict(policy="kactive"), dict(cache_experts=60), dict(weight_bits=4),
                                      dict(cache_experts=11), dict(weight_bits=8)])
def test_at_most_two_lines_best_first_one_per_limit(runs, settings):
    shown = runs(**settings)["verdict"]["findings"]
    assert 1 <= len(shown) <= MAX_LINES == 2
    assert [f["weight"] for f in shown] == sorted((f["weight"] for f in shown), reverse=True)
    assert len({f["limit"] for f in shown}) == len(shown)
    json.dumps(runs(**settings)["verdict"])  # JSON-ready


@pytest.mark.parametrize("settings", [dict(), dict(weight_bits=4), dict(cache_experts=60), dict(policy="kactive")])
def test_both_engines_give_the_same_verdict(runs, settings):
    des, analytic = runs("des", **settings)["verdict"], runs("analytic", **settings)["verdict"]
    assert des["lines"] == analytic["lines"]
    assert [f["rule"] for f in des["findings"]] == [f["rule"] for f in analytic["findings"]]
    assert des["limit"] == analytic["limit"] and des["share"] == pytest.approx(analytic["share"], rel=1e-6)


def test_a_new_rule_is_one_registration(runs, monkeypatch):
    monkeypatch.setitem(verdict_module.RULES, "always", lambda f: Finding("lm_head", 5.0, f"TPOT {f.tpot_ms:.0f} ms"))
    result = runs()
    again = verdict({k: v for k, v in result.items() if k != "verdict"})
    assert again["findings"][0]["rule"] == "always" and again["lines"][0] == f"TPOT {result['tpot_ms']['mean']:.0f} ms"


def test_without_sizing_the_what_ifs_are_left_out(runs):
    result = runs()
    bare = verdict({k: v for k, v in result.items() if k != "verdict"})
    assert bare["limit"] == "flash_wait" and bare["findings"][0]["rule"] == "working_set"
    assert not any(s.get("cache_experts") for s in bare["suggestions"])


def test_a_replay_result_gets_a_verdict_from_its_measured_parts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("replay")
    if storage.filesystem_type(folder) in storage.MEMORY_FILESYSTEMS:
        pytest.skip("the temporary folder is in RAM: cold reads need a disk")
    arch = Architecture(name="tiny-wd", n_layers=3, d_model=64, n_heads=4, n_kv_heads=4, vocab_size=256,
                        ffn_hidden=96, n_experts=8, top_k=2, wd_rank=16)
    trace, config = sticky_trace(n_tokens=640, n_layers=4, seq_len=64, seed=1), RunConfig(cache_experts=4, tokens=40)
    result = replay("wearable", trace, arch, config, directory=folder, threads=1)
    found = verdict_of(prepare("wearable", trace, arch, config), result)  # what summarize_replay would attach
    assert found["limit"] == max(GROUPS, key=lambda g: share(result, g))
    assert found["parts"] == pytest.approx({g: share(result, g) for g in GROUPS}, rel=1e-12)
    working_set = finding({"verdict": found}, "working_set")  # 4 experts held, 3 layers × top-2 needed
    assert "a token needs 6 experts (3 moe layers × top-2) and the cache holds 4" in working_set["line"].lower()
    check_share_text(working_set["line"], result, "flash_wait")
    if "verdict" in result:  # once the replay's summary attaches it
        assert result["verdict"]["lines"] == found["lines"]


# ----------------------------------------------------------------------------- the command line

def test_cosmosim_run_prints_the_verdict_and_writes_it(cli, tmp_path, trace_file):
    out_json = tmp_path / "out.json"
    code, out, _ = cli("run", "--profile", "wearable", "--trace", trace_file, "--json", out_json)
    result = json.loads(out_json.read_text())
    assert code == 0 and result["verdict"]["lines"] and result["verdict"]["limit"] == "flash_wait"
    printed = " ".join(out.split())  # rich wraps long lines
    for line in result["verdict"]["lines"]:
        assert f"verdict: {line}" in printed
    assert printed.index("verdict:") > printed.index("energy: static")  # below the table


def test_cosmosim_run_quiet_prints_nothing(cli, tmp_path, trace_file):
    out_json = tmp_path / "out.json"
    code, out, err = cli("run", "--profile", "wearable", "--trace", trace_file, "--json", out_json, "--quiet")
    assert code == 0 and out == "" and err == ""
    assert json.loads(out_json.read_text())["verdict"]["lines"]


# ----------------------------------------------------------------------------- shapes beyond Table 1

@pytest.mark.parametrize("shape, settings", [
    (dict(n_layers=20, dense_layers=(0,)), dict()),  # caches count MoE layers only
    (dict(n_layers=20, dense_layers=(0,)), dict(cache_mb=150.0, per_layer_cache=True)),
    (dict(n_shared_experts=1), dict(cache_shared_experts=True)),  # cached shared experts: one more per layer
    (dict(n_shared_experts=1), dict(cache_shared_experts=True, policy="kactive")),
])
def test_the_what_ifs_of_dense_layers_and_cached_shared_experts_are_what_runs_get(trace_file, shape, settings):
    arch = replace(get_arch("wearable-moe"), name="wearable-moe-shape", **shape)
    result = run("wearable", trace_file, arch, RunConfig(**settings))
    working_set = result["accesses"]["decode"] // result["inputs"]["decode_tokens"]
    assert working_set == 19 * (2 + shape.get("n_shared_experts", 0))
    if "working_set" in [f["rule"] for f in result["verdict"]["findings"]]:
        assert f"a token needs {working_set} experts (19 moe layers" in result["verdict"]["lines"][0].lower()
    offered = [s for s in result["verdict"]["suggestions"] if s["flag"] == "--weight-bits"]
    assert offered
    for option in offered:
        actual = run("wearable", trace_file, arch, RunConfig(**{**settings, "weight_bits": option["value"]}))
        assert option["cache_experts"] == actual["inputs"]["cache_experts"], option
        assert option["peak_dram_mb"] == pytest.approx(actual["peak_dram_mb"], rel=1e-12), option
