"""A Hugging Face config.json as a cosmosim architecture: the one mapping of its fields onto the keys of
architecture files (docs/architectures.md), for `--arch config.json` and `cosmosim record --hf`.

It reads the plain JSON dict, no transformers needed. Families mapped field by field: Mixtral, Phi-MoE,
OLMoE, GraniteMoE (and its shared-expert variant), Qwen2-MoE, Qwen3-MoE, DeepSeek-V2 and -V3; any other
model type is read from the keys those share, and says so. A key a config leaves out takes transformers
5's default for its config class, and says so. What the Llama-style counter cannot hold (biases,
LayerNorm biases, QK-norms, Qwen2-MoE's shared-expert gate, DeepSeek's latent attention) is said in
`notes` with its parameter count; `uncounted_params` is the model's own count minus ours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cosmosim.errors import InputError

EXPERT_COUNT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")  # Mixtral, OLMoE/Qwen, DeepSeek
_MLA = {"q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128}
_DEFAULTS: dict[str, dict[str, Any]] = {  # transformers 5's config-class defaults of keys a config.json may omit
    "mixtral": {"num_key_value_heads": 8},
    "phimoe": {"num_key_value_heads": 8, "attention_bias": False, "lm_head_bias": False},
    "olmoe": {"attention_bias": False},
    "granitemoe": {"attention_bias": False},
    "granitemoeshared": {"attention_bias": False, "shared_intermediate_size": 0},
    "qwen2_moe": {"num_key_value_heads": 16, "decoder_sparse_step": 1, "mlp_only_layers": [], "qkv_bias": True,
                  "shared_expert_intermediate_size": 5632},
    "qwen3_moe": {"num_key_value_heads": 4, "decoder_sparse_step": 1, "mlp_only_layers": [], "attention_bias": False},
    "deepseek_v2": {"first_k_dense_replace": 0, "n_shared_experts": 2, "attention_bias": False, **_MLA},
    "deepseek_v3": {"num_key_value_heads": 128, "first_k_dense_replace": 3, "n_shared_experts": 1,
                    "attention_bias": False, **_MLA},
}
_COMMON = {"tie_word_embeddings": False, "num_key_value_heads": None, "head_dim": None}
_MOE_WIDTH = {"qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3"}  # experts sized by moe_intermediate_size


@dataclass(frozen=True)
class HfMapping:
    data: dict  # the keys of an architecture file, None where one does not apply, with description and sources
    notes: tuple[str, ...]  # what was approximated or defaulted
    uncounted_params: int  # the model's parameters minus ours (negative: ours count more)


class _Config:
    """Reads a config dict's keys, each once, citing it; a missing key takes its family's default."""

    def __init__(self, config: dict, family: str, source: str, notes: list[str]):
        self.config, self.family, self.source, self.notes = config, family, source, notes
        self.defaults = {**_COMMON, **_DEFAULTS.get(family, {})}

    def has(self, key: str) -> bool:
        return key in self.config or key in self.defaults

    def get(self, key: str, *, required: bool = False, kind: type = int) -> Any:
        if key not in self.config:
            if required or key not in self.defaults:
                if required:
                    raise InputError(f"{self.source}: {key} is missing (a {self.family} config gives it)")
                return None
            value = self.defaults[key]
            if value is not None:
                self.notes.append(f"{key} is not in the config: {value!r}, transformers' default for {self.family}")
            return value
        value = self.config[key]
        if value is None and not required:
            return None
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if kind is list:
            ok = ok and all(isinstance(item, int) and not isinstance(item, bool) for item in value)
        if not ok or (kind is int and value < 0):
            expected = {int: "an integer >= 0", bool: "true or false", list: "a list of layer indices"}[kind]
            raise InputError(f"{self.source}: {key} must be {expected}, got {value!r}")
        return value

    def cite(self, *keys: str) -> str:
        return f"{self.source}: " + ", ".join(f"{key} {self.config.get(key, self.defaults.get(key))!r}"
                                              for key in keys)


def _layers(cfg: _Config, n_layers: int, moe_layers: list[int] | None) -> tuple[list[int], str]:
    """The layers without routed experts, and the keys that say so."""
    if cfg.family in ("qwen2_moe", "qwen3_moe"):
        only, step = cfg.get("mlp_only_layers", kind=list), max(cfg.get("decoder_sparse_step"), 1)
        dense, why = [i for i in range(n_layers) if i in only or (i + 1) % step], cfg.cite("mlp_only_layers",
                                                                                          "decoder_sparse_step")
    elif cfg.family.startswith("deepseek"):
        # transformers reads first_k_dense_replace only; DeepSeek's own code also moe_layer_freq (1 in its configs)
        first, every = cfg.get("first_k_dense_replace"), max(cfg.get("moe_layer_freq") or 1, 1)
        dense = [i for i in range(n_layers) if i < first or i % every]
        why = cfg.cite("first_k_dense_replace", *(("moe_layer_freq",) if "moe_layer_freq" in cfg.config else ()))
        if every != 1:
            cfg.notes.append(f"moe_layer_freq {every}: experts every {every}th layer, as DeepSeek's own code has it "
                             "(transformers' model ignores it)")
    else:
        dense, why = [], f"{cfg.source}: every layer has experts ({cfg.family} has no dense layers)"
    if moe_layers is not None:
        found = [i for i in range(n_layers) if i not in moe_layers]
        if found != dense:
            cfg.notes.append(f"dense layers {found}: where the model has no router (the config says {dense})")
        dense, why = found, f"{cfg.source}: the layers where the loaded model has no router"
    return dense, why


def _latent_attention(cfg: _Config, d: int, h: int, n_layers: int) -> tuple[int, int, int, str]:
    """DeepSeek's multi-head latent attention as grouped-query attention: (n_heads, head_dim, extra params of
    the model's attention, the note). One KV head of half the latent width keeps the KV cache MLA keeps; the
    head count is the one whose weights come nearest MLA's."""
    q_lora, kv_lora = cfg.get("q_lora_rank"), cfg.get("kv_lora_rank", required=True)
    nope, rope, v = (cfg.get(key, required=True) for key in ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"))
    query = d * q_lora + q_lora + q_lora * h * (nope + rope) if q_lora else d * h * (nope + rope)
    real = query + d * (kv_lora + rope) + kv_lora + kv_lora * h * (nope + v) + h * v * d
    head_dim = math.ceil((kv_lora + rope) / 2)
    per_head = 2 * d * head_dim
    heads = max(round(real / per_head) - 1, 1)
    extra = n_layers * (real - per_head * (heads + 1))
    note = (f"multi-head latent attention ({cfg.cite('q_lora_rank', 'kv_lora_rank', 'qk_nope_head_dim', 'qk_rope_head_dim', 'v_head_dim').split(': ', 1)[1]}) "
            f"is modelled as {heads} query heads and 1 KV head of head_dim {head_dim}: the KV cache holds the "
            f"{kv_lora + rope} latent values per token and layer MLA caches, the attention weights match MLA's "
            f"within one head ({extra:+,} parameters uncounted), but attention FLOPs per cached key are "
            f"{4 * heads * head_dim:,}, not MLA's {2 * h * (2 * kv_lora + rope):,} (absorbed projections)")
    return heads, head_dim, extra, note


def hf_architecture(config: dict, *, name: str, source: str, moe_layers: list[int] | None = None) -> HfMapping:
    """A config.json (as a dict) in the keys of an architecture file. `moe_layers`, when given (the layers where
    a loaded model has routers), decides the dense layers."""
    notes: list[str] = []
    if isinstance(config.get("text_config"), dict):
        config = config["text_config"]
        notes.append("the text model's config (text_config) is read; other parts of the model are not counted")
    family = config.get("model_type")
    family = family if isinstance(family, str) and family else "unknown"
    if family not in _DEFAULTS:
        notes.append(f"model_type {family!r} is not a family cosmosim maps field by field: read as a Llama-style "
                     "decoder from the keys MoE configs share, so biases, norms or attention variants it has are not "
                     "counted (check the counts against the model's own)")
    cfg = _Config(config, family, source, notes)
    d, n_layers, h, vocab = (cfg.get(key, required=True) for key in ("hidden_size", "num_hidden_layers",
                                                                      "num_attention_heads", "vocab_size"))
    for key, value in (("hidden_size", d), ("num_hidden_layers", n_layers), ("num_attention_heads", h),
                       ("vocab_size", vocab)):
        if not value:
            raise InputError(f"{source}: {key} must be > 0, got {value!r}")
    given_kv, given_head_dim = cfg.get("num_key_value_heads"), cfg.get("head_dim")
    kv, head_dim = given_kv or h, given_head_dim or d // h
    tied = cfg.get("tie_word_embeddings", kind=bool)
    sources = {"n_layers": cfg.cite("num_hidden_layers"), "d_model": cfg.cite("hidden_size"),
               "vocab_size": cfg.cite("vocab_size"), "tied_embeddings": cfg.cite("tie_word_embeddings"),
               "n_kv_heads": cfg.cite("num_key_value_heads") if given_kv else
               f"{source}: num_key_value_heads absent or null: one KV head per attention head",
               "head_dim": cfg.cite("head_dim") if given_head_dim else
               f"{source}: hidden_size / num_attention_heads ({d} / {h})", "n_heads": cfg.cite("num_attention_heads")}
    experts_key = next((key for key in EXPERT_COUNT_KEYS if config.get(key)), None)
    n_experts = cfg.get(experts_key) if experts_key else 0
    width_key = ("moe_intermediate_size" if family in _MOE_WIDTH or (family not in _DEFAULTS and n_experts
                                                                      and "moe_intermediate_size" in config)
                 else "intermediate_size")
    width = cfg.get(width_key, required=True)
    top_k = cfg.get("num_experts_per_tok", required=True) if n_experts else None
    sources.update(ffn_hidden=cfg.cite(width_key), n_experts=cfg.cite(experts_key) if experts_key else
                   f"{source}: no {' / '.join(EXPERT_COUNT_KEYS)}: a dense model")
    if n_experts:
        sources["top_k"] = cfg.cite("num_experts_per_tok")

    n_shared, shared_width = 0, None
    if family in ("qwen2_moe", "granitemoeshared") or (family not in _DEFAULTS and config.get(
            "shared_expert_intermediate_size")):
        key = "shared_intermediate_size" if family == "granitemoeshared" else "shared_expert_intermediate_size"
        shared_width = cfg.get(key) or None
        n_shared = 1 if shared_width else 0
        sources.update(n_shared_experts=f"{cfg.cite(key)}: one shared SwiGLU of that width, as transformers builds it")
    elif family.startswith("deepseek") or (family not in _DEFAULTS and config.get("n_shared_experts")):
        n_shared = cfg.get("n_shared_experts") or 0
        shared_width = width if n_shared else None
        sources.update(n_shared_experts=cfg.cite("n_shared_experts"))
    else:
        sources.update(n_shared_experts=f"{source}: no shared experts ({family})")
    if n_shared:
        sources["shared_ffn_hidden"] = sources["n_shared_experts"]
    dense_layers, why = _layers(cfg, n_layers, moe_layers) if n_experts else ([], "")
    if n_experts:
        sources["dense_layers"] = why
    dense_width = cfg.get("intermediate_size", required=True) if dense_layers else None
    if dense_layers:
        sources["dense_ffn_hidden"] = cfg.cite("intermediate_size")

    # What the model has and our counter does not: per layer, per MoE layer, once.
    extra, moe_count = 0, n_layers - len(dense_layers) if n_experts else 0
    if family.startswith("deepseek") and config.get("kv_lora_rank") is not None:
        h, head_dim, extra, note = _latent_attention(cfg, d, h, n_layers)
        kv = 1
        notes.append(note)
        for key in ("n_heads", "n_kv_heads", "head_dim"):
            sources[key] = f"fit: {note.split(' is modelled')[0]} as grouped-query attention (see the notes)"
        if config.get("num_nextn_predict_layers"):
            notes.append(f"the multi-token-prediction layers (num_nextn_predict_layers "
                         f"{config['num_nextn_predict_layers']}) are not counted; transformers does not build them")
    biases = {"attention_bias": h * head_dim + 2 * kv * head_dim + d, "qkv_bias": h * head_dim + 2 * kv * head_dim}
    for key, per_layer in biases.items():
        if (family in _DEFAULTS and cfg.has(key) and cfg.get(key, kind=bool)
                and not family.startswith("deepseek")):
            extra += n_layers * per_layer
            notes.append(f"{key} true: the attention projections' biases ({per_layer:,} per layer) are not counted")
    per_layer_norms = {"phimoe": (2 * d, "LayerNorm, not RMSNorm: the norms' biases"),
                       "olmoe": (d + d // h * kv, "QK-norm over the whole query and key widths"),
                       "qwen3_moe": (2 * head_dim, "QK-norm per head (q_norm, k_norm)")}
    if family in per_layer_norms:
        count, what = per_layer_norms[family]
        final = d if family == "phimoe" else 0
        extra += n_layers * count + final
        notes.append(f"{what} ({count:,} per layer{' and the final norm bias' if final else ''}) not counted")
    if family == "phimoe" and cfg.get("lm_head_bias", kind=bool):
        extra += vocab
        notes.append(f"lm_head_bias true: the LM head's bias ({vocab:,}) is not counted")
    if family == "qwen2_moe" and n_shared:
        extra += moe_count * d
        notes.append(f"the shared expert's sigmoid gate (shared_expert_gate, {d:,} weights per MoE layer) is not "
                     "counted; its shared expert is one SwiGLU of shared_expert_intermediate_size, which model cards "
                     "may count as several shared experts of a routed expert's width (the same weights)")
    if extra:
        notes.append(f"uncounted in all: {extra:+,} parameters")
    wd = None
    described = " ".join(f"{note};" for note in notes).rstrip(";")
    data = {"name": name, "description": f"Mapped by cosmosim from {source} (model_type {family})"
                                         + (f". Approximations: {described}." if notes else "; counted exactly."),
            "n_layers": n_layers, "d_model": d, "n_heads": h, "n_kv_heads": kv, "head_dim": head_dim,
            "vocab_size": vocab, "tied_embeddings": bool(tied),
            "ffn_hidden": width, "n_experts": n_experts, "top_k": top_k, "n_shared_experts": n_shared,
            "shared_ffn_hidden": shared_width, "dense_layers": dense_layers, "dense_ffn_hidden": dense_width,
            "wd_rank": wd, "sources": sources}
    if not n_experts:
        data.update(n_shared_experts=None, dense_layers=None)
        sources.pop("n_shared_experts", None)
    return HfMapping(data, tuple(notes), extra)
