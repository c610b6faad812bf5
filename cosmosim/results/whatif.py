"""What the verdict's rules read: a run's result parsed once (`Facts`), what the result does not echo
(`Sizing`), and the what-if arithmetic the rules' suggestions come from.

What-if arithmetic (`at_bits`, `capacity`), from the result's own inputs and memory parts, the way
`cosmosim.scenario.build.resolve_cache` sizes a cache, so that an actual run at the suggested setting
reports the same figures (tests/test_verdict.py runs it):
- bytes at b' bits = ceil(bytes × b' / b), for one expert and for the resident weights
  (`expert_mb`, `memory_mb.resident_weights`); exact going down from the run's bit-width, since the
  counter is ceil(parameters × bits / 8). The KV cache and activations are 16-bit: unchanged.
- the cache at b': a cache sized from the app budget holds floor((budget − resident' − KV − activations)
  / expert bytes'); a `--cache-mb` one floor(MB / expert bytes'); a `--cache-experts` one, or a policy
  that sizes its own cache (`kactive`: k per layer), the same count; then floored to whole per-layer
  partitions and capped at every expert. Fewer than top_k experts (per partition): no such run.
- peak DRAM at b' = resident' + cache' × expert bytes' + KV + activations: the cache full.
- one token's working set = decode accesses / decode tokens (= layers × top_k).
What the result does not echo comes from the caller as a `Sizing` (the app budget, the layers and
top_k, how the cache was sized, the expert shape for WD); without one, what-ifs are left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from cosmosim.device.policies import POLICIES
from cosmosim.inputs.arch import WEIGHT_BITS
from cosmosim.results.catalog import (
    ATTENTION_ROUTER_OVERHEAD,
    BY_KEY,
    EXPERT_COMPUTE,
    FLASH_WAIT,
    LM_HEAD,
    MEMORY_GROUP,
    TIME_GROUP,
)
from cosmosim.units import MB

GROUPS = (FLASH_WAIT, EXPERT_COMPUTE, ATTENTION_ROUTER_OVERHEAD, LM_HEAD)
# How the cache was sized (Sizing.cache_from), as `resolve_cache` does it.
BUDGET, CACHE_MB, CACHE_EXPERTS, POLICY = "budget", "cache_mb", "cache_experts", "policy"


@dataclass(frozen=True)
class Sizing:
    """What a what-if needs that the result does not echo, from the run's scenario
    (`cosmosim.results.summary.sizing_of`)."""

    app_budget_bytes: int  # the profile's app DRAM budget
    n_layers: int  # MoE layers (a dense model: its layers)
    top_k: int
    cache_from: str = BUDGET  # BUDGET (the default), CACHE_MB, CACHE_EXPERTS, or POLICY (kactive sizes its own)
    cache_mb: float | None = None  # the --cache-mb asked for, when cache_from is CACHE_MB
    per_layer: bool = False  # the cache is split into equal per-layer partitions
    d_model: int | None = None  # the expert shape, for the WD what-if (None: dense)
    ffn_hidden: int | None = None
    wd_rank: int | None = None  # None: full-rank experts


@dataclass(frozen=True)
class Facts:
    """A result dict, parsed once for the rules."""

    result: dict
    sizing: Sizing | None
    tpot_ms: float
    parts_ms: dict[str, float]  # every time part of the breakdown
    groups_ms: dict[str, float]  # the parts summed by group (GROUPS)
    moe: bool
    bits: float
    capacity: int  # experts the cache holds
    total_experts: int
    working_set: int  # experts one decode token reads: layers × top_k
    hit_rate: float | None
    expert_bytes: int
    memory: dict[str, int] | None = field(default=None)  # bytes by part (des, analytic); None: not reported

    def share(self, group: str) -> float:
        return self.groups_ms.get(group, 0.0) / self.tpot_ms

    @property
    def inputs(self) -> dict:
        return self.result["inputs"]

    @property
    def per_layer(self) -> bool:
        policy = POLICIES.get(self.inputs.get("policy"))
        return bool(self.inputs.get("per_layer_cache")) or bool(policy and policy.per_layer_partitions)

    @property
    def two_sizes(self) -> bool:
        """Routed experts at two bit-widths (--expert-bits hot=,cold=): the cache counts bytes, not experts."""
        return self.inputs.get("hot_expert_bits") is not None

    @property
    def global_cache(self) -> bool:
        """One cache over all layers, sized by the user or the budget (lru, lfu, belady, pinned)."""
        policy = POLICIES.get(self.inputs.get("policy"))
        return self.moe and not self.per_layer and bool(policy and policy.needs_cache_size)

    @property
    def peak_dram_mb(self) -> float | None:
        return self.result.get("peak_dram_mb")

    @property
    def budget_mb(self) -> float | None:
        return self.sizing.app_budget_bytes / MB if self.sizing else None

    def lower_bits(self) -> list[int]:
        """The plain bit-widths below this run's, each a `--weight-bits` what-if; none when the classes'
        bits differ (--expert-bits, --shared-bits): one flag would no longer scale every weight alike."""
        if self.two_sizes or any(self.inputs.get(name) not in (None, self.bits) for name in ("expert_bits", "shared_bits")):
            return []
        return sorted((b for b in WEIGHT_BITS if b < self.bits), reverse=True)

    @classmethod
    def of(cls, result: dict, sizing: Sizing | None) -> Facts | None:
        tpot = (result.get("tpot_ms") or {}).get("mean")
        parts = dict((result.get("breakdown") or {}).get("time_ms_per_token") or {})
        if tpot is None or not math.isfinite(tpot) or tpot <= 0 or not parts:
            return None
        groups = dict.fromkeys(GROUPS, 0.0)
        for part, ms in parts.items():
            groups[BY_KEY[f"{TIME_GROUP}.{part}"].compared_as] += ms
        inputs = result["inputs"]
        tokens = inputs.get("decode_tokens") or 0
        accesses = (result.get("accesses") or {}).get("decode") or 0
        memory = result.get(MEMORY_GROUP)
        return cls(result=result, sizing=sizing, tpot_ms=tpot, parts_ms=parts, groups_ms=groups,
                   moe=inputs.get("total_experts", 0) > 0, bits=inputs["weight_bits"],
                   capacity=inputs.get("cache_experts") or 0, total_experts=inputs.get("total_experts") or 0,
                   working_set=round(accesses / tokens) if tokens else 0, hit_rate=result.get("hit_rate"),
                   expert_bytes=round(inputs.get("expert_mb", 0) * MB),
                   memory={part: round(mb * MB) for part, mb in memory.items()} if memory else None)


# ----------------------------------------------------------------------------- what-if arithmetic

def _scaled(n_bytes: int, bits: float, from_bits: float) -> int:
    return int(-(-n_bytes * bits // from_bits))  # ceil(bytes × bits / from_bits), exact for integer bits


def capacity(f: Facts, expert_bytes: int, fixed_bytes: int) -> int | None:
    """Experts the cache would hold with experts of `expert_bytes` and `fixed_bytes` resident
    (weights + KV + activations); None where the scenario would refuse the run (fewer than top_k)."""
    s = f.sizing
    if not f.moe:
        return 0
    if s.cache_from == POLICY:
        cap = f.working_set  # kactive: top_k per layer
    elif s.cache_from == CACHE_EXPERTS:
        cap = f.capacity
    elif s.cache_from == CACHE_MB:
        cap = int(s.cache_mb * MB // expert_bytes)
    else:
        cap = max(int((s.app_budget_bytes - fixed_bytes) // expert_bytes), 0)
    if f.per_layer and cap % s.n_layers:
        cap -= cap % s.n_layers
    cap = min(cap, f.total_experts)
    per_partition = cap // s.n_layers if f.per_layer else cap
    return cap if per_partition >= s.top_k else None


def fixed_of(f: Facts, resident: int) -> int:
    return resident + f.memory["kv_cache"] + f.memory["activations"]


def at_bits(f: Facts, bits: int) -> dict | None:
    """The suggestion `--weight-bits bits`: the cache it gives and its peak DRAM (cache full);
    None without the memory parts or a Sizing."""
    if f.sizing is None or f.memory is None:
        return None
    expert = _scaled(f.expert_bytes, bits, f.bits)
    resident = _scaled(f.memory["resident_weights"], bits, f.bits)
    cap = capacity(f, expert, fixed_of(f, resident))
    peak = None if cap is None else (fixed_of(f, resident) + cap * expert) / MB
    return {"flag": "--weight-bits", "value": bits, "cache_experts": cap, "expert_mb": expert / MB,
            "peak_dram_mb": peak, "fits_budget": None if peak is None else peak <= f.budget_mb}


def experts_bytes(f: Facts, experts: int) -> int:
    """Bytes of `experts` experts in the cache; with experts of two sizes (hot ones at their own bits) only
    all of them have one answer, which is what the rules ask for then."""
    if f.two_sizes and experts >= f.total_experts:
        hot = f.inputs["hot_experts"]
        return round(f.inputs["hot_mb"] * MB) + (f.total_experts - hot) * f.expert_bytes
    return experts * f.expert_bytes


def peak_with(f: Facts, experts: int) -> float:
    """Peak DRAM (MB) at this run's bits with `experts` in the cache."""
    return (fixed_of(f, f.memory["resident_weights"]) + experts_bytes(f, experts)) / MB


def cache_mb_for(f: Facts, experts: int) -> dict:
    """The suggestion `--cache-mb X` that holds `experts` (X rounded up to 0.1 MB)."""
    value = math.ceil((experts_bytes(f, experts) + 1) / (MB / 10)) / 10
    peak = peak_with(f, experts) if f.memory else None
    return {"flag": "--cache-mb", "value": value, "cache_experts": experts, "peak_dram_mb": peak,
            "fits_budget": None if peak is None or f.budget_mb is None else peak <= f.budget_mb}


def wd_option(f: Facts) -> dict | None:
    """WD experts at rank d/2 (CoSMoEs' choice): 3 r (d + f) instead of 3 d f parameters, so each
    expert's bytes and FLOPs scale by r (d + f) / (d f)."""
    s = f.sizing
    if s is None or not f.moe or s.wd_rank is not None or not s.d_model or not s.ffn_hidden:
        return None
    rank = s.d_model // 2
    ratio = rank * (s.d_model + s.ffn_hidden) / (s.d_model * s.ffn_hidden)
    return {"flag": None, "value": None, "change": "wd_rank", "wd_rank": rank, "expert_scale": ratio,
            "expert_mb": f.expert_bytes * ratio / MB}
