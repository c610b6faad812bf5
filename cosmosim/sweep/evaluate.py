"""Compute points: one tidy row per point with every input and metric (columns in docs/sweeps.md).

`evaluate_part` is what a worker runs, in this process, a local process pool or a Dask worker.
A point with override axes runs a variant of its architecture (cosmosim.inputs.arch_variants) on
its trace when the trace routes the variant's top-k of E, else on one synthesised with the
variant's shape like it (made once, kept in the cache folder), else it is refused with the reason.
A point whose combination the simulator rejects (say, a device budget too small for the cache)
becomes a row with its `error` and no metrics, so one infeasible corner does not sink a sweep;
any other exception is a bug and stops the sweep (finished parts are kept).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from functools import lru_cache

import numpy as np
import pandas as pd

from cosmosim.engines.analytic.frame import evaluate_points, frame_column
from cosmosim.errors import InputError
from cosmosim.files import cache_dir
from cosmosim.inputs.arch import FULL_RANK, Architecture
from cosmosim.inputs.arch_variants import OVERRIDES, derive, variant_name
from cosmosim.inputs.profiles import DeviceProfile, load_profile
from cosmosim.inputs.synthetic import _synthesis_version, synthesize, synthesized_like
from cosmosim.inputs.trace import Trace, load_trace, save_trace
from cosmosim.provenance import sha256_file
from cosmosim.results import catalog
from cosmosim.runner import RunConfig, run
from cosmosim.scenario.build import resolve_arch
from cosmosim.scenario.settings import MMAP
from cosmosim.sweep.grid import Point
from cosmosim.sweep.spec import TraceFacts

# column -> pandas dtype; nullable dtypes, because a column may be empty for some points.
INPUT_COLUMNS = {
    "point_id": "int64", "profile": "string", "arch": "string", "wd_rank": "Int64", "trace": "string",
    "policy": "string", "prefetch": "string", "cache_mb_requested": "Float64", "cache_experts_requested": "Int64",
    "cache_fraction": "Float64", "per_layer_cache": "boolean", "cache_shared_experts": "boolean",
    "weight_bits": "Float64", "expert_bits": "Float64", "shared_bits": "Float64", "hot_expert_bits": "Float64",
    "hot_experts_requested": "Int64", "hot_mb_requested": "Float64", "tokens": "Int64", "prompt_tokens": "int64",
    "context_len": "int64", "engine": "string",
    "exrep_target": "Float64", "synth_seed": "Int64", "loader": "string", "madvise": "string", "idle_gap_s": "Float64",
    **dict.fromkeys(OVERRIDES, "Int64"),  # the override axes' values (<NA>: not swept, the base's own)
}
TRACE_COLUMNS = {
    "trace_sha256": "string", "trace_tokens": "Int64", "trace_exrep": "Float64", "trace_model_wd_rank": "Int64",
    "model_config": "string", "val_loss": "Float64", "bles_lambda": "Float64", "bles_tau": "Float64",
    "train_steps": "Int64",
}
# Resolved inputs and metrics: one column per catalogue entry that has one (cosmosim.results.catalog).
RESULT_COLUMNS = {metric.column: metric.dtype for metric in catalog.COLUMNS}
TEXT_COLUMNS = {"warnings": "string", "error": "string"}
COLUMNS = {**INPUT_COLUMNS, **TRACE_COLUMNS, **RESULT_COLUMNS, **TEXT_COLUMNS}


# Each worker process loads a file once, however many of its points use it.
@lru_cache(maxsize=8)
def _trace(path: str, sha256: str) -> Trace:
    if sha256_file(path) != sha256:
        raise InputError(f"{path}: changed since the sweep spec was read (sha256 differs); run the sweep again")
    return load_trace(path)


@lru_cache(maxsize=8)
def _synthetic(like_path: str, like_sha256: str, exrep_target: float, seed: int) -> tuple[str, Trace]:
    """The trace synthesised like `like_path` at `exrep_target` (from the cache folder once made), and its path."""
    _trace(like_path, like_sha256)  # the source is checked as any trace is
    path = str(synthesized_like(like_path, like_sha256, exrep_target, seed))
    return path, load_trace(path)


def shaped_like(like: Trace, n_experts: int, top_k: int, exrep_target: float, seed: int) -> Trace:
    """A trace routing top-`top_k` of `n_experts` like `like`: its tokens, layers, sequence length and ExRep
    (`exrep_target`), switching slot by slot under a Zipf popularity (`synthesize` without `like`: a
    popularity over other experts cannot be carried over). InputError if the synthesiser cannot make it."""
    longest = int(np.diff(np.append(like.sequence_starts(), like.n_tokens)).max())
    trace = synthesize(exrep_target=exrep_target, n_layers=like.n_layers, n_experts=n_experts, top_k=top_k,
                       n_tokens=like.n_tokens, seq_len=max(longest, 2), seed=seed)
    made = trace.meta["synthetic"]
    made["like"] = {"path": str(like.path) if like.path else None,
                    "sha256": sha256_file(like.path) if like.path else None,
                    "shape": [like.n_layers, like.n_experts, like.top_k]}
    made["method"] += "; an architecture variant's shape, with the tokens, layers and sequence length of `like`"
    return trace


@lru_cache(maxsize=8)
def _shaped(like_path: str, like_sha256: str, n_experts: int, top_k: int, exrep_target: float,
            seed: int) -> tuple[str, Trace]:
    """`shaped_like` the trace at `like_path`, made once into the cache folder like `_synthetic`'s, and its path."""
    like = _trace(like_path, like_sha256)
    name = (f"{like_sha256[:16]}-experts{n_experts}-top{top_k}-exrep{exrep_target:.6f}-seed{seed}-"
            f"{_synthesis_version()}.npz")
    path = cache_dir() / "synthetic" / name
    if not path.is_file():
        save_trace(shaped_like(like, n_experts, top_k, exrep_target, seed), path)
    return str(path), load_trace(path)


