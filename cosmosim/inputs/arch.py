"""Target architectures: the eight rows of CoSMoEs Table 1 and what they cost.

CoSMoEs (Huber et al., arXiv 2503.00245) gives each model's layers, heads, hidden size and
active (total) parameter count, but not its FFN width, KV heads or vocabulary. The catalog
takes Llama-3's vocabulary (128,256, untied embeddings) and chooses the rest so the counts
match; each row says how. `Architecture` answers exact parameter counts, bytes at a weight
bit-width, and FLOPs, for the simulator, the analytic model and replay, and describes the mini
models trained here too (`cosmosim.model.config.ModelConfig.arch`): it is the one counter.

Conventions:
- Llama-3 decoder: RMSNorm before attention and before the FFN (d weights each), no biases,
  a final RMSNorm, q/k/v/o projections with grouped-query attention.
- MoE layers: n_experts SwiGLU experts (gate and up: d x f, down: f x d), a linear router
  (E x d), top_k experts per token. A weight-decomposed (WD) expert stores each n x m matrix
  as n x r times r x m. Optionally n_shared_experts SwiGLU experts of width shared_ffn_hidden
  that every token takes (resident weights, like attention), and `dense_layers` whose FFN is one
  dense SwiGLU of width dense_ffn_hidden instead of experts (DeepSeek's and OLMoE-style first
  dense layers). Attention heads may be narrower or wider than d / n_heads (`head_dim`).
- A dense model is one whose FFN every token takes: n_experts = top_k = 1 (the convention of
  this whole package, the minis included). It has no router, its FFN counts as non-expert
  weight, resident like attention, and `expert_params()` is 0 for it.
- FLOPs count a multiply-add as 2 and only the matrix products (norms, RoPE, softmax and the
  SwiGLU gate add well under 1% at these sizes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from cosmosim.errors import InputError

if TYPE_CHECKING:
    import pandas

LLAMA3_VOCAB_SIZE = 128_256
WEIGHT_BITS = (16, 8, 4)
SWIGLU_MATRICES = 3  # gate, up, down
FULL_RANK = "full"  # a wd_rank value (sweeps, design points): experts not decomposed


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bytes(n_params: int, bits: int) -> int:
    if bits not in WEIGHT_BITS:
        raise InputError(f"bit-width must be one of {WEIGHT_BITS}, got {bits!r}")
    return math.ceil(n_params * bits / 8)


@dataclass(frozen=True)
class Architecture:
    name: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    ffn_hidden: int  # one routed expert's FFN width (MoE) or the dense FFN width
    n_experts: int  # 1 for dense
    top_k: int  # 1 for dense
    wd_rank: int | None  # None = full-rank experts
    tied_embeddings: bool = False
    paper_active_params: float | None = None
    paper_total_params: float | None = None
    head_dim: int | None = None  # None: d_model / n_heads
    n_shared_experts: int = 0  # MoE: experts every token takes at every MoE layer, besides its top_k
    shared_ffn_hidden: int | None = None  # one shared expert's width; None: ffn_hidden
    dense_layers: tuple[int, ...] = ()  # MoE: layers with a dense FFN instead of experts
    dense_ffn_hidden: int | None = None  # their FFN width; None: ffn_hidden

    def __post_init__(self) -> None:
        def fail(what: str) -> NoReturn:
            raise InputError(f"architecture {self.name!r}: {what}")

        sizes = ("n_layers", "d_model", "n_heads", "n_kv_heads", "vocab_size", "ffn_hidden", "n_experts", "top_k")
        for field in sizes:
            value = getattr(self, field)
            if not _is_int(value) or value <= 0:
                fail(f"{field} must be a positive integer, got {value!r}")
        if self.top_k > self.n_experts:
            fail(f"top_k must be <= n_experts ({self.n_experts}), got {self.top_k}")
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                fail(f"n_heads must divide d_model ({self.d_model}), got {self.n_heads} (or give head_dim)")
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)  # frozen: filled in once, here
        elif not _is_int(self.head_dim) or self.head_dim <= 0:
            fail(f"head_dim must be a positive integer, got {self.head_dim!r}")
        if self.n_heads % self.n_kv_heads:
            fail(f"n_kv_heads must divide n_heads ({self.n_heads}), got {self.n_kv_heads}")
        self._check_ffns(fail)
        if self.wd_rank is not None:
            if not self.is_moe:
                fail(f"wd_rank applies to MoE experts only (n_experts > 1), got {self.wd_rank!r} on a dense model")
            max_rank = min(self.d_model, self.ffn_hidden)
            if not _is_int(self.wd_rank) or not 1 <= self.wd_rank <= max_rank:
                fail(f"wd_rank must be an integer in [1, {max_rank}] (min(d_model, ffn_hidden)), got {self.wd_rank!r}")

    def _check_ffns(self, fail: Callable[[str], NoReturn]) -> None:
        """Shared experts and dense layers: only on a MoE, and at least one layer keeps its experts."""
        if not _is_int(self.n_shared_experts) or self.n_shared_experts < 0:
            fail(f"n_shared_experts must be an integer >= 0, got {self.n_shared_experts!r}")
        layers = self.dense_layers
        if not isinstance(layers, tuple) or not all(_is_int(layer) for layer in layers):
            fail(f"dense_layers must be a tuple of layer indices, got {layers!r}")
        if not self.is_moe and (self.n_shared_experts or layers):
            fail("n_shared_experts and dense_layers apply to a MoE (n_experts > 1); a dense model's every layer is dense")
        if any(not 0 <= layer < self.n_layers for layer in layers) or len(set(layers)) < len(layers):
            fail(f"dense_layers must be distinct indices in [0, {self.n_layers}), got {list(layers)}")
        if self.is_moe and len(layers) == self.n_layers:
            fail(f"dense_layers lists every one of the {self.n_layers} layers: no layer has experts")
        object.__setattr__(self, "dense_layers", tuple(sorted(layers)))
        for field in ("shared_ffn_hidden", "dense_ffn_hidden"):
            value = getattr(self, field)
            if value is None:
                object.__setattr__(self, field, self.ffn_hidden)
            elif not _is_int(value) or value <= 0:
                fail(f"{field} must be a positive integer, got {value!r}")

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 1

    @property
    def moe_layers(self) -> tuple[int, ...]:
        """The layers whose FFN is routed experts, ascending (none for a dense model)."""
        if not self.is_moe:
            return ()
        return tuple(layer for layer in range(self.n_layers) if layer not in self.dense_layers)

    @property
    def n_moe_layers(self) -> int:
        return len(self.moe_layers)

    @property
    def step_layers(self) -> tuple[tuple[int, ...], ...]:
        """The model layers each replayed step runs, in order. A dense model: one step per layer. A MoE:
        one step per MoE layer, which also runs the dense layers just before it, and the last step any
        after the last MoE layer (their compute joins that step's, before its router: the engines replay
        expert accesses, and a dense layer has none)."""
        if not self.is_moe:
            return tuple((layer,) for layer in range(self.n_layers))
        groups, pending = [], []
        for layer in range(self.n_layers):
            pending.append(layer)
            if layer not in self.dense_layers:
                groups.append(tuple(pending))
                pending = []
        if pending:
            groups[-1] = (*groups[-1], *pending)
        return tuple(groups)

    @property
    def total_experts(self) -> int:
        """Routed experts of the whole model: what an expert cache can hold."""
        return self.n_moe_layers * self.n_experts

    def check_routing(self, source: str, n_experts: int, top_k: int) -> None:
        """A trace routing top-`top_k` of `n_experts` replays on this architecture only if both match;
        else an InputError saying how to get a trace of this shape."""
        if not self.is_moe:
            raise InputError(f"{source}: --arch {self.name} is dense: it routes nothing, so no trace replays on it")
        if (n_experts, top_k) != (self.n_experts, self.top_k):
            raise InputError(f"{source}: routes top-{top_k} of {n_experts} experts, but --arch {self.name} has "
                             f"top-{self.top_k} of {self.n_experts}; replay a trace of that shape (record a mini of "
                             f"it, or `cosmosim trace synth --layers {self.n_moe_layers} --experts {self.n_experts} "
                             f"--top-k {self.top_k} --exrep X --out T.npz`)")

    def with_wd_rank(self, rank: int | None) -> Architecture:
        """The same architecture with rank-`rank` decomposed experts (None: full rank)."""
        return replace(self, wd_rank=rank)

    # ------------------------------------------------------------------ parameter counts

    def _swiglu_params(self, width: int, rank: int | None = None) -> int:
        """One SwiGLU FFN: three d x width matrices, or their rank-r factors."""
        d = self.d_model
        if rank is None:
            return SWIGLU_MATRICES * d * width
        return SWIGLU_MATRICES * rank * (d + width)  # each d x f becomes d x r + r x f

    def expert_params(self) -> int:
        """One routed expert's weights; 0 for a dense model, whose FFN is non-expert weight."""
        return self._swiglu_params(self.ffn_hidden, self.wd_rank) if self.is_moe else 0

    def shared_expert_params(self) -> int:
        """One shared expert (full rank: WD decomposes the routed experts)."""
        return self._swiglu_params(self.shared_ffn_hidden) if self.n_shared_experts else 0

    def attention_params_per_layer(self) -> int:
        q_width, kv_width = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        return 2 * self.d_model * q_width + 2 * self.d_model * kv_width  # q, o + k, v

    def nonexpert_params_of(self, layer: int) -> int:
        """Layer `layer`'s resident weights: attention, two norms, and the router and shared experts
        of a MoE layer, or the FFN of a dense one (a dense layer of a MoE, or any layer of a dense model)."""
        base = self.attention_params_per_layer() + 2 * self.d_model
        if not self.is_moe:
            return base + self._swiglu_params(self.ffn_hidden)
        if layer in self.dense_layers:
            return base + self._swiglu_params(self.dense_ffn_hidden)
        return base + self.n_experts * self.d_model + self.n_shared_experts * self.shared_expert_params()

    def embedding_params(self) -> int:
        return self.vocab_size * self.d_model

    def lm_head_params(self) -> int:
        return 0 if self.tied_embeddings else self.vocab_size * self.d_model

    def resident_params(self) -> int:
        """Everything but the routed experts: embeddings, every layer's non-expert weights, final norm, LM head."""
        final_norm = self.d_model
        layers = sum(self.nonexpert_params_of(layer) for layer in range(self.n_layers))
        return self.embedding_params() + layers + final_norm + self.lm_head_params()

    def total_params(self) -> int:
        return self.resident_params() + self.total_experts * self.expert_params()

    def active_params(self) -> int:
        """Weights one token touches: the resident ones (the whole embedding table, as the
        paper counts it) and top_k routed experts per MoE layer."""
        return self.resident_params() + self.n_moe_layers * self.top_k * self.expert_params()

    # ------------------------------------------------------------------ bytes

    def expert_bytes(self, weight_bits: int) -> int:
        return _bytes(self.expert_params(), weight_bits)

    def nonexpert_bytes_of(self, layer: int, weight_bits: int) -> int:
        return _bytes(self.nonexpert_params_of(layer), weight_bits)

    def resident_bytes(self, weight_bits: int) -> int:
        return _bytes(self.resident_params(), weight_bits)

    def kv_bytes_per_token(self, kv_bits: int = 16) -> int:
        """Keys and values one token adds to the cache, over all layers."""
        return _bytes(2 * self.n_layers * self.n_kv_heads * self.head_dim, kv_bits)

    # ------------------------------------------------------------------ FLOPs

    def expert_flops_per_token(self) -> int:
        return 2 * self.expert_params()

    def _projection_flops_of(self, layer: int) -> int:
        """One token through one layer's non-expert matrices: q, k, v, o, and the router and shared
        experts (MoE layer) or the FFN (dense layer). Norm weights are parameters, not matrix products."""
        return 2 * (self.nonexpert_params_of(layer) - 2 * self.d_model)

    def _attention_flops_per_layer(self, keys: int) -> int:
        """q.k scores and the weighted sum of values over `keys` cached positions, all heads
        (head_dim multiply-adds each per key; grouped KV heads share keys, not the work)."""
        return 2 * 2 * self.n_heads * self.head_dim * keys

    def nonexpert_flops_of(self, layer: int, context_len: int) -> int:
        """One token through layer `layer` bar its routed experts, attending to context_len keys in
        the KV cache (its own included)."""
        if context_len < 1:
            raise ValueError(f"context_len must be >= 1, got {context_len}")
        return self._projection_flops_of(layer) + self._attention_flops_per_layer(context_len)

    def lm_head_flops_per_token(self) -> int:
        return 2 * self.vocab_size * self.d_model

    def _weight_flops_per_token(self) -> int:
        """Every layer's matrix products for one token, top_k routed experts per MoE layer; no attention."""
        projections = sum(self._projection_flops_of(layer) for layer in range(self.n_layers))
        return projections + self.n_moe_layers * self.top_k * self.expert_flops_per_token()

    def decode_flops_per_token(self, context_len: int) -> int:
        """One generated token with context_len keys in the KV cache (its own included)."""
        if context_len < 1:
            raise ValueError(f"context_len must be >= 1, got {context_len}")
        attention = self.n_layers * self._attention_flops_per_layer(context_len)
        return self._weight_flops_per_token() + attention + self.lm_head_flops_per_token()

    def prefill_flops(self, prompt_len: int) -> int:
        """A causal prompt of prompt_len tokens: token i attends to i keys; the LM head runs on
        the last position only, to produce the first generated token."""
        if prompt_len < 1:
            raise ValueError(f"prompt_len must be >= 1, got {prompt_len}")
        keys_attended = prompt_len * (prompt_len + 1) // 2
        attention = self.n_layers * self._attention_flops_per_layer(keys_attended)
        return prompt_len * self._weight_flops_per_token() + attention + self.lm_head_flops_per_token()


