"""`cosmosim calibrate`, `replay`, `validate`: measure this host, decode for real, compare with the models."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from cosmosim.cli.app import app
from cosmosim.cli.run import POLICY_HELP
from cosmosim.files import atomic_write_json, check_outputs
from cosmosim.host.goals import BUDGET_S, DEFAULT_TOKENS, GOAL, MIN_CASES, MIN_REPEATS

BUSY_LOAD_PER_CPU = 0.5  # cosmosim.host.calibrate.BUSY_LOAD_PER_CPU (torch-free here; a test checks they agree)
from cosmosim.scenario.settings import RunConfig

_DEFAULTS = RunConfig()
_ARCH_HELP = "Target architecture whose shapes are measured and replayed (see `cosmosim arch`)."
_SCALE_HELP = "Divide the experts' FFN width by this factor (smaller expert file and reads); the rest keeps its size."
_DIR_HELP = "Parent folder for scratch files (a fresh subfolder, removed afterwards). Default: ~/.cache/cosmosim/scratch."
_THREADS_HELP = "torch intra-op threads. Default: all cores but one (the I/O threads need one)."


def _progress(quiet: bool):
    console = Console(stderr=True)
    return None if quiet else (lambda message: console.print(f"[dim]{message}[/]"))


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


@app.command()
def calibrate(
    out: Path = typer.Option(None, "--out", help="Where to write the profile (.toml). Default: ~/.cache/cosmosim/profiles/host.toml, the `host` profile."),
    directory: Path = typer.Option(None, "--dir", help=_DIR_HELP + " Must be on the disk replay will read from."),
    arch: str = typer.Option("wearable-moe", help=_ARCH_HELP),
    scale: int = typer.Option(1, help=_SCALE_HELP),
    threads: int = typer.Option(None, help=_THREADS_HELP),
    quick: bool = typer.Option(False, help="Tiny, short measurements (seconds; for trying it out, not for validation)."),
    force: bool = typer.Option(False, "--force", help=f"Calibrate even when the machine is busy (1-minute load average above {BUSY_LOAD_PER_CPU} per CPU); warn in one line instead of refusing."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress lines."),
) -> None:
    """Measure this host (cold storage reads, DRAM copy, torch GEMV/GEMM, per-layer overhead) and write its profile.

    Reads bypass the page cache (O_DIRECT, else posix_fadvise DONTNEED); a filesystem in RAM is refused.
    Refuses (exit 2) when the machine is busy: 1-minute load average above 0.5 per CPU (--force: a warning).
    The profile records when (UTC) and under what load it was measured.
    Takes about a minute (--quick: seconds). Example: cosmosim calibrate --dir /data/tmp
    """
    from cosmosim.host.calibrate import calibrate as calibrate_host  # torch: loaded by this command only

    check_outputs({"--out": out})
    stderr = Console(stderr=True)
    profile, path = calibrate_host(arch, scale=scale, threads=threads, out=out, directory=directory, quick=quick,
                                   progress=_progress(quiet), refuse_busy=not force,
                                   warn=lambda message: stderr.print(message, style="yellow", markup=False, soft_wrap=True))
    flash, compute = profile.flash, profile.compute
    table = Table(title=f"host profile: {path}")
    table.add_column("measurement")
    table.add_column("value", justify="right")
    for size, rate in flash.bandwidth_curve:
        table.add_row(f"flash read, {size // 1024} KiB requests (MB/s)", f"{rate / 1e6:.0f}")
    table.add_row("flash latency (us) / reads in flight", f"{flash.latency_s * 1e6:.1f} / {flash.queue_depth}")
    table.add_row("DRAM copy bandwidth (GB/s)", f"{profile.dram.bandwidth_bytes_per_s / 1e9:.1f}")
    table.add_row("GEMV / GEMM (GFLOP/s)", f"{compute.gemv_flops_per_s / 1e9:.1f} / {compute.gemm_flops_per_s / 1e9:.1f}")
    table.add_row("per-layer overhead (us)", f"{compute.layer_overhead_s * 1e6:.1f}")
    table.add_row("per-miss overhead (us)", f"{compute.miss_overhead_s * 1e6:.1f}")
    Console().print(table)


@app.command()
def replay(
    trace: Path = typer.Option(..., "--trace", "-t", help="Routing trace (.npz, format v1)."),
    profile: str = typer.Option("host", "--profile", "-p", help="Profile setting how reads are issued and the default cache: `host` (calibrated), a shipped name or a .toml."),
    arch: str = typer.Option(None, help="Target architecture. Default: the trace's meta.target_arch."),
    cache_mb: float = typer.Option(None, help="Expert cache budget in MB. Default: the profile's app budget minus resident weights, KV cache and activations."),
    cache_experts: int = typer.Option(None, help="Expert cache size as a number of experts (instead of --cache-mb)."),
    policy: str = typer.Option(_DEFAULTS.policy, help=POLICY_HELP),
    tokens: int = typer.Option(256, help="Replay at most this many tokens (whole requests, the last cut)."),
    prompt_tokens: int = typer.Option(_DEFAULTS.prompt_tokens, help="Prompt tokens per request (prefilled at once)."),
    context_len: int = typer.Option(_DEFAULTS.context_len, help="KV-cache length (tokens)."),
    scale: int = typer.Option(1, help=_SCALE_HELP),
    directory: Path = typer.Option(None, "--dir", help=_DIR_HELP),
    threads: int = typer.Option(None, help=_THREADS_HELP),
    json_path: Path = typer.Option(None, "--json", help="Also write the full result as JSON to this path."),
    probe: bool = typer.Option(True, help="Before the decode, probe a calibrated profile (a few seconds of flash reads and GEMV) and stop (exit 2) when a figure drifted beyond max(the probe's spread, 25 %): the reads are issued as the profile says, and the figures compared with the engines are the profile's."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors (with --json)."),
) -> None:
    """Decode a routing trace for real: experts streamed from a file on disk into a RAM cache, compute in torch.

    Random weights of real sizes (bfloat16); reads bypass the page cache. Writes only a scratch folder
    (under --dir), removed afterwards; refuses to start when free disk or RAM is short.
    Example: cosmosim replay --trace traces/moe.npz --profile host --arch wearable-moe --cache-mb 200 --policy lru
    """
    check_outputs({"--json": json_path}, {"--trace": trace, "--profile": Path(profile)})
    config = RunConfig(policy=policy, cache_mb=cache_mb, cache_experts=cache_experts, tokens=tokens,
                       prompt_tokens=prompt_tokens, context_len=context_len)
    from cosmosim.engines.replay.run import replay as replay_trace  # torch: loaded by this command only
    from cosmosim.host.calibrate import load_record
    from cosmosim.host.probe import replay_probe
    from cosmosim.inputs.profiles import HOST, host_profile_path

    notes: list[str] = []
    profile_file = host_profile_path() if profile == HOST else Path(profile) if profile.endswith(".toml") else None
    before = replay_probe(load_record(profile_file) if profile_file else None, notes) if probe else None
    result = replay_trace(profile, trace, arch, config, scale=scale, directory=directory, threads=threads,
                          progress=_progress(quiet), before=before)
    result["warnings"] += notes
    if json_path is not None:
        atomic_write_json(json_path, result)
    if quiet:
        return
    inputs, tpot = result["inputs"], result["tpot_ms"]
    table = Table(title=f"replay: {inputs['arch']} · policy {inputs['policy']} · cache {inputs['cache_experts']}/"
                        f"{inputs['total_experts']} experts ({inputs['cache_mb']:.0f} MB) · {result['read_mode']} reads")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in [("TTFT (ms)", _ms(result["ttft_ms"])),
                        ("TPOT mean / p50 / p95 / p99 (ms)", " / ".join(_ms(tpot[k]) for k in ("mean", "p50", "p95", "p99"))),
                        ("tokens/s", _ms(result["tokens_per_s"])), ("expert hit rate (decode)", _ms(result["hit_rate"])),
                        ("read MB per token", _ms(result["flash_mb_per_token"])), ("read MB in all", _ms(result["read_mb"])),
                        ("decode tokens / requests", f"{inputs['decode_tokens']} / {inputs['requests']}")]:
        table.add_row(name, value)
    for part, ms in result["breakdown"]["time_ms_per_token"].items():
        table.add_row(f"  time: {part.replace('_', ' ')} (ms/token)", _ms(ms))
    Console().print(table)
    for warning in result["warnings"]:
        Console().print(f"[yellow]note:[/] {warning}")


@app.command()
def validate(
    json_path: Path = typer.Option(None, "--json", help="Also write the full report as JSON to this path."),
    trace: list[Path] = typer.Option(None, "--trace", "-t", help="Trace(s) to validate on. Default: the traces/*.npz recorded for --arch (all when none is), else synthetic ones."),
    arch: str = typer.Option("wearable-moe", help=_ARCH_HELP),
    scale: int = typer.Option(1, help=_SCALE_HELP),
    repeats: int = typer.Option(MIN_REPEATS, help=f"Replays per case (>= {MIN_REPEATS}); the median is compared."),
    tokens: int = typer.Option(None, help=f"Tokens per replay, prompt included. Default: {DEFAULT_TOKENS}, fewer if the budget needs it."),
    budget_min: float = typer.Option(BUDGET_S / 60, help="Time budget in minutes that sets the default --tokens."),
    min_cases: int = typer.Option(MIN_CASES, help="At least this many cases (traces x cache sizes x policies)."),
    directory: Path = typer.Option(None, "--dir", help=_DIR_HELP),
    recalibrate: bool = typer.Option(False, help="Calibrate again even when a fitting host profile exists. Without it, a profile calibrated earlier is probed first (a few seconds of flash reads and GEMV); a figure drifted beyond max(the probe's spread, 25 %) stops validation (exit 2)."),
    quick: bool = typer.Option(False, help="When calibrating, tiny short measurements (for trying it out; figures are rough)."),
    pagecache: bool = typer.Option(True, help="Also check the page-cache model (--loader mmap) against this kernel: the same touches of a weights file under a memory cgroup limit, pages read, faults and residency compared (about 2 minutes; docs/validation.md)."),
    track: bool = typer.Option(True, help="Calibrate this host again before every pass over the cases (the replays' queue depth kept) and predict each pass from its own profile: the host's flash and GEMV rates drift within minutes. About 90 s a pass."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors (with --json)."),
) -> None:
    """Compare measured decode latency with the simulator and the analytical model over >= 40 cases.

    Calibrates first when no host profile fits; otherwise probes the host against the profile and stops
    (exit 2) when a figure drifted; then calibrates again before every pass (--no-track: not). Goal:
    median |error| <= 5 %, p95 <= 10 %. About 20 minutes.
    Example: cosmosim validate --json v.json
    """
    from cosmosim.host.validate import validate as validate_host  # torch: loaded by this command only

    check_outputs({"--json": json_path}, {f"--trace {path}": path for path in trace or ()})
    report = validate_host(traces=trace or None, arch=arch, scale=scale, repeats=repeats, tokens=tokens,
                           budget_s=budget_min * 60, min_cases=min_cases, directory=directory,
                           recalibrate=recalibrate, quick=quick, pagecache=pagecache, track=track,
                           progress=_progress(quiet))
    if json_path is not None:
        atomic_write_json(json_path, report)
    if quiet:
        return
    engines = report["engines"]
    table = Table(title=f"validate: {report['arch']} on this host · {report['decode_tokens_per_replay']} decode tokens "
                        f"x {report['repeats']} replays per case · {report['read_mode']} reads")
    for column in ("trace", "policy", "cache", "hit rate", "measured TPOT (ms)", *[f"{e} TPOT (ms), error" for e in engines]):
        table.add_column(column, justify="left" if column in ("trace", "policy") else "right")
    for case in report["cases"]:
        predicted = [f"{case['predicted'][e]['tpot_ms']:.3g}, {case['predicted'][e]['error_pct']:+.1f}%" for e in engines]
        table.add_row(case["trace"], case["policy"], str(case["cache_experts"]), f"{case['hit_rate']:.2f}",
                      f"{case['measured_tpot_ms']:.3g}", *predicted)
    console = Console()
    console.print(table)
    goal = f"goal: median <= {GOAL['median_abs_error_pct']:.0f} %, p95 <= {GOAL['p95_abs_error_pct']:.0f} %, or so once each case within its own repeat spread counts as agreeing"
    for engine, summary in report["summary"].items():
        colour = {"met": "green", "met within spread": "yellow"}.get(summary["verdict"], "red")
        console.print(f"{engine}: |error| median {summary['median_abs_error_pct']:.1f} %, p95 {summary['p95_abs_error_pct']:.1f} %, "
                      f"max {summary['max_abs_error_pct']:.1f} % ({goal}: [{colour}]{summary['verdict']}[/]; "
                      f"{summary['cases_outside_goal_and_spread']} cases off by more than "
                      f"{GOAL['p95_abs_error_pct']:.0f} % and by more than their own repeat spread)")
    parts = Table(title="where the time goes: median ms per decode token over the cases, measured vs predicted, "
                        "and each part's median share of the TPOT error")
    for column in ("part", "measured", *[f"{e}, share of error" for e in engines]):
        parts.add_column(column, justify="left" if column == "part" else "right")
    for part in next(iter(report["parts"].values())):
        cells = [f"{report['parts'][e][part]['predicted_ms']:.3g}, {report['parts'][e][part]['error_share_pct']:+.1f}%"
                 for e in engines]
        parts.add_row(part, f"{report['parts'][engines[0]][part]['measured_ms']:.3g}", *cells)
    console.print(parts)
    if report["pagecache"]:
        console.print(_pagecache_table(report["pagecache"]))
    for note in report["notes"]:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"{len(report['cases'])} cases in {report['wall_s']:.0f} s")


def _pagecache_table(cases: list[dict]) -> Table:
    first = cases[0]
    table = Table(title=f"page cache: the model against this kernel · {first['trace']} · {first['file_mb']:.0f} MB file, "
                        f"{first['cache_mb']:.0f} MB page cache ({first['limit']}), read_ahead {first['read_ahead_kib']} KiB")
    for column in ("advice", "pages read: model / kernel", "major faults: model / kernel", "resident: model / kernel"):
        table.add_column(column, justify="left" if column == "advice" else "right")
    for case in cases:
        cells = []
        for count in ("pages_read", "faults", "resident_pages"):
            error = case["errors"][count]
            cells.append(f"{case['model'][count]:,} / {case['kernel'][count]:,}" + ("" if error is None else f" ({100 * error:+.0f}%)"))
        table.add_row(case["advice"], *cells)
    return table
