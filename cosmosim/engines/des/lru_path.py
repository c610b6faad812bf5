"""The simulator's fast path: the same replay as `Simulation._replay`, for its commonest case only.

The case: an LRU cache (`lru`, or `kactive`, LRU in per-layer partitions of k) of experts of one size,
no prefetcher, no `--loader mmap`, no throttle, no timeline, no concurrent units. There every miss is
read at its step's router_done and the step ends after that read's expert has computed, so no later
step can find a read still in flight: an access is a hit or a miss, never a late hit. What is left is
arithmetic that the general path spreads over the cache, the policy, the flash device, the compute
unit and the records, here inlined in one loop over plain Python locals: the LRU order is an
OrderedDict per partition, the flash recurrence the one of `Flash.read`, every sum is taken in the
general path's order, so records are equal to the last bit (`tests/test_des_lru_path.py` checks every
shipped trace). The loop still yields one SimPy timeout per step.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np

from cosmosim.device.policies import LRU, POLICIES, KActive
from cosmosim.workload.stream import DECODE, PREFILL

if TYPE_CHECKING:
    from cosmosim.engines.des.simulation import Simulation


def takes_fast_path(sim: Simulation) -> bool:
    """Whether `sim`'s scenario is the case this path replays (the module's docstring)."""
    scenario = sim.scenario
    return (sim.cache is not None and POLICIES[scenario.config.policy] in (LRU, KActive) and sim._key_bytes is None
            and sim.prefetcher is None and sim.weights is None and sim.load is None and sim.timeline is None
            and not sim._concurrent)


def _step_costs(sim: Simulation) -> tuple[list, list, list, list]:
    """Per step: the non-expert work's time, FLOPs, DRAM bytes and whether it is memory-bound, each
    context priced once as `Simulation._nonexpert_cost` prices it."""
    workload = sim.scenario.workload
    kinds, layers, contexts = workload.step_kind, workload.step_layer, workload.step_context
    time_s, flops, dram, bound = np.zeros(kinds.size), np.zeros(kinds.size), np.zeros(kinds.size), np.zeros(kinds.size, bool)
    for kind in (PREFILL, DECODE):
        rows = np.flatnonzero(kinds == kind)
        if rows.size:
            values, inverse = np.unique(contexts[rows], return_inverse=True)
            table = sim.scenario.costs.nonexpert_table(kind, values).take(inverse, layers[rows])
            time_s[rows], flops[rows], dram[rows], bound[rows] = (table.time_s, table.flops, table.dram_bytes,
                                                                  table.memory_bound)
    return time_s.tolist(), flops.tolist(), dram.tolist(), bound.tolist()


def replay(sim: Simulation):
    """The SimPy process of `sim` (which `takes_fast_path`); fills `sim.records` as `_replay` does."""
    scenario, records, env = sim.scenario, sim.records, sim.env
    workload, costs = scenario.workload, scenario.costs
    kinds, layers = workload.step_kind.tolist(), workload.step_layer.tolist()
    offsets, keys, tokens = workload.step_offsets.tolist(), workload.access_key.tolist(), workload.access_tokens.tolist()
    step_s, step_flops, step_dram, step_bound = _step_costs(sim)
    last_layer, n_experts = workload.n_layers - 1, workload.n_experts
    idle_gap_s, overhead_s, miss_s = scenario.config.idle_gap_s, sim._overhead_s, sim._miss_overhead_s
    expert, lm_head = sim._expert_decode, sim._lm_head
    expert_s, expert_flops, expert_dram = expert.time_s, expert.flops, expert.dram_bytes
    expert_part = "expert_dram" if expert.memory_bound else "expert_compute"
    # The cache: one LRU order per partition (oldest first), its capacity, and the peak of entries.
    per_layer = scenario.cache.per_layer
    orders = [OrderedDict() for _ in range(workload.n_layers if per_layer else 1)]
    capacity, entries, peak = scenario.cache.partition_capacity(workload.n_layers), 0, 0
    # The flash device (`Flash.read`): slots freed round-robin, one transfer channel.
    flash = sim.flash
    spec = flash.spec
    transfers = [transfer for _, transfer in flash._requests(costs.expert_bytes)]
    latency, depth, slot_free = spec.latency_s, spec.queue_depth, [0.0] * spec.queue_depth
    next_slot, channel_free, busy_s, n_requests, n_reads = 0, 0.0, 0.0, 0, 0
    expert_bytes = costs.expert_bytes
    # The records, as plain locals: the decode breakdown's parts and the pass's sums.
    parts = dict.fromkeys(records.breakdown_s, 0.0)
    layer_hits, layer_misses, prefill = records._layer_hits, records._layer_misses, records.prefill_outcomes
    latency_s, ttft_s, token_end_s = [], records.ttft_s, []
    flash_bytes_T, flops_T, dram_T = [], [], []
    free = token_start = 0.0
    pass_flash, pass_flops, pass_dram = 0, 0.0, 0.0
    timeout = env.timeout
    for step, kind in enumerate(kinds):
        layer = layers[step]
        decode = kind == DECODE
        if layer == 0:
            if not decode and step and idle_gap_s:
                yield timeout(idle_gap_s)
            token_start = env.now
            pass_flash, pass_flops, pass_dram = 0, 0.0, 0.0
        # Attention, router and norms, then the layer overhead (`_nonexpert_step`).
        now = env.now
        start = now if now > free else free
        free = router_done = start + (step_s[step] + overhead_s)
        pass_flops += step_flops[step]
        pass_dram += step_dram[step]
        if decode:
            parts["nonexpert_dram" if step_bound[step] else "nonexpert_compute"] += step_s[step]
            parts["layer_overhead"] += overhead_s
        end = router_done
        lo, hi = offsets[step], offsets[step + 1]
        if lo != hi:
            ready_at, hits, misses = [], 0, 0
            pinned = keys[lo:hi] if decode else None
            for clock in range(lo, hi):
                key = keys[clock]
                order = orders[key // n_experts] if per_layer else orders[0]
                if key in order:
                    order.move_to_end(key)
                    ready_at.append((router_done, 0.0))
                    hits += 1
                    continue
                # A miss: its read (the flash recurrence), room in the cache (the oldest unpinned), the entry.
                for transfer in transfers:
                    slot = next_slot
                    ready = (slot_free[slot] if slot_free[slot] > router_done else router_done) + latency
                    done = (ready if ready > channel_free else channel_free) + transfer
                    channel_free = slot_free[slot] = done
                    next_slot = (slot + 1) % depth
                    busy_s += transfer
                n_requests += len(transfers)
                n_reads += 1
                if len(order) == capacity:  # a decode step's keys stay; a prefill step streams its experts
                    del order[next(old for old in order if old not in pinned) if decode else next(iter(order))]
                    entries -= 1
                order[key] = None
                entries += 1
                if entries > peak:
                    peak = entries
                ready_at.append((done, miss_s if decode else 0.0))
                misses += 1
            pass_flash += misses * expert_bytes
            if decode:
                layer_hits[layer] += hits
                layer_misses[layer] += misses
                ready_at.sort()
                for ready, extra_s in ready_at:
                    start = ready if ready > free else free
                    free = start + (expert_s + extra_s)
                end = free
                count = hi - lo
                pass_flops += count * expert_flops
                pass_dram += count * expert_dram
                parts[expert_part] += count * expert_s
                parts["miss_overhead"] += misses * miss_s
                parts["flash_stall"] += end - router_done - (count * expert_s + misses * miss_s)
            else:
                prefill["hit"] += hits
                prefill["miss"] += misses
                for (ready, extra_s), clock in sorted(zip(ready_at, range(lo, hi))):
                    cost = sim._expert_cost(tokens[clock], False)
                    start = ready if ready > free else free
                    free = start + (cost.time_s + extra_s)
                    pass_flops += cost.flops
                    pass_dram += cost.dram_bytes
                end = free
        if layer == last_layer:
            start = end if end > free else free
            free = end = start + lm_head.time_s
            pass_flops += lm_head.flops
            pass_dram += lm_head.dram_bytes
            if decode:
                parts["lm_head"] += lm_head.time_s
                latency_s.append(end - token_start)
                token_end_s.append(end)
                flash_bytes_T.append(pass_flash)
                flops_T.append(pass_flops)
                dram_T.append(pass_dram)
            else:
                ttft_s.append(end - token_start)
        yield timeout(end - env.now)
    records.breakdown_s.update(parts)
    n = len(latency_s)
    records.latency_s[:n], records.token_end_s[:n] = latency_s, token_end_s
    records.flash_bytes[:n], records.flops[:n], records.dram_bytes[:n] = flash_bytes_T, flops_T, dram_T
    records.token_load_s[:n] = math.nan
    records._token = n
    stats = flash.stats
    stats.busy_s, stats.requests, stats.reads, stats.bytes = busy_s, n_requests, n_reads, n_reads * expert_bytes
    sim.cache.stats.peak_entries = peak
