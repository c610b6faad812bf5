"""The summary every engine reports: one JSON-ready dict, its keys those of the metric catalogue
(`cosmosim.results.catalog`, docs/metrics.md).

Latencies in milliseconds, sizes in MB (10^6 bytes), energy in millijoules, rates as fractions.
Every result carries its `verdict` (cosmosim.results.verdict): what limits the run, what would change it.
"""

from __future__ import annotations

import numpy as np

import cosmosim
from cosmosim.device.policies import POLICIES
from cosmosim.provenance import repository_commit, sha256_file
from cosmosim.results.catalog import (
    ENERGY_GROUP,
    FIRST_MINUTE_S,
    MEMORY_GROUP,
    THROTTLE_GROUP,
    TIME_GROUP,
    nest,
    parts,
)
from cosmosim.results.records import ENERGY_PARTS, Records
from cosmosim.results.verdict import verdict
from cosmosim.results.whatif import BUDGET, CACHE_EXPERTS, CACHE_MB, POLICY, Sizing
from cosmosim.scenario.build import Scenario
from cosmosim.units import MB

OUTCOMES = ("hit", "late_hit", "miss")


def percentiles_ms(values_s: np.ndarray) -> dict[str, float]:
    if values_s.size == 0:
        return {"mean": float("nan"), "p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
    p50, p95, p99 = np.percentile(values_s, [50, 95, 99]) * 1e3
    return {"mean": float(values_s.mean() * 1e3), "p50": float(p50), "p95": float(p95), "p99": float(p99)}


def _rate(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def sizing_of(scenario: Scenario) -> Sizing:
    """What the verdict's what-ifs need that a result does not echo: the app budget, the shape (the
    scenario's: with --cache-shared-experts, shared experts count as routed), and how the cache was
    sized (the precedence of `cosmosim.scenario.build.resolve_cache`)."""
    config, arch = scenario.config, scenario.arch
    if not POLICIES[config.policy].needs_cache_size:
        cache_from = POLICY
    elif config.cache_experts is not None:
        cache_from = CACHE_EXPERTS
    elif config.cache_mb is not None:
        cache_from = CACHE_MB
    else:
        cache_from = BUDGET
    layers = arch.n_moe_layers if arch.is_moe else arch.n_layers  # a cache's partitions count MoE layers
    return Sizing(app_budget_bytes=scenario.profile.dram.app_budget_bytes, n_layers=layers, top_k=arch.top_k,
                  cache_from=cache_from, cache_mb=config.cache_mb, per_layer=scenario.cache.per_layer,
                  d_model=arch.d_model, ffn_hidden=arch.ffn_hidden, wd_rank=arch.wd_rank)


def verdict_of(scenario: Scenario, result: dict) -> dict:
    """The verdict of `result`, a summary of `scenario` without its verdict (every engine's summary calls this)."""
    return verdict(result, sizing_of(scenario))


def _mean_ms(values_s: np.ndarray) -> float | None:
    return float(values_s.mean() * 1e3) if values_s.size else None


def throttle_metrics(scenario: Scenario, records: Records) -> dict:
    """TPOT in the first minute and at the steady state, from each decode token's end and sustained load."""
    first_minute = records.latency_s[records.token_end_s <= FIRST_MINUTE_S]
    throttle = scenario.profile.throttle
    steady = np.zeros(0, dtype=bool) if throttle is None else records.token_load_s >= throttle.steady_load_s
    starts_s = records.token_end_s - records.latency_s
    return {
        f"{THROTTLE_GROUP}.tpot_first_minute_ms": _mean_ms(first_minute),
        f"{THROTTLE_GROUP}.tpot_steady_ms": _mean_ms(records.latency_s[steady]) if steady.any() else None,
        f"{THROTTLE_GROUP}.steady_from_s": float(starts_s[steady][0]) if steady.any() else None,
    }


def summarize(scenario: Scenario, records: Records, engine: str) -> dict:
    profile, energy = scenario.profile, scenario.profile.energy
    n_tokens = max(records.latency_s.size, 1)
    layer = records.layer_outcomes
    accesses = sum(int(layer[o].sum()) for o in OUTCOMES)
    served = int(layer["hit"].sum() + layer["late_hit"].sum())
    per_layer_total = sum(layer[o] for o in OUTCOMES)
    prefill_total = sum(records.prefill_outcomes.values())

    # Energy of each decode token: flash reads, DRAM traffic (weights and KV read, flash data
    # written), arithmetic, and the device's static power over the token's latency.
    flash_j = records.flash_bytes * energy.flash_j_per_byte
    dram_j = (records.dram_bytes + records.flash_bytes) * energy.dram_j_per_byte
    compute_j = records.flops * energy.j_per_flop
    static_j = records.latency_s * energy.idle_w
    token_j = flash_j + dram_j + compute_j + static_j

    memory = scenario.memory(records.peak_cache_entries if scenario.arch.is_moe else 0, records.peak_cache_bytes)
    tpot = percentiles_ms(records.latency_s)
    prefetch = records.prefetch
    # Keyed by the metric catalogue (cosmosim.results.catalog), in the order of the JSON output.
    metrics = {
        "ttft_ms": float(np.mean(records.ttft_s) * 1e3) if records.ttft_s else None,
        **{f"tpot_ms.{stat}": value for stat, value in tpot.items()},
        "tokens_per_s": 1e3 / tpot["mean"] if tpot["mean"] > 0 else None,
        "hit_rate": _rate(served, accesses),
        "late_hit_rate": _rate(int(layer["late_hit"].sum()), accesses),
        "hit_rate_per_layer": [_rate(int(h + lh), int(t)) for h, lh, t in zip(layer["hit"], layer["late_hit"], per_layer_total)],
        "prefill_hit_rate": _rate(records.prefill_outcomes["hit"] + records.prefill_outcomes["late_hit"], prefill_total),
        "accesses.decode": accesses, **{f"accesses.{o}": int(layer[o].sum()) for o in OUTCOMES},
        "accesses.prefill": prefill_total, "accesses.prefill_miss": records.prefill_outcomes["miss"],
        "flash_mb_per_token": float(records.flash_bytes.mean() / MB) if records.flash_bytes.size else 0.0,
        "peak_dram_mb": memory.peak / MB,
        **{f"{MEMORY_GROUP}.{part}": getattr(memory, part) / MB for part in parts(MEMORY_GROUP)},
        "energy_mj_per_token": float(token_j.mean() * 1e3) if token_j.size else None,
        **{f"{TIME_GROUP}.{part}": s / n_tokens * 1e3 for part, s in records.breakdown_s.items()},
        **{f"{ENERGY_GROUP}.{part}": float(joules.mean() * 1e3)
           for part, joules in zip(ENERGY_PARTS, (flash_j, dram_j, compute_j, static_j))},
        "prefetch.issued": int(prefetch.get("issued", 0)),
        "prefetch.accuracy": _rate(prefetch.get("used", 0), prefetch.get("used", 0) + prefetch.get("wasted", 0)),
        "prefetch.wasted_mb": prefetch.get("wasted_bytes", 0) / MB,
        "flash_utilisation": _rate(records.flash_busy_s, records.total_s),
        "simulated_s": records.total_s,
        **throttle_metrics(scenario, records),
    }
    result = {
        "engine": engine,
        **nest(metrics, engine),
        "inputs": scenario.inputs(),
        "warnings": list(scenario.warnings),
    }
    return {
        **result,
        "verdict": verdict_of(scenario, result),
        "provenance": {
            "cosmosim_version": cosmosim.__version__,
            "commit": repository_commit(),
            "trace_sha256": sha256_file(scenario.trace.path) if scenario.trace is not None and scenario.trace.path else None,
            "profile_sha256": profile.sha256,
            "profile_path": str(profile.path),
        },
    }
