"""Which expert accesses hit the DRAM cache: one pass over the access stream, no event queue.

The simulator (cosmosim/engines/des/) decides hit or miss access by access, with one twist that matters
here: a decode step pins its top_k experts until it ends, so a miss never evicts one of the step's
own experts, not even one the step has not reached yet. A prefill step streams its experts and pins
only the one being loaded. This module reproduces those decisions exactly (docs/analytic-model.md
has the proofs):

- LRU (`lru_depths`): Mattson et al. (1970) stack processing. The depth of a key in the recency
  stack, taken when the simulator decides (at the start of a decode step, at the access itself in a
  prefill step), gives the hits of every cache size at once: a cache of c entries hits exactly the
  accesses with depth < c. `kactive` is per-layer LRU with c = top_k.
- LRU over experts of two sizes (`lru_bytes_through`): the same pass sums the bytes of the keys
  down to each one; a cache of C bytes that evicts until a miss fits hits exactly the accesses with
  at most C bytes through them. Belady has no such pass there: with sizes it is only a heuristic.
- Belady (`belady_hits`): one pass of the offline optimum (evict the key used again furthest in the
  future), under the same pinning, for one cache size.

Keys are `layer * n_experts + expert`; with per-layer partitions, each layer is its own cache.

Both passes are loops over every access, compiled with numba (`_lru_kernel`, `_belady_kernel`): the
same steps a Python loop would take, about a hundred times faster, which is what a sweep over new
traces waits on. The first call in a process compiles them (cached on disk after that).
"""

from __future__ import annotations

import numba
import numpy as np

from cosmosim.workload.stream import DECODE, Workload

COLD = np.iinfo(np.int32).max  # the depth of a key's first access: a miss at every cache size
COLD_BYTES = np.iinfo(np.int64).max  # likewise, in bytes


def _partitions(workload: Workload, per_layer: bool) -> tuple[np.ndarray, int, int]:
    """(partition of each step, number of partitions, keys per partition)."""
    if per_layer:
        return workload.step_layer.astype(np.int64), workload.n_layers, workload.n_experts
    return np.zeros(workload.step_kind.size, np.int64), 1, workload.n_layers * workload.n_experts


@numba.njit(cache=True)
def _find(stack: np.ndarray, size: int, key: int, key_bytes: np.ndarray) -> tuple[int, int]:
    """(depth of `key` in the stack or -1, bytes of the keys down to it: its own and those above)."""
    through = 0
    for depth in range(size):
        through += key_bytes[stack[depth]]
        if stack[depth] == key:
            return depth, through
    return -1, through


@numba.njit(cache=True)
def _move_to_top(stack: np.ndarray, size: int, depth: int, key: int) -> int:
    """Put `key` on top: from `depth` if it is there (depth >= 0), else as a new entry. Returns the size."""
    if depth < 0:
        depth, size = size, size + 1
    for i in range(depth, 0, -1):
        stack[i] = stack[i - 1]
    stack[0] = key
    return size


@numba.njit(cache=True)
def _lru_kernel(keys, offsets, kinds, partitions, n_partitions, partition_keys, decode, key_bytes):
    stacks = np.empty((n_partitions, partition_keys), np.int64)  # keys, most recently used first
    sizes = np.zeros(n_partitions, np.int64)
    depths = np.full(keys.size, COLD, np.int32)
    through = np.full(keys.size, COLD_BYTES, np.int64)
    for step in range(kinds.size):
        lo, hi = offsets[step], offsets[step + 1]
        stack, p = stacks[partitions[step]], partitions[step]
        if kinds[step] == decode:
            for clock in range(lo, hi):  # every depth before any key moves
                depth, nbytes = _find(stack, sizes[p], keys[clock], key_bytes)
                if depth >= 0:
                    depths[clock], through[clock] = depth, nbytes
            for clock in range(lo, hi):  # then to the top in gate order: the last touched is the most recent
                depth = _find(stack, sizes[p], keys[clock], key_bytes)[0]
                sizes[p] = _move_to_top(stack, sizes[p], depth, keys[clock])
        else:
            for clock in range(lo, hi):
                depth, nbytes = _find(stack, sizes[p], keys[clock], key_bytes)
                if depth >= 0:
                    depths[clock], through[clock] = depth, nbytes
                sizes[p] = _move_to_top(stack, sizes[p], depth, keys[clock])
    return depths, through


