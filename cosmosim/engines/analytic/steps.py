"""The workload's steps regrouped for array arithmetic: both analytic entry points start here.

A workload (cosmosim/workload.py) lists steps in replay order. Every pass is `n_layers`
consecutive steps, so decode steps fold into [decode tokens, layers] and prefill steps into
[requests, layers]. A decode step has exactly top_k accesses; a prefill step has a varying number
(the distinct experts its prompt chose), padded here to a fixed width.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cosmosim.workload.stream import DECODE, Workload


@dataclass(frozen=True)
class StepArrays:
    n_layers: int
    top_k: int
    n_tokens: int  # decode tokens
    n_requests: int
    decode_context: np.ndarray  # int [tokens, layers]: tokens attended over
    decode_clock: np.ndarray  # int [tokens, layers, top_k]: index of each decode access
    decode_layer_of_access: np.ndarray  # int [tokens * layers * top_k]
    prefill_context: int  # the prompt length (bounded by the context), the same for every request
    prefill_clock: np.ndarray  # int [requests * layers, width]: access index, -1 where padded
    prefill_tokens: np.ndarray  # int [requests * layers, width]: prompt tokens routed there, 0 where padded

    @property
    def prefill_valid(self) -> np.ndarray:
        return self.prefill_clock >= 0

    def decode_misses(self, hits: np.ndarray) -> np.ndarray:
        """int [tokens, layers]: misses of each decode step, from per-access hits [accesses]."""
        return self.top_k - hits[self.decode_clock].sum(axis=2)

    def prefill_misses(self, hits: np.ndarray) -> np.ndarray:
        """bool [requests * layers, width]: which prefill accesses miss (False where padded)."""
        return self.prefill_valid & ~hits[np.maximum(self.prefill_clock, 0)]


def step_arrays(workload: Workload) -> StepArrays:
    n_layers, top_k = workload.n_layers, workload.top_k
    decode = workload.step_kind == DECODE
    starts = workload.step_offsets[:-1]
    counts = np.diff(workload.step_offsets)
    n_tokens = int(decode.sum()) // n_layers
    decode_starts = starts[decode]
    decode_clock = (decode_starts[:, None] + np.arange(top_k)).reshape(n_tokens, n_layers, top_k)

    prefill_starts, prefill_counts = starts[~decode], counts[~decode]
    width = max(int(prefill_counts.max(initial=0)), 1)
    position = np.arange(width)
    inside = position < prefill_counts[:, None]
    prefill_clock = np.where(inside, prefill_starts[:, None] + position, -1)
    routed = workload.access_tokens[np.maximum(prefill_clock, 0)] if workload.n_accesses else 0  # dense: none
    prefill_tokens = np.where(inside, routed, 0)
    prefill_contexts = np.unique(workload.step_context[~decode])
    return StepArrays(
        n_layers=n_layers, top_k=top_k, n_tokens=n_tokens, n_requests=workload.n_requests,
        decode_context=workload.step_context[decode].reshape(n_tokens, n_layers),
        decode_clock=decode_clock,
        decode_layer_of_access=np.repeat(workload.step_layer[decode], top_k),
        prefill_context=int(prefill_contexts[0]),
        prefill_clock=prefill_clock,
        prefill_tokens=prefill_tokens,
    )
