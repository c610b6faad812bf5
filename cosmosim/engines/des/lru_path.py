"""The simulator's fast path: the same replay as `Simulation._replay`, for its commonest case only.

The case: an LRU cache (`lru`, or `kactive`, LRU in per-layer partitions of k) of experts of one size,
no prefetcher, no `--loader mmap`, no throttle, no timeline, no concurrent units. There every miss is
read at its step's router_done and the step ends after that read's expert has computed, so no later
step can find a read still in flight: an access is a hit or a miss, never a late hit, and each step's
times follow from the previous step's alone. `_replay_kernel` (compiled with numba) runs that
recurrence over every step: the LRU order as a linked list per partition, the flash recurrence of
`Flash.read`, the compute unit of `ComputeUnit.run`, the clock as SimPy advances it (`now + (end - now)`),
every sum in the general path's order, so the records are equal to the last bit
(`tests/test_des_lru_path.py` checks every shipped trace). The SimPy process then yields the same
timeouts, one per step, and ends at the same clock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numba
import numpy as np

from cosmosim.device.policies import LRU, POLICIES, KActive
from cosmosim.workload.stream import DECODE, PREFILL

if TYPE_CHECKING:
    from cosmosim.engines.des.simulation import Simulation

# The decode breakdown's parts the kernel books, in its array's order.
PARTS = ("nonexpert_compute", "nonexpert_dram", "expert_compute", "expert_dram", "flash_stall", "layer_overhead",
         "lm_head", "miss_overhead")
NONE = -1  # an empty link of the LRU lists


def takes_fast_path(sim: Simulation) -> bool:
    """Whether `sim`'s scenario is the case this path replays (the module's docstring)."""
    scenario = sim.scenario
    return (sim.cache is not None and POLICIES[scenario.config.policy] in (LRU, KActive) and sim._key_bytes is None
            and sim.prefetcher is None and sim.weights is None and sim.load is None and sim.timeline is None
            and not sim._concurrent)


def _step_costs(sim: Simulation) -> tuple[np.ndarray, ...]:
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
    return time_s, flops, dram, bound


def _prefill_costs(sim: Simulation) -> np.ndarray:
    """float [3, most tokens + 1]: time, FLOPs and DRAM bytes of a prefill expert by its token count."""
    workload = sim.scenario.workload
    counts = np.unique(workload.access_tokens[np.repeat(workload.step_kind == PREFILL, np.diff(workload.step_offsets))])
    table = np.zeros((3, int(counts.max(initial=0)) + 1))
    for n in counts.tolist():
        cost = sim._expert_cost(n, False)
        table[:, n] = cost.time_s, cost.flops, cost.dram_bytes
    return table


@numba.njit(cache=True)
def _unlink(key, p, before, after, head, tail):
    """Take `key` out of partition p's LRU list (links `before`/`after`, ends `head`/`tail`)."""
    if before[key] == NONE:
        head[p] = after[key]
    else:
        after[before[key]] = after[key]
    if after[key] == NONE:
        tail[p] = before[key]
    else:
        before[after[key]] = before[key]


@numba.njit(cache=True)
def _append(key, p, before, after, head, tail):
    """Put `key` at the most recent end of partition p's LRU list."""
    before[key], after[key] = tail[p], NONE
    if tail[p] == NONE:
        head[p] = key
    else:
        after[tail[p]] = key
    tail[p] = key


