"""One simulated situation: a trace replayed by an architecture on a device under a cache policy.

`build_scenario` checks the combination (flags, layer mapping, cache size) and resolves every
default once, so the simulator and the analytical model answer exactly the same question. The
resolved inputs are echoed in every result.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from cosmosim.arch import Architecture
from cosmosim.costs import StepCosts
from cosmosim.errors import InputError
from cosmosim.profiles import DeviceProfile
from cosmosim.sim.policies import POLICIES
from cosmosim.sim.prefetch import PREFETCHERS
from cosmosim.trace import Trace
from cosmosim.workload import DECODE, PREFILL, Workload, build_workload, next_use_of

MB = 1e6


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


@dataclass(frozen=True)
class Memory:
    """DRAM use in bytes; peak = resident weights + expert cache + KV cache + activations."""

    resident_weights: int
    expert_cache: int
    kv_cache: int
    activations: int

    @property
    def peak(self) -> int:
        return self.resident_weights + self.expert_cache + self.kv_cache + self.activations


MEMORY_PARTS = tuple(part.name for part in fields(Memory))


@dataclass
class Scenario:
    arch: Architecture
    profile: DeviceProfile
    config: RunConfig
    workload: Workload
    costs: StepCosts
    cache_capacity: int  # experts (0 for a dense architecture)
    offloading_idle: bool  # the cache holds every expert: flash is read once per expert at most
    trace: Trace | None
    warnings: list[str] = field(default_factory=list)

    def memory(self, cache_entries: int | None = None) -> Memory:
        """Memory with the cache at `cache_entries` (default: its capacity)."""
        entries = self.cache_capacity if cache_entries is None else cache_entries
        return Memory(
            resident_weights=self.arch.resident_bytes(self.config.weight_bits),
            expert_cache=entries * self.costs.expert_bytes,
            kv_cache=self.costs.kv_cache_bytes(self.config.context_len),
            activations=self.costs.activation_bytes(self.config.prompt_tokens),
        )

    def inputs(self) -> dict:
        """The resolved inputs, for the output's `inputs` block."""
        return {
            **asdict(self.config),
            "arch": self.arch.name,
            "profile": self.profile.name,
            "trace": str(self.trace.path) if self.trace is not None and self.trace.path else None,
            "cache_experts": self.cache_capacity,
            "cache_mb": self.cache_capacity * self.costs.expert_bytes / MB,
            "expert_mb": self.costs.expert_bytes / MB,
            "total_experts": self.arch.n_layers * self.arch.n_experts if self.arch.is_moe else 0,
            "offloading_idle": self.offloading_idle,
            "requests": self.workload.n_requests,
            "decode_tokens": self.workload.n_decode_tokens,
            "warmup_sequences": self.workload.warmup_sequences,
        }


