"""The metric catalogue: every number a run reports, defined once.

Each `Metric` says where the value sits in a result dict (its dotted `key`: "tpot_ms.p95" is
result["tpot_ms"]["p95"]), its unit, its flat column name in a sweep's Parquet rows and in
`evaluate_points` (None for what no sweep keeps: lists, access counts, the replay's own figures),
the pandas dtype of that column, which engines report it, and a one-line definition. Everything that names metrics
reads them from here: `summarize` and `summarize_replay` nest their values by these keys (and
refuse a key the catalogue does not list, or a missing one), the analytic frame and the sweep take
their columns and dtypes from here, validation its time parts, and the tables of docs/metrics.md
are rendered from it (`cosmosim.results.metrics_doc`; a test keeps them equal).

Adding a metric: one entry here, plus its computation in `summarize` (and in the analytic frame
when it has a column). The catalogue order is the column order of a sweep's rows; results folders
on disk hold the columns of their day, so tests/test_catalog.py keeps those first and unchanged.
The order of a result dict's keys is the order its builder computes them in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

MODELLED = ("des", "analytic")  # the engines that predict (both build their result with `summarize`)
MEASURED = ("replay",)  # a real decode on this host (`cosmosim.engines.replay.run.summarize_replay`)
EVERY = MODELLED + MEASURED

# The sections of docs/metrics.md, in the order of its tables.
LATENCY, CACHE, MEMORY, ENERGY, TIME = "Latency", "Expert cache", "Memory", "Energy", "Time breakdown"
RESOLVED, REPLAY = "Resolved inputs", "Measured by replay"
SECTIONS = (LATENCY, CACHE, MEMORY, ENERGY, TIME, RESOLVED, REPLAY)

# The parts of validation's "where the error is" (cosmosim.host.validate): each time part, measured
# or modelled, is summed into one of them, so the replay's and the engines' parts can be compared.
ATTENTION_ROUTER_OVERHEAD, EXPERT_COMPUTE, FLASH_WAIT, LM_HEAD = ("attention_router_overhead", "expert_compute",
                                                                  "flash_wait", "lm_head")
# The groups of parts, by key prefix: `parts(TIME_GROUP)` names the time parts.
TIME_GROUP, ENERGY_GROUP, MEMORY_GROUP = "breakdown.time_ms_per_token", "breakdown.energy_mj_per_token", "memory_mb"
THROTTLE_GROUP = "throttle"  # TPOT as sustained load slows the device (cosmosim.device.thermal)
FIRST_MINUTE_S = 60.0
# `inputs` is the scenario's echo of every resolved input (Scenario.inputs): the scenario computes
# it, not the engine's summary. Its entries here are the resolved inputs a sweep keeps as columns.
RESULT_INPUTS = "inputs"


@dataclass(frozen=True)
class Metric:
    """One reported value, everywhere it appears."""

    key: str  # dotted path into the result dict
    unit: str
    section: str  # the docs/metrics.md table that lists it
    definition: str  # one line: what it is and how it is computed
    column: str | None = None  # flat name in sweep rows and evaluate_points; None: no sweep keeps it
    dtype: str | None = "Float64"  # pandas dtype of the value as a column; None: not a scalar (a list)
    engines: tuple[str, ...] = MODELLED  # which result dicts hold it
    compared_as: str | None = None  # time parts only: the validation part it is summed into

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(self.key.split("."))

    @property
    def part(self) -> str:
        """The last step of the path: a part's name within its group ("kv_cache" of memory_mb.kv_cache)."""
        return self.path[-1]


def _stat(stat: str, definition: str) -> Metric:
    return Metric(f"tpot_ms.{stat}", "ms", LATENCY, definition, column=f"tpot_ms_{stat}", engines=EVERY)


def _memory(part: str, definition: str) -> Metric:
    return Metric(f"{MEMORY_GROUP}.{part}", "MB", MEMORY, definition, column=f"memory_{part}_mb")