@lru_cache(maxsize=16)
def _profile(path: str) -> DeviceProfile:
    return load_profile(path)


def _trace_columns(facts: TraceFacts | None, synthetic: Trace | None) -> dict:
    """The trace's facts; a synthetic one keeps its source's name and sha256 but no training of its own."""
    if facts is None:
        return {}
    if synthetic is not None:
        return {"trace_sha256": facts.sha256, "trace_tokens": synthetic.n_tokens,
                "trace_exrep": synthetic.meta["synthetic"]["measured_exrep"]}
    training = facts.training
    return {
        "trace_sha256": facts.sha256, "trace_tokens": facts.n_tokens, "trace_exrep": facts.exrep,
        "trace_model_wd_rank": facts.model_wd_rank, "model_config": training.get("config_name"),
        "val_loss": training.get("val_loss"), "bles_lambda": training.get("bles_lambda"),
        "bles_tau": training.get("bles_tau"), "train_steps": training.get("steps"),
    }


@dataclass(frozen=True)
class Resolved:
    """A point made concrete: its input columns, and what it runs with (or why it cannot run)."""

    row: dict
    trace_path: str | None
    trace: Trace | None
    arch: Architecture  # the variant (the base's WD rank or the point's), or the base if the variant is refused
    config: RunConfig
    error: str | None  # set when the point is refused before any run (an ExRep its trace cannot reach)
    base: Architecture | None = None  # the architecture the overrides apply to
    note: str | None = None  # a warning of the point's own: its trace was synthesised for the variant's shape


def _variant(point: Point, base: Architecture) -> tuple[Architecture, str | None]:
    """The point's architecture (its overrides, then its WD rank), or the base and why it cannot be built."""
    try:
        arch = derive(base, dict(point.overrides))
        if point.wd_rank is not None:
            arch = arch.with_wd_rank(None if point.wd_rank == FULL_RANK else point.wd_rank)
        return arch, None
    except InputError as refused:
        return base, str(refused)


