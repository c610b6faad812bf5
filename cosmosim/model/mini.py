"""A trainable mini of any target architecture (`cosmosim mini TARGET --out CONFIG.json`).

The rule (docs/models.md, "A mini for any target"), the one the named wearable minis follow:

- **kept**: depth (n_layers), routed experts, top_k, shared experts (their count), dense layers (the
  same indices), and a dense target stays dense;
- **width**: d_model becomes the wearable minis' 128 (a target no wider keeps its own); every FFN width
  (a routed expert's, a shared expert's, a dense layer's) and a WD rank is scaled by the same factor
  s = d_mini / d_target, the widths rounded to a multiple of 8 (at least 8), the rank to an integer in
  [1, min(d_mini, expert width)] (so the rank's ratio to d_model stays); with s = 1 nothing changes;
- **heads**: head size 32 (the minis'), so 128 / 32 = 4 heads (never more than the target's, and a
  divisor of d_mini with an even head size); KV heads: the divisor of the mini's heads whose grouping
  (heads per KV head) is nearest the target's (geometrically; a tie takes more KV heads), so full
  multi-head attention stays full and a GQA ratio the mini's few heads cannot hold is capped;
- **vocabulary**: 8192, the committed corpus tokenizer's (traces/tokenizer.json), which `train` replaces
  with the vocabulary of the corpus it trains on anyway; embeddings untied (the decoder's), whatever
  the target's; a target's own head_dim is not kept (the head size is 32);
- training settings (sequence length 128, router losses) are ModelConfig's defaults.

The file is JSON (read with `json` only): `format`, `name`, `target_arch` (the target's name when
`cosmosim arch` knows it, so a trace recorded from the mini names it; else null and `cosmosim run`
takes `--arch FILE`), `target` (its name, where it came from and its shape), `rule`, `model` (the
ModelConfig `cosmosim train --config CONFIG.json` builds) and `params` (the mini's and the target's counts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from cosmosim.errors import InputError
from cosmosim.files import read_json
from cosmosim.inputs.arch import Architecture
from cosmosim.model.config import ModelConfig

MINI_FORMAT = "cosmosim-mini-config/1"
MINI_D_MODEL = 128  # the wearable minis' width (wearable-moe-mini, wearable-bles-mini)
MINI_HEAD_DIM = 32  # their head size (128 / 4 heads)
MINI_VOCAB_SIZE = 8192  # the committed corpus tokenizer's, traces/tokenizer.json
WIDTH_MULTIPLE = 8

RULE = ("keeps n_layers, n_experts, top_k, n_shared_experts and dense_layers; d_model -> min(128, d_target); "
        "ffn, shared and dense widths x d_mini/d_target rounded to a multiple of 8 (>= 8), WD rank x the same "
        "factor; heads of size 32 (at most the target's), KV heads the divisor nearest the target's GQA ratio; "
        "vocabulary 8192 (the corpus tokenizer's), untied embeddings")

_FILE_KEYS = ("format", "name", "target_arch", "target", "rule", "model", "params")
_TARGET_KEYS = ("n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim", "vocab_size", "ffn_hidden", "n_experts",
                "top_k", "n_shared_experts", "shared_ffn_hidden", "dense_layers", "dense_ffn_hidden", "wd_rank")


def scaled_width(width: int, scale: float) -> int:
    """`width` x `scale` rounded to a multiple of 8 (half up), at least 8; unchanged at scale 1."""
    if scale == 1:
        return width
    return max(WIDTH_MULTIPLE, math.floor(width * scale / WIDTH_MULTIPLE + 0.5) * WIDTH_MULTIPLE)


def mini_heads(d_mini: int, target_heads: int) -> int:
    """Heads of size 32 (at most the target's), the most that divide d_mini into an even head size."""
    for heads in range(max(1, min(target_heads, d_mini // MINI_HEAD_DIM)), 0, -1):
        if d_mini % heads == 0 and (d_mini // heads) % 2 == 0:
            return heads
    raise InputError(f"d_model {d_mini}: no number of heads gives an even head size (RoPE rotates pairs)")


def mini_kv_heads(heads: int, target_heads: int, target_kv_heads: int) -> int:
    """The divisor of `heads` whose heads per KV head is nearest the target's ratio (geometrically),
    ties to more KV heads."""
    ratio = target_heads / target_kv_heads
    divisors = [kv for kv in range(heads, 0, -1) if heads % kv == 0]  # most KV heads first: wins ties
    return min(divisors, key=lambda kv: round(abs(math.log(heads / kv) - math.log(ratio)), 12))


def mini_config(arch: Architecture) -> ModelConfig:
    """The trainable mini of `arch` by the module's rule."""
    d_mini = min(MINI_D_MODEL, arch.d_model)
    scale = d_mini / arch.d_model
    heads = mini_heads(d_mini, arch.n_heads)
    ffn = scaled_width(arch.ffn_hidden, scale)
    rank = None
    if arch.wd_rank is not None:
        rank = min(max(1, math.floor(arch.wd_rank * scale + 0.5)), d_mini, ffn)
    shared = scaled_width(arch.shared_ffn_hidden, scale) if arch.n_shared_experts else None
    dense = scaled_width(arch.dense_ffn_hidden, scale) if arch.dense_layers else None
    return ModelConfig(n_layers=arch.n_layers, d_model=d_mini, n_heads=heads,
                       n_kv_heads=mini_kv_heads(heads, arch.n_heads, arch.n_kv_heads), vocab_size=MINI_VOCAB_SIZE,
                       ffn_hidden=ffn, n_experts=arch.n_experts, top_k=arch.top_k, wd_rank=rank,
                       n_shared_experts=arch.n_shared_experts, shared_ffn_hidden=shared,
                       dense_layers=arch.dense_layers, dense_ffn_hidden=dense)


def mini_document(arch: Architecture, source: str, target_arch: str | None) -> dict:
    """What `cosmosim mini` writes: the mini of `arch` (loaded from `source`) with its provenance."""
    config = mini_config(arch)
    target = {"name": arch.name, "source": source,
              **{key: list(value) if isinstance(value := getattr(arch, key), tuple) else value for key in _TARGET_KEYS}}
    return {"format": MINI_FORMAT, "name": f"{arch.name}-mini", "target_arch": target_arch, "target": target,
            "rule": RULE, "model": {**config.to_dict(), "dense_layers": list(config.dense_layers)},
            "params": {"total": config.num_params(), "active": config.num_active_params(),
                       "target_total": arch.total_params(), "target_active": arch.active_params()}}


@dataclass(frozen=True)
class MiniFile:
    name: str
    config: ModelConfig
    target_arch: str | None
    target: dict
    path: Path


def is_mini_file(config: object) -> bool:
    """Whether a `--config` value names a mini config file (a .json path) rather than a named mini."""
    return isinstance(config, (str, Path)) and str(config).endswith(".json")


def load_mini_file(path: str | Path) -> MiniFile:
    """A file `cosmosim mini` wrote (JSON only); InputError naming the path and key for anything else."""
    path = Path(path)
    hint = "expected a mini config written by `cosmosim mini TARGET --out CONFIG.json`"
    data = read_json(path, hint=hint)
    if not isinstance(data, dict) or data.get("format") != MINI_FORMAT:
        raise InputError(f"{path}: format: expected {MINI_FORMAT!r}; {hint}")
    unknown = sorted(set(data) - set(_FILE_KEYS))
    if unknown:
        raise InputError(f"{path}: {unknown[0]}: unknown key; {hint}")
    name, target_arch, target, model = data.get("name"), data.get("target_arch"), data.get("target", {}), data.get("model")
    if not isinstance(name, str) or not name:
        raise InputError(f"{path}: name: expected a string, got {name!r}")
    if target_arch is not None and not isinstance(target_arch, str):
        raise InputError(f"{path}: target_arch: expected a string or null, got {target_arch!r}")
    if not isinstance(target, dict):
        raise InputError(f"{path}: target: expected an object, got {target!r}")
    if not isinstance(model, dict):
        raise InputError(f"{path}: model: expected an object with the model config, got {model!r}")
    layers = model.get("dense_layers", ())
    if not isinstance(layers, (list, tuple)):
        raise InputError(f"{path}: model.dense_layers: expected a list of layer indices, got {layers!r}")
    config = ModelConfig.from_dict({**model, "dense_layers": tuple(layers)}, source=str(path))
    return MiniFile(name, config, target_arch, target, path)