def _time(part: str, compared_as: str, definition: str, engines: tuple[str, ...] = MODELLED) -> Metric:
    column = f"time_{part}_ms" if engines != MEASURED else None  # sweeps only hold predictions
    return Metric(f"{TIME_GROUP}.{part}", "ms", TIME, definition, column=column, engines=engines,
                  compared_as=compared_as)


def _energy(part: str, definition: str) -> Metric:
    return Metric(f"{ENERGY_GROUP}.{part}", "mJ", ENERGY, definition, column=f"energy_{part}_mj")


def _accesses(name: str, definition: str, engines: tuple[str, ...] = EVERY) -> Metric:
    return Metric(f"accesses.{name}", "accesses", CACHE, definition, dtype="Int64", engines=engines)


def _resolved(name: str, unit: str, definition: str, dtype: str = "Float64") -> Metric:
    return Metric(f"{RESULT_INPUTS}.{name}", unit, RESOLVED, definition, column=name, dtype=dtype, engines=EVERY)


CATALOG: tuple[Metric, ...] = (
    _resolved("cache_experts", "experts", "experts the cache holds, all layers together (a policy that sizes its "
              "own cache: its size)", "Int64"),
    _resolved("cache_mb", "MB", "`cache_experts` × bytes per expert / 10^6"),
    _resolved("expert_mb", "MB", "bytes of one expert at the run's weight bits / 10^6"),
    _resolved("total_experts", "experts", "layers × experts per layer (0: a dense architecture)", "Int64"),
    _resolved("offloading_idle", "true/false", "the cache holds every expert: flash is read once per expert at most",
              "boolean"),
    _resolved("requests", "requests", "requests (sequences) replayed after the warm-up", "Int64"),
    _resolved("decode_tokens", "tokens", "decode tokens replayed: statistics over tokens are over these", "Int64"),

    Metric("ttft_ms", "ms", LATENCY, "mean over requests of the prefill pass's duration (all layers + LM head)",
           column="ttft_ms", engines=EVERY),
    _stat("mean", "mean of the decode passes' durations"),
    _stat("p50", "median of the decode passes' durations (numpy linear interpolation)"),
    _stat("p95", "95th percentile of the decode passes' durations (numpy linear interpolation)"),
    _stat("p99", "99th percentile of the decode passes' durations (numpy linear interpolation)"),
    Metric("tpot_ms_per_token", "ms", REPLAY, "every decode pass's measured duration, in order", dtype=None,
           engines=MEASURED),
    Metric("tokens_per_s", "tokens/s", LATENCY, "1000 / `tpot_ms.mean`", column="tokens_per_s", engines=EVERY),
    Metric("hit_rate", "fraction", CACHE, "(hits + late hits) / decode expert accesses", column="hit_rate",
           engines=EVERY),
    Metric("late_hit_rate", "fraction", CACHE, "late hits / decode expert accesses; a late hit is an access to an "
           "expert a prefetch is still reading", column="late_hit_rate"),
    Metric("hit_rate_per_layer", "fraction", CACHE, "`hit_rate` per target layer", dtype=None),
    Metric("prefill_hit_rate", "fraction", CACHE, "(hits + late hits) / accesses over prefill steps",
           column="prefill_hit_rate", engines=EVERY),
    _accesses("decode", "expert accesses of decode steps"),
    _accesses("hit", "decode accesses served from the cache"),
    _accesses("late_hit", "decode accesses to an expert a prefetch was still reading", MODELLED),
    _accesses("miss", "decode accesses that read the expert from flash"),
    _accesses("prefill", "expert accesses of prefill steps"),
    _accesses("prefill_miss", "prefill accesses that read the expert from flash"),
    Metric("flash_mb_per_token", "MB", CACHE, "mean over decode tokens of bytes read from flash during the token "
           "(demand misses + prefetches) / 10^6", column="flash_mb_per_token", engines=EVERY),
    Metric("flash_utilisation", "fraction", CACHE, "time the flash channel moved data / `simulated_s`",
           column="flash_utilisation"),
    Metric("peak_dram_mb", "MB", MEMORY, "resident weights + expert cache + KV cache + activations "
           "(the parts below)", column="peak_dram_mb"),
    _memory("resident_weights", "(embeddings + every layer's attention, norms and router + final norm + LM head) "
            "parameters × weight bits / 8; a dense model's FFN is resident too"),
    _memory("expert_cache", "the most experts the cache held at once × bytes per expert (at most the cache size)"),
    _memory("kv_cache", "2 (K and V) × layers × KV heads × head dim × 2 bytes × `--context-len`"),
    _memory("activations", "max(prompt tokens × (2 d + 2 f) × 2 bytes, vocab × 4 bytes of logits)"),
    Metric("energy_mj_per_token", "mJ", ENERGY, "mean over decode tokens of the token's energy (the parts below)",
           column="energy_mj_per_token"),
    # The modelled time parts, in the order the engines record them; then the replay's own.
    _time("nonexpert_compute", ATTENTION_ROUTER_OVERHEAD, "attention, router, norms: compute-bound operations"),
    _time("nonexpert_dram", ATTENTION_ROUTER_OVERHEAD, "attention, router, norms: memory-bound operations"),
    _time("expert_compute", EXPERT_COMPUTE, "expert FFNs when compute-bound (replay: each expert's SwiGLU and its "
          "gate, measured)", EVERY),
    _time("expert_dram", EXPERT_COMPUTE, "expert FFNs when memory-bound"),
    _time("flash_stall", FLASH_WAIT, "per step: end of the routed experts' last compute − router done − their "
          "compute time (waiting for flash)"),
    _time("layer_overhead", ATTENTION_ROUTER_OVERHEAD, "the profile's fixed per-layer overhead × layers"),
    _time("lm_head", LM_HEAD, "final norm + LM head (replay: and the argmax, measured)", EVERY),
    _time("attention_router", ATTENTION_ROUTER_OVERHEAD, "measured: the attention block (norm, q/k/v, RoPE, KV "
          "cache, SDPA, output projection), the FFN's norm and the router", MEASURED),
    _time("flash_wait", FLASH_WAIT, "measured: blocked on an expert's reads", MEASURED),
    _time("bookkeeping", ATTENTION_ROUTER_OVERHEAD, "measured: the rest of the pass (cache decisions, issuing "
          "reads, summing expert outputs, the loop)", MEASURED),
    _energy("flash", "bytes read from flash × flash J/byte"),
    _energy("dram", "(bytes read by the token's operations: weights, KV cache, logits + bytes written by flash "
            "reads) × DRAM J/byte"),
    _energy("compute", "FLOPs × J/FLOP"),
    _energy("static", "idle power × the token's latency"),
    Metric("prefetch.issued", "reads", CACHE, "prefetch reads started", column="prefetch_issued", dtype="Int64"),
    Metric("prefetch.accuracy", "fraction", CACHE, "prefetched experts the next step used / prefetched experts",
           column="prefetch_accuracy"),
    Metric("prefetch.wasted_mb", "MB", CACHE, "bytes of prefetched experts the next step did not use / 10^6",
           column="prefetch_wasted_mb"),
    Metric("simulated_s", "s", LATENCY, "simulated wall time of the whole replay (prefill + decode + the idle "
           "gaps between requests)", column="simulated_s"),
    Metric(f"{THROTTLE_GROUP}.tpot_first_minute_ms", "ms", LATENCY, "mean duration of the decode passes that end "
           f"within the first {FIRST_MINUTE_S:g} s of simulated time"),
    Metric(f"{THROTTLE_GROUP}.tpot_steady_ms", "ms", LATENCY, "mean duration of the decode passes that begin once "
           "the sustained load has reached the last point of the profile's throttle curves (the steady state); "
           "null without a throttle section or if the replay never gets there"),
    Metric(f"{THROTTLE_GROUP}.steady_from_s", "s", LATENCY, "simulated time at which the first steady-state "
           "decode pass began; null as above"),
    # Added after sweep format 1, whose columns keep their order: new columns come last.
    _time("shared_exposed", EXPERT_COMPUTE, "concurrent compute units only (a profile's compute_classes.concurrent): "
          "per step, how long the shared experts, beside the routed ones on the attention unit, run past them"),
    _time("miss_overhead", EXPERT_COMPUTE, "decode misses of the explicit cache (not `--loader mmap`) × the profile's `compute.miss_overhead_us` (CPU work each "
          "missed expert adds to its compute; 0 where the profile has none)"),
    Metric("read_mb", "MB", REPLAY, "bytes read from the expert file in all (slots are read whole) / 10^6",
           engines=MEASURED),
    Metric("wall_s", "s", REPLAY, "wall time of the replay", engines=MEASURED),
    Metric("read_mode", "–", REPLAY, "how expert reads bypass the page cache: `o_direct`, or `fadvise` (pages dropped before each read)",
           dtype="string", engines=MEASURED),
    Metric("dtype", "–", REPLAY, "the torch dtype of the replayed weights (`bfloat16`)", dtype="string", engines=MEASURED),
    Metric("threads", "threads", REPLAY, "torch's intra-op threads", dtype="Int64", engines=MEASURED),
    Metric("expert_mb", "MB", REPLAY, "bytes of one replayed expert's weights (its file slot is padded to 4 KiB) / 10^6",
           engines=MEASURED),
)

