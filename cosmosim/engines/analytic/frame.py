"""Many design points at once: the analytic model vectorised over a pandas DataFrame.

`evaluate_points(points)` returns the points with one column per metric, the numbers
`cosmosim run --engine analytic` reports for the same point (TPOT percentiles on request). Rows are
grouped by what they share: a trace's statistics (workload, stack depths; kept across calls in a
`StatsCache`), a device-architecture pair's prices (computed once per call), and then every cache
size in a group is a table lookup. Formulas: docs/analytic-model.md.

Input columns (one row per point; other columns pass through untouched):

    profile, arch            required: a shipped profile name or .toml path; a catalog architecture
    trace                    routing trace path (.npz); empty for a dense architecture
    wd_rank                  empty: the architecture's own experts; an integer rank; "full": not decomposed
    n_experts, top_k, ffn_hidden, n_layers, d_model, n_shared_experts
                             empty or absent: the architecture's own; else a variant of it with that size
                             (cosmosim.inputs.arch_variants.derive), then the WD rank
    policy, prefetch, cache_mb, cache_experts, per_layer_cache, weight_bits, expert_bits, shared_bits,
    tokens, prompt_tokens, context_len, warmup_fraction
                             as `cosmosim run` (cosmosim.scenario.settings.RunConfig); empty or absent: its
                             default; the bits columns take a number or a format name (q4_K)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import cached_property

import numpy as np
import pandas as pd

from cosmosim.device.costs import StepCosts
from cosmosim.engines.analytic.engine import cache_layout, check_closed_form
from cosmosim.engines.analytic.latency import (
    busy_s_per_read,
    decode_phase_s,
    nonexpert_ops,
    prefill_compute_s,
    read_done_s,
)
from cosmosim.engines.analytic.outcomes import StatsCache, TraceStats
from cosmosim.errors import InputError
from cosmosim.inputs.arch import FULL_RANK, Architecture, get_arch
from cosmosim.inputs.arch_variants import OVERRIDES, derive
from cosmosim.inputs.precision import parse_bits
from cosmosim.inputs.profiles import DeviceProfile, load_profile
from cosmosim.results import catalog
from cosmosim.results.catalog import ENERGY_GROUP, MEMORY_GROUP, TIME_GROUP, Metric
from cosmosim.scenario.build import NO_CACHE, Scenario, build_scenario, resolve_cache, shared_as_routed
from cosmosim.scenario.settings import RunConfig, check_settings
from cosmosim.units import MB
from cosmosim.workload.stream import DECODE, PREFILL

_CONFIG_DEFAULTS = {field.name: field.default for field in fields(RunConfig)}
_TEXT_COLUMNS = ("profile", "arch", "trace", "policy", "prefetch", "loader", "madvise")
_INPUT_COLUMNS = tuple(dict.fromkeys((*_TEXT_COLUMNS, "wd_rank", *OVERRIDES, *_CONFIG_DEFAULTS)))
_COLUMN_KINDS = {"per_layer_cache": "flag", "cache_shared_experts": "flag", "cache_mb": "number",
                 "warmup_fraction": "number", "idle_gap_s": "number", "wd_rank": "rank",
                 "weight_bits": "bits", "expert_bits": "bits", "shared_bits": "bits", "hot_expert_bits": "bits",
                 "hot_mb": "number"}  # else integer


def frame_column(metric: Metric) -> str:
    """A metric's column in the output: its catalogue column, except where that is an input column.

    The input passes through, and two inputs (the requested cache_mb and cache_experts) share their
    names with the resolved sizes a run reports; those outputs are `<column>_used`, so the request
    and what it resolved to sit side by side."""
    return f"{metric.column}_used" if metric.column in _INPUT_COLUMNS else metric.column


# Every catalogue column; the TPOT percentiles only on request (each costs a pass over the tokens).
PERCENTILES = (50, 95, 99)
_PERCENTILE_METRICS = tuple(catalog.BY_KEY[f"tpot_ms.p{q}"] for q in PERCENTILES)
_METRICS = tuple(metric for metric in catalog.COLUMNS if metric not in _PERCENTILE_METRICS)
METRIC_COLUMNS = tuple(frame_column(metric) for metric in _METRICS)
PERCENTILE_COLUMNS = tuple(frame_column(metric) for metric in _PERCENTILE_METRICS)
DEFAULT_CACHE = StatsCache()


def evaluate_points(points: pd.DataFrame, *, percentiles: bool = False, on_error: str = "raise",
                    cache: StatsCache | None = None) -> pd.DataFrame:
    """`points` with the analytic metrics of each row added (columns METRIC_COLUMNS, and
    PERCENTILE_COLUMNS when `percentiles`: those cost a pass over the decode tokens per point).

    A row that `cosmosim run` would reject raises InputError naming the row (by index label) and
    the column; with on_error="record" it gets the message in an `error` column and no metrics
    instead (a sweep's infeasible corners). A malformed frame raises either way.
    """
    if on_error not in ("raise", "record"):
        raise InputError(f"on_error: expected 'raise' or 'record', got {on_error!r}")
    cache = DEFAULT_CACHE if cache is None else cache
    rows = _Rows(points)
    wanted = (*_METRICS, *(_PERCENTILE_METRICS if percentiles else ()))
    metrics = {metric.key: np.full(len(points), np.nan) for metric in wanted}
    plans: list[_Plan | None] = []
    errors: list[str | None] = [None] * len(points)
    for i in range(len(points)):
        try:
            plans.append(rows.plan(i, cache))
        except InputError as error:
            if on_error == "raise":
                raise rows.fail(i, str(error)) from None
            plans.append(None)
            errors[i] = str(error)
    groups: dict[tuple, list[int]] = {}
    for i, plan in enumerate(plans):
        if plan is not None:
            groups.setdefault((plan.stats_key, plan.cost_key, plan.mode, plan.idle_gap_s), []).append(i)
    prices: dict[tuple, _Prices] = {}
    for (stats_key, cost_key, mode, idle_gap_s), members in groups.items():
        first = plans[members[0]]
        if (stats_key, cost_key) not in prices:
            prices[stats_key, cost_key] = _Prices(first.stats, first.scenario())
        pair = prices[stats_key, cost_key]
        capacities = np.array([plans[i].capacity for i in members])
        values = _group_metrics(pair, mode, capacities, idle_gap_s, percentiles)
        catalog.check_keys(values, wanted, "evaluate_points")
        for key, column in values.items():
            metrics[key][members] = column
    out = points.copy()
    for metric in wanted:
        column = frame_column(metric)
        out[column] = metrics[metric.key]
        if metric.dtype != "Float64":  # integers and flags get nullable dtypes; floats stay float64, NaN if empty
            out[column] = out[column].astype(metric.dtype)
    if on_error == "record":
        out["error"] = pd.array(errors, dtype="string")
    return out


@dataclass(frozen=True)
class _Plan:
    """What one row resolved to."""

    stats_key: tuple
    cost_key: tuple
    mode: tuple[str, bool] | None  # (eviction rule, per-layer partitions); None: a dense architecture
    capacity: int  # experts in the whole cache
    idle_gap_s: float  # between requests: it adds to the simulated time only
    stats: TraceStats
    scenario: Callable[[], Scenario]  # the row's resolved scenario, sharing the cached workload


class _Rows:
    """The input frame as typed Python lists, and each row resolved the way `cosmosim run` would."""

    def __init__(self, points: pd.DataFrame) -> None:
        missing = [name for name in ("profile", "arch") if name not in points.columns]
        if missing:
            raise InputError(f"points: column {missing[0]!r} is missing (required: profile, arch)")
        self.labels = points.index.tolist()
        self.values: dict[str, list] = {}
        for name in _INPUT_COLUMNS:
            if name not in points.columns:
                continue
            column = points[name].astype(object)
            raw = column.where(column.notna(), None).tolist()
            self.values[name] = [self._typed(name, value, i) for i, value in enumerate(raw)]
        self._profiles: dict[str, DeviceProfile] = {}
        self._archs: dict[tuple, Architecture] = {}
        self._costs: dict[tuple, StepCosts] = {}
        self._traces: dict[str, tuple] = {}
        self._checked: set[tuple[str, RunConfig]] = set()  # (profile, settings) already validated: rows repeat them

    def fail(self, i: int, message: str) -> InputError:
        return InputError(f"points row {self.labels[i]!r}: {message}")

    def _typed(self, name: str, value, i: int):
        """A cell as the type RunConfig expects (None when empty); InputError naming row and column."""
        if value is None or name in _TEXT_COLUMNS:
            return None if value is None else str(value)
        kind = _COLUMN_KINDS.get(name, "integer")
        is_flag = isinstance(value, (bool, np.bool_))
        is_number = isinstance(value, (int, float, np.integer, np.floating)) and not is_flag
        if kind == "flag" and is_flag:
            return bool(value)
        if kind == "number" and is_number:
            return float(value)
        if kind == "rank" and value == FULL_RANK:
            return value
        if kind == "bits" and (is_number or isinstance(value, str)):  # a number or a format name (q4_K)
            return parse_bits(value.item() if isinstance(value, (np.integer, np.floating)) else value,
                              f"points row {self.labels[i]!r}: column {name}")
        if kind in ("integer", "rank") and is_number and float(value).is_integer():
            return int(value)
        expected = {"flag": "true or false", "number": "a number", "rank": f"an integer rank or {FULL_RANK!r}"}
        raise self.fail(i, f"column {name}: expected {expected.get(kind, 'an integer')}, got {value!r}")

    def _row(self, i: int) -> dict:
        """Row i's inputs by name, defaults where a cell is empty or its column absent."""
        row = {}
        for name in _INPUT_COLUMNS:
            column = self.values.get(name)
            value = None if column is None else column[i]
            row[name] = _CONFIG_DEFAULTS.get(name) if value is None else value
        return row

    def _arch(self, row: dict) -> Architecture:
        name, rank = row["arch"], row["wd_rank"]
        overrides = tuple((field, row[field]) for field in OVERRIDES)
        key = (name, rank, overrides)
        if key not in self._archs:
            arch = derive(get_arch(name), dict(overrides))
            self._archs[key] = arch if rank is None else arch.with_wd_rank(None if rank == FULL_RANK else rank)
        return self._archs[key]

    def plan(self, i: int, cache: StatsCache) -> _Plan:
        row = self._row(i)
        profile_name = row["profile"]
        if profile_name not in self._profiles:
            self._profiles[profile_name] = load_profile(profile_name)
        profile, arch = self._profiles[profile_name], self._arch(row)
        config = RunConfig(**{name: row[name] for name in _CONFIG_DEFAULTS})
        if (profile_name, config) not in self._checked:
            check_settings(config)
            check_closed_form(profile, config)
            if config.hot_expert_bits is not None:
                raise InputError("hot_expert_bits: the frame prices experts of one size, every cache size a count of "
                                 "them; price experts of two sizes point by point (`cosmosim run --engine analytic`, "
                                 "or a sweep, which does that for such points)")
            self._checked.add((profile_name, config))
        given_arch = arch  # build_scenario makes the shared experts routed itself
        if config.cache_shared_experts and arch.is_moe:
            arch = shared_as_routed(arch, config.precision)
        cost_key = (profile_name, arch, config.precision)
        if cost_key not in self._costs:
            self._costs[cost_key] = StepCosts.build(arch, profile, config.precision)
        costs = self._costs[cost_key]

        trace_path = row["trace"]
        if trace_path not in self._traces:
            self._traces[trace_path] = cache.trace(trace_path) if trace_path is not None else (None, None)
        trace_key, trace = self._traces[trace_path]
        shape = (len(arch.step_layers), arch.n_experts, arch.top_k, arch.is_moe)
        workload_inputs = (config.prompt_tokens, config.context_len, config.tokens, config.warmup_fraction)
        dense_inputs = () if arch.is_moe else (config.dense_tokens, config.dense_sequence_len)
        stats_key = (trace_key, shape, workload_inputs, dense_inputs)
        # The first row of a workload builds it through build_scenario, which checks the trace
        # against the architecture; later rows of the same key share its shape, so its verdict.
        stats = cache.stats(stats_key, lambda: build_scenario(profile, given_arch, trace, config).workload)

        mode, capacity = None, 0
        if arch.is_moe:
            cache_setup = resolve_cache(arch, profile, config, costs)
            capacity = cache_setup.capacity
            layout = cache_layout(config.policy, config.prefetch, cache_setup, arch.n_moe_layers)
            mode = (layout.rule, layout.per_layer)
        else:
            cache_setup = NO_CACHE

        def scenario() -> Scenario:
            return Scenario(arch, profile, config, stats.workload, costs, cache_setup, trace)

        return _Plan(stats_key, cost_key, mode, capacity, config.idle_gap_s, stats, scenario)


class _Prices:
    """Everything about one (workload, device, architecture, bit-width) pair that no cache size changes."""

    def __init__(self, stats: TraceStats, scenario: Scenario) -> None:
        self.stats, self.scenario, self.costs = stats, scenario, scenario.costs
        costs, steps, flash = scenario.costs, stats.steps, scenario.profile.flash
        # Every decode pass visits each layer once at one context: steps at a context / n_layers passes.
        layers = np.arange(steps.n_layers)
        nonexpert = nonexpert_ops(costs, DECODE, stats.context_values[:, None], layers[None, :])
        passes = np.broadcast_to((stats.context_counts / steps.n_layers)[:, None], nonexpert.time_s.shape)
        self.nonexpert_s = float((nonexpert.time_s * passes).sum())  # summed over every decode step
        bound = nonexpert.memory_bound
        self.nonexpert_dram_bound_s = float((nonexpert.time_s * passes)[bound].sum())
        self.nonexpert_compute_bound_s = float((nonexpert.time_s * passes)[~bound].sum())
        self.nonexpert_flops = float((nonexpert.flops * passes).sum())
        self.nonexpert_dram_bytes = float((nonexpert.dram_bytes * passes).sum())
        prefill = nonexpert_ops(costs, PREFILL, np.array(steps.prefill_context), layers)
        self.prefill_step_s = prefill.time_s + costs.layer_overhead_s  # [layers]
        self.memory = scenario.memory(0)
        if scenario.arch.is_moe:
            routed_phase_s = decode_phase_s(costs, flash, steps.top_k)  # [misses 0..top_k]
            # With shared experts beside the routed ones (concurrent units) a step's phase lasts at least theirs.
            self.shared = costs.shared_op(DECODE, 1) if costs.concurrent_shared else None
            self.decode_phase_s = routed_phase_s if self.shared is None else np.maximum(routed_phase_s, self.shared.time_s)
            self.shared_exposed_s = self.decode_phase_s - routed_phase_s
            self.prefill_concurrent_s = costs.concurrent_s(PREFILL, steps.prefill_context)
            if self.shared is not None:  # their FLOPs and bytes are non-expert work still, counted once per step
                self.nonexpert_flops += steps.n_tokens * steps.n_layers * self.shared.flops
                self.nonexpert_dram_bytes += steps.n_tokens * steps.n_layers * self.shared.dram_bytes
            self.prefill_compute_s = prefill_compute_s(costs, steps.prefill_tokens)
            self.prefill_read_done = read_done_s(flash, costs.expert_bytes, steps.prefill_clock.shape[1])
            self.busy_s_per_read = busy_s_per_read(flash, costs.expert_bytes)

    @cached_property
    def token_base_s(self) -> np.ndarray:
        """float [tokens]: each decode token's time without its expert phases (percentiles only)."""
        costs = self.costs
        steps = self.stats.steps
        nonexpert = nonexpert_ops(costs, DECODE, steps.decode_context, np.arange(steps.n_layers))
        return (nonexpert.time_s + costs.layer_overhead_s).sum(axis=1) + costs.lm_head.time_s


def _group_metrics(prices: _Prices, mode: tuple[str, bool] | None, capacities: np.ndarray, idle_gap_s: float,
                   percentiles: bool) -> dict:
    """Every metric for the rows of one group (same workload and prices), vectorised over cache sizes;
    keyed by the metric catalogue, like `summarize`."""
    stats, costs, scenario = prices.stats, prices.costs, prices.scenario
    steps, energy = stats.steps, scenario.profile.energy
    n, top_k, n_layers = capacities.size, steps.top_k, steps.n_layers
    n_tokens, n_requests = steps.n_tokens, steps.n_requests
    decode_steps, expert, lm_head = n_tokens * n_layers, costs.expert_decode, costs.lm_head
    prefill_accesses = int(steps.prefill_valid.sum()) if mode else 0
    zeros = np.zeros(n)
    if mode is not None:
        rule, per_layer = mode
        outcomes = stats.outcomes(rule, per_layer)
        partition = capacities // n_layers if per_layer else capacities
        counts = outcomes.miss_counts(partition)  # [n, top_k + 1]
        decode_misses = counts @ np.arange(top_k + 1)
        expert_phase_s = counts @ prices.decode_phase_s
        shared_exposed_s = counts @ prices.shared_exposed_s
        prefill_phase_s = outcomes.prefill_phase_total(prices.prefill_compute_s, prices.prefill_read_done, partition,
                                                       prices.prefill_concurrent_s)
        prefill_misses = prefill_accesses - outcomes.prefill_hits(partition)
        peak_entries = np.minimum(stats.distinct_keys(per_layer)[None, :], partition[:, None]).sum(axis=1)
        busy_s = (decode_misses + prefill_misses) * prices.busy_s_per_read
    else:
        decode_misses = expert_phase_s = shared_exposed_s = prefill_phase_s = prefill_misses = peak_entries = busy_s = zeros

    expert_s = decode_steps * top_k * expert.time_s
    tpot_s = (prices.nonexpert_s + decode_steps * costs.layer_overhead_s + expert_phase_s) / n_tokens + lm_head.time_s
    ttft_s = prices.prefill_step_s.sum() + prefill_phase_s / n_requests + lm_head.time_s
    flash_bytes = decode_misses * costs.expert_bytes / n_tokens
    dram_bytes = (prices.nonexpert_dram_bytes + decode_steps * top_k * expert.dram_bytes) / n_tokens + lm_head.dram_bytes
    flops = (prices.nonexpert_flops + decode_steps * top_k * expert.flops) / n_tokens + lm_head.flops
    simulated_s = n_requests * ttft_s + n_tokens * tpot_s + (n_requests - 1) * idle_gap_s
    energy_j = {"flash": flash_bytes * energy.flash_j_per_byte, "dram": (dram_bytes + flash_bytes) * energy.dram_j_per_byte,
                "compute": flops * energy.j_per_flop + zeros, "static": tpot_s * energy.idle_w}
    time_s = {"nonexpert_compute": prices.nonexpert_compute_bound_s,
              "nonexpert_dram": prices.nonexpert_dram_bound_s,
              "expert_compute": 0.0 if expert.memory_bound else expert_s, "expert_dram": expert_s if expert.memory_bound else 0.0,
              "miss_overhead": decode_misses * costs.miss_overhead_s,
              "flash_stall": expert_phase_s - shared_exposed_s - expert_s - decode_misses * costs.miss_overhead_s
              if mode else zeros,
              "shared_exposed": shared_exposed_s,
              "layer_overhead": decode_steps * costs.layer_overhead_s, "lm_head": n_tokens * lm_head.time_s}
    memory = prices.memory
    memory_bytes = {"resident_weights": memory.resident_weights, "expert_cache": peak_entries * costs.expert_bytes,
                    "kv_cache": memory.kv_cache, "activations": memory.activations}
    routed = np.nan if mode is None else 1.0  # rates over accesses do not exist without experts
    total_experts = n_layers * scenario.arch.n_experts if mode else 0
    metrics = {
        "inputs.cache_experts": capacities, "inputs.cache_mb": capacities * costs.expert_bytes / MB,
        "inputs.expert_mb": costs.expert_bytes / MB + zeros, "inputs.total_experts": total_experts + zeros,
        "inputs.offloading_idle": capacities >= total_experts, "inputs.requests": n_requests + zeros,
        "inputs.decode_tokens": n_tokens + zeros,
        "ttft_ms": ttft_s * 1e3, "tpot_ms.mean": tpot_s * 1e3, "tokens_per_s": 1.0 / tpot_s,
        "hit_rate": routed * (1 - decode_misses / max(decode_steps * top_k, 1)), "late_hit_rate": routed * zeros,
        "prefill_hit_rate": routed * (1 - prefill_misses / max(prefill_accesses, 1)),
        "flash_mb_per_token": flash_bytes / MB, "flash_utilisation": busy_s / simulated_s,
        "peak_dram_mb": sum(memory_bytes.values()) / MB,
        **{f"{MEMORY_GROUP}.{part}": value / MB + zeros for part, value in memory_bytes.items()},
        "energy_mj_per_token": sum(energy_j.values()) * 1e3,
        **{f"{TIME_GROUP}.{part}": value / n_tokens * 1e3 + zeros for part, value in time_s.items()},
        **{f"{ENERGY_GROUP}.{part}": value * 1e3 for part, value in energy_j.items()},
        "prefetch.issued": zeros, "prefetch.accuracy": zeros + np.nan, "prefetch.wasted_mb": zeros,
        "simulated_s": simulated_s,
    }
    if percentiles:
        metrics.update(_tpot_percentiles_ms(prices, mode, capacities))
    return metrics


def _tpot_percentiles_ms(prices: _Prices, mode: tuple[str, bool] | None, capacities: np.ndarray) -> dict:
    """TPOT percentiles need each token's latency at each distinct cache size (entries in all)."""
    stats, n_layers = prices.stats, prices.stats.steps.n_layers
    if mode is None:
        partition = np.zeros_like(capacities)
        by_size = {0: np.percentile(prices.token_base_s, PERCENTILES) * 1e3}
    else:
        rule, per_layer = mode
        partition = capacities // n_layers if per_layer else capacities  # entries per partition
        sizes, phases = stats.outcomes(rule, per_layer).token_phase_s(prices.decode_phase_s, partition)
        # One percentile call over every size at once: per size, numpy's call overhead outweighs the work.
        table = np.percentile(prices.token_base_s + phases, PERCENTILES, axis=1).T * 1e3
        by_size = dict(zip(sizes, table))
    table = np.array([by_size[c] for c in partition.tolist()]).reshape(len(capacities), len(PERCENTILES))
    return {metric.key: table[:, j] for j, metric in enumerate(_PERCENTILE_METRICS)}
