"""A dense model's workload: steps without expert accesses, for an architecture that has no trace."""

from __future__ import annotations

import math

import numpy as np

from cosmosim.errors import InputError
from cosmosim.workload.stream import DECODE, PREFILL, Workload, next_use_of

MAX_TOKENS = 10_000_000  # a dense run simulates every token's steps: ~1 GB of step arrays at 19 layers


def dense_workload(n_layers: int, *, tokens: int, prompt_tokens: int, context_len: int, sequence_len: int) -> Workload:
    """Steps without expert accesses: a dense model's requests of `dense_sequence_len` tokens."""
    if sequence_len <= prompt_tokens:
        raise InputError(f"--prompt-tokens: expected < {sequence_len} (the dense request length), "
                         f"got {prompt_tokens}")
    if tokens > MAX_TOKENS:
        raise InputError(f"--tokens: expected <= {MAX_TOKENS:,} for a dense architecture (every token is simulated), "
                         f"got {tokens:,}")
    n_requests = math.ceil(tokens / sequence_len)  # whole requests: rounds up
    positions = np.arange(prompt_tokens, sequence_len)
    one_request_kinds = np.concatenate([np.full(n_layers, PREFILL), np.full(positions.size * n_layers, DECODE)])
    one_request_context = np.concatenate([np.full(n_layers, min(prompt_tokens, context_len)),
                                          np.repeat(np.minimum(positions + 1, context_len), n_layers)])
    n_steps = n_requests * one_request_kinds.size
    empty = np.zeros(0, dtype=np.int32)
    return Workload(
        n_layers=n_layers, n_experts=0, top_k=0,
        step_kind=np.tile(one_request_kinds, n_requests).astype(np.int8),
        step_layer=np.tile(np.arange(n_layers), n_steps // n_layers).astype(np.int16),
        step_context=np.tile(one_request_context, n_requests).astype(np.int32),
        step_offsets=np.zeros(n_steps + 1, dtype=np.int64),
        access_key=empty, access_tokens=empty, next_use=next_use_of(empty),
        warmup_usage=np.zeros(0, dtype=np.int64), warmup_cooccurrence=np.zeros((0, 0, 0), dtype=np.int64),
        n_requests=n_requests, n_prompt_tokens=n_requests * prompt_tokens,
        n_decode_tokens=n_requests * positions.size, warmup_sequences=0, layer_map=np.arange(n_layers),
    )
