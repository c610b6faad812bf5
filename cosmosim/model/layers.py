"""The decoder's layers, shared by training (`llama.Decoder`) and replay (`cosmosim.engines.replay`):
RMSNorm, rotary embeddings, grouped-query attention with an optional KV cache, SwiGLU.

Shapes: B batch, T time (new tokens), D d_model, H heads, G kv heads, Hd head size, P Hd / 2 rotary
pairs, C cached positions, F FFN hidden.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cosmosim.model.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_fp32 = x.float()
        normed = x_fp32 * torch.rsqrt(x_fp32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def rope_tables(n_positions: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [n_positions, Hd/2] (fp32) for rotary embeddings."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles_TP = torch.outer(torch.arange(n_positions, dtype=torch.float32), inv_freq)
    return angles_TP.cos(), angles_TP.sin()


def apply_rope(x_BHTd: torch.Tensor, cos_TP: torch.Tensor, sin_TP: torch.Tensor) -> torch.Tensor:
    """Rotate each (first half, second half) pair of channels by its position's angle; cos and sin
    hold the rows of the T positions of x."""
    first, second = x_BHTd.chunk(2, dim=-1)
    return torch.cat((first * cos_TP - second * sin_TP, first * sin_TP + second * cos_TP), dim=-1)


class KVCache(nn.Module):
    """One layer's keys and values, [B, G, C, Hd] each: a ring of C positions, so a sequence longer
    than C attends over its last C tokens (attention does not care in which order keys sit)."""

    def __init__(self, batch: int, n_kv_heads: int, context_len: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device | str = "cpu"):
        super().__init__()
        shape = (batch, n_kv_heads, context_len, head_dim)
        self.register_buffer("keys_BGCd", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("values_BGCd", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, positions_T: torch.Tensor, k_BGTd: torch.Tensor,
               v_BGTd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the keys and values of the T new tokens at `positions_T`; return every cached one
        up to the last new position (theirs included). Several new tokens are a prompt: they must
        start at position 0, where causal attention among themselves is all there is."""
        context_len = self.keys_BGCd.shape[2]
        last = int(positions_T[-1])
        if len(positions_T) > 1 and last != len(positions_T) - 1:
            raise ValueError(f"a prompt of {len(positions_T)} tokens must take positions 0..{len(positions_T) - 1}")
        slots_T = positions_T % context_len
        self.keys_BGCd[:, :, slots_T] = k_BGTd
        self.values_BGCd[:, :, slots_T] = v_BGTd
        n_keys = min(last + 1, context_len)
        return self.keys_BGCd[:, :, :n_keys], self.values_BGCd[:, :, :n_keys]


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
        self.kv_cache: KVCache | None = None  # switched on for decoding (Decoder.setup_cache)

    def forward(self, x_BTD: torch.Tensor, cos_TP: torch.Tensor, sin_TP: torch.Tensor,
                positions_T: torch.Tensor) -> torch.Tensor:
        """Causal attention of T tokens at `positions_T`: among themselves, or, with the KV cache on,
        over every cached token too."""
        B, T, D = x_BTD.shape
        q_BHTd = self.wq(x_BTD).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k_BGTd = self.wk(x_BTD).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v_BGTd = self.wv(x_BTD).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q_BHTd, k_BGTd = apply_rope(q_BHTd, cos_TP, sin_TP), apply_rope(k_BGTd, cos_TP, sin_TP)
        if self.kv_cache is not None:
            k_BGTd, v_BGTd = self.kv_cache.update(positions_T, k_BGTd, v_BGTd)  # now every cached key
        y_BHTd = F.scaled_dot_product_attention(q_BHTd, k_BGTd, v_BGTd, is_causal=T > 1,
                                                dropout_p=self.dropout if self.training else 0.0,
                                                enable_gqa=self.n_kv_heads != self.n_heads)
        return self.wo(y_BHTd.transpose(1, 2).reshape(B, T, D))


def project(x: torch.Tensor, factors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """x·W for W given as one [in, out] matrix, or as rank-r factors [in, r], [r, out] (W = L·R)."""
    for weight in factors:
        x = x @ weight
    return x


def swiglu(x: torch.Tensor, gate: tuple[torch.Tensor, ...], up: tuple[torch.Tensor, ...],
           down: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """SwiGLU, down(silu(gate(x)) * up(x)), of one FFN: the dense one, a bank's expert, or a streamed
    expert; each projection as `project` takes it."""
    return project(F.silu(project(x, gate)) * project(x, up), down)


class FeedForward(nn.Module):
    """The dense SwiGLU FFN."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.w_gate = nn.Linear(d_model, hidden, bias=False)
        self.w_up = nn.Linear(d_model, hidden, bias=False)
        self.w_down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # nn.Linear keeps W as [out, in]: its transpose is the [in, out] matrix `project` takes.
        return swiglu(x, (self.w_gate.weight.T,), (self.w_up.weight.T,), (self.w_down.weight.T,))
