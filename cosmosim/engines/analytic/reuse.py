"""Which expert accesses hit the DRAM cache: one pass over the access stream, no event queue.

The simulator (cosmosim/sim) decides hit or miss access by access, with one twist that matters
here: a decode step pins its top_k experts until it ends, so a miss never evicts one of the step's
own experts, not even one the step has not reached yet. A prefill step streams its experts and pins
only the one being loaded. This module reproduces those decisions exactly (docs/analytic-model.md
has the proofs):

- LRU (`lru_depths`): Mattson et al. (1970) stack processing. The depth of a key in the recency
  stack, taken when the simulator decides (at the start of a decode step, at the access itself in a
  prefill step), gives the hits of every cache size at once: a cache of c entries hits exactly the
  accesses with depth < c. `kactive` is per-layer LRU with c = top_k.
- Belady (`belady_hits`): one pass of the offline optimum (evict the key used again furthest in the
  future), under the same pinning, for one cache size.

Keys are `layer * n_experts + expert`; with per-layer partitions, each layer is its own cache.
"""

from __future__ import annotations

import heapq

import numpy as np

from cosmosim.workload.stream import DECODE, Workload

COLD = np.iinfo(np.int32).max  # the depth of a key's first access: a miss at every cache size


def _partition_of_steps(workload: Workload, per_layer: bool) -> list[int]:
    return workload.step_layer.tolist() if per_layer else [0] * workload.step_kind.size


def lru_depths(workload: Workload, per_layer: bool = False) -> np.ndarray:
    """int32 [accesses]: each access's LRU stack depth when the simulator decides (COLD: first access).

    Decode step: the depths of all its keys are read before any of them moves, because pinning makes
    the step's misses evict only keys outside the step (so a resident key of the step stays, whatever
    its depth); then the keys move to the top in gate order, as the simulator touches them. Prefill
    step: plain LRU, access by access.
    """
    keys = workload.access_key.tolist()
    offsets = workload.step_offsets.tolist()
    partitions = _partition_of_steps(workload, per_layer)
    stacks: dict[int, list[int]] = {}  # partition -> keys, most recently used first
    depths = [COLD] * len(keys)
    for step, kind in enumerate(workload.step_kind.tolist()):
        lo, hi = offsets[step], offsets[step + 1]
        if lo == hi:
            continue
        stack = stacks.setdefault(partitions[step], [])
        step_keys = keys[lo:hi]
        if kind == DECODE:
            found = []
            for clock, key in enumerate(step_keys, lo):
                try:
                    depths[clock] = depth = stack.index(key)
                except ValueError:
                    continue
                found.append(depth)
            for depth in sorted(found, reverse=True):
                del stack[depth]
            stack[0:0] = step_keys[::-1]  # the last key touched is the most recent
        else:
            for clock, key in enumerate(step_keys, lo):
                try:
                    depths[clock] = depth = stack.index(key)
                    del stack[depth]
                except ValueError:
                    pass
                stack.insert(0, key)
    return np.array(depths, dtype=np.int32)


def belady_hits(workload: Workload, capacity: int, per_layer: bool = False) -> np.ndarray:
    """bool [accesses]: hits of Belady's MIN with `capacity` entries (per partition when per_layer).

    A resident key's priority is its next use (`workload.next_use`); a miss into a full partition
    evicts the resident key used again furthest in the future. Within a decode step the step's keys
    are never victims: their priorities move on only once the step's misses are served, so until
    then each is due within the step, sooner than any key outside it. With capacity >= top_k a full
    partition always holds a key outside the step, so that is the simulator's pinning exactly.
    Ties (keys never used again) do not change any hit.
    """
    keys = workload.access_key.tolist()
    next_use = workload.next_use.tolist()
    offsets = workload.step_offsets.tolist()
    partitions = _partition_of_steps(workload, per_layer)
    resident: dict[int, set[int]] = {}
    heaps: dict[int, list[tuple[int, int]]] = {}  # (-next use, key); stale entries skipped lazily
    due: dict[int, int] = {}  # resident key -> its next use
    hits = np.zeros(len(keys), dtype=bool)

    def evict(cache: set[int], heap: list[tuple[int, int]]) -> None:
        while True:
            negative_next, key = heapq.heappop(heap)
            if key in cache and due[key] == -negative_next:
                cache.remove(key)
                return

    for step, kind in enumerate(workload.step_kind.tolist()):
        lo, hi = offsets[step], offsets[step + 1]
        if lo == hi:
            continue
        cache = resident.setdefault(partitions[step], set())
        heap = heaps.setdefault(partitions[step], [])
        if kind == DECODE:
            for clock in range(lo, hi):
                key = keys[clock]
                if key in cache:
                    hits[clock] = True
                    continue
                if len(cache) >= capacity:
                    evict(cache, heap)
                cache.add(key)
            for clock in range(lo, hi):
                due[keys[clock]] = next_use[clock]
                heapq.heappush(heap, (-next_use[clock], keys[clock]))
        else:
            for clock in range(lo, hi):
                key = keys[clock]
                if key in cache:
                    hits[clock] = True
                else:
                    if len(cache) >= capacity:
                        evict(cache, heap)
                    cache.add(key)
                due[key] = next_use[clock]
                heapq.heappush(heap, (-next_use[clock], key))
    return hits


def distinct_keys(workload: Workload, per_layer: bool = False) -> np.ndarray:
    """int [partitions]: keys accessed at least once, per partition (one partition when global).

    Without prefetch a partition evicts only when full, so the most entries it ever holds is
    min(its capacity, this count): the `expert_cache` part of peak DRAM.
    """
    seen = np.unique(workload.access_key)
    if not per_layer:
        return np.array([seen.size])
    return np.bincount(seen // workload.n_experts, minlength=workload.n_layers)
