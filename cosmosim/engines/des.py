"""The discrete-event simulation of on-device MoE decoding (SimPy).

One SimPy process replays the workload step by step (a step is one layer of one prefill or decode
pass). Within a step:

1. attention, router and norms run on resident weights (roofline cost) plus the per-layer overhead;
2. the router's experts are looked up in the DRAM cache in gate order; each miss is read from
   flash at once (reads queue on the device and overlap up to its queue depth) and inserted;
3. a prefetcher may then start reads for the next layer's experts;
4. experts compute in the order their weights become ready, so one expert's compute overlaps the
   next one's read; the step ends when the last expert's compute ends.

The clock advances once per step (`env.timeout`); cache hits need no event at all, which keeps the
simulator at about a million expert accesses per second (benchmarks/sim_speed.py).

Given a `timeline` list, the engine also appends one (name, layer, start_s, end_s, kind) tuple per
operation: kind "compute" (attention, experts, LM head), "flash" (reads, by expert) or "pass" (one
prefill or decode pass); `cosmosim.results.timeline` turns them into a Perfetto trace. Left None, the hot
path only tests for None.
"""

from __future__ import annotations

import numpy as np
import simpy

from cosmosim.device.costs import OpCost
from cosmosim.device.hardware import ComputeUnit, Flash
from cosmosim.device.prefetch import PREFETCHERS
from cosmosim.results.records import Records
from cosmosim.scenario.build import Scenario
from cosmosim.workload.stream import DECODE


