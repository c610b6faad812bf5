"""Calibrate's DRAM and compute measurements: torch copy bandwidth, and `F.linear` at every matrix
shape of one decoded token (GEMV) or of a prompt (GEMM), in bfloat16, over enough distinct weights
to defeat the CPU caches, net of the per-call cost of a tiny matrix, weighted by use per token, over
all shapes and per operation class (the profile's [compute_classes])."""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from cosmosim.engines.replay.run import Progress
from cosmosim.engines.replay.weights import DTYPE, DTYPE_NAME, expert_shapes
from cosmosim.host.effort import Effort
from cosmosim.inputs.arch import Architecture
from cosmosim.inputs.profile_options import OP_CLASSES

TINY = 8  # matrix side whose F.linear costs only the call


def measure_dram(effort: Effort) -> float:
    """Copy bandwidth in bytes/s, counting the bytes read and the bytes written."""
    source = torch.ones(effort.dram_bytes // DTYPE.itemsize, dtype=DTYPE)
    target = torch.empty_like(source)
    target.copy_(source)  # first touch: page faults are not bandwidth
    copies, start = 0, time.perf_counter()
    while copies < 2 or time.perf_counter() - start < effort.seconds_per_point:
        target.copy_(source)
        copies += 1
    return 2 * effort.dram_bytes * copies / (time.perf_counter() - start)


def matmul_classes(arch: Architecture) -> dict[str, dict[tuple[int, int], int]]:
    """Every weight matrix [out, in] one decoded token multiplies, with how many times it does, by
    operation class (the profile's [compute_classes]: attention and router, routed experts, LM head)."""
    d, kv, layers = arch.d_model, arch.n_kv_heads * arch.head_dim, arch.n_layers
    classes: dict[str, dict[tuple[int, int], int]] = {name: {} for name in OP_CLASSES}
    matrices = [("attention", (d, d), 2 * layers), ("attention", (kv, d), 2 * layers),
                ("attention", (arch.n_experts, d), layers), ("lm_head", (arch.vocab_size, d), 1)]
    matrices += [("expert", shape, layers * arch.top_k) for shape in expert_shapes(arch)]
    for name, shape, count in matrices:
        classes[name][shape] = classes[name].get(shape, 0) + count
    return classes


def matmul_shapes(arch: Architecture) -> dict[tuple[int, int], int]:
    """Every weight matrix [out, in] one decoded token multiplies, with how many times it does."""
    uses: dict[tuple[int, int], int] = {}
    for shapes in matmul_classes(arch).values():
        for shape, count in shapes.items():
            uses[shape] = uses.get(shape, 0) + count
    return uses


def _seconds_per_linear(rows: int, shape: tuple[int, int], effort: Effort, repeats: int = 1) -> list[float]:
    """Seconds per `F.linear` call, timed `repeats` times over one set of weights (setting them up
    costs more than timing them). The tiny matrix times only the call, on one weight: a working set
    of them would be a million tensors, 17 s to set up for the same 2.9-3.3 us per call (measured)."""
    n_copies = 1 if shape == (TINY, TINY) else \
        max(1, math.ceil(effort.working_set_bytes / (shape[0] * shape[1] * DTYPE.itemsize)))
    base = torch.randn(shape, dtype=DTYPE)
    weights = [base.clone() for _ in range(n_copies)]  # distinct memory is what the caches see
    x = torch.randn(rows, shape[1], dtype=DTYPE)
    for weight in weights:  # first touch
        F.linear(x, weight)
    timings = []
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while calls < n_copies or time.perf_counter() - start < effort.seconds_per_point:
            F.linear(x, weights[calls % n_copies])
            calls += 1
        timings.append((time.perf_counter() - start) / calls)
    return timings


def _rate(rows: int, uses: dict[tuple[int, int], int], net_s: dict[tuple[int, int], float]) -> float:
    """FLOP/s over the matrices `uses` weights, each timed at `net_s` seconds per product."""
    flops = sum(count * 2 * rows * out * inp for (out, inp), count in uses.items())
    return flops / sum(count * net_s[shape] for shape, count in uses.items())


def _net_seconds(arch: Architecture, rows: int, effort: Effort, progress: Progress,
                 repeats: int) -> list[dict[tuple[int, int], float]]:
    """Per repeat, each matrix shape's seconds per product net of the per-call cost."""
    call_s = _seconds_per_linear(rows, (TINY, TINY), effort, repeats)
    per_shape = {}
    for out, inp in matmul_shapes(arch):
        progress(f"compute: {rows} x {inp} by {inp} x {out} ({DTYPE_NAME})")
        per_shape[out, inp] = _seconds_per_linear(rows, (out, inp), effort, repeats)
    return [{shape: max(timings[index] - call_s[index], 1e-9) for shape, timings in per_shape.items()}
            for index in range(repeats)]


def measure_matmul(arch: Architecture, rows: int, effort: Effort,
                   progress: Progress) -> tuple[float, list[dict], dict[str, float]]:
    """FLOP/s of `rows`-row products at the architecture's shapes, weighted by use per token: over
    all of them, per shape, and per operation class (each shape is timed once)."""
    classes, (net_s,) = matmul_classes(arch), _net_seconds(arch, rows, effort, progress, 1)
    per_shape = [{"class": name, "out": out, "in": inp, "uses_per_token": uses,
                  "flops_per_s": 2 * rows * out * inp / net_s[out, inp]}
                 for name, shapes in classes.items() for (out, inp), uses in shapes.items()]
    return (_rate(rows, matmul_shapes(arch), net_s), per_shape,
            {name: _rate(rows, shapes, net_s) for name, shapes in classes.items() if shapes})


def gemv_rates(arch: Architecture, effort: Effort, repeats: int) -> list[float]:
    """`measure_matmul`'s overall GEMV FLOP/s, `repeats` times back to back over one set of weights."""
    uses = matmul_shapes(arch)
    return [_rate(1, uses, net_s) for net_s in _net_seconds(arch, 1, effort, lambda message: None, repeats)]
