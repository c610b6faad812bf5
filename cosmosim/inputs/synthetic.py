"""Synthetic routing traces with known patterns, built in memory: for tests, benchmarks, and as a
clearly labelled fallback in notebooks and `cosmosim validate` when no recorded trace exists.

Never written under traces/, which holds only traces recorded from trained models.
"""

from __future__ import annotations

import numpy as np

from cosmosim.inputs.trace import SCHEMA_VERSION, Trace


def trace_meta(n_layers: int, n_experts: int, top_k: int, **model) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "model": {"n_layers": n_layers, "n_experts": n_experts, "top_k": top_k, **model},
        "training": None,
        "target_arch": None,
        "source": "synthetic test fixture",
    }


def trace_from_experts(experts, seq_len: int | None = None, n_experts: int = 8) -> Trace:
    """A trace from an explicit [tokens, layers, top_k] expert array; one sequence unless seq_len."""
    experts = np.asarray(experts, dtype=np.int16)
    if experts.ndim == 2:
        experts = experts[:, :, None]
    n_tokens, n_layers, top_k = experts.shape
    seq_len = seq_len or n_tokens
    positions = (np.arange(n_tokens) % seq_len).astype(np.int32)
    gates = np.full(experts.shape, 1.0 / top_k, dtype=np.float16)
    return Trace(experts, gates, positions, trace_meta(n_layers, n_experts, top_k))


def sticky_trace(n_tokens: int = 32768, n_layers: int = 19, n_experts: int = 8, top_k: int = 2,
                 seq_len: int = 256, stay: float = 0.6, seed: int = 0) -> Trace:
    """Markov routing: each token keeps the previous token's expert set with probability `stay`,
    else draws a fresh set (Gumbel top-k) skewed towards low ids, so usage is uneven."""
    rng = np.random.default_rng(seed)
    log_popularity = -np.log(np.arange(1, n_experts + 1))
    gumbel = rng.gumbel(size=(n_tokens, n_layers, n_experts))
    fresh = np.argsort(-(log_popularity + gumbel), axis=2)[:, :, :top_k]
    positions = (np.arange(n_tokens) % seq_len).astype(np.int32)
    switch = (rng.random((n_tokens, n_layers)) >= stay) | (positions == 0)[:, None]
    # Forward-fill: each token uses the fresh set of the last token that switched.
    source = np.maximum.accumulate(np.where(switch, np.arange(n_tokens)[:, None], 0), axis=0)
    experts = np.take_along_axis(fresh, source[:, :, None], axis=0).astype(np.int16)
    gates = np.sort(rng.random((n_tokens, n_layers, top_k)), axis=2)[:, :, ::-1]
    gates = (gates / gates.sum(axis=2, keepdims=True)).astype(np.float16)
    return Trace(experts, gates, positions, trace_meta(n_layers, n_experts, top_k))
