"""Expert-cache eviction policies: one small class each, behind one interface.

The cache (`cosmosim.device.cache.ExpertCache`) decides *when* to evict (a miss into a full cache);
a policy decides *which* entry goes. Keys are ints, `layer * n_experts + expert`. `clock` is the
index of the demand access being served, the same in every engine, so offline policies (Belady)
can look ahead in the access stream.

To add a policy: subclass `CachePolicy`, implement the hooks it needs and `victim`, and add it
to `POLICIES`.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass
from typing import ClassVar

import numpy as np


@dataclass(frozen=True)
class PolicyContext:
    """What a policy may know: the cache's size and the statistics learned on the warm-up part."""

    capacity: int  # entries in this policy's partition
    n_experts: int
    top_k: int
    next_use: np.ndarray  # [accesses] clock of the next demand access to the same key (len = never)
    warmup_usage: np.ndarray  # [layers * n_experts] accesses per key in the warm-up sequences
    access_key: np.ndarray | None = None  # [accesses] the demand stream; needed only to prefetch under belady
    key_bytes: np.ndarray | None = None  # [layers * n_experts] each key's size when they differ; capacity is then bytes


def _lazy_heap_victim(heap: list[tuple], is_current, pinned: set[int]) -> int | None:
    """The key (last field) of the smallest current, unpinned heap entry, left in the heap.

    Policies push a new entry whenever a key's priority changes instead of updating in place;
    `is_current(entry)` tells the live entry from stale ones, which are dropped on the way.
    """
    kept, found = [], None
    while heap:
        entry = heapq.heappop(heap)
        if not is_current(entry):
            continue
        kept.append(entry)
        if entry[-1] not in pinned:
            found = entry[-1]
            break
    for entry in kept:
        heapq.heappush(heap, entry)
    return found


class CachePolicy:
    name: ClassVar[str]
    per_layer_partitions: ClassVar[bool] = False  # True: one cache of `capacity_per_layer` per layer
    needs_cache_size: ClassVar[bool] = True  # False: the policy fixes the size itself

    def __init__(self, context: PolicyContext) -> None:
        self.context = context

    def on_access(self, key: int, clock: int) -> None:
        """A demand access to a cached key (a hit, or right after the miss inserted it)."""

    def on_insert(self, key: int, clock: int) -> None:
        """`key` entered the cache on a demand miss at `clock` (an `on_access` follows)."""

    def on_prefetch(self, key: int, clock: int) -> None:
        """`key` entered the cache by a prefetch for the step whose first access is `clock`."""
        self.on_insert(key, clock)

    def on_evict(self, key: int) -> None:
        """`key` left the cache."""

    def victim(self, pinned: set[int]) -> int | None:
        """The cached key to evict, never one in `pinned`; None when every entry is pinned."""
        raise NotImplementedError

    def keeps(self, key: int) -> bool:
        """Whether the policy itself never evicts `key` (beside the step's pinned ones)."""
        return False


class LRU(CachePolicy):
    """Evict the least recently used entry."""

    name = "lru"

    def __init__(self, context: PolicyContext) -> None:
        super().__init__(context)
        self._order: OrderedDict[int, None] = OrderedDict()  # oldest first

    def on_access(self, key: int, clock: int) -> None:
        self._order.move_to_end(key)

    def on_insert(self, key: int, clock: int) -> None:
        self._order[key] = None

    def on_evict(self, key: int) -> None:
        del self._order[key]

    def victim(self, pinned: set[int]) -> int | None:
        return next((key for key in self._order if key not in pinned), None)


class KActive(LRU):
    """The CoSMoEs paper's offload policy: per layer only the current token's k experts are
    resident, and a change of selection swaps experts in from flash. That is exactly a per-layer
    cache of k entries: whatever LRU order, the victims are the experts not selected now."""

    name = "kactive"
    per_layer_partitions = True
    needs_cache_size = False


