"""Mixture-of-Experts FFN: a token-choice top-k router and a bank of SwiGLU experts.

Routing (which experts, with which gates) and expert compute are separate modules so that losses
and trace recording can read the routing without touching the experts, and so that replay can keep
the router resident and stream the experts (`resident_experts=False`). Each expert is `layers.swiglu`.
Shared experts (`n_shared_experts`), which every token takes besides its top-k, are one dense SwiGLU
of n_shared_experts × shared_ffn_hidden width (the same weights and sum as that many SwiGLUs side by
side, as Qwen2-MoE holds them), resident like the router and added to the routed experts' output.
Tensor names carry their shape: B batch, T time, D d_model, F expert hidden, E experts, K top-k,
N routed tokens, R rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cosmosim.model.config import ModelConfig
from cosmosim.model.layers import FeedForward, swiglu


@dataclass
class Routing:
    """What one MoE layer's router decided for a batch."""

    logits_BTE: torch.Tensor  # raw router logits (what z-loss and BlES read)
    expert_ids_BTK: torch.Tensor  # chosen experts, by descending gate
    gates_BTK: torch.Tensor  # their softmax probabilities, renormalised to sum to 1 per token


class Router(nn.Module):
    def __init__(self, d_model: int, n_experts: int, top_k: int):
        super().__init__()
        self.top_k = top_k
        self.gate = nn.Linear(d_model, n_experts, bias=False)

    def forward(self, x_BTD: torch.Tensor) -> Routing:
        logits_BTE = self.gate(x_BTD)
        # Softmax in fp32: the gates feed the trace and the losses, where rounding would show.
        probs_BTE = logits_BTE.float().softmax(dim=-1)
        top_probs_BTK, expert_ids_BTK = probs_BTE.topk(self.top_k, dim=-1)  # sorted, descending
        gates_BTK = top_probs_BTK / top_probs_BTK.sum(dim=-1, keepdim=True)
        return Routing(logits_BTE, expert_ids_BTK, gates_BTK.to(x_BTD.dtype))


class ExpertLinear(nn.Module):
    """E independent n→m linear maps (y = x·W), each full rank or weight-decomposed W = L·R."""

    def __init__(self, n_experts: int, n_in: int, n_out: int, rank: int | None, std: float):
        super().__init__()
        self.rank = rank
        if rank is None:
            self.weight = nn.Parameter(torch.randn(n_experts, n_in, n_out) * std)
        else:
            # Each entry of L·R sums `rank` products; factors of std (std²/rank)^¼ give the
            # product the same spread as a full-rank matrix of std `std`.
            factor_std = (std * std / rank) ** 0.25
            self.left = nn.Parameter(torch.randn(n_experts, n_in, rank) * factor_std)
            self.right = nn.Parameter(torch.randn(n_experts, rank, n_out) * factor_std)

    def factors(self, expert: int) -> tuple[torch.Tensor, ...]:
        """The expert's matrix as `layers.project` takes it; L·R costs n·r + r·m FLOPs instead of n·m."""
        if self.rank is None:
            return (self.weight[expert],)
        return self.left[expert], self.right[expert]


class Experts(nn.Module):
    """A bank of SwiGLU experts; each token's output is the gate-weighted sum of its top-k."""

    def __init__(self, config: ModelConfig, std: float, out_std: float):
        super().__init__()
        n, d, hidden, rank = config.n_experts, config.d_model, config.ffn_hidden, config.wd_rank
        self.n_experts = n
        self.w_gate = ExpertLinear(n, d, hidden, rank, std)
        self.w_up = ExpertLinear(n, d, hidden, rank, std)
        self.w_down = ExpertLinear(n, hidden, d, rank, out_std)

    def forward(self, x_ND: torch.Tensor, expert_ids_NK: torch.Tensor, gates_NK: torch.Tensor) -> torch.Tensor:
        out_ND = torch.zeros_like(x_ND)
        # One dense matmul per expert over the tokens routed to it: on a CPU this beats gathering
        # a weight copy per token (gpt-fast's decode path) by far at training batch sizes.
        for e in range(self.n_experts):
            token_idx, slot = torch.where(expert_ids_NK == e)
            if token_idx.numel() == 0:
                continue
            y = swiglu(x_ND[token_idx], self.w_gate.factors(e), self.w_up.factors(e), self.w_down.factors(e))
            out_ND.index_add_(0, token_idx, y * gates_NK[token_idx, slot].unsqueeze(-1))
        return out_ND


class MoEFeedForward(nn.Module):
    """The router, the shared experts if any and, unless the caller streams them (`resident_experts=False`),
    the expert bank."""

    def __init__(self, config: ModelConfig, std: float, out_std: float, resident_experts: bool = True):
        super().__init__()
        self.router = Router(config.d_model, config.n_experts, config.top_k)
        self.experts = Experts(config, std, out_std) if resident_experts else None
        shared_width = config.n_shared_experts * config.arch.shared_ffn_hidden
        self.shared = FeedForward(config.d_model, shared_width) if shared_width else None

    def forward(self, x_BTD: torch.Tensor) -> tuple[torch.Tensor, Routing]:
        if self.experts is None:
            raise RuntimeError("this MoE layer's experts are streamed: its caller computes them")
        B, T, D = x_BTD.shape
        routing = self.router(x_BTD)
        out_ND = self.experts(x_BTD.reshape(B * T, D), routing.expert_ids_BTK.reshape(B * T, -1),
                              routing.gates_BTK.reshape(B * T, -1))
        out_BTD = out_ND.view(B, T, D)
        if self.shared is not None:
            out_BTD = out_BTD + self.shared(x_BTD)
        return out_BTD, routing

