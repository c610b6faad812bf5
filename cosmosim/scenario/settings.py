"""Run settings: the knobs of one run and the one validator every entry point uses.

`cosmosim run`, sweep specs and the analytic frame all build a `RunConfig` and call
`check_settings`; the choices it accepts come from the registries (policies, prefetchers,
bit-widths), so a new one is accepted everywhere by itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cosmosim.device.policies import POLICIES
from cosmosim.device.prefetch import PREFETCHERS
from cosmosim.errors import InputError

WEIGHT_BITS = (16, 8, 4)


def choices(options) -> str:
    """"16, 8 or 4": the accepted values, for messages and --help."""
    names = [str(option) for option in options]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


@dataclass(frozen=True)
class RunConfig:
    """The knobs of one run; None means "derive a default" (stated in --help and echoed)."""

    policy: str = "lru"
    prefetch: str = "none"
    cache_mb: float | None = None
    cache_experts: int | None = None
    per_layer_cache: bool = False
    weight_bits: int = 16
    tokens: int | None = None
    prompt_tokens: int = 16
    context_len: int = 1024
    warmup_fraction: float = 0.1
    dense_tokens: int = 4096  # tokens simulated for a dense architecture, which has no trace
    dense_sequence_len: int = 256



def check_settings(config: RunConfig) -> None:
    """Every flag on its own and against the others; the same checks for MoE and dense runs."""
    for name in ("prompt_tokens", "context_len", "tokens"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise InputError(f"--{name.replace('_', '-')}: expected >= 1, got {value}")
    if config.prompt_tokens > config.context_len:
        raise InputError(f"--prompt-tokens: expected <= --context-len ({config.context_len}), got {config.prompt_tokens}")
    if config.policy not in POLICIES:
        raise InputError(f"--policy: expected one of {', '.join(POLICIES)}, got {config.policy!r}")
    if config.prefetch not in PREFETCHERS:
        raise InputError(f"--prefetch: expected one of {', '.join(PREFETCHERS)}, got {config.prefetch!r}")
    if config.weight_bits not in WEIGHT_BITS:
        raise InputError(f"--weight-bits: expected {choices(WEIGHT_BITS)}, got {config.weight_bits}")
    if config.cache_mb is not None and config.cache_experts is not None:
        raise InputError("--cache-mb and --cache-experts: give one cache size, not both")
    if config.cache_mb is not None and not (math.isfinite(config.cache_mb) and config.cache_mb > 0):
        raise InputError(f"--cache-mb: expected a finite number > 0, got {config.cache_mb}")
    if config.cache_experts is not None and config.cache_experts < 1:
        raise InputError(f"--cache-experts: expected >= 1, got {config.cache_experts}")
    sized = config.cache_mb is not None or config.cache_experts is not None
    if not POLICIES[config.policy].needs_cache_size and (sized or config.per_layer_cache):
        raise InputError(f"--policy {config.policy}: it fixes the cache itself (top_k experts per layer); "
                         "drop --cache-mb/--cache-experts/--per-layer-cache")


CACHE_SIZE_SETTINGS = ("cache_mb", "cache_experts", "per_layer_cache")
ROUTING_SETTINGS = ("policy", "prefetch", *CACHE_SIZE_SETTINGS)  # meaningless without experts to cache


def check_dense_settings(config: RunConfig, arch_name: str) -> None:
    """A dense architecture has no expert cache: a cache setting given for it is a mistake, not a no-op."""
    given = [name for name in ROUTING_SETTINGS if getattr(config, name) != getattr(RunConfig, name)]
    if given:
        flags = ", ".join(f"--{name.replace('_', '-')}" for name in given)
        raise InputError(f"--arch {arch_name} is dense: it has no experts to cache or prefetch, so drop {flags}")

