"""A Llama-3 style decoder: RMSNorm, RoPE, grouped-query attention, SwiGLU or MoE feed-forward
(a MoE's `dense_layers` have a dense SwiGLU; its MoE layers may add shared experts).

One model for training and for decoding (gpt-fast's way): `setup_cache` switches on a KV cache in
every layer, after which `forward` takes the positions of its new tokens. Replay runs the same
blocks a layer at a time (`Block.attend`, then its own streamed experts); `resident_experts=False`
builds the MoE layers without their experts for it.

Shapes: B batch, T time, D d_model, P rotary pairs, V vocab.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cosmosim.model.config import ModelConfig
from cosmosim.model.layers import Attention, FeedForward, KVCache, RMSNorm, rope_tables
from cosmosim.model.moe import MoEFeedForward, Routing

INIT_STD = 0.02  # GPT-2 / nanoGPT


def residual_std(n_layers: int) -> float:
    """GPT-2's scaled init for the projections that write into the residual stream (2 per block)."""
    return INIT_STD / math.sqrt(2 * n_layers)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, resident_experts: bool = True, layer: int = 0):
        super().__init__()
        self.attention_norm = RMSNorm(config.d_model)
        self.attention = Attention(config)
        self.ffn_norm = RMSNorm(config.d_model)
        # A MoE's `dense_layers` take one dense SwiGLU of dense_ffn_hidden instead of experts.
        self.is_moe = config.is_moe and layer not in config.arch.dense_layers
        if self.is_moe:
            self.ffn: nn.Module = MoEFeedForward(config, INIT_STD, residual_std(config.n_layers), resident_experts)
        else:
            self.ffn = FeedForward(config.d_model, config.arch.dense_ffn_hidden if config.is_moe else config.ffn_hidden)
        self.dropout = nn.Dropout(config.dropout)

    def attend(self, x_BTD: torch.Tensor, cos_TP: torch.Tensor, sin_TP: torch.Tensor,
               positions_T: torch.Tensor) -> torch.Tensor:
        """x + attention(norm(x)): the block's first half."""
        return x_BTD + self.dropout(self.attention(self.attention_norm(x_BTD), cos_TP, sin_TP, positions_T))

    def forward(self, x_BTD: torch.Tensor, cos_TP: torch.Tensor, sin_TP: torch.Tensor,
                positions_T: torch.Tensor) -> tuple[torch.Tensor, Routing | None]:
        x_BTD = self.attend(x_BTD, cos_TP, sin_TP, positions_T)
        h_BTD = self.ffn_norm(x_BTD)
        ffn_out, routing = self.ffn(h_BTD) if self.is_moe else (self.ffn(h_BTD), None)
        return x_BTD + self.dropout(ffn_out), routing


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig, resident_experts: bool = True):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config, resident_experts, layer) for layer in range(config.n_layers))
        self.norm = RMSNorm(config.d_model)
        self.output = nn.Linear(config.d_model, config.vocab_size, bias=False)  # untied, like Llama-3
        self._set_rope(config.seq_len)
        self._init_dense_weights()

    def _set_rope(self, n_positions: int) -> None:
        cos_TP, sin_TP = rope_tables(n_positions, self.config.head_dim, self.config.rope_theta)
        weight = self.embedding.weight
        # Non-persistent: derived from the config, so checkpoints hold only learned weights.
        self.register_buffer("rope_cos", cos_TP.to(weight.device, weight.dtype), persistent=False)
        self.register_buffer("rope_sin", sin_TP.to(weight.device, weight.dtype), persistent=False)

    def _init_dense_weights(self) -> None:
        """nn.Linear / nn.Embedding weights (the experts initialise their own banks)."""
        out_std = residual_std(self.config.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                is_residual_out = name.endswith(("attention.wo", "ffn.w_down", "ffn.shared.w_down"))
                nn.init.normal_(module.weight, std=out_std if is_residual_out else INIT_STD)

    def setup_cache(self, context_len: int, n_positions: int, batch: int = 1) -> None:
        """Switch on decoding: an empty KV cache of `context_len` positions per layer (a ring) and
        rotary tables for positions below `n_positions`, in the weights' dtype."""
        self._set_rope(n_positions)
        weight = self.embedding.weight
        for layer in self.layers:
            layer.attention.kv_cache = KVCache(batch, self.config.n_kv_heads, context_len, self.config.head_dim,
                                               weight.dtype, weight.device)

    def rope(self, positions_T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [T, P] of the tokens at `positions_T`."""
        if int(positions_T[-1]) >= len(self.rope_cos):
            raise ValueError(f"position {int(positions_T[-1])} is beyond the model's {len(self.rope_cos)} rotary "
                             "positions (seq_len, or setup_cache's n_positions)")
        return self.rope_cos[positions_T], self.rope_sin[positions_T]

    def head(self, x_BTD: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V]: the final norm and the output projection."""
        return self.output(self.norm(x_BTD))

    def forward(self, tokens_BT: torch.Tensor, positions_T: torch.Tensor | None = None) -> tuple[torch.Tensor, list[Routing]]:
        """Logits [B, T, V] and one Routing per MoE layer (empty for a dense model). Positions default
        to 0..T-1: a whole sequence, or with the KV cache on, a prompt."""
        if positions_T is None:
            positions_T = torch.arange(tokens_BT.shape[1], device=tokens_BT.device)
        cos_TP, sin_TP = self.rope(positions_T)
        x_BTD = self.embedding(tokens_BT)
        routings = []
        for layer in self.layers:
            x_BTD, routing = layer(x_BTD, cos_TP, sin_TP, positions_T)
            if routing is not None:
                routings.append(routing)
        return self.head(x_BTD), routings
