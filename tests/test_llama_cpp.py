"""llama.cpp as a second engine: the GGUF export checked without llama.cpp (tensor names, ggml shapes, the
rotary permutation against llama.cpp's adjacent-pair rotation written out here), and, where llama-cpp-python
is built (scripts/build_llama_cpp.sh), the experts llama.cpp chooses against torch's on the same weights."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from cosmosim.errors import InputError
from cosmosim.host.gguf_export import mini_shape, mini_tensors, placeholder_vocab, rotary_permute, write_gguf
from cosmosim.host.llama_cpp import routing_agreement
from cosmosim.model.config import ModelConfig
from cosmosim.model.layers import apply_rope, rope_tables
from cosmosim.model.llama import Decoder

gguf = pytest.importorskip("gguf")

TINY = ModelConfig(n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, vocab_size=64, seq_len=16, ffn_hidden=48,
                   n_experts=4, top_k=2)


def adjacent_pair_rope(x_TD: np.ndarray, n_heads: int, theta: float) -> np.ndarray:
    """llama.cpp's rotation for the llama architecture (rope mode NORM, ggml_rope): in each head, channels
    (2i, 2i + 1) turn by position · theta^(-2i / head_dim)."""
    n_tokens, width = x_TD.shape
    head_dim = width // n_heads
    x = x_TD.reshape(n_tokens, n_heads, head_dim // 2, 2)
    angle = np.arange(n_tokens)[:, None] * theta ** (-2 * np.arange(head_dim // 2) / head_dim)
    cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
    even, odd = x[..., 0], x[..., 1]
    return np.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1).reshape(n_tokens, width)


def test_the_permuted_rows_rotated_llama_cpp_s_way_give_the_same_attention_scores():
    rng = np.random.default_rng(0)
    n_heads, head_dim, d_model, n_tokens = 4, 8, 16, 6
    wq, wk = rng.normal(size=(2, n_heads * head_dim, d_model))
    x_TD = rng.normal(size=(n_tokens, d_model))
    cos, sin = rope_tables(n_tokens, head_dim, 10000.0)

    def ours(weight):  # this project's rotation: each head's first half of channels paired with its second
        y = torch.from_numpy(x_TD @ weight.T).float().view(n_tokens, n_heads, head_dim).transpose(0, 1)
        return apply_rope(y, cos, sin).transpose(0, 1).reshape(n_tokens, -1).double().numpy()

    theirs = {name: adjacent_pair_rope(x_TD @ rotary_permute(w, n_heads).T, n_heads, 10000.0)
              for name, w in (("q", wq), ("k", wk))}
    for head in range(n_heads):
        cols = slice(head * head_dim, (head + 1) * head_dim)
        expected = ours(wq)[:, cols] @ ours(wk)[:, cols].T
        assert theirs["q"][:, cols] @ theirs["k"][:, cols].T == pytest.approx(expected, rel=1e-5, abs=1e-5)
    # and channel for channel: llama.cpp's pair (2i, 2i + 1) is our (i, i + head_dim / 2)
    order = np.concatenate([[i, i + head_dim // 2] for i in range(head_dim // 2)])
    assert theirs["q"][:, :head_dim] == pytest.approx(ours(wq)[:, order], rel=1e-5, abs=1e-5)


def test_a_mini_writes_llama_cpp_s_names_and_ggml_shapes(tmp_path):
    torch.manual_seed(0)
    model = Decoder(TINY)
    tokens = [f"t{i}" for i in range(TINY.vocab_size)]
    path = write_gguf(tmp_path / "tiny.gguf", mini_shape(TINY), mini_tensors(model), (tokens, ["t t0"]))
    reader = gguf.GGUFReader(str(path))
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    assert len(tensors) == 3 + TINY.n_layers * 10
    d, f, e = TINY.d_model, TINY.ffn_hidden, TINY.n_experts
    # ggml lists dimensions innermost first: [in, out] for a matrix, [in, out, experts] for a bank
    assert list(tensors["blk.0.ffn_gate_exps.weight"].shape) == [d, f, e]
    assert list(tensors["blk.1.ffn_down_exps.weight"].shape) == [f, d, e]
    assert list(tensors["blk.0.attn_k.weight"].shape) == [d, TINY.n_kv_heads * TINY.head_dim]
    assert list(tensors["blk.0.ffn_gate_inp.weight"].shape) == [d, e]
    up = model.layers[1].ffn.experts.w_up.weight.detach().numpy()  # [E, in, out]: x·W
    stored = np.asarray(tensors["blk.1.ffn_up_exps.weight"].data).reshape(e, f, d)
    assert np.array_equal(stored, up.transpose(0, 2, 1))
    fields = {field.name: field for field in reader.fields.values()}
    assert fields["general.architecture"].contents() == "llama"
    assert fields["llama.expert_count"].contents() == e and fields["llama.expert_used_count"].contents() == 2
    assert fields["tokenizer.ggml.tokens"].contents()[:2] == ["t0", "t1"]


@pytest.mark.parametrize("change", [dict(wd_rank=8), dict(n_shared_experts=1), dict(n_layers=3, dense_layers=(0,))])
def test_what_llama_s_architecture_cannot_hold_is_refused_in_one_line(change):
    config = dataclasses.replace(TINY, **change)
    with pytest.raises(InputError, match="full-rank routed experts in every layer"):
        mini_shape(config)


def test_agreement_counts_sets_first_experts_and_slots():
    expected = np.array([[[0, 1], [2, 3]], [[4, 5], [6, 7]]])
    got = np.array([[[1, 0], [2, 4]], [[4, 5], [7, 1]]])
    report = routing_agreement(expected, got)
    assert report["same_set"] == 0.5 and report["same_first"] == 0.5  # sets: (0,1) and (4,5); firsts: 2 and 4
    assert report["slots_in_common"] == pytest.approx((1 + 0.5 + 1 + 0.5) / 4)
    assert report["same_set_by_layer"] == [1.0, 0.0]


def test_routing_through_llama_cpp_equals_torch_s(tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not built here (scripts/build_llama_cpp.sh)")
    from cosmosim.host.llama_cpp import llama_cpp_routing

    torch.manual_seed(1)
    model = Decoder(TINY).train(False)
    for block in model.layers:  # a router with clear preferences: random init leaves near-ties
        block.ffn.router.gate.weight.data *= 20
    tokens_NT = torch.randint(0, TINY.vocab_size, (3, TINY.seq_len))
    with torch.no_grad():
        _, routings = model(tokens_NT)
    expected = torch.stack([r.expert_ids_BTK for r in routings], dim=2).flatten(0, 1).numpy()
    path = write_gguf(tmp_path / "tiny.gguf", mini_shape(TINY), mini_tensors(model), placeholder_vocab(TINY.vocab_size))
    got = llama_cpp_routing(path, tokens_NT.numpy(), n_layers=2, n_experts=4, top_k=2)
    report = routing_agreement(expected, got.astype(np.int64))
    assert report["same_set"] >= 0.99, json.dumps(report)


# ------------------------------------------------------------------------------ speed: the calibration's fit


def test_the_calibration_recovers_a_known_rate_and_per_layer_cost(tmp_path, monkeypatch):
    """llama.cpp stood in by a host whose token takes 25 µs per layer plus its f16 weight bytes at 7 GB/s."""
    from cosmosim.host import llama_speed
    from cosmosim.inputs.arch import Architecture

    target = Architecture(name="t", n_layers=4, d_model=32, n_heads=4, n_kv_heads=4, vocab_size=64, ffn_hidden=48,
                          n_experts=4, top_k=2, wd_rank=None)

    def fake_seconds(path, tokens, threads):
        import gguf as gguf_module

        reader = gguf_module.GGUFReader(str(path))
        n_layers = int(reader.fields["llama.block_count"].contents())
        weights = sum(int(t.n_elements) for t in reader.tensors if t.name != "token_embd.weight")
        return np.full(5, n_layers * 25e-6 + 2 * weights / 7e9)

    monkeypatch.setattr(llama_speed, "decode_seconds", fake_seconds)
    fit = llama_speed.calibrate_llama_cpp(target, np.arange(8), 1, tmp_path, seed=0)
    assert [p["n_layers"] for p in fit["points"]] == [2, 2, 4, 4]
    assert fit["bytes_per_s"] == pytest.approx(7e9, rel=1e-3)  # norms (counted by the stand-in) are a rounding
    assert fit["layer_overhead_us"] == pytest.approx(25, rel=1e-2)


def test_the_fitted_profile_loads_and_binds_by_the_fitted_rate():
    from cosmosim.host.llama_speed import llama_profile
    from cosmosim.inputs.profiles import profile_from_dict

    profile = profile_from_dict(llama_profile({"bytes_per_s": 9e9, "layer_overhead_us": 30.0}), source="x.toml")
    assert profile.dram.bandwidth_bytes_per_s == pytest.approx(9e9)
    assert profile.compute.layer_overhead_s == pytest.approx(30e-6)
    assert profile.compute.gemv_flops_per_s == pytest.approx(100 * 9e9)
