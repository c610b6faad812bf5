"""Replay's torch settings and the one piece of arithmetic that is replay's own.

The decoder itself (norms, RoPE, attention with its KV cache, the router, SwiGLU) is the training
model's, `cosmosim.model`; replay only weights a decoded token's experts by the trace's choice.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from cosmosim.errors import InputError


def default_threads() -> int:
    """All cores but one: replay's I/O threads need a core, and an OpenMP barrier waiting on a
    preempted torch worker costs a whole scheduler time slice."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores - 1)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with `count` torch intra-op threads (calibrate and replay must agree)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InputError(f"--threads: expected an integer >= 1, got {count!r}")
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def decode_gates(logits_TE: torch.Tensor, experts: list[int]) -> torch.Tensor:
    """The router's logits of a decoded token softmaxed over the experts the trace chose for it:
    the weights of their outputs (in the logits' dtype)."""
    return torch.softmax(logits_TE[-1, experts].float(), dim=0).to(logits_TE.dtype)
