"""Weight precision: formats against gguf's own table, bytes by hand, and both engines at mixed precision."""

import math
from dataclasses import replace

import numpy as np
import pytest

from cosmosim.device.gguf_layout import GgufLayout
from cosmosim.errors import InputError
from cosmosim.inputs.arch import Architecture, get_arch
from cosmosim.inputs.precision import FORMATS, Precision, parse_bits
from cosmosim.inputs.synthetic import sticky_trace
from cosmosim.runner import run
from cosmosim.scenario.settings import RunConfig
from cosmosim.units import MB


def test_every_gguf_format_has_the_block_size_gguf_itself_declares():
    gguf = pytest.importorskip("gguf", reason="gguf (a dev extra) holds llama.cpp's table of block sizes")
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    ggml = [name for name in FORMATS if name.upper() in GGMLQuantizationType.__members__]
    assert len(ggml) >= 10, ggml
    for name in ggml:
        block_weights, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[name.upper()]]
        assert (FORMATS[name].block_weights, FORMATS[name].block_bytes) == (block_weights, block_bytes), (name, gguf)


@pytest.mark.parametrize("text, bits", [("q4_K", 4.5), ("Q6_K", 6.5625), ("mxfp4", 4.25), ("bf16", 16), ("4.25", 4.25),
                                        ("8", 8), (3, 3), (2.5, 2.5)])
def test_parse_bits_reads_numbers_and_format_names(text, bits):
    assert parse_bits(text, "--weight-bits") == bits
    assert type(parse_bits("16", "x")) is int  # a whole number prints as 16, not 16.0


@pytest.mark.parametrize("value", ["q9_x", "", 0, 0.99, 33, float("inf"), True, None])
def test_parse_bits_refuses_anything_else_naming_where(value):
    with pytest.raises(InputError, match="^--expert-bits: expected bits per weight"):
        parse_bits(value, "--expert-bits")
    with pytest.raises(InputError):
        parse_bits("4.5", "spec", numbers_as_text=False)  # a TOML string must be a format's name


# ---------------------------------------------------------------------------- bytes, by hand


def shared_tiny() -> Architecture:
    return Architecture(name="tiny-shared", n_layers=2, d_model=8, n_heads=2, n_kv_heads=1, vocab_size=10,
                        ffn_hidden=16, n_experts=4, top_k=2, wd_rank=None, n_shared_experts=1)


def test_each_class_counts_at_its_own_bits():
    arch, precision = shared_tiny(), Precision(weights=16, routed=4.5, shared=8)
    expert = 3 * 8 * 16  # gate, up, down: d x f each
    attention, norms, router = 2 * 8 * 8 + 2 * 8 * 4, 2 * 8, 4 * 8  # q, o (d x 8) + k, v (d x 4)
    other = 10 * 8 + 10 * 8 + 8 + 2 * (attention + norms + router)  # embeddings, LM head, final norm, 2 layers
    assert arch.expert_bytes(precision) == expert * 4.5 / 8 == 216
    assert arch.resident_bytes(precision) == other * 2 + 2 * expert * 1
    assert arch.nonexpert_bytes_of(0, precision) == (attention + norms + router) * 2 + expert
    assert arch.resident_bytes(16) == arch.resident_params() * 2  # one number: every class


def test_the_gguf_layout_puts_each_class_at_its_bits():
    arch = replace(get_arch("wearable-moe"), n_shared_experts=1)
    precision = Precision(weights=8, routed=4.5, shared=6.5625)
    layout = GgufLayout(arch, precision)
    layer = arch.moe_layers[0]
    assert sum(end - start for start, end in layout.expert_extents(layer, 3)) == arch.expert_bytes(precision)
    shared = [layout.tensor(f"blk.{layer}.ffn_{m}_shexp.weight").nbytes for m in ("gate", "down", "up")]
    assert sum(shared) == math.ceil(arch.shared_expert_params() * 6.5625 / 8)
    resident = sum(t.nbytes for t in layout.tensors if "_exps" not in t.name)
    assert abs(resident - arch.resident_bytes(precision)) <= len(layout.tensors)  # per-tensor rounding


# ---------------------------------------------------------------------------- both engines


@pytest.fixture(scope="module")
def mixed_runs():
    arch = replace(get_arch("wearable-moe"), n_shared_experts=1)
    trace = sticky_trace(n_tokens=2048, n_layers=arch.n_moe_layers, seq_len=128, stay=0.5, seed=3)
    config = RunConfig(weight_bits=8, expert_bits=4.5, shared_bits=6.5625, cache_mb=20.0)
    return arch, {engine: run("wearable", trace, arch, config, engine=engine) for engine in ("des", "analytic")}