class LFU(CachePolicy):
    """Evict the entry with the fewest accesses since the simulation started; ties go to the least
    recently used. A heap with lazy deletion keeps eviction O(log n)."""

    name = "lfu"

    def __init__(self, context: PolicyContext) -> None:
        super().__init__(context)
        self._count: dict[int, int] = {}
        self._last: dict[int, int] = {}
        self._heap: list[tuple[int, int, int]] = []  # (count, last use, key), stale entries allowed

    def _touch(self, key: int, clock: int) -> None:
        self._last[key] = clock
        heapq.heappush(self._heap, (self._count[key], clock, key))

    def on_access(self, key: int, clock: int) -> None:
        self._count[key] += 1
        self._touch(key, clock)

    def on_insert(self, key: int, clock: int) -> None:
        self._count.setdefault(key, 0)  # counts survive eviction: "since the start"
        self._touch(key, clock)

    def on_evict(self, key: int) -> None:
        del self._last[key]

    def victim(self, pinned: set[int]) -> int | None:
        return _lazy_heap_victim(self._heap, lambda e: self._last.get(e[2]) == e[1] and self._count[e[2]] == e[0], pinned)


class Belady(CachePolicy):
    """Evict the entry whose next demand access is furthest away. With the step's experts pinned this is
    the offline optimum of the simulator's execution model (docs/simulator.md, tests/test_belady_bound.py)
    while every expert has one size; with experts of two sizes (a byte-counting cache) it is only a
    heuristic: the optimum would weigh each victim's bytes, a knapsack problem."""

    name = "belady"

    def __init__(self, context: PolicyContext) -> None:
        super().__init__(context)
        self._next: dict[int, int] = {}
        self._heap: list[tuple[int, int]] = []  # (-next use, key), stale entries allowed
        self._clocks_by_key: dict[int, np.ndarray] | None = None  # built on the first prefetch

    def on_access(self, key: int, clock: int) -> None:
        next_use = int(self.context.next_use[clock])
        self._next[key] = next_use
        heapq.heappush(self._heap, (-next_use, key))

    def on_insert(self, key: int, clock: int) -> None:
        self._next[key] = clock  # the demand access at `clock` follows and sets the real next use

    def on_prefetch(self, key: int, clock: int) -> None:
        # A guess may be wrong: its priority is the key's true next demand access from `clock` on.
        if self._clocks_by_key is None:
            keys = self.context.access_key
            order = np.argsort(keys, kind="stable")
            bounds = np.searchsorted(keys[order], np.arange(keys.max(initial=-1) + 2))
            self._clocks_by_key = {key: order[a:b] for key, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))}
        clocks = self._clocks_by_key.get(key, ())
        index = int(np.searchsorted(clocks, clock)) if len(clocks) else 0
        next_use = int(clocks[index]) if index < len(clocks) else len(self.context.next_use)
        self._next[key] = next_use
        heapq.heappush(self._heap, (-next_use, key))

    def on_evict(self, key: int) -> None:
        del self._next[key]

    def victim(self, pinned: set[int]) -> int | None:
        return _lazy_heap_victim(self._heap, lambda e: self._next.get(e[1]) == -e[0], pinned)


class Pinned(LRU):
    """Pin the experts used most in the warm-up part (all but top_k entries of the cache; counting
    bytes, as many of the most used as fit beside top_k of the largest); once loaded they stay. The
    rest of the cache serves everything else in LRU order."""

    name = "pinned"

    def __init__(self, context: PolicyContext) -> None:
        super().__init__(context)
        # Stable sort: ties go to the lower key, so the choice is deterministic.
        ranked = np.argsort(-context.warmup_usage, kind="stable")
        if context.key_bytes is None:
            n_pinned = max(context.capacity - context.top_k, 0)
        else:
            budget = context.capacity - context.top_k * int(context.key_bytes.max())
            n_pinned = int(np.searchsorted(np.cumsum(context.key_bytes[ranked]), budget, side="right"))
        self.pinned_keys = frozenset(int(key) for key in ranked[:n_pinned])

    def victim(self, pinned: set[int]) -> int | None:
        return next((key for key in self._order if key not in pinned and key not in self.pinned_keys), None)

    def keeps(self, key: int) -> bool:
        return key in self.pinned_keys


POLICIES: dict[str, type[CachePolicy]] = {policy.name: policy for policy in (LRU, LFU, Belady, Pinned, KActive)}
