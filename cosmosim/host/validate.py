"""`cosmosim validate`: the simulator and the analytical model against a real decode on this host.

    report = validate()           # calibrates first when no host profile fits; returns JSON-ready data

The matrix: every validation trace x cache sizes x {lru, belady}, plus kactive once per trace (the
paper's policy sets its own cache), at least MIN_CASES cases. Every case is replayed for real
`repeats` times, all cases once before any twice, so slow drift of the host spreads over the cases
instead of landing on one; its measured TPOT is the median over repeats of each replay's mean TPOT.
Each engine predicts the same case from the host profile; error = (predicted - measured) /
measured. Goal: median |error| <= 5 %, p95 <= 10 % (GOAL). The schema is in docs/validation.md.

Before the matrix, a profile calibrated earlier is probed (`cosmosim.host.probe`): a few seconds
of calibrate's own flash and GEMV measurements; a figure that drifted stops validation (DriftError)
before any replay, unless `recalibrate` (which calibrates first).

With `track` (the default), the host is calibrated again before every pass over the matrix (the
queue depth its replays use kept), into a scratch folder: this VM's flash and GEMV rates move by
30-70 % within minutes, more than any term of the model. Each case is then predicted from each
pass's profile, and its prediction is the median over the passes, as its measurement is the median
over its replays. Nothing is fitted on the cases: every figure still comes from calibrate's own
measurements.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cosmosim import runner
from cosmosim.device.policies import POLICIES
from cosmosim.engines.replay.compute import torch_threads
from cosmosim.engines.replay.run import HostModel, Progress
from cosmosim.engines.replay.weights import DTYPE_NAME, scaled_arch
from cosmosim.errors import InputError
from cosmosim.host.calibrate import METHOD, calibrate, load_record
from cosmosim.host.goals import BUDGET_S, DEFAULT_TOKENS, GOAL, MIN_CASES, MIN_REPEATS
from cosmosim.host.probe import check_drift, probe
from cosmosim.host.pagecache_check import check_page_cache
from cosmosim.inputs.arch import Architecture, get_arch
from cosmosim.inputs.profiles import DeviceProfile, host_profile_path, load_profile
from cosmosim.inputs.synthetic import sticky_trace
from cosmosim.inputs.trace import Trace, load_trace
from cosmosim.provenance import REPOSITORY
from cosmosim.results import catalog
from cosmosim.scenario.settings import RunConfig

VALIDATED_POLICIES = ("lru", "belady", "kactive")
ENGINES = ("des", "analytic")  # the engines whose predictions are compared with the replay
CACHE_FRACTIONS = (0.15, 0.85)  # cache sizes spread over this share of all experts
SYNTHETIC_STAYS = (0.3, 0.6, 0.9)  # the fixture traces' chance of keeping the last token's experts
SYNTHETIC_SEQUENCE, SYNTHETIC_SEQUENCES = 256, 10
REPLAY_SETUP_S = 0.5  # per replay beyond its decode time: cache allocation and page faults (planning only)


def _compared_parts(engine: str) -> dict[str, tuple[str, ...]]:
    """Validation part -> the engine's time parts summed into it (the catalogue's `compared_as`)."""
    compared: dict[str, tuple[str, ...]] = {}
    for metric in catalog.group(catalog.TIME_GROUP, engine):
        compared[metric.compared_as] = (*compared.get(metric.compared_as, ()), metric.part)
    return compared


# Where the time goes, measured (replay's breakdown) against predicted (the engines' breakdown):
# part -> (replay parts, engine parts), in the order of the engines' parts. Python and torch
# dispatch is the engines' layer_overhead; in the replay it falls partly in each measured part,
# mostly in attention_router and bookkeeping.
_MEASURED_PARTS = _compared_parts(catalog.MEASURED[0])
PART_MAP = {part: (_MEASURED_PARTS[part], predicted) for part, predicted in _compared_parts(ENGINES[0]).items()}


@dataclass(frozen=True)
class ValidationTrace:
    label: str
    trace: Trace
    synthetic: bool


@dataclass(frozen=True)
class Case:
    trace: ValidationTrace
    policy: str
    cache_experts: int | None  # None: the policy sets its own cache

    def config(self, tokens: int) -> RunConfig:
        return RunConfig(policy=self.policy, cache_experts=self.cache_experts, tokens=tokens)

    def describe(self) -> dict:
        return {"trace": self.trace.label, "synthetic": self.trace.synthetic, "policy": self.policy}


# ----------------------------------------------------------------------------- the matrix
def synthetic_traces(arch: Architecture) -> list[ValidationTrace]:
    """Sticky Markov routing (`cosmosim.inputs.synthetic`), one trace per SYNTHETIC_STAYS value: from poor
    to strong locality."""
    return [ValidationTrace(f"synthetic sticky stay={stay}",
                            sticky_trace(n_tokens=SYNTHETIC_SEQUENCE * SYNTHETIC_SEQUENCES, n_layers=arch.n_layers,
                                         n_experts=arch.n_experts, top_k=arch.top_k, seq_len=SYNTHETIC_SEQUENCE,
                                         stay=stay, seed=index), synthetic=True)
            for index, stay in enumerate(SYNTHETIC_STAYS)]


def validation_traces(paths: list[Path] | None, arch: Architecture) -> list[ValidationTrace]:
    """The given traces, else the shipped traces/*.npz recorded for `arch` (meta.target_arch; all of
    them when none is), else synthetic ones (labelled so)."""
    if paths:
        return [ValidationTrace(str(path), load_trace(path), synthetic=False) for path in paths]
    shipped = [ValidationTrace(str(path), load_trace(path), synthetic=False)
               for path in sorted((REPOSITORY / "traces").glob("*.npz"))]
    own = [trace for trace in shipped if trace.trace.meta.get("target_arch") == arch.name.split("/")[0]]
    return own or shipped or synthetic_traces(arch)


def cache_sizes(arch: Architecture, count: int) -> list[int]:
    """Up to `count` distinct cache sizes in experts, evenly over CACHE_FRACTIONS of all experts."""
    total = arch.n_layers * arch.n_experts
    sizes = np.round(np.linspace(*CACHE_FRACTIONS, count) * total).astype(int)
    return sorted({max(int(size), arch.top_k) for size in sizes})


def case_matrix(traces: list[ValidationTrace], arch: Architecture, min_cases: int = MIN_CASES) -> list[Case]:
    sized = [policy for policy in VALIDATED_POLICIES if POLICIES[policy].needs_cache_size]
    fixed = [policy for policy in VALIDATED_POLICIES if not POLICIES[policy].needs_cache_size]
    per_trace = math.ceil(min_cases / len(traces))
    n_sizes = max(1, math.ceil((per_trace - len(fixed)) / len(sized)))
    cases = []
    for trace in traces:
        cases += [Case(trace, policy, size) for size in cache_sizes(arch, n_sizes) for policy in sized]
        cases += [Case(trace, policy, None) for policy in fixed]
    return cases


# ----------------------------------------------------------------------------- errors
def _meets(absolute: np.ndarray) -> bool:
    median, p95 = np.percentile(absolute, [50, 95])
    return bool(median <= GOAL["median_abs_error_pct"] and p95 <= GOAL["p95_abs_error_pct"])


def error_summary(errors_pct: list[float], spreads_pct: list[float] | None = None) -> dict:
    """Median, p95 (numpy linear interpolation) and max of |error|, and whether GOAL is met. With each
    case's measured spread (max - min over its repeats / median, %): a case whose |error| is within its
    own spread counts as agreeing (0), any other keeps its whole |error|; whether those figures meet
    GOAL, how many cases are outside both the p95 goal and their spread, and the verdict: `met`, `met
    within spread` (only once the cases within their own run-to-run spread are allowed) or `missed`."""
    absolute = np.abs(np.asarray(errors_pct, dtype=float))
    median, p95 = (float(v) for v in np.percentile(absolute, [50, 95]))
    summary = {"median_abs_error_pct": median, "p95_abs_error_pct": p95, "max_abs_error_pct": float(absolute.max()),
               "meets_goal": _meets(absolute)}
    if spreads_pct is not None:
        outside = absolute > np.asarray(spreads_pct, dtype=float)
        summary["meets_goal_within_spread"] = _meets(np.where(outside, absolute, 0.0))
        summary["cases_outside_goal_and_spread"] = int((outside & (absolute > GOAL["p95_abs_error_pct"])).sum())
        summary["verdict"] = ("met" if summary["meets_goal"] else
                              "met within spread" if summary["meets_goal_within_spread"] else "missed")
    return summary


def part_summary(rows: list[dict], engine: str) -> dict[str, dict]:
    """Per part of a token's time: the median measured and predicted ms per token over the cases,
    and the median of (predicted - measured) / measured TPOT, in percent: each part's share of the
    TPOT error. The shares of one case add up to its TPOT error."""
    summary = {}
    for part in PART_MAP:
        measured = np.array([row["parts_ms"][part]["measured"] for row in rows])
        predicted = np.array([row["parts_ms"][part][engine] for row in rows])
        tpot = np.array([row["measured_tpot_ms"] for row in rows])
        summary[part] = {"measured_ms": float(np.median(measured)), "predicted_ms": float(np.median(predicted)),
                         "error_share_pct": float(np.median(100 * (predicted - measured) / tpot))}
    return summary


def _predict(profile: DeviceProfile, cases: list[Case], arch: Architecture, tokens: int,
             engines: list[str]) -> list[dict[str, dict]]:
    return [{engine: runner.run(profile, case.trace.trace, arch, case.config(tokens), engine=engine) for engine in engines}
            for case in cases]


def _host_profile(path: Path, arch: Architecture, recalibrate: bool, directory: Path | None, quick: bool,
                  say: Progress) -> tuple[DeviceProfile, dict, bool]:
    """The host profile at `path`, calibrated first when missing, asked for, or made for other
    shapes, dtype, effort or calibration method than this validation's."""
    record = load_record(path)
    wanted = {"arch": arch.name, "dtype": DTYPE_NAME, "effort": "quick" if quick else "full", "method": METHOD}
    fits = path.is_file() and record is not None and all(record.get(key) == value for key, value in wanted.items())
    if recalibrate or not fits:
        say(f"calibrating this host for {arch.name} ({wanted['effort']})")
        calibrate(arch, out=path, directory=directory, quick=quick, progress=say)
        record = load_record(path)
    return load_profile(path), record, recalibrate or not fits


def _pass_profile(arch: Architecture, folder: Path, index: int, directory: Path | None, quick: bool,
                  queue_depth: int, say: Progress) -> DeviceProfile:
    """A fresh calibration of this host before pass `index`, with the replays' queue depth kept."""
    say(f"pass {index + 1}: calibrating this host again ({queue_depth} reads in flight kept)")
    profile, _ = calibrate(arch, out=folder / f"pass-{index + 1}.toml", directory=directory, quick=quick,
                           progress=say, queue_depth=queue_depth)
    return profile


def _tracked(profile: DeviceProfile) -> dict:
    """The figures of a pass's profile that the host moves most, for the report."""
    flash, compute = profile.flash, profile.compute
    return {"sha256": profile.sha256, "flash_mb_per_s_at_max_request": flash.bandwidth_bytes_per_s(flash.max_request_bytes) / 1e6,
            "gemv_gflops": compute.gemv_flops_per_s / 1e9, "layer_overhead_us": compute.layer_overhead_s * 1e6,
            "miss_overhead_us": compute.miss_overhead_s * 1e6}


def validate(*, traces: list[Path] | None = None, arch: str | Architecture = "wearable-moe", scale: int = 1,
             repeats: int = MIN_REPEATS, tokens: int | None = None, budget_s: float = BUDGET_S,
             min_cases: int = MIN_CASES, profile: Path | None = None, recalibrate: bool = False,
             directory: Path | None = None, quick: bool = False, pagecache: bool = True, track: bool = True,
             progress: Progress | None = None) -> dict:
    """Replay, simulate and model every case; return the report (docs/validation.md).

    `tokens` per replay (prompt included) defaults to DEFAULT_TOKENS, fewer when the simulator
    predicts that the replays would not fit `budget_s`. `profile` is the host profile's path
    (default: the calibrated one); `quick` calibrates (when needed) with tiny measurements. `pagecache`
    adds the page-cache model against this kernel (`cosmosim.host.pagecache_check`) on the first trace.
    `track` calibrates again before every pass (the module's docstring).
    """
    say = progress or (lambda message: None)
    started = time.perf_counter()
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < MIN_REPEATS:
        raise InputError(f"--repeats: expected an integer >= {MIN_REPEATS} (a median of fewer runs is not robust), got {repeats!r}")
    if not (isinstance(budget_s, (int, float)) and math.isfinite(budget_s) and budget_s > 0):
        raise InputError(f"--budget-min: expected a finite number of minutes > 0, got {budget_s / 60!r}")
    target = scaled_arch(arch if isinstance(arch, Architecture) else get_arch(arch), scale)
    profile_path = Path(profile) if profile is not None else host_profile_path()
    host, record, calibrated_now = _host_profile(profile_path, target, recalibrate, directory, quick, say)
    validation = validation_traces(traces, target)
    cases = case_matrix(validation, target, min_cases)
    engines = list(ENGINES)

    with torch_threads(record["threads"]), HostModel(target, directory, progress=say) as model:
        probed = None
        if not calibrated_now:  # a profile measured earlier: has this host drifted from it?
            say("probing this host against its profile (flash read rate, GEMV)")
            probed = probe(host, record, model.reader, model.layout.file_bytes, target)
            check_drift(probed)
        planned = tokens or DEFAULT_TOKENS
        recalibrations = (repeats - (1 if calibrated_now else 0)) if track else 0
        predictions = _predict(host, cases, target, planned, engines)
        expected_s = repeats * sum(p["des"]["simulated_s"] + REPLAY_SETUP_S for p in predictions)
        left_s = budget_s - (time.perf_counter() - started) - recalibrations * record.get("wall_s", 0.0)
        if tokens is None and expected_s > left_s:
            prompt = RunConfig().prompt_tokens
            planned = max(prompt + 8, int(planned * left_s / expected_s))
            predictions = _predict(host, cases, target, planned, engines)
        say(f"{len(cases)} cases x {repeats} replays of {planned} tokens; engines: {', '.join(engines)}"
            + ("; the host calibrated before each pass" if track else ""))
        runs: list[list[dict]] = [[] for _ in cases]
        scenarios = [runner.prepare(host, case.trace.trace, target, case.config(planned)) for case in cases]
        pass_profiles = [host] * repeats
        with tempfile.TemporaryDirectory(prefix="cosmosim-validate-") as folder:
            for repeat in range(repeats):
                if track and (repeat > 0 or not calibrated_now):
                    pass_profiles[repeat] = _pass_profile(target, Path(folder), repeat, directory, quick,
                                                          host.flash.queue_depth, say)
                for index, (case, scenario) in enumerate(zip(cases, scenarios)):
                    done = repeat * len(cases) + index
                    say(f"replay {done + 1}/{repeats * len(cases)}: {case.trace.label}, {case.policy}, "
                        f"{scenario.cache_capacity} experts ({time.perf_counter() - started:.0f} s)")
                    runs[index].append(model.replay(scenario))
        read_mode = model.reader.mode
    by_pass = [predictions if profile is host else _predict(profile, cases, target, planned, engines)
               for profile in pass_profiles]

    page_cases = []
    if pagecache:
        say(f"page cache: the model against this kernel on {validation[0].label} ({time.perf_counter() - started:.0f} s)")
        page_cases = [case.to_dict() for case in check_page_cache(validation[0].trace, arch=target,
                                                                  label=validation[0].label, folder=directory)]
    rows = [_case_row(case, case_runs, [pass_predictions[index] for pass_predictions in by_pass])
            for index, (case, case_runs) in enumerate(zip(cases, runs))]
    notes = []
    if any(trace.synthetic for trace in validation):
        notes.append("no traces/*.npz: the traces are synthetic (cosmosim.inputs.synthetic.sticky_trace)")
    return {
        "goal": GOAL,
        "summary": {engine: error_summary([row["predicted"][engine]["error_pct"] for row in rows],
                                          [row["measured_spread_pct"] for row in rows]) for engine in engines},
        "parts": {engine: part_summary(rows, engine) for engine in engines},
        "cases": rows,
        "engines": engines,
        "arch": target.name, "scale": scale, "repeats": repeats, "tokens_per_replay": planned,
        "decode_tokens_per_replay": scenarios[0].workload.n_decode_tokens,
        "traces": [{"label": trace.label, "synthetic": trace.synthetic} for trace in validation],
        "profile": str(profile_path), "profile_sha256": host.sha256, "calibrated_now": calibrated_now,
        "probe": probed,
        "track": track, "passes": [_tracked(profile) for profile in pass_profiles],
        "read_mode": read_mode, "threads": record["threads"],
        "pagecache": page_cases,
        "wall_s": time.perf_counter() - started,
        "notes": notes,
    }


def _median_index(values: list[float]) -> int:
    """The index of the median of `values` (the upper middle one for an even count)."""
    return int(np.argsort(values)[len(values) // 2])


def _parts_ms(run: dict, predictions: dict[str, dict]) -> dict[str, dict]:
    """Each PART_MAP part in ms per decode token: measured in `run` and predicted by each engine."""
    def total(breakdown: dict, names: tuple[str, ...]) -> float:
        return sum(breakdown["time_ms_per_token"][name] for name in names)

    return {part: {"measured": total(run["breakdown"], measured),
                   **{engine: total(result["breakdown"], predicted) for engine, result in predictions.items()}}
            for part, (measured, predicted) in PART_MAP.items()}


def _case_row(case: Case, runs: list[dict], by_pass: list[dict[str, dict]]) -> dict:
    """One case: its replays (one per pass) and each engine's prediction from each pass's profile. Its
    measured TPOT is the median replay's, its prediction the median over the passes' profiles (one
    calibration gone wrong does not decide it); the parts are those of the two medians, so they add up
    to the error."""
    means = [run["tpot_ms"]["mean"] for run in runs]
    measured = means[_median_index(means)]
    passes = {engine: [predictions[engine]["tpot_ms"]["mean"] for predictions in by_pass] for engine in by_pass[0]}
    median = {engine: by_pass[_median_index(values)][engine] for engine, values in passes.items()}
    inputs = runs[0]["inputs"]
    return {
        **case.describe(),
        "cache_experts": inputs["cache_experts"], "cache_mb": inputs["cache_mb"],
        "hit_rate": runs[0]["hit_rate"], "flash_mb_per_token": runs[0]["flash_mb_per_token"],
        "measured_tpot_ms": measured, "measured_tpot_ms_runs": means,
        "measured_spread_pct": 100 * (max(means) - min(means)) / measured,
        "measured_ttft_ms": float(np.median([run["ttft_ms"] for run in runs])),
        "parts_ms": _parts_ms(runs[_median_index(means)], median),
        "predicted": {engine: {"tpot_ms": result["tpot_ms"]["mean"], "tpot_ms_passes": passes[engine],
                               "ttft_ms": result["ttft_ms"], "hit_rate": result["hit_rate"],
                               "error_pct": 100 * (result["tpot_ms"]["mean"] - measured) / measured}
                      for engine, result in median.items()},
    }