def test_mixed_precision_sizes_the_cache_memory_and_reads_from_each_class(mixed_runs):
    arch, results = mixed_runs
    expert_bytes = math.ceil(arch.expert_params() * 4.5 / 8)
    shared = sum(1 for layer in range(arch.n_layers) if layer in arch.moe_layers) * arch.shared_expert_params()
    resident = math.ceil((arch.resident_params() - shared) * 8 / 8) + math.ceil(shared * 6.5625 / 8)
    for result in results.values():
        inputs = result["inputs"]
        assert inputs["expert_mb"] * MB == pytest.approx(expert_bytes)
        assert inputs["cache_experts"] == int(20.0 * MB // expert_bytes)
        assert result["memory_mb"]["resident_weights"] * MB == pytest.approx(resident)
        flash_bytes = result["flash_mb_per_token"] * MB * inputs["decode_tokens"]  # decode tokens' reads
        assert flash_bytes == pytest.approx(result["accesses"]["miss"] * expert_bytes, rel=1e-9)


def test_both_engines_agree_at_mixed_precision(mixed_runs):
    _, results = mixed_runs
    des, analytic = results["des"], results["analytic"]
    assert des["accesses"] == analytic["accesses"]
    assert analytic["tpot_ms"]["mean"] == pytest.approx(des["tpot_ms"]["mean"], rel=1e-9)
    assert analytic["ttft_ms"] == pytest.approx(des["ttft_ms"], rel=1e-9)


def test_fewer_expert_bits_hold_more_experts_and_read_fewer_bytes():
    trace = sticky_trace(n_tokens=1024, n_layers=get_arch("wearable-moe").n_moe_layers, seq_len=128, seed=1)
    eight, four = (run("wearable", trace, "wearable-moe", RunConfig(expert_bits=parse_bits(bits, "--expert-bits"),
                                                                    cache_mb=20.0), engine="analytic")
                   for bits in ("8", "q4_k"))
    assert four["inputs"]["cache_experts"] > eight["inputs"]["cache_experts"]
    assert four["memory_mb"]["resident_weights"] == eight["memory_mb"]["resident_weights"]  # 16-bit either way
    assert four["flash_mb_per_token"] < eight["flash_mb_per_token"]
    assert np.isclose(four["inputs"]["expert_mb"] / eight["inputs"]["expert_mb"], 4.5 / 8)


def test_cached_shared_experts_must_share_the_routed_bits():
    arch = replace(get_arch("wearable-moe"), n_shared_experts=1)
    trace = sticky_trace(n_tokens=512, n_layers=arch.n_moe_layers, seq_len=128)
    with pytest.raises(InputError, match="--cache-shared-experts: --shared-bits 8 differs from --expert-bits 4"):
        run("wearable", trace, arch, RunConfig(expert_bits=4, shared_bits=8, cache_shared_experts=True, cache_mb=20.0))


def test_cli_and_sweep_take_format_names(cli, tmp_path):
    trace = tmp_path / "t.npz"
    from cosmosim.inputs.trace import save_trace

    save_trace(sticky_trace(n_tokens=1024, n_layers=get_arch("wearable-moe").n_moe_layers, seq_len=128), trace)
    code, out, err = cli("run", "--profile", "wearable", "--trace", trace, "--arch", "wearable-moe", "--tokens", 200,
                         "--expert-bits", "q4_K", "--json", tmp_path / "r.json")
    assert code == 0, err
    assert "experts 4.5 / shared 16 / other 16 bits" in out
    spec = tmp_path / "spec.toml"
    spec.write_text(f'engine = "analytic"\n[axes]\nprofile = ["wearable"]\narch = ["wearable-moe"]\ntrace = ["{trace}"]\n'
                    'expert_bits = ["q8_0", "q4_K", 3]\ncache_mb = [20]\n')
    code, _, err = cli("sweep", spec, "--out", tmp_path / "results", "-q")
    assert code == 0, err
    from cosmosim.sweep.dataset import read_results

    frame = read_results(tmp_path / "results").sort_values("point_id")
    assert frame["expert_bits"].tolist() == [8.5, 4.5, 3.0] and frame["weight_bits"].tolist() == [16.0] * 3
    assert frame["cache_experts"].is_monotonic_increasing


def test_the_docs_table_lists_every_format_with_its_block():
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "precision.md").read_text()
    rows = {line.split("|")[1].strip(" `"): line.split("|")[2:5] for line in text.splitlines()
            if line.startswith("| `") and line.count("|") == 6}
    assert set(rows) == set(FORMATS)
    for name, (weights, nbytes, bits) in rows.items():
        fmt = FORMATS[name]
        assert (int(weights), int(nbytes), float(bits)) == (fmt.block_weights, fmt.block_bytes, fmt.bits), name
