"""Calibrate's replay measurements: what a real decode step costs beyond the arithmetic the engines price.

Replay decodes the architecture itself with random routing twice, from one expert file:
- with every expert cached: on the tokens that read nothing, the measured latency less the
  simulator's prediction for the same tokens is the per-layer overhead (Python and torch dispatch,
  element-wise operations, the loop's bookkeeping);
- with a cache of only top-k experts, so every decode access misses: the measured decode time, less
  the time blocked on reads, less the same tokens' priced arithmetic (with the fitted per-layer
  overhead), per miss, is the per-miss overhead (issuing and collecting reads on the I/O threads,
  computing from weights that just arrived instead of ones the CPU caches still hold).
Neither is fitted on validation's cases (partial caches, traced routing).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from cosmosim.engines.des import simulate
from cosmosim.engines.replay.run import HostModel
from cosmosim.host.effort import Effort
from cosmosim.inputs.arch import Architecture
from cosmosim.inputs.locality import random_routing
from cosmosim.inputs.profiles import DeviceProfile
from cosmosim.inputs.trace import SCHEMA_VERSION, Trace
from cosmosim.scenario.build import prepare
from cosmosim.scenario.settings import RunConfig

DRAFT_OVERHEAD_S = 1e-7  # the draft profile's per-layer overhead: a profile's figures must be > 0


def random_trace(arch: Architecture, effort: Effort, prompt_tokens: int) -> Trace:
    sequence = prompt_tokens + effort.overhead_tokens
    n_tokens = effort.overhead_sequences * sequence
    experts = random_routing((n_tokens, arch.n_layers, arch.top_k), arch.n_experts, seed=0)
    positions = np.tile(np.arange(sequence, dtype=np.int32), effort.overhead_sequences)
    meta = {"schema_version": SCHEMA_VERSION, "source": "calibrate: random routing",
            "model": {"n_layers": arch.n_layers, "n_experts": arch.n_experts, "top_k": arch.top_k}}
    return Trace(experts.astype(np.int16), np.full(experts.shape, 1 / arch.top_k, dtype=np.float16), positions, meta)


def _layer_overhead(records, predicted_s: np.ndarray, draft: DeviceProfile, n_layers: int) -> dict:
    quiet = [(measured, priced) for measured, priced, nbytes
             in zip(records.decode_latency_s, predicted_s, records.decode_read_bytes) if nbytes == 0]
    if not quiet:
        raise RuntimeError("calibrate: every decode token of the overhead replay read an expert; the cache should hold all")
    measured_s, priced_s = (float(np.median(column)) for column in zip(*quiet))
    residual_s = float(np.median([m - p for m, p in quiet])) / n_layers
    return {"layer_overhead_s": max(draft.compute.layer_overhead_s + residual_s, DRAFT_OVERHEAD_S),
            "overhead_quiet_tokens": len(quiet), "overhead_measured_token_s": measured_s,
            "overhead_priced_token_s": priced_s}


def _miss_overhead(records, priced_compute_s: float) -> dict:
    misses = records.outcomes["miss"]
    if not misses:
        raise RuntimeError("calibrate: the miss replay read nothing; its cache should hold only top-k experts")
    measured_s, waited_s = float(sum(records.decode_latency_s)), float(records.decode_parts_s["flash_wait"])
    return {"miss_overhead_s": (measured_s - waited_s - priced_compute_s) / misses, "miss_replay_misses": misses,
            "miss_measured_s": measured_s, "miss_waited_s": waited_s, "miss_priced_compute_s": priced_compute_s}


def measure_overheads(arch: Architecture, draft: DeviceProfile, directory: Path | None, effort: Effort,
                      prompt_tokens: int) -> dict:
    """The per-layer and per-miss overheads of decoding `arch` on this host, and the figures they came
    from. `draft` has every figure of the profile but negligible overheads."""
    trace = random_trace(arch, effort, prompt_tokens)
    all_cached = RunConfig(cache_experts=arch.n_layers * arch.n_experts, tokens=trace.n_tokens,
                           prompt_tokens=prompt_tokens)
    all_missed = replace(all_cached, cache_experts=arch.top_k)
    hit_scenario, miss_scenario = (prepare(draft, trace, arch, config) for config in (all_cached, all_missed))
    with HostModel(arch, directory) as model:
        hit_records = model.run(hit_scenario)
        miss_records = model.run(miss_scenario)
    fitted = _layer_overhead(hit_records, simulate(hit_scenario).latency_s, draft, arch.n_layers)
    # The miss replay's tokens priced without their reads: every part but the wait for flash.
    with_layer_overhead = replace(draft, compute=replace(draft.compute, layer_overhead_s=fitted["layer_overhead_s"]))
    breakdown = simulate(prepare(with_layer_overhead, trace, arch, all_missed)).breakdown_s
    priced_compute_s = sum(seconds for part, seconds in breakdown.items() if part not in ("flash_stall", "miss_overhead"))
    return {**fitted, **_miss_overhead(miss_records, priced_compute_s)}