@numba.njit(cache=True)
def _replay_kernel(kinds, layers, offsets, keys, tokens, step_s, step_flops, step_dram, step_bound, prefill_cost,
                   expert, lm_head, overhead_s, miss_s, idle_gap_s, per_layer, n_layers, n_experts,
                   capacity, transfers, latency, depth, decode):
    n_steps, n_keys, n_partitions = kinds.size, n_layers * n_experts, n_layers if per_layer else 1
    delays = np.zeros(n_steps)  # each step's timeout
    idle = np.zeros(n_steps, np.bool_)  # whether an idle gap's timeout comes before the step
    n_tokens = 0
    for step in range(n_steps):
        n_tokens += kinds[step] == decode and layers[step] == 0
    latency_T, end_T = np.zeros(n_tokens), np.zeros(n_tokens)
    flash_T, flops_T, dram_T = np.zeros(n_tokens, np.int64), np.zeros(n_tokens), np.zeros(n_tokens)
    ttft = np.zeros(n_steps)
    n_ttft = 0
    parts = np.zeros(8)
    layer_hits, layer_misses = np.zeros(n_layers, np.int64), np.zeros(n_layers, np.int64)
    prefill_hits = prefill_misses = 0
    # LRU: a doubly linked list of resident keys per partition, oldest at the head.
    before, after = np.full(n_keys, NONE, np.int64), np.full(n_keys, NONE, np.int64)
    resident = np.zeros(n_keys, np.bool_)
    head, tail = np.full(n_partitions, NONE, np.int64), np.full(n_partitions, NONE, np.int64)
    held = np.zeros(n_partitions, np.int64)
    entries = peak = 0
    slot_free = np.zeros(depth)
    next_slot, channel_free, busy_s, n_requests, n_reads = 0, 0.0, 0.0, 0, 0
    widest = np.max(offsets[1:] - offsets[:-1]) if n_steps else 0
    ready_at, extra_at, order = np.zeros(widest), np.zeros(widest), np.zeros(widest, np.int64)
    last_layer = layers.max() if n_steps else 0
    now = free = token_start = 0.0
    pass_flash, pass_flops, pass_dram = 0, 0.0, 0.0
    token = 0
    for step in range(n_steps):
        layer, is_decode = layers[step], kinds[step] == decode
        if layer == 0:
            if not is_decode and step > 0 and idle_gap_s != 0.0:
                idle[step] = True
                now = now + idle_gap_s
            token_start = now
            pass_flash, pass_flops, pass_dram = 0, 0.0, 0.0
        start = now if now > free else free
        free = start + (step_s[step] + overhead_s)
        router_done = free
        pass_flops += step_flops[step]
        pass_dram += step_dram[step]
        if is_decode:
            parts[1 if step_bound[step] else 0] += step_s[step]
            parts[5] += overhead_s
        end = router_done
        lo, hi = offsets[step], offsets[step + 1]
        if lo != hi:
            hits = misses = 0
            for clock in range(lo, hi):
                key = keys[clock]
                p = key // n_experts if per_layer else 0
                if resident[key]:
                    _unlink(key, p, before, after, head, tail)  # to the most recent end
                    _append(key, p, before, after, head, tail)
                    ready_at[clock - lo], extra_at[clock - lo] = router_done, 0.0
                    hits += 1
                    continue
                done = 0.0
                for transfer in transfers:
                    slot = next_slot
                    ready = (slot_free[slot] if slot_free[slot] > router_done else router_done) + latency
                    done = (ready if ready > channel_free else channel_free) + transfer
                    channel_free = done
                    slot_free[slot] = done
                    next_slot = (slot + 1) % depth
                    busy_s += transfer
                n_requests += transfers.size
                n_reads += 1
                if held[p] == capacity:  # evict the oldest key not in this decode step (prefill: the oldest)
                    victim = head[p]
                    while is_decode and victim != NONE:
                        in_step = False
                        for other in range(lo, hi):
                            in_step = in_step or keys[other] == victim
                        if not in_step:
                            break
                        victim = after[victim]
                    _unlink(victim, p, before, after, head, tail)
                    resident[victim] = False
                    held[p] -= 1
                    entries -= 1
                resident[key] = True
                _append(key, p, before, after, head, tail)
                held[p] += 1
                entries += 1
                if entries > peak:
                    peak = entries
                ready_at[clock - lo], extra_at[clock - lo] = done, miss_s if is_decode else 0.0
                misses += 1
            pass_flash += misses * expert[3]
            # Compute in order of (ready, extra), ties in access order: a stable insertion sort of positions.
            n = hi - lo
            for i in range(n):
                order[i] = i
            for i in range(1, n):
                moving, j = order[i], i - 1
                while j >= 0 and (ready_at[order[j]] > ready_at[moving] or (
                        ready_at[order[j]] == ready_at[moving] and extra_at[order[j]] > extra_at[moving])):
                    order[j + 1] = order[j]
                    j -= 1
                order[j + 1] = moving
            if is_decode:
                layer_hits[layer] += hits
                layer_misses[layer] += misses
                for i in range(n):
                    ready = ready_at[order[i]]
                    start = ready if ready > free else free
                    free = start + (expert[0] + extra_at[order[i]])
                end = free
                pass_flops += n * expert[1]
                pass_dram += n * expert[2]
                parts[3 if expert[4] else 2] += n * expert[0]
                parts[7] += misses * miss_s
                parts[4] += end - router_done - (n * expert[0] + misses * miss_s)
            else:
                prefill_hits += hits
                prefill_misses += misses
                for i in range(n):
                    count, ready = tokens[lo + order[i]], ready_at[order[i]]
                    start = ready if ready > free else free
                    free = start + (prefill_cost[0, count] + extra_at[order[i]])
                    pass_flops += prefill_cost[1, count]
                    pass_dram += prefill_cost[2, count]
                end = free
        if layer == last_layer:
            start = end if end > free else free
            free = start + lm_head[0]
            end = free
            pass_flops += lm_head[1]
            pass_dram += lm_head[2]
            if is_decode:
                parts[6] += lm_head[0]
                latency_T[token], end_T[token] = end - token_start, end
                flash_T[token], flops_T[token], dram_T[token] = pass_flash, pass_flops, pass_dram
                token += 1
            else:
                ttft[n_ttft] = end - token_start
                n_ttft += 1
        delays[step] = end - now
        now = now + delays[step]
    return (delays, idle, latency_T, end_T, flash_T, flops_T, dram_T, ttft[:n_ttft], parts, layer_hits, layer_misses,
            prefill_hits, prefill_misses, busy_s, n_requests, n_reads, peak)


