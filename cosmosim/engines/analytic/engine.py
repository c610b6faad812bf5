"""The analytic engine: a scenario's records in closed form, from one pass over its access stream.

`analyze(scenario)` returns the same `Records` the discrete-event simulator fills, so
`cosmosim.results.summary.summarize` builds the same JSON from either. Hits come from `reuse` (LRU stack
depths, Belady's MIN, kactive as per-layer LRU; LRU by bytes for experts of two sizes), step times
from `latency` (and `sized`); there is no clock and no event. Exact, up to floating-point rounding,
wherever it applies: no prefetch, and the policies lru, belady and kactive, Belady only with experts
of one size (docs/analytic-model.md says why).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cosmosim.device.costs import OpCost
from cosmosim.engines.analytic.latency import (
    busy_s_per_read,
    decode_phase_s,
    expert_phase_s,
    nonexpert_ops,
    prefill_compute_s,
    read_done_s,
)
from cosmosim.engines.analytic.reuse import belady_hits, distinct_keys, lru_bytes_through, lru_depths
from cosmosim.engines.analytic.sized import sized_phase_s
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
    partition_capacity: int  # entries per partition (the whole cache when global); bytes with key_bytes
    key_bytes: np.ndarray | None = None  # experts of two sizes in a cache that counts bytes: each key's size


def check_closed_form(profile: DeviceProfile, config: RunConfig) -> None:
    """InputError for what has no closed form here: the page cache's readahead and two lists, and a
    throughput that changes along the clock."""
    if config.loader == MMAP:
        raise InputError(f"--engine analytic: --loader {MMAP} is not modelled in closed form (page faults, "
                         "readahead and the kernel's two lists); use --engine des")
    if profile.throttle is not None:
        raise InputError(f"--engine analytic: profile {profile.name} throttles under sustained load (its throttle "
                         "section), which is not modelled in closed form; use --engine des")


def cache_layout(policy: str, prefetch: str, cache: CacheSetup, n_layers: int,
                 key_bytes: np.ndarray | None = None) -> CacheLayout:
    """How the analytic engine finds hits for this cache (`key_bytes`: each key's size where the cache counts
    bytes); InputError where it does not apply."""
    if prefetch != "none":
        raise InputError(f"--engine analytic: --prefetch {prefetch} is not modelled in closed form "
                         "(prefetches overlap the next steps); use --engine des")
    if policy not in EVICTION_RULES:
        raise InputError(f"--engine analytic: --policy {policy} is not modelled in closed form "
                         f"(expected one of {', '.join(EVICTION_RULES)}); use --engine des")
    if cache.capacity_bytes is None:
        return CacheLayout(EVICTION_RULES[policy], cache.per_layer, cache.partition_capacity(n_layers))
    if EVICTION_RULES[policy] != "lru":
        raise InputError(f"--engine analytic: --policy {policy} with experts of two sizes is a heuristic (the optimum "
                         "would weigh each victim's bytes), not modelled in closed form; use --engine des")
    per_partition = cache.capacity_bytes // n_layers if cache.per_layer else cache.capacity_bytes
    return CacheLayout("lru", cache.per_layer, per_partition, key_bytes)


def access_hits(workload: Workload, layout: CacheLayout) -> np.ndarray:
    """bool [accesses]: which demand accesses hit, exactly as the simulator decides them."""
    if layout.rule == "belady":
        return belady_hits(workload, layout.partition_capacity, layout.per_layer)
    if layout.key_bytes is not None:
        return lru_bytes_through(workload, layout.key_bytes, layout.per_layer) <= layout.partition_capacity
    return lru_depths(workload, layout.per_layer) < layout.partition_capacity


def peak_entries(workload: Workload, layout: CacheLayout) -> int:
    return int(np.minimum(distinct_keys(workload, layout.per_layer), layout.partition_capacity).sum())


@dataclass(frozen=True)
class ExpertClasses:
    """What each routed expert costs: one class, or two (cold 0, hot 1) with --expert-bits hot=,cold=."""

    access_class: np.ndarray  # int [accesses]
    read_bytes: np.ndarray  # [classes]: one expert's bytes
    decode_s: np.ndarray  # [classes]: one expert on one token
    decode_dram_bytes: np.ndarray  # [classes]
    decode_memory_bound: np.ndarray  # bool [classes]

    @classmethod
    def of(cls, scenario: Scenario) -> "ExpertClasses":
        sizes, workload = scenario.expert_sizes, scenario.workload
        per_class = [scenario.costs] if sizes is None else [scenario.costs, scenario.hot_costs]
        access_class = np.zeros(workload.n_accesses, np.int64) if sizes is None else \
            sizes.hot_key[workload.access_key].astype(np.int64)
        return cls(access_class, np.array([c.expert_bytes for c in per_class]),
                   np.array([c.expert_decode.time_s for c in per_class]),
                   np.array([c.expert_decode.dram_bytes for c in per_class]),
                   np.array([c.expert_decode.memory_bound for c in per_class]))


def analyze(scenario: Scenario) -> Records:
    """The records of `scenario`, computed in closed form (no prefetch; lru, belady or kactive)."""
    check_closed_form(scenario.profile, scenario.config)
    workload = scenario.workload
    steps = step_arrays(workload)
    records = Records.empty(workload)
    classes = ExpertClasses.of(scenario)
    decode_class = classes.access_class[steps.decode_clock]  # [tokens, layers, top_k]
    if scenario.arch.is_moe:
        config = scenario.config
        key_bytes = None if scenario.expert_sizes is None else scenario.expert_sizes.key_bytes
        layout = cache_layout(config.policy, config.prefetch, scenario.cache, workload.n_layers, key_bytes)
        hits = access_hits(workload, layout)
        _fill_expert_outcomes(records, steps, hits, classes)
        records.peak_cache_entries = peak_entries(workload, layout)
        misses_by_class = np.bincount(classes.access_class[~hits], minlength=classes.read_bytes.size)
        records.flash_busy_s = float(sum(count * busy_s_per_read(scenario.profile.flash, int(nbytes))
                                         for count, nbytes in zip(misses_by_class, classes.read_bytes) if count))
        decode_miss = ~hits[steps.decode_clock]
        prefill_phase_s = _prefill_phase_s(scenario, steps, steps.prefill_misses(hits), classes)
    else:
        decode_miss = np.zeros(steps.decode_clock.shape, dtype=bool)
        prefill_phase_s = np.zeros(steps.n_requests * steps.n_layers)
    _fill_decode(records, scenario, steps, decode_miss, decode_class, classes)
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


def _fill_expert_outcomes(records: Records, steps: StepArrays, hits: np.ndarray, classes: ExpertClasses) -> None:
    miss_bytes = np.where(hits, 0, classes.read_bytes[classes.access_class])
    decode_clock = steps.decode_clock.reshape(-1)
    n_layers = steps.n_layers
    per_layer_hits = np.bincount(steps.decode_layer_of_access, weights=hits[decode_clock], minlength=n_layers)
    per_layer_accesses = np.bincount(steps.decode_layer_of_access, minlength=n_layers)
    per_layer_bytes = np.bincount(steps.decode_layer_of_access, weights=miss_bytes[decode_clock], minlength=n_layers)
    for layer, (hit, total, nbytes) in enumerate(zip(per_layer_hits.astype(int), per_layer_accesses, per_layer_bytes)):
        records.add_outcomes(DECODE, layer, int(hit), 0, int(total - hit), int(nbytes))
    prefill = steps.prefill_clock[steps.prefill_valid]
    prefill_hits = int(hits[prefill].sum())
    records.add_outcomes(PREFILL, 0, prefill_hits, 0, prefill.size - prefill_hits, 0)


def _prefill_phase_s(scenario: Scenario, steps: StepArrays, miss: np.ndarray, classes: ExpertClasses) -> np.ndarray:
    costs, width, flash = scenario.costs, steps.prefill_clock.shape[1], scenario.profile.flash
    compute_s = prefill_compute_s(costs, steps.prefill_tokens)
    concurrent_s = costs.concurrent_s(PREFILL, steps.prefill_context)
    if scenario.expert_sizes is None:
        return expert_phase_s(compute_s, miss, read_done_s(flash, costs.expert_bytes, width), concurrent_s)
    slot_class = np.where(steps.prefill_valid, classes.access_class[np.maximum(steps.prefill_clock, 0)], 0)
    compute_s = np.where(slot_class == 1, prefill_compute_s(scenario.hot_costs, steps.prefill_tokens), compute_s)
    return np.maximum(sized_phase_s(flash, compute_s, miss, classes.read_bytes[slot_class]), concurrent_s)


def _fill_decode(records: Records, scenario: Scenario, steps: StepArrays, miss: np.ndarray, slot_class: np.ndarray,
                 classes: ExpertClasses) -> None:
    """Per decode token: latency, flash bytes, FLOPs, DRAM bytes; and the time breakdown. `miss` and
    `slot_class` [tokens, layers, top_k]: which decode accesses miss, and each one's expert class."""
    costs, top_k = scenario.costs, steps.top_k
    overhead_s, expert, lm_head = costs.layer_overhead_s, costs.expert_decode, costs.lm_head
    nonexpert = nonexpert_ops(costs, DECODE, steps.decode_context, np.arange(steps.n_layers))  # [tokens, layers]
    if not top_k:
        phase_s = np.zeros(miss.shape[:2])
    elif scenario.expert_sizes is None:  # one size: a step's phase depends only on its number of misses
        phase_s = decode_phase_s(costs, scenario.profile.flash, top_k)[miss.sum(axis=2)]
    else:
        compute_s = costs.decode_expert_s(miss, classes.decode_s[slot_class])
        phase_s = sized_phase_s(scenario.profile.flash, compute_s.reshape(-1, top_k),
                                miss.reshape(-1, top_k), classes.read_bytes[slot_class].reshape(-1, top_k)
                                ).reshape(miss.shape[:2])
    # Shared experts beside the routed ones (concurrent units): a step lasts at least their time.
    shared = costs.shared_op(DECODE, 1) if costs.concurrent_shared else OpCost(0.0, 0.0, 0.0, False)
    step_phase_s = np.maximum(phase_s, shared.time_s)
    records.latency_s = (nonexpert.time_s + overhead_s + step_phase_s).sum(axis=1) + lm_head.time_s
    records.flash_bytes = np.where(miss, classes.read_bytes[slot_class], 0).sum(axis=(1, 2)).astype(float)
    records.flops = (nonexpert.flops + top_k * expert.flops + shared.flops).sum(axis=1) + lm_head.flops
    expert_dram_bytes = classes.decode_dram_bytes[slot_class].sum(axis=2)
    records.dram_bytes = (nonexpert.dram_bytes + expert_dram_bytes + shared.dram_bytes).sum(axis=1) + lm_head.dram_bytes

    n_steps = miss.shape[0] * miss.shape[1]
    breakdown = records.breakdown_s
    breakdown["nonexpert_dram"] = float(nonexpert.time_s[nonexpert.memory_bound].sum())
    breakdown["nonexpert_compute"] = float(nonexpert.time_s[~nonexpert.memory_bound].sum())
    breakdown["layer_overhead"] = n_steps * overhead_s
    breakdown["lm_head"] = steps.n_tokens * lm_head.time_s
    breakdown["shared_exposed"] = float((step_phase_s - phase_s).sum())
    if top_k:
        expert_s = classes.decode_s[slot_class]
        memory_bound = classes.decode_memory_bound[slot_class]
        breakdown["expert_dram"] = float(expert_s[memory_bound].sum())
        breakdown["expert_compute"] = float(expert_s[~memory_bound].sum())
        breakdown["miss_overhead"] = float(miss.sum()) * costs.miss_overhead_s
        breakdown["flash_stall"] = float((phase_s - expert_s.sum(axis=2)).sum()) - breakdown["miss_overhead"]


def _fill_prefill(records: Records, scenario: Scenario, steps: StepArrays, phase_s: np.ndarray) -> None:
    costs = scenario.costs
    nonexpert_s = nonexpert_ops(costs, PREFILL, np.array(steps.prefill_context), np.arange(steps.n_layers)).time_s \
        + costs.layer_overhead_s  # [layers]
    per_step = nonexpert_s + phase_s.reshape(steps.n_requests, steps.n_layers)
    records.ttft_s = (per_step.sum(axis=1) + costs.lm_head.time_s).tolist()
