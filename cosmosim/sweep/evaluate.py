"""Compute points: one tidy row per point with every input and metric (columns in docs/sweeps.md).

`evaluate_part` is what a worker runs, in this process, a local process pool or a Dask worker.
A point whose combination the simulator rejects (say, a device budget too small for the cache)
becomes a row with its `error` and no metrics, so one infeasible corner does not sink a sweep;
any other exception is a bug and stops the sweep (finished parts are kept).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from functools import lru_cache

import pandas as pd

from cosmosim.engines.analytic.frame import evaluate_points, frame_column
from cosmosim.errors import InputError
from cosmosim.inputs.arch import FULL_RANK, Architecture
from cosmosim.inputs.profiles import DeviceProfile, load_profile
from cosmosim.inputs.synthetic import synthesized_like
from cosmosim.inputs.trace import Trace, load_trace
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
    "weight_bits": "int64", "tokens": "Int64", "prompt_tokens": "int64", "context_len": "int64", "engine": "string",
    "exrep_target": "Float64", "synth_seed": "Int64", "loader": "string", "madvise": "string", "idle_gap_s": "Float64",
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
    arch: Architecture
    config: RunConfig
    error: str | None  # set when the point is refused before any run (an ExRep its trace cannot reach)


def _resolve(point: Point, engine: str) -> Resolved:
    facts = point.trace_facts
    trace_path, trace, synthetic, error = None if facts is None else facts.path, None, None, None
    if facts is not None:
        trace = _trace(facts.path, facts.sha256)
    if point.exrep is not None and point.exrep > facts.highest_exrep + 1e-12:
        error = (f"exrep {point.exrep:g}: outside the range {point.trace}'s expert popularity reaches, "
                 f"[0, {facts.highest_exrep:.4f}]")
    elif point.exrep is not None:
        trace_path, synthetic = _synthetic(facts.path, facts.sha256, point.exrep, point.synth_seed)
        trace = synthetic
    arch = resolve_arch(point.arch, trace)
    if point.wd_rank is not None:
        arch = arch.with_wd_rank(None if point.wd_rank == FULL_RANK else point.wd_rank)
    config = point.config
    if point.cache_fraction is not None:
        config = replace(config, cache_experts=max(arch.top_k, round(point.cache_fraction * arch.total_experts)))
    routed = arch.is_moe
    row = {
        "point_id": point.point_id, "profile": point.profile, "arch": arch.name, "wd_rank": arch.wd_rank,
        "trace": point.trace, "policy": config.policy if routed else None,
        "prefetch": config.prefetch if routed else None, "cache_mb_requested": point.config.cache_mb,
        "cache_experts_requested": point.config.cache_experts, "cache_fraction": point.cache_fraction,
        "per_layer_cache": config.per_layer_cache if routed else None,
        "cache_shared_experts": config.cache_shared_experts if routed else None, "weight_bits": config.weight_bits,
        "tokens": config.tokens, "prompt_tokens": config.prompt_tokens, "context_len": config.context_len,
        "engine": engine, "exrep_target": point.exrep, "synth_seed": point.synth_seed, "loader": config.loader,
        "madvise": config.madvise if config.loader == MMAP else None, "idle_gap_s": config.idle_gap_s,
        **_trace_columns(facts, synthetic),
    }
    return Resolved(row, trace_path, trace, arch, config, error)


def evaluate_point(point: Point, engine: str) -> dict:
    """The row of one point: its inputs, its trace's facts, and the run's metrics (or its error)."""
    point_run = _resolve(point, engine)
    if point_run.error:
        return {**point_run.row, "error": point_run.error}
    try:
        result = run(_profile(point.profile_path), point_run.trace, point_run.arch, point_run.config, engine)
    except InputError as error:
        return {**point_run.row, "error": str(error)}
    metrics = {metric.column: catalog.lookup(result, metric) for metric in catalog.COLUMNS}
    return {**point_run.row, **metrics, "warnings": "; ".join(result["warnings"]) or None}


def _analytic_rows(points: list[Point]) -> list[dict]:
    """Every point of a part through `evaluate_points` at once: a trace's statistics are computed
    once per worker, then each point is a table lookup (the numbers `run --engine analytic` gives)."""
    resolved = [_resolve(point, "analytic") for point in points]
    runnable = [(point, done) for point, done in zip(points, resolved) if done.error is None]
    frame = pd.DataFrame([{
        "profile": point.profile_path, "arch": done.arch.name,
        "wd_rank": (done.arch.wd_rank or FULL_RANK) if done.arch.is_moe else None,
        "trace": done.trace_path, **asdict(done.config),
    } for point, done in runnable])
    evaluated = iter(evaluate_points(frame, percentiles=True, on_error="record").to_dict("records") if runnable else ())
    rows = []
    for done in resolved:
        metrics = {"error": done.error} if done.error else next(evaluated)
        error = metrics.get("error")
        if isinstance(error, str):
            rows.append({**done.row, "error": error})
            continue
        values = {metric.column: metrics[frame_column(metric)] for metric in catalog.COLUMNS}
        rows.append({**done.row, **values})
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