# ---------------------------------------------------------------------------- catalog
# Fitting notes. For a MoE row, total - active = L (E - k) * expert params, which fixes the
# expert width whatever the attention; the active count then pins the attention size. That
# rules out grouped-query attention for every MoE row (8 KV heads on phone-moe would give
# 1.30B active, -5%), so the MoE rows use full multi-head attention. Dense rows fit either way;
# the phone ones take the published Llama-3.2 shapes they evidently follow.


def _row(
    name: str,
    layers: int,
    d: int,
    heads: int,
    kv_heads: int,
    ffn: int,
    paper: tuple[float, float],
    moe: bool,
    wd: bool = False,
) -> Architecture:
    active, total = paper  # the paper's "active (total)" counts
    return Architecture(
        name=name,
        n_layers=layers,
        d_model=d,
        n_heads=heads,
        n_kv_heads=kv_heads,
        vocab_size=LLAMA3_VOCAB_SIZE,
        ffn_hidden=ffn,
        n_experts=8 if moe else 1,
        top_k=2 if moe else 1,
        wd_rank=d // 2 if wd else None,  # CoSMoEs: half the hidden size is the best trade-off
        paper_active_params=active,
        paper_total_params=total,
    )


_CATALOG: dict[str, Architecture] = {
    arch.name: arch
    for arch in (
        # Llama-3.2-1B's shape (GQA 8 KV heads, FFN 8192) with its embeddings untied: 1.498B.
        _row("phone-dense-fa", 16, 2048, 32, 8, 8192, (1.50e9, 1.50e9), moe=False),
        # MHA; expert width 3840 (2.67 d) from total - active: 1.365B (3.754B).
        _row("phone-moe", 24, 1440, 18, 18, 3840, (1.37e9, 3.75e9), moe=True),
        # MHA; rank 800 experts of width 4352: 1.420B (3.648B).
        _row("phone-wd", 26, 1600, 20, 20, 4352, (1.42e9, 3.65e9), moe=True, wd=True),
        # Llama-3.2-3B's shape (GQA 8 KV heads, FFN 8192) with its embeddings untied: 3.607B.
        _row("phone-dense-pa", 28, 3072, 24, 8, 8192, (3.61e9, 3.61e9), moe=False),
        # MHA, FFN 1280 (2.5 d), the wearable MoE's expert width: 188.6M.
        _row("wearable-dense-fa", 19, 512, 8, 8, 1280, (189e6, 189e6), moe=False),
        # MHA, expert width 1280: 188.1M (377.2M).
        _row("wearable-moe", 19, 432, 8, 8, 1280, (188e6, 377e6), moe=True),
        # MHA; rank 200 experts of width 1264: 187.1M (378.8M).
        _row("wearable-wd", 32, 400, 10, 10, 1264, (188e6, 377e6), moe=True, wd=True),
        # MHA, FFN 1728 (2.25 d): 380.9M.
        _row("wearable-dense-pa", 29, 768, 12, 12, 1728, (380e6, 380e6), moe=False),
    )
}


