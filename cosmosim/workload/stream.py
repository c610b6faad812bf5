"""From a routing trace to the demand access stream that every engine replays.

Each trace sequence is one request: its first `prompt_tokens` tokens are the prompt (one prefill
pass), the rest are decoded one at a time. A *step* is one layer of one pass; its accesses are the
experts that step needs, in a fixed order:

- decode step: the token's top-k experts at that layer, by descending gate;
- prefill step: every expert any prompt token chose at that layer, in order of first use (token
  order, then gate order), each once, with the number of prompt tokens routed to it.

The first `warmup_fraction` of the sequences (rounded up) are not replayed: policies and
prefetchers learn their statistics there, so every policy starts from an empty cache on the same
remaining sequences. The schema is in docs/simulator.md.

`access_stream` flattens a workload into one row per access (step, key, object size): the stream
that `cosmosim trace export` writes for other cache simulators and that the tests' reference caches
replay, so all of them read the one stream the engines replay.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numba
import numpy as np

from cosmosim.errors import InputError
from cosmosim.inputs.trace import Trace

PREFILL, DECODE = 0, 1


@dataclass(frozen=True)
class Workload:
    n_layers: int  # of the target architecture
    n_experts: int
    top_k: int
    # Steps, in replay order.
    step_kind: np.ndarray  # int8 [S]: PREFILL or DECODE
    step_layer: np.ndarray  # int16 [S]
    step_context: np.ndarray  # int32 [S]: decode: tokens attended over; prefill: prompt length
    step_offsets: np.ndarray  # int64 [S + 1]: the step's accesses are [offsets[s], offsets[s+1])
    # Demand accesses, in replay order; the index of an access is its `clock`.
    access_key: np.ndarray  # int32 [A]: layer * n_experts + expert
    access_tokens: np.ndarray  # int32 [A]: tokens this expert processes in the step
    next_use: np.ndarray  # int64 [A]: clock of the next access to the same key; A when none
    # What the policies and prefetchers may learn from (warm-up sequences only).
    warmup_usage: np.ndarray  # int64 [L * E]
    warmup_cooccurrence: np.ndarray  # int64 [L - 1, E, E]: expert at layer l -> expert at layer l+1
    # Bookkeeping.
    n_requests: int
    n_prompt_tokens: int
    n_decode_tokens: int
    warmup_sequences: int
    layer_map: np.ndarray  # int [L]: target layer -> trace layer

    @property
    def n_accesses(self) -> int:
        return int(self.access_key.size)


def layer_map(trace_layers: int, target_layers: int) -> np.ndarray:
    """Target layer i replays trace layer floor(i * L_trace / L_target)."""
    return (np.arange(target_layers) * trace_layers) // target_layers


def next_use_of(keys: np.ndarray) -> np.ndarray:
    """For each access, the index of the next access to the same key (len(keys) when none)."""
    keys = np.ascontiguousarray(keys, dtype=np.int64)
    return _next_use_kernel(keys, int(keys.max(initial=-1)) + 1)


@numba.njit(cache=True)
def _next_use_kernel(keys: np.ndarray, n_keys: int) -> np.ndarray:
    """One backward pass: each access's next use is where its key was last seen from the end."""
    n = keys.size
    following = np.empty(n, dtype=np.int64)
    seen = np.full(n_keys, n, dtype=np.int64)
    for clock in range(n - 1, -1, -1):
        following[clock] = seen[keys[clock]]
        seen[keys[clock]] = clock
    return following


def _prefill_keys(experts: np.ndarray, layer: int, n_experts: int) -> tuple[list[int], list[int]]:
    """Unique experts of a prompt at one layer in order of first use (token order, then gate order), and
    tokens routed to each. Plain Python: a prompt is a few dozen choices, where numpy's call overhead wins."""
    flat = experts.reshape(-1).tolist()
    counts = Counter(flat)
    first_use = list(dict.fromkeys(flat))
    return [layer * n_experts + e for e in first_use], [counts[e] for e in first_use]


