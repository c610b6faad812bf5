"""The discrete-event simulation of on-device MoE decoding (SimPy).

One SimPy process replays the workload step by step (a step is one layer of one prefill or decode
pass). Within a step:

1. attention, router and norms run on resident weights (roofline cost) plus the per-layer overhead;
2. the router's experts are looked up in the DRAM cache in gate order; each miss is read from
   flash at once (reads queue on the device and overlap up to its queue depth) and inserted;
3. a prefetcher may then start reads for the next layer's experts;
4. experts compute in the order their weights become ready, so one expert's compute overlaps the
   next one's read; the step ends when the last expert's compute ends, or, where the profile's
   units compute at once (`compute_classes.concurrent`), when the shared experts running beside
   them on the attention unit end, if later.

The clock advances once per step (`env.timeout`); cache hits need no event at all. The commonest case
(LRU, experts of one size, no prefetch, mmap, throttle or timeline) runs the same replay inlined in
`lru_path`, with equal records; benchmarks/sim_speed.py measures both against bare SimPy events.

Under `--loader mmap` the page cache replaces the app's cache (`_step_mapped`): a step first touches its
layers' resident weights, then each expert's pages fault in as the thread reaches it (or are read ahead
together under MADV_WILLNEED), and the LM head's pages before the head runs. A profile with a `throttle`
section slows every compute operation and flash transfer by its curves at the device's sustained load,
evaluated once per pass; `idle_gap_s` leaves the device idle (cooling) between requests.

Given a `timeline` list, the engine also appends one (name, layer, start_s, end_s, kind) tuple per
operation: kind "compute" (attention, experts, LM head), "flash" (reads, by expert) or "pass" (one
prefill or decode pass); `cosmosim.results.timeline` turns them into a Perfetto trace. Left None, the hot
path only tests for None.
"""

from __future__ import annotations

import numpy as np
import simpy

import math

from cosmosim.device.costs import OpCost
from cosmosim.device.hardware import ComputeUnit, Flash
from cosmosim.device.prefetch import PREFETCHERS
from cosmosim.device.thermal import SustainedLoad
from cosmosim.engines.des import lru_path
from cosmosim.results.records import Records
from cosmosim.scenario.build import Scenario
from cosmosim.scenario.settings import MMAP
from cosmosim.workload.stream import DECODE, PREFILL


