import dataclasses

import pytest
import torch

from cosmosim.errors import InputError
from cosmosim.inputs.arch import get_arch
from cosmosim.model.config import MINI_CONFIGS, MINI_TARGET_ARCH, ModelConfig, get_config
from cosmosim.model.layers import FeedForward
from cosmosim.model.llama import Decoder
from cosmosim.model.moe import Experts, MoEFeedForward

TINY_MOE = ModelConfig(n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, vocab_size=64, seq_len=16,
                       ffn_hidden=48, n_experts=4, top_k=2)


@pytest.mark.parametrize("config", [*MINI_CONFIGS.values(), TINY_MOE, dataclasses.replace(TINY_MOE, wd_rank=8)],
                         ids=[*MINI_CONFIGS, "tiny-gqa-moe", "tiny-gqa-wd"])
def test_num_params_counts_the_built_model(config):
    model = Decoder(config)
    assert config.num_params() == sum(p.numel() for p in model.parameters())
    assert config.num_active_params() <= config.num_params()


def test_dense_minis_match_the_moe_mini_like_fa_and_pa():
    moe = get_config("wearable-moe-mini")
    assert get_config("wearable-dense-fa-mini").num_params() == pytest.approx(moe.num_active_params(), rel=0.01)
    assert get_config("wearable-dense-pa-mini").num_params() == pytest.approx(moe.num_params(), rel=0.01)
    wd = get_config("wearable-wd-mini")
    assert (wd.n_layers, wd.wd_rank) == (32, wd.d_model // 2)
    assert wd.num_params() == pytest.approx(moe.num_params(), rel=0.05)


def test_unknown_config_name_lists_the_known_ones():
    with pytest.raises(InputError, match="wearable-moe-mini"):
        get_config("phone-moe")


@pytest.mark.parametrize("bad", [dict(wd_rank=8, n_experts=1, top_k=1), dict(wd_rank=33), dict(top_k=5),
                                 dict(n_experts=0), dict(d_model=30), dict(d_model=24, n_heads=8, n_kv_heads=8),
                                 dict(n_kv_heads=3), dict(seq_len=0), dict(load_balance_level="token")])
def test_inconsistent_configs_are_input_errors(bad):
    with pytest.raises(InputError):
        dataclasses.replace(TINY_MOE, **bad)


def test_from_dict_round_trips_and_rejects_unknown_fields():
    assert ModelConfig.from_dict(TINY_MOE.to_dict()) == TINY_MOE
    with pytest.raises(InputError, match="n_expert"):
        ModelConfig.from_dict({**TINY_MOE.to_dict(), "n_expert": 8})
    with pytest.raises(InputError, match=r"^ckpt/config.json: .*top_k must be <= n_experts"):
        ModelConfig.from_dict({**TINY_MOE.to_dict(), "top_k": 5}, source="ckpt/config.json")


def test_a_dense_checkpoint_written_with_n_experts_0_still_loads_as_dense():
    """Dense minis were trained when dense was n_experts = 0 (and an unused top_k = 2)."""
    dense = dataclasses.replace(TINY_MOE, n_experts=1, top_k=1)
    assert ModelConfig.from_dict({**dense.to_dict(), "n_experts": 0, "top_k": 2}) == dense
    assert not dense.is_moe and dense.num_params() == dense.num_active_params()


def test_router_gates_are_renormalised_and_descending():
    moe = MoEFeedForward(TINY_MOE, std=0.5, out_std=0.02)
    routing = moe.router(torch.randn(3, 5, 32))
    torch.testing.assert_close(routing.gates_BTK.sum(-1), torch.ones(3, 5))
    assert (routing.gates_BTK[..., 0] >= routing.gates_BTK[..., 1]).all()
    assert (routing.expert_ids_BTK == routing.logits_BTE.topk(2, dim=-1).indices).all()


def test_one_expert_top1_equals_the_dense_ffn():
    config = dataclasses.replace(TINY_MOE, n_experts=1, top_k=1)
    dense = FeedForward(config.d_model, config.ffn_hidden)
    moe = MoEFeedForward(config, std=0.02, out_std=0.02)
    with torch.no_grad():  # nn.Linear computes x·Wᵀ, an ExpertLinear x·W
        moe.experts.w_gate.weight[0] = dense.w_gate.weight.T
        moe.experts.w_up.weight[0] = dense.w_up.weight.T
        moe.experts.w_down.weight[0] = dense.w_down.weight.T
    x = torch.randn(2, 7, config.d_model)
    out, routing = moe(x)
    assert (routing.gates_BTK == 1).all()
    torch.testing.assert_close(out, dense(x))


def test_weight_decomposition_at_full_rank_reproduces_the_dense_expert():
    config = dataclasses.replace(TINY_MOE, n_experts=3)
    full = Experts(config, std=0.1, out_std=0.1).double()
    decomposed = Experts(dataclasses.replace(config, wd_rank=config.d_model), std=0.1, out_std=0.1).double()
    with torch.no_grad():
        for name in ("w_gate", "w_up", "w_down"):
            # Exact factorisation W = Q·R (reduced QR): rank min(n, m) = d_model for every matrix.
            q, r = torch.linalg.qr(getattr(full, name).weight)
            getattr(decomposed, name).left.copy_(q)
            getattr(decomposed, name).right.copy_(r)
    x = torch.randn(20, config.d_model, dtype=torch.float64)
    ids = torch.stack([torch.arange(20) % 3, (torch.arange(20) + 1) % 3], dim=1)
    gates = torch.rand(20, 2, dtype=torch.float64)
    torch.testing.assert_close(decomposed(x, ids, gates), full(x, ids, gates), rtol=1e-12, atol=1e-12)


def test_decoder_shapes_and_one_routing_per_moe_layer():
    model = Decoder(TINY_MOE)
    logits, routings = model(torch.randint(0, 64, (3, 16)))
    assert logits.shape == (3, 16, 64)
    assert len(routings) == TINY_MOE.n_layers
    assert routings[0].logits_BTE.shape == (3, 16, 4) and routings[0].expert_ids_BTK.shape == (3, 16, 2)
    _, dense_routings = Decoder(dataclasses.replace(TINY_MOE, n_experts=1, top_k=1))(torch.randint(0, 64, (1, 4)))
    assert dense_routings == []


def test_decoder_is_causal():
    torch.manual_seed(0)
    model = Decoder(TINY_MOE).train(False)
    tokens = torch.randint(0, 64, (1, 12))
    changed = tokens.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 64
    with torch.no_grad():
        before, routes_before = model(tokens)
        after, routes_after = model(changed)
    torch.testing.assert_close(before[:, :8], after[:, :8])
    assert (routes_before[1].expert_ids_BTK[:, :8] == routes_after[1].expert_ids_BTK[:, :8]).all()
    assert not torch.allclose(before[:, 8:], after[:, 8:])


def test_decoder_rejects_sequences_longer_than_its_rope_table():
    with pytest.raises(ValueError):
        Decoder(TINY_MOE)(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("name", MINI_CONFIGS)
def test_a_mini_is_described_like_its_target(name):
    """One Architecture describes both: the mini keeps its target's depth, experts and top-k, dense
    included (n_experts = top_k = 1), and counts what torch builds."""
    config, target = get_config(name), get_arch(MINI_TARGET_ARCH[name])
    assert (config.arch.n_experts, config.arch.top_k, config.arch.is_moe) == (target.n_experts, target.top_k, target.is_moe)
    assert config.n_layers == target.n_layers and (config.wd_rank is None) == (target.wd_rank is None)
    assert config.arch.total_params() == sum(p.numel() for p in Decoder(config).parameters())
    assert ModelConfig.of(config.arch, seq_len=config.seq_len, bles_lambda=config.bles_lambda,
                          bles_tau=config.bles_tau) == config


@pytest.mark.parametrize("config", [TINY_MOE, dataclasses.replace(TINY_MOE, wd_rank=8),
                                    dataclasses.replace(TINY_MOE, n_experts=1, top_k=1)], ids=["moe", "wd", "dense"])
def test_decoding_with_the_kv_cache_equals_the_training_pass(config):
    """A prompt, then one token at a time with the cache on, gives the logits and routing of one
    causal pass without it (the training path)."""
    torch.manual_seed(0)
    model = Decoder(config).double().train(False)
    tokens = torch.randint(0, config.vocab_size, (2, 10))
    prompt = 4
    with torch.no_grad():
        full, full_routings = model(tokens)
        model.setup_cache(context_len=16, n_positions=16, batch=2)
        steps = [model(tokens[:, :prompt])]
        steps += [model(tokens[:, t:t + 1], torch.tensor([t])) for t in range(prompt, tokens.shape[1])]
    torch.testing.assert_close(torch.cat([logits for logits, _ in steps], dim=1), full, rtol=1e-10, atol=1e-10)
    for layer, routing in enumerate(full_routings):
        ids = torch.cat([routings[layer].expert_ids_BTK for _, routings in steps], dim=1)
        assert (ids == routing.expert_ids_BTK).all()


def test_a_prompt_with_the_cache_on_must_start_at_position_0():
    model = Decoder(TINY_MOE)
    model.setup_cache(context_len=16, n_positions=16)
    with pytest.raises(ValueError, match="positions 0..2"):
        model(torch.zeros(1, 3, dtype=torch.long), torch.arange(2, 5))


def test_past_its_context_the_cache_attends_over_the_last_tokens_only():
    """One layer, so a token's key depends on that token alone; RoPE scores depend on the distance
    between positions only, so attending over the last C cached tokens equals a fresh pass over them."""
    torch.manual_seed(0)
    config, context = dataclasses.replace(TINY_MOE, n_layers=1), 4
    model = Decoder(config).double().train(False)
    tokens = torch.randint(0, config.vocab_size, (1, 12))
    with torch.no_grad():
        window, _ = model(tokens[:, -context:])
        model.setup_cache(context_len=context, n_positions=16)
        model(tokens[:, :1])
        for t in range(1, tokens.shape[1]):
            logits, _ = model(tokens[:, t:t + 1], torch.tensor([t]))
    torch.testing.assert_close(logits[:, -1], window[:, -1], rtol=1e-10, atol=1e-10)