def build_workload(trace: Trace, target_layers: int, *, prompt_tokens: int, context_len: int,
                   max_tokens: int | None = None, warmup_fraction: float = 0.1) -> Workload:
    n_experts, top_k = trace.n_experts, trace.top_k
    mapping = layer_map(trace.n_layers, target_layers)
    experts = trace.experts[:, mapping, :].astype(np.int64)  # [T, L_target, K]
    sequences = trace.sequences()
    warmup = math.ceil(len(sequences) * warmup_fraction)
    replay = [(a, b) for a, b in sequences[warmup:] if b - a > prompt_tokens]
    if not replay:
        raise InputError(f"{trace.path or 'trace'}: no sequence after the warm-up part is longer than "
                         f"--prompt-tokens={prompt_tokens}; use fewer prompt tokens or a longer trace")
    if max_tokens is not None:
        kept, total = [], 0
        for a, b in replay:
            if total >= max_tokens:
                break
            b = min(b, a + max(max_tokens - total, prompt_tokens + 1))
            kept.append((a, b))
            total += b - a
        replay = kept

    layer_offset = (np.arange(target_layers) * n_experts)[None, :, None]
    kinds, layers, contexts, counts, keys, tokens = [], [], [], [], [], []
    for a, b in replay:
        for layer in range(target_layers):
            prefill_keys, prefill_tokens = _prefill_keys(experts[a:a + prompt_tokens, layer], layer, n_experts)
            keys.append(np.asarray(prefill_keys))
            tokens.append(np.asarray(prefill_tokens))
            counts.append(len(prefill_keys))
        kinds.append(np.full(target_layers, PREFILL))
        layers.append(np.arange(target_layers))
        contexts.append(np.full(target_layers, min(prompt_tokens, context_len)))
        n_decode = b - a - prompt_tokens
        decode = experts[a + prompt_tokens:b] + layer_offset  # [n_decode, L, K]
        keys.append(decode.reshape(-1))
        tokens.append(np.ones(decode.size, dtype=np.int64))
        counts.extend([top_k] * (n_decode * target_layers))
        kinds.append(np.full(n_decode * target_layers, DECODE))
        layers.append(np.tile(np.arange(target_layers), n_decode))
        # Decoding the token at position p attends over p + 1 cached tokens, bounded by the context.
        positions = np.arange(prompt_tokens, b - a)
        contexts.append(np.repeat(np.minimum(positions + 1, context_len), target_layers))

    access_key = np.concatenate(keys).astype(np.int32)
    warm_experts = experts[:sequences[warmup - 1][1]] if warmup else experts[:0]
    usage = np.bincount((warm_experts + layer_offset).reshape(-1), minlength=target_layers * n_experts)
    cooccurrence = np.zeros((max(target_layers - 1, 0), n_experts, n_experts), dtype=np.int64)
    for layer in range(target_layers - 1):
        here = np.repeat(warm_experts[:, layer, :], top_k, axis=1).reshape(-1)
        there = np.tile(warm_experts[:, layer + 1, :], (1, top_k)).reshape(-1)
        np.add.at(cooccurrence[layer], (here, there), 1)
    return Workload(
        n_layers=target_layers, n_experts=n_experts, top_k=top_k,
        step_kind=np.concatenate(kinds).astype(np.int8),
        step_layer=np.concatenate(layers).astype(np.int16),
        step_context=np.concatenate(contexts).astype(np.int32),
        step_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        access_key=access_key,
        access_tokens=np.concatenate(tokens).astype(np.int32),
        next_use=next_use_of(access_key),
        warmup_usage=usage.astype(np.int64),
        warmup_cooccurrence=cooccurrence,
        n_requests=len(replay),
        n_prompt_tokens=len(replay) * prompt_tokens,
        n_decode_tokens=sum(b - a - prompt_tokens for a, b in replay),
        warmup_sequences=warmup,
        layer_map=mapping,
    )


@dataclass(frozen=True)
class AccessStream:
    """A workload's demand accesses, one row per access, in replay order."""

    time: np.ndarray  # int64 [A]: the step the access belongs to; one step's accesses share it
    key: np.ndarray  # int64 [A]: layer * n_experts + expert
    decode: np.ndarray  # bool [A]: True in a decode step, False in a prefill step
    size: int  # bytes of every object: the cache holds experts of one size

    def steps(self) -> list[tuple[bool, list[int]]]:
        """(decode?, keys) of each step with accesses, in replay order."""
        starts = np.flatnonzero(np.diff(self.time, prepend=-1))
        keys = np.split(self.key, starts[1:])
        return [(bool(self.decode[start]), group.tolist()) for start, group in zip(starts.tolist(), keys)]


def access_stream(workload: Workload, size: int = 1) -> AccessStream:
    """The accesses of `workload` in replay order, each object `size` bytes (1: a cache counted in experts)."""
    step = np.repeat(np.arange(workload.step_kind.size, dtype=np.int64), np.diff(workload.step_offsets))
    return AccessStream(time=step, key=workload.access_key.astype(np.int64),
                        decode=workload.step_kind[step] == DECODE, size=size)
