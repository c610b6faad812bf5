"""Target architectures: the eight rows of CoSMoEs Table 1, published MoEs, and what they cost.

CoSMoEs (Huber et al., arXiv 2503.00245) gives each model's layers, heads, hidden size and
active (total) parameter count, but not its FFN width, KV heads or vocabulary. Its rows, and
published MoEs, are cited files in architectures/ (docs/architectures.md); the Table 1 files take
Llama-3's vocabulary (128,256, untied embeddings) and choose the rest so the counts match, each
saying how. `Architecture` answers exact parameter counts, bytes at a weight
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

from dataclasses import dataclass, replace
from functools import cached_property
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from cosmosim.errors import InputError
from cosmosim.inputs.precision import Precision, weight_bytes

if TYPE_CHECKING:
    import pandas

LLAMA3_VOCAB_SIZE = 128_256
WEIGHT_BITS = (16, 8, 4)  # the plain bit-widths a what-if suggests (any real number or format is accepted)
SWIGLU_MATRICES = 3  # gate, up, down
FULL_RANK = "full"  # a wd_rank value (sweeps, design points): experts not decomposed


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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

    @cached_property  # asked for per row of a sweep: computed once per architecture (a frozen value)
    def moe_layers(self) -> tuple[int, ...]:
        """The layers whose FFN is routed experts, ascending (none for a dense model)."""
        if not self.is_moe:
            return ()
        return tuple(layer for layer in range(self.n_layers) if layer not in self.dense_layers)

    @property
    def n_moe_layers(self) -> int:
        return len(self.moe_layers)

    @cached_property
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

    # A Precision gives each class its bits (cosmosim.inputs.precision); a plain number is every class's.

    def expert_bytes(self, bits: Precision | float) -> int:
        """One routed expert at the routed class's bits."""
        return weight_bytes(self.expert_params(), Precision.of(bits).routed)

    def shared_params_of(self, layer: int) -> int:
        """Layer `layer`'s shared experts' weights (0 in a dense layer)."""
        return self.n_shared_experts * self.shared_expert_params() if self.is_moe and layer not in self.dense_layers else 0

    def nonexpert_bytes_of(self, layer: int, bits: Precision | float) -> int:
        """Layer `layer`'s resident weights: its shared experts at their bits, the rest at the other weights'."""
        return self._split_bytes(self.nonexpert_params_of(layer), self.shared_params_of(layer), Precision.of(bits))

    def resident_bytes(self, bits: Precision | float) -> int:
        shared = sum(self.shared_params_of(layer) for layer in range(self.n_layers))
        return self._split_bytes(self.resident_params(), shared, Precision.of(bits))

    @staticmethod
    def _split_bytes(n_params: int, shared: int, precision: Precision) -> int:
        """n_params weights of which `shared` are shared experts' (one rounding when their bits agree)."""
        if precision.shared == precision.weights:
            return weight_bytes(n_params, precision.weights)
        return weight_bytes(n_params - shared, precision.weights) + weight_bytes(shared, precision.shared)

    def kv_bytes_per_token(self, kv_bits: int = 16) -> int:
        """Keys and values one token adds to the cache, over all layers."""
        return weight_bytes(2 * self.n_layers * self.n_kv_heads * self.head_dim, kv_bits)

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
# The numbers live in files, each citing its sources (docs/architectures.md): the shipped ones in
# architectures/ (the eight CoSMoEs Table 1 rows and published MoEs), a user's in $COSMOSIM_ARCHS_DIR.
# These functions find them by name (cosmosim.inputs.arch_files), or any file by its path.

TABLE_1 = ("phone-dense-fa", "phone-moe", "phone-wd", "phone-dense-pa",
           "wearable-dense-fa", "wearable-moe", "wearable-wd", "wearable-dense-pa")  # in the paper's order
GROUPS = ("Table 1", "published", "user")  # CoSMoEs Table 1, other shipped files, $COSMOSIM_ARCHS_DIR's


def catalog_groups() -> dict[str, str]:
    """Every architecture known by name -> its group: Table 1 (the paper's order), then the other shipped
    files, then the user's, each sorted by name."""
    from cosmosim.inputs.arch_files import named_paths  # deferred: it imports this module

    paths = named_paths()
    shipped = [name for name, (_, origin) in paths.items() if origin == "shipped" and name not in TABLE_1]
    user = [name for name, (_, origin) in paths.items() if origin == "user"]
    return {**{name: GROUPS[0] for name in TABLE_1 if name in paths}, **dict.fromkeys(sorted(shipped), GROUPS[1]),
            **dict.fromkeys(sorted(user), GROUPS[2])}


def catalog() -> dict[str, Architecture]:
    """Every architecture known by name, in `catalog_groups` order (a fresh dict; the values are frozen)."""
    from cosmosim.inputs.arch_files import load_named

    return {name: load_named(name).arch for name in catalog_groups()}


def get_arch(name_or_path: str | Path) -> Architecture:
    """An architecture by name (`cosmosim arch` lists them) or by the path of a .toml architecture file or a
    Hugging Face config.json."""
    from cosmosim.inputs.arch_files import find

    return find(name_or_path).arch


def _millions(count: float | None) -> float | None:
    return None if count is None else count / 1e6


def _error_pct(ours: int, published: float | None) -> float | None:
    return None if published is None else 100 * (ours - published) / published


def arch_table(weight_bits: float = 16) -> pandas.DataFrame:
    """One row per architecture of the catalog: its group, shape, parameter counts against the published
    ones (and whether each lies within the figure's tolerance: 1%, or its own rounding if coarser), and
    the bytes of one expert and of the resident weights at `weight_bits` (MB = 1e6 bytes)."""
    import pandas  # deferred: the rest of the module needs no pandas

    from cosmosim.inputs.arch_files import load_named

    rows = []
    for name, group in catalog_groups().items():
        file = load_named(name)
        arch, published = file.arch, file.published
        counts = {"total": arch.total_params(), "active": arch.active_params()}
        row = {
            "name": name, "group": group, "layers": arch.n_layers, "d_model": arch.d_model, "heads": arch.n_heads,
            "kv_heads": arch.n_kv_heads, "head_dim": arch.head_dim, "ffn_hidden": arch.ffn_hidden,
            "experts": arch.n_experts if arch.is_moe else 0, "top_k": arch.top_k if arch.is_moe else 0,
            "shared_experts": arch.n_shared_experts, "dense_layers": len(arch.dense_layers), "wd_rank": arch.wd_rank,
        }
        for which, ours in counts.items():
            figure = getattr(published, f"{which}_params") if published else None
            row[f"{which}_params_m"] = ours / 1e6
            row[f"published_{which}_params_m"] = _millions(figure)
            row[f"{which}_error_pct"] = _error_pct(ours, figure)
            row[f"{which}_within_tolerance"] = None if figure is None else abs(ours - figure) <= published.tolerance(which)
        rows.append({**row, "expert_mb": arch.expert_bytes(weight_bits) / 1e6,
                     "resident_mb": arch.resident_bytes(weight_bits) / 1e6})
    table = pandas.DataFrame(rows)
    table["wd_rank"] = table["wd_rank"].astype("Int64")  # nullable: None stays <NA>, not NaN
    for which in ("total", "active"):
        table[f"{which}_within_tolerance"] = table[f"{which}_within_tolerance"].astype("boolean")
    return table