class Simulation:
    def __init__(self, scenario: Scenario, timeline: list | None = None) -> None:
        self.scenario = scenario
        self.timeline = timeline
        workload, config = scenario.workload, scenario.config
        self.env = simpy.Environment()
        self.flash = Flash(scenario.profile.flash)
        self.compute = ComputeUnit()
        self.records = Records.empty(workload)
        self.cache = scenario.expert_cache() if scenario.arch.is_moe else None
        self.prefetcher = None if config.prefetch == "none" else PREFETCHERS[config.prefetch](workload)
        self._prefetched: set[int] = set()  # keys prefetched for the next step, to score accuracy
        self._nonexpert: dict[tuple[int, int], list[OpCost]] = {}
        self._expert: dict[int, OpCost] = {}

    def run(self) -> Records:
        self.env.process(self._replay())
        self.env.run()
        self.records.total_s = self.env.now
        self.records.flash_busy_s = self.flash.stats.busy_s
        if self.cache is not None:
            self.records.peak_cache_entries = self.cache.stats.peak_entries
        return self.records

    # -- costs, memoised: the same few values are asked for millions of times ---------------------
    def _nonexpert_cost(self, kind: int, context: int, layer: int) -> OpCost:
        by_step = self._nonexpert.get((kind, context))
        if by_step is None:  # every step at this context, priced at once
            table = self.scenario.costs.nonexpert_table(kind, np.array([context]))
            by_step = self._nonexpert[(kind, context)] = [table.op(0, step) for step in range(table.time_s.shape[1])]
        return by_step[layer]

    def _expert_cost(self, n_tokens: int) -> OpCost:
        cost = self._expert.get(n_tokens)
        if cost is None:
            cost = self.scenario.costs.expert_prefill(n_tokens)
            self._expert[n_tokens] = cost
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
        records = self.records
        lm_head = self.scenario.costs.lm_head
        timeline = self.timeline
        token_start = 0.0
        for step, kind in enumerate(kinds):
            if layers[step] == 0:
                token_start = self.env.now
                records.begin_pass(kind)
            end = self._step(step, kind, layers[step], contexts[step], keys, tokens, offsets[step], offsets[step + 1])
            if layers[step] == last_layer:
                head_start, end = self.compute.run(end, lm_head.time_s)
                records.add_op(kind, "lm_head", lm_head)
                records.end_pass(kind, end - token_start)
                if timeline is not None:
                    timeline.append(("lm_head", last_layer, head_start, end, "compute"))
                    timeline.append(("decode" if kind == DECODE else "prefill", -1, token_start, end, "pass"))
            yield self.env.timeout(end - self.env.now)

    def _step(self, step: int, kind: int, layer: int, context: int, keys: list[int], tokens: list[int],
              lo: int, hi: int) -> float:
        records, cache, compute, timeline = self.records, self.cache, self.compute, self.timeline
        nonexpert = self._nonexpert_cost(kind, context, layer)
        overhead_s = self.scenario.costs.layer_overhead_s
        layer_start, router_done = compute.run(self.env.now, nonexpert.time_s + overhead_s)
        records.add_op(kind, "nonexpert", nonexpert, overhead_s)
        if timeline is not None:
            timeline.append(("attention+router", layer, layer_start, router_done, "compute"))
        if lo == hi:
            return router_done

        step_keys = keys[lo:hi]
        pinned = set(step_keys)
        if self._prefetched:
            records.add_prefetch_outcome(len(self._prefetched & pinned), len(self._prefetched - pinned),
                                         self.scenario.costs.expert_bytes)
            self._prefetched = set()
        expert_bytes = self.scenario.costs.expert_bytes
        ready_at = []
        hits = late_hits = misses = 0
        for clock in range(lo, hi):
            key = keys[clock]
            ready = cache.ready_s.get(key)
            if ready is None:
                ready = self.flash.read(expert_bytes, router_done)
                # A prefill step may need more experts than the cache holds: it streams them, so
                # only the one being loaded is pinned; a decode step's top_k stay pinned together.
                cache.insert(key, clock, ready, pinned if kind == DECODE else {key})
                misses += 1
                if timeline is not None:
                    timeline.append((f"read expert {key % self.scenario.workload.n_experts}", layer, router_done,
                                     ready, "flash"))
            elif ready > router_done:
                late_hits += 1
            else:
                ready = router_done
                hits += 1
            cache.touch(key, clock)
            ready_at.append(ready)
        records.add_outcomes(kind, layer, hits, late_hits, misses, misses * expert_bytes)
        if self.prefetcher is not None:
            self._prefetch(step, layer, step_keys, pinned, router_done)

        # Experts compute in the order their weights arrive (hits first), each once the unit is free.
        if kind == DECODE:
            cost = self.scenario.costs.expert_decode
            end = router_done
            for ready in sorted(ready_at):
                start, end = compute.run(ready, cost.time_s)
                if timeline is not None:
                    timeline.append(("expert", layer, start, end, "compute"))
            records.add_op(kind, "expert", cost, count=hi - lo)
            expert_compute_s = (hi - lo) * cost.time_s
        else:
            expert_compute_s = 0.0
            for ready, clock in sorted(zip(ready_at, range(lo, hi))):
                cost = self._expert_cost(tokens[clock])
                start, end = compute.run(ready, cost.time_s)
                if timeline is not None:
                    timeline.append(("expert", layer, start, end, "compute"))
                records.add_op(kind, "expert", cost)
                expert_compute_s += cost.time_s
        records.add_stall(kind, end - router_done - expert_compute_s)
        return end

    def _prefetch(self, step: int, layer: int, step_keys: list[int], pinned: set[int], issue_s: float) -> None:
        step_clock = self.scenario.workload.step_offsets[step + 1]  # the next step's first access: "due now"
        cache, expert_bytes = self.cache, self.scenario.costs.expert_bytes
        guess = self.prefetcher.predict(step, layer, step_keys)
        protected = pinned | set(guess)
        for key in guess:
            if key in cache or not cache.can_insert_without(key, protected):
                continue
            ready = self.flash.read(expert_bytes, issue_s)
            cache.insert(key, step_clock, ready, protected, prefetch=True)
            self.records.add_prefetch_issue(expert_bytes)
            if self.timeline is not None:
                self.timeline.append((f"prefetch expert {key % self.scenario.workload.n_experts}", layer + 1,
                                      issue_s, ready, "flash"))
            self._prefetched.add(key)


def simulate(scenario: Scenario, timeline: list | None = None) -> Records:
    """Run the discrete-event simulation of `scenario`; deterministic (no randomness at all).
    `timeline`, when given, receives every operation (see the module's docstring)."""
    return Simulation(scenario, timeline).run()