BY_KEY: dict[str, Metric] = {metric.key: metric for metric in CATALOG}
COLUMNS: tuple[Metric, ...] = tuple(metric for metric in CATALOG if metric.column is not None)


def column_of(key: str) -> str:
    column = BY_KEY[key].column
    if column is None:
        raise KeyError(f"metric {key!r} has no column")
    return column


def group(prefix: str, engine: str = MODELLED[0]) -> tuple[Metric, ...]:
    """The metrics under `prefix` ("memory_mb") that `engine` reports, in catalogue order."""
    return tuple(metric for metric in CATALOG if metric.key.startswith(prefix + ".") and engine in metric.engines)


def parts(prefix: str, engine: str = MODELLED[0]) -> tuple[str, ...]:
    """The part names of a group: ("resident_weights", "expert_cache", ...) for "memory_mb"."""
    return tuple(metric.part for metric in group(prefix, engine))


def computed_by(engine: str) -> tuple[Metric, ...]:
    """What the engine's own summary computes: every metric it reports but the scenario's inputs."""
    return tuple(metric for metric in CATALOG if engine in metric.engines and metric.path[0] != RESULT_INPUTS)


def check_keys(keys: Iterable[str], expected: tuple[Metric, ...], what: str) -> None:
    """ValueError unless `keys` are exactly the keys of `expected`: a metric computed but not
    catalogued, or catalogued but not computed, is a bug to catch on the first run."""
    keys, wanted = set(keys), {metric.key for metric in expected}
    if keys != wanted:
        raise ValueError(f"{what}: not in the metric catalogue: {sorted(keys - wanted)}; "
                         f"catalogued but not computed: {sorted(wanted - keys)}")


def nest(values: dict[str, object], engine: str) -> dict:
    """The result dict of `engine` from its metrics by key, nested along their paths in the order
    given (the JSON's key order); exactly the catalogue's metrics for it (`computed_by`)."""
    check_keys(values, computed_by(engine), f"the {engine} summary")
    result: dict = {}
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = result
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return result


def lookup(result: dict, metric: Metric):
    """The metric's value in a result dict."""
    for step in metric.path:
        result = result[step]
    return result