def replay(sim: Simulation):
    """The SimPy process of `sim` (which `takes_fast_path`); fills `sim.records` as `_replay` does."""
    scenario, records = sim.scenario, sim.records
    workload, costs, config = scenario.workload, scenario.costs, scenario.config
    expert, lm_head = sim._expert_decode, sim._lm_head
    flash = sim.flash
    transfers = np.array([transfer for _, transfer in flash._requests(costs.expert_bytes)])
    (delays, idle, latency_T, end_T, flash_T, flops_T, dram_T, ttft, parts, layer_hits, layer_misses, prefill_hits,
     prefill_misses, busy_s, n_requests, n_reads, peak) = _replay_kernel(
        workload.step_kind.astype(np.int64), workload.step_layer.astype(np.int64), workload.step_offsets.astype(np.int64),
        workload.access_key.astype(np.int64), workload.access_tokens.astype(np.int64), *_step_costs(sim),
        _prefill_costs(sim), np.array([expert.time_s, expert.flops, expert.dram_bytes, costs.expert_bytes, expert.memory_bound]),
        np.array([lm_head.time_s, lm_head.flops, lm_head.dram_bytes]), sim._overhead_s, sim._miss_overhead_s,
        config.idle_gap_s, scenario.cache.per_layer, workload.n_layers, workload.n_experts,
        scenario.cache.partition_capacity(workload.n_layers), transfers, flash.spec.latency_s, flash.spec.queue_depth,
        DECODE)
    timeout, idle_gap_s = sim.env.timeout, config.idle_gap_s
    for delay, gap in zip(delays.tolist(), idle.tolist()):
        if gap:
            yield timeout(idle_gap_s)
        yield timeout(delay)
    n = latency_T.size
    records.latency_s[:], records.token_end_s[:], records.flash_bytes[:] = latency_T, end_T, flash_T
    records.flops[:], records.dram_bytes[:], records._token = flops_T, dram_T, n
    records.ttft_s.extend(ttft.tolist())
    records.breakdown_s.update(zip(PARTS, parts.tolist()))
    records._layer_hits[:], records._layer_misses[:] = layer_hits.tolist(), layer_misses.tolist()
    records.prefill_outcomes["hit"], records.prefill_outcomes["miss"] = int(prefill_hits), int(prefill_misses)
    stats = flash.stats
    stats.busy_s, stats.requests, stats.reads = busy_s, int(n_requests), int(n_reads)
    stats.bytes = int(n_reads) * costs.expert_bytes
    sim.cache.stats.peak_entries = int(peak)