def _resolve(point: Point, engine: str) -> Resolved:
    facts = point.trace_facts
    trace_path, trace, synthetic, error, note = None if facts is None else facts.path, None, None, None, None
    if facts is not None:
        trace = _trace(facts.path, facts.sha256)
    base = resolve_arch(point.arch, trace)
    arch, error = _variant(point, base)
    fits = facts is None or not arch.is_moe or (facts.n_experts, facts.top_k) == (arch.n_experts, arch.top_k)
    if error is not None:
        pass
    elif not fits:  # only a variant's shape can differ from its trace's (the spec checks the rest when it loads)
        target = facts.exrep if point.exrep is None else point.exrep
        shape = f"top-{arch.top_k} of {arch.n_experts} experts"
        try:
            trace_path, synthetic = _shaped(facts.path, facts.sha256, arch.n_experts, arch.top_k, target,
                                            point.synth_seed or 0)
            trace = synthetic
            note = (f"trace: synthesised like {point.trace} (top-{facts.top_k} of {facts.n_experts} experts) "
                    f"with {arch.name}'s {shape}, ExRep {target:.4f}")
        except InputError as refused:
            error = (f"trace: {point.trace} routes top-{facts.top_k} of {facts.n_experts} experts, not {arch.name}'s "
                     f"{shape}, and no trace of that shape can be synthesised like it: {refused}")
    elif point.exrep is not None and point.exrep > facts.highest_exrep + 1e-12:
        error = (f"exrep {point.exrep:g}: outside the range {point.trace}'s expert popularity reaches, "
                 f"[0, {facts.highest_exrep:.4f}]")
    elif point.exrep is not None:
        trace_path, synthetic = _synthetic(facts.path, facts.sha256, point.exrep, point.synth_seed)
        trace = synthetic
    config = point.config
    if point.cache_fraction is not None:
        config = replace(config, cache_experts=max(arch.top_k, round(point.cache_fraction * arch.total_experts)))
    routed = arch.is_moe
    overrides = dict(point.overrides)
    row = {
        "point_id": point.point_id, "profile": point.profile, "arch": variant_name(base, overrides),
        "wd_rank": arch.wd_rank, "trace": point.trace, "policy": config.policy if routed else None,
        "prefetch": config.prefetch if routed else None, "cache_mb_requested": point.config.cache_mb,
        "cache_experts_requested": point.config.cache_experts, "cache_fraction": point.cache_fraction,
        "per_layer_cache": config.per_layer_cache if routed else None,
        "cache_shared_experts": config.cache_shared_experts if routed else None, "weight_bits": config.weight_bits,
        "expert_bits": config.precision.routed if routed else None,
        "hot_expert_bits": config.hot_expert_bits if routed else None,
        "hot_experts_requested": config.hot_experts if routed else None, "hot_mb_requested": config.hot_mb if routed else None,
        "shared_bits": config.precision.shared if arch.n_shared_experts else None,
        "tokens": config.tokens, "prompt_tokens": config.prompt_tokens, "context_len": config.context_len,
        "engine": engine, "exrep_target": point.exrep, "synth_seed": point.synth_seed, "loader": config.loader,
        "madvise": config.madvise if config.loader == MMAP else None, "idle_gap_s": config.idle_gap_s,
        **{name: overrides.get(name) for name in OVERRIDES},
        **_trace_columns(facts, synthetic),
    }
    return Resolved(row, trace_path, trace, arch, config, error, base, note)


def _warnings(*notes: str | None) -> str | None:
    return "; ".join(note for note in notes if note) or None


def evaluate_point(point: Point, engine: str) -> dict:
    """The row of one point: its inputs, its trace's facts, and the run's metrics (or its error)."""
    point_run = _resolve(point, engine)
    if point_run.error:
        return {**point_run.row, "error": point_run.error}
    try:
        result = run(_profile(point.profile_path), point_run.trace, point_run.arch, point_run.config, engine)
    except InputError as error:
        return {**point_run.row, "warnings": point_run.note, "error": str(error)}
    metrics = {metric.column: catalog.lookup(result, metric) for metric in catalog.COLUMNS}
    return {**point_run.row, **metrics, "warnings": _warnings(point_run.note, *result["warnings"])}


def _analytic_rows(points: list[Point]) -> list[dict]:
    """Every point of a part through `evaluate_points` at once: a trace's statistics are computed
    once per worker, then each point is a table lookup (the numbers `run --engine analytic` gives)."""
    resolved = [_resolve(point, "analytic") for point in points]
    # Experts of two sizes have no vectorised form (the frame's cache sizes are counts): those run one by one.
    one_by_one = {i: evaluate_point(point, "analytic") for i, (point, done) in enumerate(zip(points, resolved))
                  if done.error is None and done.config.hot_expert_bits is not None}
    runnable = [(point, done) for i, (point, done) in enumerate(zip(points, resolved))
                if done.error is None and i not in one_by_one]
    frame = pd.DataFrame([{
        "profile": point.profile_path, "arch": done.base.name, **dict(point.overrides),
        "wd_rank": (done.arch.wd_rank or FULL_RANK) if done.arch.is_moe else None,
        "trace": done.trace_path, **asdict(done.config),
    } for point, done in runnable])
    evaluated = iter(evaluate_points(frame, percentiles=True, on_error="record").to_dict("records") if runnable else ())
    rows = []
    for i, done in enumerate(resolved):
        if i in one_by_one:
            rows.append(one_by_one[i])
            continue
        metrics = {"error": done.error} if done.error else next(evaluated)
        error = metrics.get("error")
        if isinstance(error, str):
            rows.append({**done.row, "warnings": done.note, "error": error})
            continue
        values = {metric.column: metrics[frame_column(metric)] for metric in catalog.COLUMNS}
        rows.append({**done.row, **values, "warnings": done.note})
    return rows


def as_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows in the sweep's fixed columns and dtypes (missing values become <NA>)."""
    frame = pd.DataFrame.from_records(rows, columns=list(COLUMNS))
    return frame.astype(COLUMNS)


def evaluate_part(points: list[Point], engine: str) -> pd.DataFrame:
    """The rows of a batch of points: the unit of work a worker runs and a part file holds."""
    if engine == "analytic":
        return as_frame(_analytic_rows(points))
    return as_frame([evaluate_point(point, engine) for point in points])