def lru_depths(workload: Workload, per_layer: bool = False) -> np.ndarray:
    """int32 [accesses]: each access's LRU stack depth when the simulator decides (COLD: first access).

    Decode step: the depths of all its keys are read before any of them moves, because pinning makes
    the step's misses evict only keys outside the step (so a resident key of the step stays, whatever
    its depth); then the keys move to the top in gate order, as the simulator touches them. Prefill
    step: plain LRU, access by access.
    """
    return _lru_pass(workload, per_layer, np.ones(workload.n_layers * workload.n_experts, np.int64))[0]


def lru_bytes_through(workload: Workload, key_bytes: np.ndarray, per_layer: bool = False) -> np.ndarray:
    """int64 [accesses]: for experts of different sizes (`key_bytes` per key), the bytes of each access's key and
    of every key above it in the LRU stack when the simulator decides (COLD_BYTES: first access). A cache of
    C bytes that evicts in LRU order until a miss fits hits exactly the accesses with at most C bytes
    through them: its contents are always the longest prefix of the stack that fits (docs/analytic-model.md)."""
    return _lru_pass(workload, per_layer, np.asarray(key_bytes, np.int64))[1]


def _lru_pass(workload: Workload, per_layer: bool, key_bytes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    partitions, n_partitions, partition_keys = _partitions(workload, per_layer)
    return _lru_kernel(workload.access_key.astype(np.int64), workload.step_offsets.astype(np.int64),
                       workload.step_kind.astype(np.int64), partitions, n_partitions, partition_keys, DECODE,
                       key_bytes)


@numba.njit(cache=True)
def _belady_kernel(keys, next_use, offsets, kinds, partitions, partition_keys, per_layer, capacity, n_keys, decode):
    resident = np.zeros(n_keys, np.bool_)
    due = np.full(n_keys, -1, np.int64)  # a resident key's next use; -1 until first seen
    held = np.zeros(partitions.max() + 1 if partitions.size else 1, np.int64)
    hits = np.zeros(keys.size, np.bool_)
    for step in range(kinds.size):
        lo, hi = offsets[step], offsets[step + 1]
        p = partitions[step]
        first = p * partition_keys if per_layer else 0
        for clock in range(lo, hi):
            key = keys[clock]
            if resident[key]:
                hits[clock] = True
            else:
                if held[p] >= capacity:
                    # Evict the resident key used again furthest ahead (the smallest such key on a tie).
                    victim, furthest = -1, -2
                    for other in range(first, first + partition_keys):
                        if resident[other] and due[other] > furthest:
                            victim, furthest = other, due[other]
                    resident[victim] = False
                    held[p] -= 1
                resident[key] = True
                held[p] += 1
            if kinds[step] != decode:
                due[key] = next_use[clock]  # a prefill step streams: its keys move on at once
        if kinds[step] == decode:
            for clock in range(lo, hi):
                due[keys[clock]] = next_use[clock]
    return hits


def belady_hits(workload: Workload, capacity: int, per_layer: bool = False) -> np.ndarray:
    """bool [accesses]: hits of Belady's MIN with `capacity` entries (per partition when per_layer).

    A resident key's priority is its next use (`workload.next_use`); a miss into a full partition
    evicts the resident key used again furthest in the future. Within a decode step the step's keys
    are never victims: their priorities move on only once the step's misses are served, so until
    then each is due within the step, sooner than any key outside it (a key seen for the first time
    has no priority yet, the lowest). With capacity >= top_k a full partition always holds a key
    outside the step, so that is the simulator's pinning exactly. Ties (keys never used again) do not
    change any hit.
    """
    partitions, _, partition_keys = _partitions(workload, per_layer)
    return _belady_kernel(workload.access_key.astype(np.int64), workload.next_use.astype(np.int64),
                          workload.step_offsets.astype(np.int64), workload.step_kind.astype(np.int64), partitions,
                          partition_keys, per_layer, int(capacity), workload.n_layers * workload.n_experts, DECODE)


def distinct_keys(workload: Workload, per_layer: bool = False) -> np.ndarray:
    """int [partitions]: keys accessed at least once, per partition (one partition when global).

    Without prefetch a partition evicts only when full, so the most entries it ever holds is
    min(its capacity, this count): the `expert_cache` part of peak DRAM.
    """
    seen = np.unique(workload.access_key)
    if not per_layer:
        return np.array([seen.size])
    return np.bincount(seen // workload.n_experts, minlength=workload.n_layers)
