"""Architectures beyond Table 1 in the engines: dense layers inside a MoE, shared experts, GQA and a
head_dim other than d_model / n_heads. Hand-worked costs, and both engines against each other."""

import re
from dataclasses import replace

import pytest

from cosmosim.engines.des import simulate
from cosmosim.inputs.arch import get_arch
from cosmosim.inputs.synthetic import synthesize, trace_from_experts
from cosmosim.runner import run
from cosmosim.scenario.build import prepare
from cosmosim.scenario.settings import RunConfig

# Sequence 1 is the warm-up; sequence 2: prompt expert 0, then decode 0, 1, 1, 0.
ROUTING = [[0]] * 5 + [[0], [0], [1], [1], [0]]


def dense_layer_s(context: int) -> float:
    """One decode token through a dense layer of the tiny arch below, by hand: d 64, 2 heads of 32 (q, k,
    v, o: 4 x 64 x 64), two norms of 64, a SwiGLU of width 32 (3 x 64 x 32), 16-bit weights, a KV cache
    of 2 x 64 16-bit values per token; 1 GFLOP/s GEMV, 1 GB/s DRAM, 10 µs layer overhead."""
    projections = 4 * 64 * 64 + 3 * 64 * 32
    flops = 2 * projections + 2 * 2 * 64 * context
    dram_bytes = 2 * (projections + 2 * 64) + context * 2 * 64 * 2
    return max(flops / 1e9, dram_bytes / 1e9) + 10e-6


@pytest.mark.parametrize("engine", ["des", "analytic"])
@pytest.mark.parametrize("dense_layers", [(0,), (1,), (0, 2)])
def test_a_dense_layer_adds_its_own_cost_and_no_expert_access(tiny_profile, tiny_arch, engine, dense_layers):
    """The same routing on one MoE layer, with and without dense layers around it: each decode token is
    slower by exactly the dense layers' hand-worked cost; the accesses and hits are the same."""
    moe = tiny_arch()
    with_dense = replace(moe, name="tiny+dense", n_layers=1 + len(dense_layers), dense_layers=dense_layers,
                         dense_ffn_hidden=32)
    assert with_dense.n_moe_layers == 1
    config = RunConfig(prompt_tokens=1, cache_experts=1)
    trace = trace_from_experts(ROUTING, seq_len=5, n_experts=2)
    plain, dense = (run(tiny_profile(), trace, arch, config, engine) for arch in (moe, with_dense))
    assert dense["accesses"] == plain["accesses"] and dense["hit_rate"] == plain["hit_rate"] == 0.5
    assert not any("layers:" in warning for warning in dense["warnings"])  # one MoE layer each: no mapping
    if engine == "des":  # per token: contexts 2..5 (the prompt token, then each decoded one)
        records = {name: simulate(prepare(tiny_profile(), trace, arch, config)) for name, arch in
                   (("plain", moe), ("dense", with_dense))}
        extra = [b - a for a, b in zip(records["plain"].latency_s, records["dense"].latency_s)]
        assert extra == pytest.approx([len(dense_layers) * dense_layer_s(c) for c in range(2, 6)], rel=1e-9)
    mean_extra = sum(len(dense_layers) * dense_layer_s(c) for c in range(2, 6)) / 4
    assert dense["tpot_ms"]["mean"] - plain["tpot_ms"]["mean"] == pytest.approx(1e3 * mean_extra, rel=1e-9)


def shapes() -> dict:
    wearable = get_arch("wearable-moe")
    return {
        # DeepSeek-style: the first layers dense, a shared expert in every MoE layer.
        "dense-first+shared": replace(wearable, name="dense-first+shared", n_layers=21, dense_layers=(0, 1),
                                      dense_ffn_hidden=2560, n_shared_experts=1, shared_ffn_hidden=640),
        "gqa+head_dim": replace(wearable, name="gqa+head_dim", n_heads=8, n_kv_heads=2, head_dim=72),
        "dense-between": replace(wearable, name="dense-between", n_layers=22, dense_layers=(5, 11, 21)),
    }


