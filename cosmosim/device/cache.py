"""The DRAM expert cache: which (layer, expert) entries are resident, and when each becomes usable.

When every expert has one size a byte budget is a count, and the cache counts entries. Given each
key's size (`key_bytes`: routed experts at two bit-widths), it counts bytes instead: a miss evicts
the policy's victims, one after another, until the new entry fits. The cache is global over layers,
or split into equal per-layer partitions. An entry being read from flash by a prefetch is
resident but usable only from `ready_s`; an access before then is a *late hit*. Entries in use by the
step being computed are pinned and never evicted, which is why a cache needs at least top_k entries (top_k of its largest, counting bytes).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from cosmosim.device.policies import CachePolicy, PolicyContext


@dataclass
class CacheStats:
    evictions: int = 0
    peak_entries: int = 0


class ExpertCache:
    def __init__(self, policy_class: type[CachePolicy], capacity: int, n_layers: int, context: PolicyContext,
                 per_layer: bool = False, key_bytes: list[int] | None = None) -> None:
        """`capacity`: entries, or bytes when `key_bytes` (each key's size) is given."""
        n_experts = context.n_experts
        n_partitions = n_layers if per_layer else 1
        per_partition = capacity // n_partitions
        largest = context.top_k * (1 if key_bytes is None else max(key_bytes))
        if per_partition < largest:  # scenario.resolve_cache tells the user; here it is a caller's bug
            raise ValueError(f"ExpertCache: {per_partition} per partition < {largest} (top_k={context.top_k} of the largest)")
        self._key_bytes = key_bytes
        self.capacity = per_partition * n_partitions
        self.n_experts = n_experts
        self._per_layer = per_layer
        self._capacity = per_partition
        self._policies: list[CachePolicy] = []
        for partition in range(n_partitions):
            usage = context.warmup_usage
            if per_layer:  # a partition's policy learns only from its own layer's keys
                usage = np.zeros_like(usage)
                keys = slice(partition * n_experts, (partition + 1) * n_experts)
                usage[keys] = context.warmup_usage[keys]
            self._policies.append(policy_class(replace(context, capacity=per_partition, warmup_usage=usage)))
        self._used = [0] * n_partitions  # entries, or bytes
        self.ready_s: dict[int, float] = {}  # resident key -> time its bytes are in DRAM
        self.stats = CacheStats()

    def _partition(self, key: int) -> int:
        return key // self.n_experts if self._per_layer else 0

    def __contains__(self, key: int) -> bool:
        return key in self.ready_s

    def touch(self, key: int, clock: int) -> None:
        """A demand access to a resident key."""
        self._policies[self._partition(key)].on_access(key, clock)

    def insert(self, key: int, clock: int, ready_s: float, pinned: set[int], prefetch: bool = False) -> int | None:
        """Make room if needed and add `key` (on a demand miss, or by a prefetch for the step starting
        at `clock`); return the evicted key, if any.

        Raises RuntimeError when every entry is pinned: the engine pins at most top_k entries per
        partition and checks capacity >= top_k, so this would be a bug, not bad input.
        """
        partition = self._partition(key)
        policy = self._policies[partition]
        evicted = None  # the last victim: with one size of expert, the only one
        size = 1 if self._key_bytes is None else self._key_bytes[key]
        while self._used[partition] + size > self._capacity:
            evicted = policy.victim(pinned)
            if evicted is None:
                raise RuntimeError("expert cache: every entry is pinned, nothing to evict")
            policy.on_evict(evicted)
            del self.ready_s[evicted]
            self._used[partition] -= 1 if self._key_bytes is None else self._key_bytes[evicted]
            self.stats.evictions += 1
        if prefetch:
            policy.on_prefetch(key, clock)
        else:
            policy.on_insert(key, clock)
        self.ready_s[key] = ready_s
        self._used[partition] += size
        entries = len(self.ready_s)
        if entries > self.stats.peak_entries:
            self.stats.peak_entries = entries
        return evicted

    def can_insert_without(self, key: int, pinned: set[int]) -> bool:
        """Whether `key` fits, evicting only unpinned entries (a prefetch may not push out work in use)."""
        partition = self._partition(key)
        if self._key_bytes is None:
            return self._used[partition] < self._capacity or self._policies[partition].victim(pinned) is not None
        room = self._capacity - self._used[partition] - self._key_bytes[key]
        if room >= 0:
            return True
        policy = self._policies[partition]
        evictable = sum(self._key_bytes[other] for other in self.ready_s if self._partition(other) == partition
                        and other not in pinned and not policy.keeps(other))
        return evictable >= -room
