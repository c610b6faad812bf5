"""The decoder's arithmetic in torch: Llama-3 attention with a KV cache, the router, SwiGLU experts.

Shapes carry their names: P rows (prompt tokens, or 1 when decoding), d model width, H query heads,
G key/value heads, C cached positions, D head width. Everything is bfloat16 (`weights.DTYPE`) but
the logits, which sampling reads in fp32.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from cosmosim.engines.replay.weights import DTYPE, LayerWeights
from cosmosim.errors import InputError
from cosmosim.inputs.arch import Architecture

ROPE_BASE = 500_000.0  # Llama-3's rotary base
NORM_EPS = 1e-5


def default_threads() -> int:
    """All cores but one: replay's I/O threads need a core, and an OpenMP barrier waiting on a
    preempted torch worker costs a whole scheduler time slice."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores - 1)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with `count` torch intra-op threads (calibrate and replay must agree)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InputError(f"--threads: expected an integer >= 1, got {count!r}")
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def rms_norm(x_Pd: torch.Tensor, weight_d: torch.Tensor) -> torch.Tensor:
    return (x_Pd * torch.rsqrt(x_Pd.float().pow(2).mean(-1, keepdim=True) + NORM_EPS).to(DTYPE)) * weight_d


def rope_tables(head_dim: int, n_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [n_positions, head_dim / 2] for rotary embeddings, built once."""
    inverse = 1.0 / ROPE_BASE ** (torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.outer(torch.arange(n_positions).float(), inverse)
    return angles.cos().to(DTYPE), angles.sin().to(DTYPE)


def apply_rope(x_PhD: torch.Tensor, cos_PD: torch.Tensor, sin_PD: torch.Tensor) -> torch.Tensor:
    """Rotate each (even, odd) pair of a head's features by its position's angle."""
    even, odd = x_PhD[..., 0::2], x_PhD[..., 1::2]
    cos, sin = cos_PD[:, None, :], sin_PD[:, None, :]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


class KVCache:
    """Keys and values of one request for every layer, [G, C, D] each; a ring of `context_len`
    positions, so a request longer than the context attends over its last `context_len` tokens."""

    def __init__(self, arch: Architecture, context_len: int) -> None:
        shape = (arch.n_layers, arch.n_kv_heads, context_len, arch.head_dim)
        self.keys = torch.zeros(shape, dtype=DTYPE)
        self.values = torch.zeros(shape, dtype=DTYPE)
        self.context_len = context_len


def attention(layer: LayerWeights, index: int, x_Pd: torch.Tensor, cache: KVCache, positions: torch.Tensor,
              n_keys: int, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """x + attention(norm(x)) for P new tokens at `positions`, attending over `n_keys` cached ones
    (their own included); the prompt's keys are causal among themselves."""
    P, head_dim = x_Pd.shape[0], cache.keys.shape[-1]
    h_Pd = rms_norm(x_Pd, layer.attn_norm)
    q_PHD = F.linear(h_Pd, layer.wq).view(P, -1, head_dim)
    k_PGD = F.linear(h_Pd, layer.wk).view(P, -1, head_dim)
    v_PGD = F.linear(h_Pd, layer.wv).view(P, -1, head_dim)
    cos, sin = rope[0][positions], rope[1][positions]
    q_PHD, k_PGD = apply_rope(q_PHD, cos, sin), apply_rope(k_PGD, cos, sin)
    slots = positions % cache.context_len
    cache.keys[index][:, slots] = k_PGD.transpose(0, 1)
    cache.values[index][:, slots] = v_PGD.transpose(0, 1)
    keys_GCD, values_GCD = cache.keys[index][:, :n_keys], cache.values[index][:, :n_keys]
    out_HPD = F.scaled_dot_product_attention(q_PHD.transpose(0, 1)[None], keys_GCD[None], values_GCD[None],
                                             is_causal=P > 1, enable_gqa=True)[0]
    return x_Pd + F.linear(out_HPD.transpose(0, 1).reshape(P, -1), layer.wo)


def decode_gates(logits_PE: torch.Tensor, experts: list[int]) -> torch.Tensor:
    """The router's logits of a decoded token softmaxed over the experts the trace chose for it:
    the weights of their outputs."""
    return torch.softmax(logits_PE[-1, experts].float(), dim=0).to(DTYPE)


def expert_ffn(h_Pd: torch.Tensor, matrices: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """SwiGLU: down(silu(gate(h)) * up(h)); each projection is one matrix or two rank-r factors."""
    step = len(matrices) // 3

    def project(x: torch.Tensor, factors: tuple[torch.Tensor, ...]) -> torch.Tensor:
        for weight in factors:
            x = F.linear(x, weight)
        return x

    gate, up, down = (matrices[i * step:(i + 1) * step] for i in range(3))
    return project(F.silu(project(h_Pd, gate)) * project(h_Pd, up), down)


def lm_head(x_Pd: torch.Tensor, final_norm: torch.Tensor, weight_Vd: torch.Tensor) -> torch.Tensor:
    """Logits of the last position, fp32 [V]."""
    return F.linear(rms_norm(x_Pd[-1:], final_norm), weight_Vd)[0].float()
