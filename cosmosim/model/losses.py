"""Router losses: Switch load balancing, ST-MoE z-loss and CoSMoEs' BlES switching loss.

Pure keyword-only functions of router logits [B, T, E] and chosen experts [B, T, K], so they can
be tested on hand-made tensors; `moe_aux_losses` combines them over a model's MoE layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cosmosim.model.config import LoadBalanceLevel, ModelConfig
from cosmosim.model.moe import Routing


def expert_mask(expert_ids_BTK: torch.Tensor, n_experts: int) -> torch.Tensor:
    """[B, T, E] float: 1 where the expert is among the token's chosen ones."""
    return F.one_hot(expert_ids_BTK, n_experts).sum(dim=-2).float()


def load_balance_loss(*, router_logits_BTE: torch.Tensor, expert_ids_BTK: torch.Tensor,
                      level: LoadBalanceLevel = "batch") -> torch.Tensor:
    """Switch Transformer's E · Σ_e f_e · P_e (f: share of routed slots, P: mean router probability).

    Equals 1 for perfectly balanced routing whatever E. "batch" pools all B·T tokens; "sequence"
    (CoSMoEs) balances each sequence on its own and averages the B losses.
    """
    n_experts, top_k = router_logits_BTE.shape[-1], expert_ids_BTK.shape[-1]
    probs_BTE = router_logits_BTE.float().softmax(dim=-1)
    token_dims = (0, 1) if level == "batch" else (1,)
    slot_share_E = expert_mask(expert_ids_BTK, n_experts).mean(dim=token_dims) / top_k  # [E] or [B, E]
    mean_prob_E = probs_BTE.mean(dim=token_dims)
    return n_experts * (slot_share_E * mean_prob_E).sum(dim=-1).mean()


def router_z_loss(*, router_logits_BTE: torch.Tensor) -> torch.Tensor:
    """ST-MoE: mean squared log-partition; keeps router logits small so the softmax stays stable."""
    return torch.logsumexp(router_logits_BTE.float(), dim=-1).pow(2).mean()


@dataclass
class BlesLoss:
    loss: torch.Tensor  # H_norm · L_norm; gradients only through L_norm
    exrep: torch.Tensor  # H_norm: share of top-k slots whose expert changed from t to t+1


def bles_loss(*, router_logits_BTE: torch.Tensor, top_k: int, tau: float) -> BlesLoss:
    """Block-wise Expert Selection loss, CoSMoEs Eq. 2–7.

    W = softmax(τR); S = top_k(W, K)
    H = Σ_e Σ_b Σ_t |1[e∈S_{b,t+1}] − 1[e∈S_{b,t}]|,  H_norm = ⌊H/2⌋ / (B·K·(T−1))
    L = Σ_b Σ_t Σ_e |W_{b,t+1,e} − W_{b,t,e}|,        L_norm = L / (B·T)
    loss = H_norm · L_norm, with H_norm a constant (a count, so it has no gradient anyway).
    """
    B, T, E = router_logits_BTE.shape
    if T < 2:
        raise ValueError(f"BlES needs at least 2 tokens per sequence, got {T}")
    W_BTE = (tau * router_logits_BTE.float()).softmax(dim=-1)
    with torch.no_grad():
        chosen_BTE = expert_mask(W_BTE.topk(top_k, dim=-1).indices, E)
        # Each replaced expert shows twice in H (one leaves, one joins), hence ⌊H/2⌋.
        switches = (chosen_BTE[:, 1:] - chosen_BTE[:, :-1]).abs().sum()
        h_norm = torch.floor(switches / 2) / (B * top_k * (T - 1))
    l_norm = (W_BTE[:, 1:] - W_BTE[:, :-1]).abs().sum() / (B * T)
    return BlesLoss(loss=h_norm * l_norm, exrep=h_norm)


@dataclass
class AuxLosses:
    total: torch.Tensor  # the weighted sum to add to the cross-entropy
    load_balance: torch.Tensor  # unweighted, mean over MoE layers (1 = balanced)
    z_loss: torch.Tensor
    bles: torch.Tensor
    exrep: torch.Tensor  # mean H_norm over MoE layers


def moe_aux_losses(*, routings: list[Routing], config: ModelConfig) -> AuxLosses:
    """The config's weighted router losses, each averaged over layers so that a deeper model (the
    32-layer WD mini) does not get a stronger regulariser at the same weights."""
    if not routings:
        zero = torch.zeros(())
        return AuxLosses(zero, zero, zero, zero, zero)
    balance, z, bles, exrep = [], [], [], []
    for routing in routings:
        balance.append(load_balance_loss(router_logits_BTE=routing.logits_BTE, expert_ids_BTK=routing.expert_ids_BTK,
                                         level=config.load_balance_level))
        z.append(router_z_loss(router_logits_BTE=routing.logits_BTE))
        switching = bles_loss(router_logits_BTE=routing.logits_BTE, top_k=config.top_k, tau=config.bles_tau)
        bles.append(switching.loss)
        exrep.append(switching.exrep)
    balance_mean, z_mean, bles_mean = torch.stack(balance).mean(), torch.stack(z).mean(), torch.stack(bles).mean()
    total = (config.load_balance_weight * balance_mean + config.z_loss_weight * z_mean
             + config.bles_lambda * bles_mean)
    return AuxLosses(total, balance_mean, z_mean, bles_mean, torch.stack(exrep).mean())
