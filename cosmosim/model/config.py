"""Model configuration and the named mini configs trained on this machine.

The minis keep their CoSMoEs target's depth, expert count and top-k (Huber et al. 2025, Table 1,
wearable rows) and shrink the width so a ~40-minute run on 2 CPU cores reaches a few thousand
steps. The dense minis are sized like the paper's dense baselines: FA matches the MoE mini's
*active* parameters, PA its *total* parameters (within 1%, embeddings included).

A config's shape is an `Architecture` (`ModelConfig.arch`), the class that describes the paper-size
targets: it validates the shape and counts parameters, bytes and FLOPs, with its conventions (a
dense model has n_experts = top_k = 1), shared experts and a MoE's dense layers included.
`cosmosim.model.mini` derives the config of a mini of any target architecture.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Literal

from cosmosim.errors import InputError
from cosmosim.inputs.arch import Architecture

LoadBalanceLevel = Literal["batch", "sequence"]


# The fields that give a config its shape: an `Architecture`'s, by the same names.
SHAPE_FIELDS = ("n_layers", "d_model", "n_heads", "n_kv_heads", "vocab_size", "ffn_hidden", "n_experts", "top_k",
                "wd_rank", "n_shared_experts", "shared_ffn_hidden", "dense_layers", "dense_ffn_hidden")


@dataclass(frozen=True)
class ModelConfig:
    """A decoder's shape (what `arch` describes and counts) and how it is trained."""

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int = 8192
    seq_len: int = 128
    ffn_hidden: int = 384  # dense FFN width, or each expert's width in an MoE
    n_experts: int = 1  # 1 = dense FFN, as in cosmosim.inputs.arch
    top_k: int = 1
    wd_rank: int | None = None  # None = full-rank experts; else each n×m matrix is L (n×r) · R (r×m)
    n_shared_experts: int = 0  # MoE: SwiGLU experts every token takes besides its top_k (never routed)
    shared_ffn_hidden: int | None = None  # one shared expert's width; None: ffn_hidden
    dense_layers: tuple[int, ...] = ()  # MoE: layers whose FFN is one dense SwiGLU instead of experts
    dense_ffn_hidden: int | None = None  # their width; None: ffn_hidden
    # 10_000 rather than Llama-3's 500_000: at 128-token sequences a larger base leaves most of
    # the rotary frequencies nearly constant, i.e. wasted.
    rope_theta: float = 10_000.0
    load_balance_weight: float = 0.01  # Switch Transformer's α
    load_balance_level: LoadBalanceLevel = "sequence"  # CoSMoEs makes it sequence-level
    z_loss_weight: float = 0.001  # ST-MoE router z-loss
    bles_lambda: float = 0.0  # 0 = no BlES term
    bles_tau: float = 1.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.dense_layers, list):  # as JSON gives it
            object.__setattr__(self, "dense_layers", tuple(self.dense_layers))
        _ = self.arch  # building the Architecture validates the shape
        if self.head_dim % 2:
            raise InputError(f"model config: d_model: expected a head size d_model / n_heads={self.n_heads} that "
                             f"is even (RoPE rotates pairs), got {self.d_model}")
        if self.seq_len < 1:
            raise InputError(f"model config: seq_len: expected a positive integer, got {self.seq_len}")
        if self.load_balance_level not in ("batch", "sequence"):
            raise InputError(f"model config: load_balance_level: expected 'batch' or 'sequence', got {self.load_balance_level!r}")
        for name in ("load_balance_weight", "z_loss_weight", "bles_lambda"):
            if not getattr(self, name) >= 0:  # also refuses NaN
                raise InputError(f"model config: {name}: expected a weight >= 0, got {getattr(self, name)}")
        if self.bles_lambda and self.bles_tau <= 0:
            raise InputError(f"model config: bles_tau: expected > 0, got {self.bles_tau}")

    @functools.cached_property
    def arch(self) -> Architecture:
        """The shape as an `Architecture` (untied embeddings): what counts parameters, bytes and FLOPs."""
        return Architecture(name="model config", **{name: getattr(self, name) for name in SHAPE_FIELDS})

    @classmethod
    def of(cls, arch: Architecture, **settings) -> ModelConfig:
        """A config of `arch`'s shape; `settings` give the other fields."""
        if arch.tied_embeddings:
            raise InputError(f"architecture {arch.name!r}: tied embeddings; the decoder's are untied")
        shape = {name: getattr(arch, name) for name in SHAPE_FIELDS}
        # Architecture fills the widths of absent shared experts and dense layers in; a config leaves them None.
        if not arch.n_shared_experts:
            shape["shared_ffn_hidden"] = None
        if not arch.dense_layers:
            shape["dense_ffn_hidden"] = None
        return cls(**shape, **settings)

    @property
    def is_moe(self) -> bool:
        return self.arch.is_moe

    @property
    def head_dim(self) -> int:
        return self.arch.head_dim

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: dict, source: str = "model config") -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise InputError(f"{source}: {unknown[0]}: unknown model config field")
        if fields.get("n_experts") == 0:  # written before dense was n_experts = 1 (with an unused top_k)
            fields = {**fields, "n_experts": 1, "top_k": 1}
        try:
            return cls(**fields)
        except (TypeError, InputError) as error:  # a required field is missing, or a bad value
            raise InputError(f"{source}: {error}") from None

    def num_params(self) -> int:
        """Every parameter, embeddings and the (untied) output head included."""
        return self.arch.total_params()

    def num_active_params(self) -> int:
        """Parameters a single token touches: only its top-k experts count."""
        return self.arch.active_params()