@pytest.fixture(scope="module")
def trace():
    """Top-2 of 8 on 19 MoE layers, like every shape above."""
    return synthesize(exrep_target=0.3, n_layers=19, n_experts=8, top_k=2, n_tokens=4096, seq_len=128, seed=1)


@pytest.mark.parametrize("name", list(shapes()))
@pytest.mark.parametrize("config", [RunConfig(policy="lru", cache_experts=40), RunConfig(policy="lru", cache_experts=100),
                                    RunConfig(policy="belady", cache_experts=60), RunConfig(policy="kactive")],
                         ids=["lru-40", "lru-100", "belady-60", "kactive"])
def test_both_engines_agree_on_new_shapes(trace, name, config):
    arch = shapes()[name]
    des, analytic = (run("phone", trace, arch, config, engine) for engine in ("des", "analytic"))
    assert des["accesses"] == analytic["accesses"]
    assert des["hit_rate"] == analytic["hit_rate"]
    assert analytic["tpot_ms"]["mean"] == pytest.approx(des["tpot_ms"]["mean"], rel=0.03)
    assert des["inputs"]["total_experts"] == 19 * 8


def test_shared_experts_and_dense_layers_make_every_token_slower_when_all_hits(trace):
    """With every expert cached, what is left is compute and DRAM: a shared expert and dense layers add to it."""
    wearable, config = get_arch("wearable-moe"), RunConfig(cache_experts=152)
    base = run("phone", trace, wearable, config, "des")["tpot_ms"]["mean"]
    for name in ("dense-first+shared", "dense-between"):
        assert run("phone", trace, shapes()[name], config, "des")["tpot_ms"]["mean"] > base


@pytest.mark.parametrize("name", list(shapes()))
def test_replay_refuses_what_the_minis_layers_cannot_decode(name):
    from cosmosim.engines.replay.weights import ExpertLayout
    from cosmosim.errors import InputError

    with pytest.raises(InputError, match=re.escape(f"--arch {name}: replay decodes with the minis' layers, which have no ")):
        ExpertLayout.of(shapes()[name])


# ---------------------------------------------------------------------------- shared experts in the cache

SHARED = replace(get_arch("wearable-moe"), name="shared", n_shared_experts=1)


@pytest.mark.parametrize("config", [RunConfig(cache_experts=100), RunConfig(policy="kactive")], ids=["lru-100", "kactive"])
def test_cached_shared_experts_are_accessed_by_every_token_and_leave_the_resident_weights(trace, config):
    resident = run("phone", trace, SHARED, config, "des")
    cached = {engine: run("phone", trace, SHARED, replace(config, cache_shared_experts=True), engine)
              for engine in ("des", "analytic")}
    assert cached["des"]["accesses"] == cached["analytic"]["accesses"]
    assert cached["analytic"]["tpot_ms"]["mean"] == pytest.approx(cached["des"]["tpot_ms"]["mean"], rel=0.03)
    # top-2 + 1 shared per MoE layer and decode token, where resident ones left top-2
    assert cached["des"]["accesses"]["decode"] * 2 == resident["accesses"]["decode"] * 3
    assert cached["des"]["inputs"]["total_experts"] == 19 * 9
    # the shared experts' bytes leave the resident weights; their router rows (19 x 432, 16-bit) join them
    moved_mb = (19 * SHARED.shared_expert_params() * 2 - 19 * 432 * 2) / 1e6
    assert resident["memory_mb"]["resident_weights"] - cached["des"]["memory_mb"]["resident_weights"] \
        == pytest.approx(moved_mb, rel=1e-9)


def test_caching_shared_experts_needs_the_routed_experts_size(trace):
    from cosmosim.errors import InputError

    for arch, message in ((get_arch("wearable-moe"), "has no shared experts"),
                          (replace(SHARED, shared_ffn_hidden=640), "differ in size from its routed ones")):
        with pytest.raises(InputError, match=f"--cache-shared-experts: .*{message}"):
            run("phone", trace, arch, RunConfig(cache_shared_experts=True), "des")
