"""A Llama-3 style decoder: RMSNorm, RoPE, grouped-query attention, SwiGLU or MoE feed-forward.

Shapes: B batch, T time, D d_model, H heads, G kv heads, Hd head size, F FFN hidden, V vocab.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cosmosim.model.config import ModelConfig
from cosmosim.model.moe import MoEFeedForward, Routing

INIT_STD = 0.02  # GPT-2 / nanoGPT


def residual_std(n_layers: int) -> float:
    """GPT-2's scaled init for the projections that write into the residual stream (2 per block)."""
    return INIT_STD / math.sqrt(2 * n_layers)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_fp32 = x.float()
        normed = x_fp32 * torch.rsqrt(x_fp32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def rope_tables(seq_len: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, Hd/2] for rotary embeddings."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles_TP = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles_TP.cos(), angles_TP.sin()


def apply_rope(x_BHTd: torch.Tensor, cos_TP: torch.Tensor, sin_TP: torch.Tensor) -> torch.Tensor:
    """Rotate each (first half, second half) pair of channels by its position's angle."""
    first, second = x_BHTd.chunk(2, dim=-1)
    T = x_BHTd.shape[-2]
    cos, sin = cos_TP[:T], sin_TP[:T]
    return torch.cat((first * cos - second * sin, first * sin + second * cos), dim=-1)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.dropout = config.dropout
        D, kv_width = config.d_model, config.n_kv_heads * config.head_dim
        self.wq = nn.Linear(D, D, bias=False)
        self.wk = nn.Linear(D, kv_width, bias=False)
        self.wv = nn.Linear(D, kv_width, bias=False)
        self.wo = nn.Linear(D, D, bias=False)

    def forward(self, x_BTD: torch.Tensor, cos_TP: torch.Tensor, sin_TP: torch.Tensor) -> torch.Tensor:
        B, T, D = x_BTD.shape
        q_BHTd = self.wq(x_BTD).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k_BGTd = self.wk(x_BTD).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v_BGTd = self.wv(x_BTD).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q_BHTd, k_BGTd = apply_rope(q_BHTd, cos_TP, sin_TP), apply_rope(k_BGTd, cos_TP, sin_TP)
        y_BHTd = F.scaled_dot_product_attention(q_BHTd, k_BGTd, v_BGTd, is_causal=True,
                                                dropout_p=self.dropout if self.training else 0.0,
                                                enable_gqa=self.n_kv_heads != self.n_heads)
        return self.wo(y_BHTd.transpose(1, 2).reshape(B, T, D))


class FeedForward(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.w_gate = nn.Linear(d_model, hidden, bias=False)
        self.w_up = nn.Linear(d_model, hidden, bias=False)
        self.w_down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attention_norm = RMSNorm(config.d_model)
        self.attention = Attention(config)
        self.ffn_norm = RMSNorm(config.d_model)
        self.is_moe = config.is_moe
        if config.is_moe:
            self.ffn: nn.Module = MoEFeedForward(config, INIT_STD, residual_std(config.n_layers))
        else:
            self.ffn = FeedForward(config.d_model, config.ffn_hidden)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x_BTD: torch.Tensor, cos_TP: torch.Tensor, sin_TP: torch.Tensor) -> tuple[torch.Tensor, Routing | None]:
        x_BTD = x_BTD + self.dropout(self.attention(self.attention_norm(x_BTD), cos_TP, sin_TP))
        h_BTD = self.ffn_norm(x_BTD)
        ffn_out, routing = self.ffn(h_BTD) if self.is_moe else (self.ffn(h_BTD), None)
        return x_BTD + self.dropout(ffn_out), routing


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model)
        self.output = nn.Linear(config.d_model, config.vocab_size, bias=False)  # untied, like Llama-3
        cos_TP, sin_TP = rope_tables(config.seq_len, config.head_dim, config.rope_theta)
        # Non-persistent: derived from the config, so checkpoints hold only learned weights.
        self.register_buffer("rope_cos", cos_TP, persistent=False)
        self.register_buffer("rope_sin", sin_TP, persistent=False)
        self._init_dense_weights()

    def _init_dense_weights(self) -> None:
        """nn.Linear / nn.Embedding weights (the experts initialise their own banks)."""
        out_std = residual_std(self.config.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                is_residual_out = name.endswith(("attention.wo", "ffn.w_down"))
                nn.init.normal_(module.weight, std=out_std if is_residual_out else INIT_STD)

    def forward(self, tokens_BT: torch.Tensor) -> tuple[torch.Tensor, list[Routing]]:
        """Logits [B, T, V] and one Routing per MoE layer (empty for a dense model)."""
        T = tokens_BT.shape[1]
        if T > self.config.seq_len:
            raise ValueError(f"sequence of {T} tokens is longer than the model's seq_len {self.config.seq_len}")
        x_BTD = self.embedding(tokens_BT)
        routings = []
        for layer in self.layers:
            x_BTD, routing = layer(x_BTD, self.rope_cos, self.rope_sin)
            if routing is not None:
                routings.append(routing)
        return self.output(self.norm(x_BTD)), routings