_MOE_MINI = ModelConfig(n_layers=19, d_model=128, n_heads=4, n_kv_heads=4, ffn_hidden=384, n_experts=8, top_k=2)

# Full multi-head attention (n_kv_heads = n_heads): the paper's parameter counts come out right
# with it. Expert width ≈ 3·d, as the ~1280 FFN that reproduces the wearable MoE row at d = 432.
MINI_CONFIGS: dict[str, ModelConfig] = {
    "wearable-moe-mini": _MOE_MINI,
    # 32 layers of WD experts (rank d/2) at a slightly smaller width, like 432 → 400 in the
    # paper: 25.6M total / 9.3M active vs the MoE mini's 25.8M / 9.0M.
    "wearable-wd-mini": ModelConfig(n_layers=32, d_model=120, n_heads=4, n_kv_heads=4, ffn_hidden=352,
                                    n_experts=8, top_k=2, wd_rank=60),
    # λ and τ are not in the paper; τ = 10, λ = 1 was the best trade-off in a 1500-step probe here.
    "wearable-bles-mini": dataclasses.replace(_MOE_MINI, bles_lambda=1.0, bles_tau=10.0),
    # Dense FA: 19 layers, active params of the MoE mini (8.95M vs 8.97M).
    "wearable-dense-fa-mini": ModelConfig(n_layers=19, d_model=160, n_heads=5, n_kv_heads=5, ffn_hidden=480),
    # Dense PA: 29 layers, total params of the MoE mini (25.7M vs 25.8M).
    "wearable-dense-pa-mini": ModelConfig(n_layers=29, d_model=240, n_heads=6, n_kv_heads=6, ffn_hidden=720),
}


# The CoSMoEs Table 1 architecture each mini stands in for (names in cosmosim.inputs.arch): BlES changes
# training, not the architecture.
MINI_TARGET_ARCH: dict[str, str] = {
    "wearable-moe-mini": "wearable-moe",
    "wearable-wd-mini": "wearable-wd",
    "wearable-bles-mini": "wearable-moe",
    "wearable-dense-fa-mini": "wearable-dense-fa",
    "wearable-dense-pa-mini": "wearable-dense-pa",
}


def get_config(name: str) -> ModelConfig:
    if name not in MINI_CONFIGS:
        raise InputError(f"model config: {name!r}: unknown name, expected one of {', '.join(MINI_CONFIGS)} "
                         "or a CONFIG.json from `cosmosim mini TARGET --out CONFIG.json`")
    return MINI_CONFIGS[name]
