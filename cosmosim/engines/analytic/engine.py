"""The analytic engine: a scenario's records in closed form, from one pass over its access stream.

`analyze(scenario)` returns the same `Records` the discrete-event simulator fills, so
`cosmosim.results.summary.summarize` builds the same JSON from either. Hits come from `reuse` (LRU stack
depths, Belady's MIN, kactive as per-layer LRU), step times from `latency`; there is no clock and
no event. Exact, up to floating-point rounding, wherever it applies: no prefetch, and the policies
lru, belady and kactive (docs/analytic-model.md says why).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cosmosim.engines.analytic.latency import (
    busy_s_per_read,
    decode_phase_s,
    expert_phase_s,
    nonexpert_ops,
    prefill_compute_s,
    read_done_s,
)
from cosmosim.engines.analytic.reuse import belady_hits, distinct_keys, lru_depths
from cosmosim.engines.analytic.steps import StepArrays, step_arrays
from cosmosim.errors import InputError
from cosmosim.inputs.profiles import DeviceProfile
from cosmosim.results.records import Records
from cosmosim.scenario.build import CacheSetup, Scenario
from cosmosim.scenario.settings import MMAP, RunConfig
from cosmosim.workload.stream import DECODE, PREFILL, Workload

EVICTION_RULES = {"lru": "lru", "kactive": "lru", "belady": "belady"}  # policy -> how hits are found


@dataclass(frozen=True)
class CacheLayout:
    rule: str  # "lru" or "belady"
    per_layer: bool
    partition_capacity: int  # entries per partition (the whole cache when global)


def check_closed_form(profile: DeviceProfile, config: RunConfig) -> None:
    """InputError for what has no closed form here: the page cache's readahead and two lists, and a
    throughput that changes along the clock."""
    if config.loader == MMAP:
        raise InputError(f"--engine analytic: --loader {MMAP} is not modelled in closed form (page faults, "
                         "readahead and the kernel's two lists); use --engine des")
    if profile.throttle is not None:
        raise InputError(f"--engine analytic: profile {profile.name} throttles under sustained load (its throttle "
                         "section), which is not modelled in closed form; use --engine des")


def cache_layout(policy: str, prefetch: str, cache: CacheSetup, n_layers: int) -> CacheLayout:
    """How the analytic engine finds hits for this cache; InputError where it does not apply."""
    if prefetch != "none":
        raise InputError(f"--engine analytic: --prefetch {prefetch} is not modelled in closed form "
                         "(prefetches overlap the next steps); use --engine des")
    if policy not in EVICTION_RULES:
        raise InputError(f"--engine analytic: --policy {policy} is not modelled in closed form "
                         f"(expected one of {', '.join(EVICTION_RULES)}); use --engine des")
    return CacheLayout(EVICTION_RULES[policy], cache.per_layer, cache.partition_capacity(n_layers))


def access_hits(workload: Workload, layout: CacheLayout) -> np.ndarray:
    """bool [accesses]: which demand accesses hit, exactly as the simulator decides them."""
    if layout.rule == "belady":
        return belady_hits(workload, layout.partition_capacity, layout.per_layer)
    return lru_depths(workload, layout.per_layer) < layout.partition_capacity


def peak_entries(workload: Workload, layout: CacheLayout) -> int:
    return int(np.minimum(distinct_keys(workload, layout.per_layer), layout.partition_capacity).sum())


def analyze(scenario: Scenario) -> Records:
    """The records of `scenario`, computed in closed form (no prefetch; lru, belady or kactive)."""
    check_closed_form(scenario.profile, scenario.config)
    workload, costs = scenario.workload, scenario.costs
    steps = step_arrays(workload)
    records = Records.empty(workload)
    if scenario.arch.is_moe:
        config = scenario.config
        layout = cache_layout(config.policy, config.prefetch, scenario.cache, workload.n_layers)
        hits = access_hits(workload, layout)
        _fill_expert_outcomes(records, scenario, steps, hits)
        records.peak_cache_entries = peak_entries(workload, layout)
        misses = workload.n_accesses - int(hits.sum())
        records.flash_busy_s = misses * busy_s_per_read(scenario.profile.flash, costs.expert_bytes)
        decode_misses = steps.decode_misses(hits)
        prefill_phase_s = _prefill_phase_s(scenario, steps, steps.prefill_misses(hits))
    else:
        decode_misses = np.zeros((steps.n_tokens, steps.n_layers), dtype=int)
        prefill_phase_s = np.zeros(steps.n_requests * steps.n_layers)
    _fill_decode(records, scenario, steps, decode_misses)
    _fill_prefill(records, scenario, steps, prefill_phase_s)
    pass_end_s = _pass_end_s(workload, records, scenario.config.idle_gap_s)
    records.token_end_s = pass_end_s[workload.step_kind[::workload.n_layers] == DECODE]
    records.total_s = float(pass_end_s[-1]) if pass_end_s.size else 0.0
    return records


def _pass_end_s(workload: Workload, records: Records, idle_gap_s: float) -> np.ndarray:
    """When each pass ends, in replay order: the passes back to back, `idle_gap_s` before each request's
    prefill but the first (every pass is n_layers steps)."""
    prefill = workload.step_kind[::workload.n_layers] == PREFILL
    duration_s = np.empty(prefill.size)
    duration_s[prefill], duration_s[~prefill] = records.ttft_s, records.latency_s
    idle_s = np.where(prefill, idle_gap_s, 0.0)
    idle_s[:1] = 0.0
    return np.cumsum(duration_s + idle_s)


def _fill_expert_outcomes(records: Records, scenario: Scenario, steps: StepArrays, hits: np.ndarray) -> None:
    workload, expert_bytes = scenario.workload, scenario.costs.expert_bytes
    decode_hits = hits[steps.decode_clock.reshape(-1)]
    per_layer_hits = np.bincount(steps.decode_layer_of_access, weights=decode_hits, minlength=workload.n_layers)
    per_layer_accesses = np.bincount(steps.decode_layer_of_access, minlength=workload.n_layers)
    for layer, (hit, total) in enumerate(zip(per_layer_hits.astype(int), per_layer_accesses)):
        records.add_outcomes(DECODE, layer, int(hit), 0, int(total - hit), int(total - hit) * expert_bytes)
    prefill = steps.prefill_clock[steps.prefill_valid]
    prefill_hits = int(hits[prefill].sum())
    records.add_outcomes(PREFILL, 0, prefill_hits, 0, prefill.size - prefill_hits, 0)


def _prefill_phase_s(scenario: Scenario, steps: StepArrays, miss: np.ndarray) -> np.ndarray:
    costs, width = scenario.costs, steps.prefill_clock.shape[1]
    return expert_phase_s(prefill_compute_s(costs, steps.prefill_tokens), miss,
                          read_done_s(scenario.profile.flash, costs.expert_bytes, width))


def _fill_decode(records: Records, scenario: Scenario, steps: StepArrays, misses: np.ndarray) -> None:
    """Per decode token: latency, flash bytes, FLOPs, DRAM bytes; and the time breakdown."""
    costs, top_k = scenario.costs, steps.top_k
    overhead_s, expert, lm_head = costs.layer_overhead_s, costs.expert_decode, costs.lm_head
    nonexpert = nonexpert_ops(costs, DECODE, steps.decode_context, np.arange(steps.n_layers))  # [tokens, layers]
    phase_s = decode_phase_s(costs, scenario.profile.flash, top_k)[misses] if top_k else np.zeros(misses.shape)
    records.latency_s = (nonexpert.time_s + overhead_s + phase_s).sum(axis=1) + lm_head.time_s
    records.flash_bytes = misses.sum(axis=1).astype(float) * costs.expert_bytes
    records.flops = (nonexpert.flops + top_k * expert.flops).sum(axis=1) + lm_head.flops
    records.dram_bytes = (nonexpert.dram_bytes + top_k * expert.dram_bytes).sum(axis=1) + lm_head.dram_bytes

    n_steps = misses.size
    breakdown = records.breakdown_s
    breakdown["nonexpert_dram"] = float(nonexpert.time_s[nonexpert.memory_bound].sum())
    breakdown["nonexpert_compute"] = float(nonexpert.time_s[~nonexpert.memory_bound].sum())
    breakdown["layer_overhead"] = n_steps * overhead_s
    breakdown["lm_head"] = steps.n_tokens * lm_head.time_s
    if top_k:
        expert_s = top_k * expert.time_s
        breakdown["expert_dram" if expert.memory_bound else "expert_compute"] = n_steps * expert_s
        breakdown["flash_stall"] = float((phase_s - expert_s).sum())


def _fill_prefill(records: Records, scenario: Scenario, steps: StepArrays, phase_s: np.ndarray) -> None:
    costs = scenario.costs
    nonexpert_s = nonexpert_ops(costs, PREFILL, np.array(steps.prefill_context), np.arange(steps.n_layers)).time_s \
        + costs.layer_overhead_s  # [layers]
    per_step = nonexpert_s + phase_s.reshape(steps.n_requests, steps.n_layers)
    records.ttft_s = (per_step.sum(axis=1) + costs.lm_head.time_s).tolist()