class Simulation:
    def __init__(self, scenario: Scenario, timeline: list | None = None, fast_path: bool = True) -> None:
        """`fast_path`: replay the commonest case by `lru_path` (equal records); False: always `_replay`."""
        self.scenario = scenario
        self.fast_path = fast_path
        self.timeline = timeline
        workload, config = scenario.workload, scenario.config
        self.env = simpy.Environment()
        self.flash = Flash(scenario.profile.flash)
        self.compute = ComputeUnit()
        self.records = Records.empty(workload)
        self.weights = scenario.mapped_weights(self.flash) if config.loader == MMAP else None
        self.cache = scenario.expert_cache() if scenario.arch.is_moe and self.weights is None else None
        self.prefetcher = None if config.prefetch == "none" else PREFETCHERS[config.prefetch](workload)
        self._prefetched: set[int] = set()  # keys prefetched for the next step, to score accuracy
        self.load = SustainedLoad(scenario.profile.throttle) if scenario.profile.throttle else None
        sizes = scenario.expert_sizes  # experts of two sizes: each key's bytes and class (else None: one size)
        self._key_bytes = None if sizes is None else sizes.key_bytes.tolist()
        self._hot_key = None if sizes is None else sizes.hot_key.tolist()
        self._concurrent = scenario.costs.concurrent_shared  # shared experts beside the routed ones
        self._set_slowdown(1.0)

    def run(self) -> Records:
        self.env.process(lru_path.replay(self) if self.fast_path and lru_path.takes_fast_path(self) else self._replay())
        self.env.run()
        self.records.total_s = self.env.now
        self.records.flash_busy_s = self.flash.stats.busy_s
        if self.cache is not None:
            self.records.peak_cache_entries = self.cache.stats.peak_entries
        if self.weights is not None:
            self.records.peak_cache_bytes = self.weights.peak_resident_bytes
        return self.records

    # -- costs, memoised: the same few values are asked for millions of times ---------------------
    def _set_slowdown(self, slowdown: float) -> None:
        """Every compute operation takes `slowdown` times its roofline time from now on (1: peak)."""
        costs = self.scenario.costs
        self._slowdown = slowdown
        self._nonexpert: dict[tuple[int, int], list[OpCost]] = {}
        self._expert: dict[tuple[int, bool], OpCost] = {}
        self._shared: dict[tuple[int, int], OpCost] = {}
        self._expert_decode, self._lm_head = self._slowed(costs.expert_decode), self._slowed(costs.lm_head)
        hot_costs = self.scenario.hot_costs
        self._hot_decode = None if hot_costs is None else self._slowed(hot_costs.expert_decode)
        self._overhead_s = costs.layer_overhead_s * slowdown
        self._miss_overhead_s = costs.miss_overhead_s * slowdown

    def _slowed(self, cost: OpCost) -> OpCost:
        if self._slowdown == 1.0:
            return cost
        return OpCost(cost.flops, cost.dram_bytes, cost.time_s * self._slowdown, cost.memory_bound)

    def _throttle(self, now_s: float) -> float:
        """Set this pass's throughput from the sustained load at its start; return that load."""
        load_s = self.load.load_at(now_s)
        self.flash.set_throughput_fraction(self.load.spec.flash_fraction(load_s))
        slowdown = 1.0 / self.load.spec.compute_fraction(load_s)
        if slowdown != self._slowdown:
            self._set_slowdown(slowdown)
        return load_s

    def _nonexpert_cost(self, kind: int, context: int, layer: int) -> OpCost:
        by_step = self._nonexpert.get((kind, context))
        if by_step is None:  # every step at this context, priced at once
            table = self.scenario.costs.nonexpert_table(kind, np.array([context]))
            by_step = [self._slowed(table.op(0, step)) for step in range(table.time_s.shape[1])]
            self._nonexpert[(kind, context)] = by_step
        return by_step[layer]

    def _expert_cost(self, n_tokens: int, hot: bool) -> OpCost:
        cost = self._expert.get((n_tokens, hot))
        if cost is None:
            costs = self.scenario.hot_costs if hot else self.scenario.costs
            cost = self._expert[(n_tokens, hot)] = self._slowed(costs.expert_prefill(n_tokens))
        return cost

    # -- the replay ---------------------------------------------------------------------------------
    def _replay(self):
        workload = self.scenario.workload
        kinds = workload.step_kind.tolist()
        layers = workload.step_layer.tolist()
        contexts = workload.step_context.tolist()
        offsets = workload.step_offsets.tolist()
        keys = workload.access_key.tolist()
        tokens = workload.access_tokens.tolist()
        last_layer = workload.n_layers - 1
        records, weights, load = self.records, self.weights, self.load
        idle_gap_s = self.scenario.config.idle_gap_s
        step_once = self._step if weights is None else self._step_mapped
        timeline = self.timeline
        token_start, load_s = 0.0, math.nan
        for step, kind in enumerate(kinds):
            if layers[step] == 0:
                idle_s = idle_gap_s if kind == PREFILL and step else 0.0
                if idle_s:
                    yield self.env.timeout(idle_s)
                if load is not None:
                    if kind == PREFILL:
                        load.start_request(self.env.now, idle_s)
                    load_s = self._throttle(self.env.now)
                token_start = self.env.now
                records.begin_pass(kind)
            end = step_once(step, kind, layers[step], contexts[step], keys, tokens, offsets[step], offsets[step + 1])
            if layers[step] == last_layer:
                if weights is not None:
                    end = self._touch_weights(weights.layout.head_extents(), end, "LM head", last_layer)
                lm_head = self._lm_head
                head_start, end = self.compute.run(end, lm_head.time_s)
                records.add_op(kind, "lm_head", lm_head)
                records.end_pass(kind, end - token_start, end, load_s)
                if timeline is not None:
                    timeline.append(("lm_head", last_layer, head_start, end, "compute"))
                    timeline.append(("decode" if kind == DECODE else "prefill", -1, token_start, end, "pass"))
            yield self.env.timeout(end - self.env.now)

    def _step(self, step: int, kind: int, layer: int, context: int, keys: list[int], tokens: list[int],
              lo: int, hi: int) -> float:
        records, cache, compute, timeline = self.records, self.cache, self.compute, self.timeline
        router_done = self._nonexpert_step(kind, layer, context, self.env.now)
        if lo == hi:
            return router_done

        step_keys = keys[lo:hi]
        pinned = set(step_keys)
        if self._prefetched:
            wasted = self._prefetched - pinned
            records.add_prefetch_outcome(len(self._prefetched & pinned), len(wasted), sum(map(self._bytes_of, wasted)))
            self._prefetched = set()
        expert_bytes, key_bytes = self.scenario.costs.expert_bytes, self._key_bytes
        ready_at = []  # (weights ready, the per-miss overhead its compute adds)
        miss_s = self._miss_overhead_s if kind == DECODE else 0.0
        hits = late_hits = misses = read_bytes = 0
        for clock in range(lo, hi):
            key = keys[clock]
            ready, extra_s = cache.ready_s.get(key), 0.0
            if ready is None:
                nbytes = expert_bytes if key_bytes is None else key_bytes[key]
                ready = self.flash.read(nbytes, router_done)
                read_bytes += nbytes
                # A prefill step may need more experts than the cache holds: it streams them, so
                # only the one being loaded is pinned; a decode step's top_k stay pinned together.
                cache.insert(key, clock, ready, pinned if kind == DECODE else {key})
                misses += 1
                extra_s = miss_s
                if timeline is not None:
                    timeline.append((f"read expert {key % self.scenario.workload.n_experts}", layer, router_done,
                                     ready, "flash"))
            elif ready > router_done:
                late_hits += 1
            else:
                ready = router_done
                hits += 1
            cache.touch(key, clock)
            ready_at.append((ready, extra_s))
        records.add_outcomes(kind, layer, hits, late_hits, misses, read_bytes)
        if self.prefetcher is not None:
            self._prefetch(step, layer, step_keys, pinned, router_done)

        # Experts compute in the order their weights arrive (hits first), each once the unit is free. Decode with
        # experts of one size, the hot path, stays inline and books its top_k in one add_op; otherwise each is priced
        # by its own size and (prefill) its tokens.
        if kind == DECODE and self._hot_key is None:
            cost = self._expert_decode
            end = router_done
            for ready, extra_s in sorted(ready_at):
                start, end = compute.run(ready, cost.time_s + extra_s)
                if timeline is not None:
                    timeline.append(("expert", layer, start, end, "compute"))
            records.add_op(kind, "expert", cost, count=hi - lo)
            expert_compute_s = (hi - lo) * cost.time_s
        else:
            expert_compute_s = 0.0
            for (ready, extra_s), clock in sorted(zip(ready_at, range(lo, hi))):
                end, expert_compute_s = self._expert_op(kind, ready, tokens[clock], layer, expert_compute_s, keys[clock],
                                                        extra_s)
        records.add_miss_overhead(kind, misses * miss_s)
        expert_compute_s += misses * miss_s
        records.add_stall(kind, end - router_done - expert_compute_s)
        return self._beside_shared(kind, layer, context, router_done, end) if self._concurrent else end

    def _nonexpert_step(self, kind: int, layer: int, context: int, ready_s: float) -> float:
        """Attention, router and norms (and a step's dense layers) once their weights are ready; the router's end."""
        nonexpert, overhead_s = self._nonexpert_cost(kind, context, layer), self._overhead_s
        layer_start, router_done = self.compute.run(ready_s, nonexpert.time_s + overhead_s)
        self.records.add_op(kind, "nonexpert", nonexpert, overhead_s)
        if self.timeline is not None:
            self.timeline.append(("attention+router", layer, layer_start, router_done, "compute"))
        return router_done

    def _touch_weights(self, extents, issue_s: float, what: str, layer: int) -> float:
        """--loader mmap: the thread touches weights other than routed experts; when they are in DRAM."""
        ready, nbytes = self.weights.touch(extents, issue_s)
        self.records.add_flash(nbytes)
        if nbytes and self.timeline is not None:
            self.timeline.append((f"fault {what}", layer, issue_s, ready, "flash"))
        return ready

    def _step_mapped(self, step: int, kind: int, layer: int, context: int, keys: list[int], tokens: list[int],
                     lo: int, hi: int) -> float:
        """One step with the weights mmapped: the step's layers' resident tensors, then its experts' pages."""
        weights, records, timeline = self.weights, self.records, self.timeline
        ready = self.env.now
        for model_layer in self.scenario.costs.step_layers[layer]:
            ready = self._touch_weights(weights.layout.nonexpert_extents(model_layer), ready, "weights", layer)
        router_done = self._nonexpert_step(kind, layer, context, ready)
        if lo == hi:
            return router_done
        n_experts, advised = self.scenario.workload.n_experts, weights.cache.advice == "willneed"
        hits = late_hits = misses = read_bytes = 0
        end, expert_compute_s = router_done, 0.0
        # Under MADV_WILLNEED every expert's reads start as the router picks it and the experts compute as
        # they arrive; otherwise the thread faults each expert in when it reaches it, then computes it.
        touched = []
        for clock in range(lo, hi):
            expert = keys[clock] - layer * n_experts
            issue_s = router_done if advised else end
            ready, nbytes = weights.touch(weights.expert_extents(layer, expert), issue_s)
            if nbytes:
                misses += 1
                read_bytes += nbytes
                if timeline is not None:
                    timeline.append((f"read expert {expert}", layer, issue_s, ready, "flash"))
            elif ready > issue_s:
                late_hits += 1
            else:
                hits += 1
            if advised:
                touched.append((ready, clock))
            else:
                end, expert_compute_s = self._expert_op(kind, ready, tokens[clock], layer, expert_compute_s)
        for ready, clock in sorted(touched):
            end, expert_compute_s = self._expert_op(kind, ready, tokens[clock], layer, expert_compute_s)
        records.add_outcomes(kind, layer, hits, late_hits, misses, read_bytes)
        records.add_stall(kind, end - router_done - expert_compute_s)
        return self._beside_shared(kind, layer, context, router_done, end) if self._concurrent else end

    def _beside_shared(self, kind: int, layer: int, context: int, router_done: float, end: float) -> float:
        """The shared experts on the attention unit from router_done, beside the routed experts (whose phase
        ends at `end`): the step ends when both have."""
        shared = self._shared_cost(kind, context if kind == PREFILL else 1)
        shared_end = router_done + shared.time_s
        self.records.add_beside(kind, shared, max(shared_end - end, 0.0))
        if self.timeline is not None:
            self.timeline.append(("shared experts", layer, router_done, shared_end, "compute"))
        return max(end, shared_end)

    def _shared_cost(self, kind: int, n_tokens: int) -> OpCost:
        cost = self._shared.get((kind, n_tokens))
        if cost is None:
            cost = self._shared[(kind, n_tokens)] = self._slowed(self.scenario.costs.shared_op(kind, n_tokens))
        return cost

    def _bytes_of(self, key: int) -> int:
        return self.scenario.costs.expert_bytes if self._key_bytes is None else self._key_bytes[key]

    def _expert_op(self, kind: int, ready_s: float, n_tokens: int, layer: int, compute_s: float,
                   key: int | None = None, extra_s: float = 0.0) -> tuple[float, float]:
        """One expert's compute once its weights are ready, `extra_s` (a miss's overhead) longer; (its end,
        `compute_s` plus its roofline duration). `key` says which of two sizes it has (None: one size for every
        expert)."""
        hot = key is not None and self._hot_key is not None and self._hot_key[key]
        if kind == DECODE:
            cost = self._hot_decode if hot else self._expert_decode
        else:
            cost = self._expert_cost(n_tokens, hot)
        start, end = self.compute.run(ready_s, cost.time_s + extra_s)
        self.records.add_op(kind, "expert", cost)
        if self.timeline is not None:
            self.timeline.append(("expert", layer, start, end, "compute"))
        return end, compute_s + cost.time_s

    def _prefetch(self, step: int, layer: int, step_keys: list[int], pinned: set[int], issue_s: float) -> None:
        step_clock = self.scenario.workload.step_offsets[step + 1]  # the next step's first access: "due now"
        cache = self.cache
        guess = self.prefetcher.predict(step, layer, step_keys)
        protected = pinned | set(guess)
        for key in guess:
            if key in cache or not cache.can_insert_without(key, protected):
                continue
            nbytes = self._bytes_of(key)
            ready = self.flash.read(nbytes, issue_s)
            cache.insert(key, step_clock, ready, protected, prefetch=True)
            self.records.add_prefetch_issue(nbytes)
            if self.timeline is not None:
                self.timeline.append((f"prefetch expert {key % self.scenario.workload.n_experts}", layer + 1,
                                      issue_s, ready, "flash"))
            self._prefetched.add(key)


def simulate(scenario: Scenario, timeline: list | None = None) -> Records:
    """Run the discrete-event simulation of `scenario`; deterministic (no randomness at all).
    `timeline`, when given, receives every operation (see the module's docstring)."""
    return Simulation(scenario, timeline).run()