def catalog() -> dict[str, Architecture]:
    """The eight CoSMoEs Table 1 architectures by name (a fresh dict; the values are frozen)."""
    return dict(_CATALOG)


def get_arch(name: str) -> Architecture:
    if name not in _CATALOG:
        raise InputError(f"unknown architecture {name!r}: expected one of {', '.join(_CATALOG)}")
    return _CATALOG[name]


def _millions(count: float | None) -> float | None:
    return None if count is None else count / 1e6


def _error_pct(ours: int, paper: float | None) -> float | None:
    return None if paper is None else 100 * (ours - paper) / paper


def arch_table(weight_bits: int = 16) -> pandas.DataFrame:
    """One row per catalog architecture: shape, parameter counts against the paper's, and
    the bytes of one expert and of the resident weights at `weight_bits` (MB = 1e6 bytes)."""
    import pandas  # deferred: the rest of the module needs no pandas

    rows = []
    for arch in _CATALOG.values():
        total, active = arch.total_params(), arch.active_params()
        rows.append(
            {
                "name": arch.name,
                "layers": arch.n_layers,
                "d_model": arch.d_model,
                "heads": arch.n_heads,
                "kv_heads": arch.n_kv_heads,
                "ffn_hidden": arch.ffn_hidden,
                "experts": arch.n_experts,
                "top_k": arch.top_k,
                "wd_rank": arch.wd_rank,
                "total_params_m": total / 1e6,
                "active_params_m": active / 1e6,
                "paper_total_params_m": _millions(arch.paper_total_params),
                "paper_active_params_m": _millions(arch.paper_active_params),
                "total_error_pct": _error_pct(total, arch.paper_total_params),
                "active_error_pct": _error_pct(active, arch.paper_active_params),
                "expert_mb": arch.expert_bytes(weight_bits) / 1e6,
                "resident_mb": arch.resident_bytes(weight_bits) / 1e6,
            }
        )
    table = pandas.DataFrame(rows)
    table["wd_rank"] = table["wd_rank"].astype("Int64")  # nullable: None stays <NA>, not NaN
    return table