def dense_workload(n_layers: int, config: RunConfig) -> Workload:
    """Steps without expert accesses: a dense model's requests of `dense_sequence_len` tokens."""
    if config.dense_sequence_len <= config.prompt_tokens:
        raise InputError(f"--prompt-tokens: expected < {config.dense_sequence_len} (the dense request length), "
                         f"got {config.prompt_tokens}")
    tokens = config.dense_tokens if config.tokens is None else config.tokens
    n_requests = math.ceil(tokens / config.dense_sequence_len)  # whole requests: rounds up
    positions = np.arange(config.prompt_tokens, config.dense_sequence_len)
    one_request_kinds = np.concatenate([np.full(n_layers, PREFILL), np.full(positions.size * n_layers, DECODE)])
    one_request_context = np.concatenate([np.full(n_layers, min(config.prompt_tokens, config.context_len)),
                                          np.repeat(np.minimum(positions + 1, config.context_len), n_layers)])
    n_steps = n_requests * one_request_kinds.size
    empty = np.zeros(0, dtype=np.int32)
    return Workload(
        n_layers=n_layers, n_experts=0, top_k=0,
        step_kind=np.tile(one_request_kinds, n_requests).astype(np.int8),
        step_layer=np.tile(np.arange(n_layers), n_steps // n_layers).astype(np.int16),
        step_context=np.tile(one_request_context, n_requests).astype(np.int32),
        step_offsets=np.zeros(n_steps + 1, dtype=np.int64),
        access_key=empty, access_tokens=empty, next_use=next_use_of(empty),
        warmup_usage=np.zeros(0, dtype=np.int64), warmup_cooccurrence=np.zeros((0, 0, 0), dtype=np.int64),
        n_requests=n_requests, n_prompt_tokens=n_requests * config.prompt_tokens,
        n_decode_tokens=n_requests * positions.size, warmup_sequences=0, layer_map=np.arange(n_layers),
    )


def check_flags(config: RunConfig) -> None:
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
    if config.weight_bits not in (16, 8, 4):
        raise InputError(f"--weight-bits: expected 16, 8 or 4, got {config.weight_bits}")
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


def cache_capacity(arch: Architecture, profile: DeviceProfile, config: RunConfig, costs: StepCosts,
                    warnings: list[str]) -> int:
    if not POLICIES[config.policy].needs_cache_size:
        return arch.n_layers * arch.top_k
    if config.cache_experts is not None:
        return config.cache_experts
    if config.cache_mb is not None:
        return int(config.cache_mb * MB // costs.expert_bytes)
    # Default: what the app's DRAM budget leaves after everything that must stay resident.
    fixed = (arch.resident_bytes(config.weight_bits) + costs.kv_cache_bytes(config.context_len)
             + costs.activation_bytes(config.prompt_tokens))
    left = profile.dram.app_budget_bytes - fixed
    capacity = max(int(left // costs.expert_bytes), 0)
    if capacity < arch.top_k:
        raise InputError(f"{profile.name}: the app budget of {profile.dram.app_budget_bytes / MB:.0f} MB leaves "
                         f"{max(left, 0) / MB:.0f} MB for experts, less than top_k={arch.top_k} experts of "
                         f"{costs.expert_bytes / MB:.1f} MB; give --cache-mb or fewer --weight-bits")
    warnings.append(f"cache: {capacity} experts from the {profile.name} app budget "
                    f"({profile.dram.app_budget_bytes / MB:.0f} MB minus {fixed / MB:.0f} MB resident)")
    return capacity


def build_scenario(profile: DeviceProfile, arch: Architecture, trace: Trace | None, config: RunConfig) -> Scenario:
    check_flags(config)
    warnings: list[str] = []
    costs = StepCosts.build(arch, profile, config.weight_bits)
    if not arch.is_moe:
        if trace is not None:
            raise InputError(f"--arch {arch.name} is dense: it routes nothing, so drop --trace")
        return Scenario(arch, profile, config, dense_workload(arch.n_layers, config), costs, 0, True, None, warnings)
    if trace is None:
        raise InputError(f"--arch {arch.name} is a MoE: give a routing --trace")
    if (trace.n_experts, trace.top_k) != (arch.n_experts, arch.top_k):
        raise InputError(f"{trace.path or 'trace'}: routes top-{trace.top_k} of {trace.n_experts} experts, but --arch {arch.name} "
                         f"has top-{arch.top_k} of {arch.n_experts}; choose a matching architecture")
    if trace.n_layers != arch.n_layers:
        warnings.append(f"layers: the trace has {trace.n_layers}, {arch.name} has {arch.n_layers}; "
                        f"target layer i replays trace layer floor(i * {trace.n_layers} / {arch.n_layers})")
    capacity = cache_capacity(arch, profile, config, costs, warnings)
    if config.per_layer_cache and capacity % arch.n_layers:
        floored = capacity - capacity % arch.n_layers
        warnings.append(f"cache: {capacity} experts split into {arch.n_layers} equal per-layer partitions "
                        f"hold {floored} ({floored // arch.n_layers} per layer)")
        capacity = floored
    total = arch.n_layers * arch.n_experts
    offloading_idle = capacity >= total
    if offloading_idle:
        warnings.append(f"cache: {capacity} entries hold all {total} experts, so offloading is idle "
                        "(each expert is read from flash once, then stays)")
        capacity = total
    workload = build_workload(trace, arch.n_layers, prompt_tokens=config.prompt_tokens, context_len=config.context_len,
                              max_tokens=config.tokens, warmup_fraction=config.warmup_fraction)
    return Scenario(arch, profile, config, workload, costs, capacity, offloading_idle, trace, warnings)
