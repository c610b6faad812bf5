"""Closed-form step times: what a step costs once its hits and misses are known.

Without prefetch the flash is idle whenever a step starts: a step ends only after its last read
has arrived and been computed on. So a step that misses m experts issues m reads on an idle device
at `router_done`, and their completion times are the fixed sequence `idle_flash_read_times(m)`
(the simulator's own recurrence). Experts then compute one at a time in the order their weights
are ready: hits first (ready at router_done), then misses in the order they were read. For jobs
served one at a time in order of readiness r_j, with compute times c_j, the last one ends at

    max_j ( r_j + sum_{i >= j} c_i )                    (the server is free from router_done on)

which is `expert_phase_s`. Where the shared experts run at once beside the routed ones on another
unit (a profile's `concurrent` compute classes), the step's phase lasts at least their time:
max(shared, routed phase). Every other cost comes from cosmosim.device.costs, the prices both engines use.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from cosmosim.device.costs import OpTable, StepCosts
from cosmosim.device.hardware import Flash, idle_flash_read_times
from cosmosim.inputs.profiles import FlashSpec


@lru_cache(maxsize=256)
def read_done_s(flash: FlashSpec, nbytes: int, n_reads: int) -> np.ndarray:
    """float [n_reads]: completion times of n_reads reads of nbytes issued together on an idle device."""
    return np.array(idle_flash_read_times(flash, nbytes, n_reads)) if n_reads else np.zeros(0)


@lru_cache(maxsize=256)
def busy_s_per_read(flash: FlashSpec, nbytes: int) -> float:
    """Time the flash channel moves data for one read of nbytes (all its requests)."""
    device = Flash(flash)
    device.read(nbytes, 0.0)
    return device.stats.busy_s


def expert_phase_s(compute_s: np.ndarray, miss: np.ndarray, read_done: np.ndarray, concurrent_s: float = 0.0
                   ) -> np.ndarray:
    """Time from router_done to the end of a step's last expert compute, per row, and at least
    `concurrent_s` (the shared experts computing beside them: `StepCosts.concurrent_s`).

    compute_s, miss: [..., n] in access order (padding: compute 0, not a miss); read_done: [>= n]
    completion times of the step's reads, the k-th miss being the k-th read.
    """
    miss_compute = np.where(miss, compute_s, 0.0)
    computed_after = np.cumsum(miss_compute[..., ::-1], axis=-1)[..., ::-1]  # misses at or after j
    read_rank = np.maximum(np.cumsum(miss, axis=-1) - 1, 0)
    finish_from_reads = np.where(miss, read_done[read_rank] + computed_after, -np.inf)
    return np.maximum(np.maximum(compute_s.sum(axis=-1), concurrent_s), finish_from_reads.max(axis=-1, initial=-np.inf))


def decode_phase_s(costs: StepCosts, flash: FlashSpec, top_k: int) -> np.ndarray:
    """float [top_k + 1]: the expert phase of a decode step with m = 0..top_k misses."""
    n_misses = np.arange(top_k + 1)[:, None]
    miss = np.arange(top_k)[None, :] >= top_k - n_misses  # which slots miss does not matter: equal costs
    compute_s = costs.decode_expert_s(miss)
    return expert_phase_s(compute_s, miss, read_done_s(flash, costs.expert_bytes, top_k))


def prefill_compute_s(costs: StepCosts, tokens: np.ndarray) -> np.ndarray:
    """Compute time of each prefill expert from the prompt tokens routed to it (0 where tokens is 0)."""
    counts, inverse = np.unique(tokens, return_inverse=True)
    per_count = np.array([costs.expert_prefill(int(n)).time_s if n else 0.0 for n in counts])
    return per_count[inverse].reshape(tokens.shape)


def nonexpert_ops(costs: StepCosts, kind: int, contexts: np.ndarray, steps: np.ndarray) -> OpTable:
    """Each step bar its routed experts at each context (decode) or prompt length (prefill): `contexts`
    and `steps` (replay step indices) broadcast together to the shape of the result."""
    contexts, steps = np.broadcast_arrays(contexts, steps)
    values, inverse = np.unique(contexts, return_inverse=True)
    return costs.nonexpert_table(kind, values).take(inverse.reshape(contexts.shape), steps)
