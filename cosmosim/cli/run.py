"""`cosmosim run`: replay a routing trace on a device and report latency, memory and energy."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cosmosim.cli.app import app
from cosmosim.cli.bits import BITS_HELP, bits_settings, precision_label
from cosmosim.device.pagecache import ADVICES
from cosmosim.device.policies import POLICIES
from cosmosim.device.prefetch import PREFETCHERS
from cosmosim.engines.analytic.engine import EVICTION_RULES
from cosmosim.errors import InputError
from cosmosim.files import atomic_write_json, check_outputs
from cosmosim.results.timeline import DEFAULT_MAX_PASSES, write_timeline
from cosmosim.runner import ENGINES, run_with_timeline
from cosmosim.runner import run as run_scenario
from cosmosim.scenario.settings import LOADERS, RunConfig, choices

_DEFAULTS = RunConfig()
POLICY_HELP = f"Eviction policy: {choices(POLICIES)} (kactive: the CoSMoEs paper's, only the current k experts per layer)."


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def cache_label(inputs: dict) -> str:
    """"cache 45/152 experts (38 MB)"; with experts of two sizes the cache counts bytes, so its MB come first."""
    if inputs.get("hot_expert_bits") is None:
        return f"cache {inputs['cache_experts']}/{inputs['total_experts']} experts ({inputs['cache_mb']:.0f} MB)"
    return (f"cache {inputs['cache_mb']:.0f} MB (up to {inputs['cache_experts']} of {inputs['total_experts']} experts; "
            f"{inputs['hot_experts']} hot)")


def print_summary(result: dict, console: Console) -> None:
    inputs = result["inputs"]
    if inputs.get("loader") == "mmap":
        cache = f"mmap (madvise {inputs['madvise']}) · page cache {inputs['page_cache_mb']:.0f} MB"
    else:
        cache = f"policy {inputs['policy']} · prefetch {inputs['prefetch']} · {cache_label(inputs)}"
    title = f"{inputs['arch']} on {inputs['profile']} · {cache} · {precision_label(inputs)} · engine {result['engine']}"
    table = Table(title=title, show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    tpot = result["tpot_ms"]
    rows = [
        ("TTFT (ms, mean over requests)", result["ttft_ms"]),
        ("TPOT mean / p50 / p95 / p99 (ms)", " / ".join(_fmt(tpot[k], 4) for k in ("mean", "p50", "p95", "p99"))),
        ("tokens/s", result["tokens_per_s"]),
        ("expert hit rate (decode)", result["hit_rate"]),
        ("flash MB per token", result["flash_mb_per_token"]),
        ("peak DRAM (MB)", result["peak_dram_mb"]),
        ("energy (mJ per token)", result["energy_mj_per_token"]),
        ("decode tokens / requests", f"{inputs['decode_tokens']} / {inputs['requests']}"),
    ]
    throttle = result["throttle"]
    if throttle["tpot_steady_ms"] is not None:
        rows.append(("TPOT first minute / steady state (ms)", f"{_fmt(throttle['tpot_first_minute_ms'], 4)} / "
                                                              f"{_fmt(throttle['tpot_steady_ms'], 4)} (from "
                                                              f"{_fmt(throttle['steady_from_s'], 3)} s)"))
    if inputs["prefetch"] != "none":
        rows.append(("prefetch accuracy / wasted MB", f"{_fmt(result['prefetch']['accuracy'])} / "
                                                      f"{_fmt(result['prefetch']['wasted_mb'])}"))
    for name, value in rows:
        table.add_row(name, _fmt(value, 4))
    for part, ms in result["breakdown"]["time_ms_per_token"].items():
        table.add_row(f"  time: {part.replace('_', ' ')} (ms/token)", _fmt(ms, 3))
    for part, mj in result["breakdown"]["energy_mj_per_token"].items():
        table.add_row(f"  energy: {part} (mJ/token)", _fmt(mj, 3))
    console.print(table)
    for line in result.get("verdict", {}).get("lines", []):  # what limits the run (cosmosim.results.verdict)
        console.print(f"[bold]verdict:[/] {escape(line)}")
    for warning in result["warnings"]:
        console.print(f"[yellow]note:[/] {warning}")


@app.command()
def run(
    profile: str = typer.Option(..., "--profile", "-p", help="Device profile: a shipped name (see `cosmosim profiles`) or a .toml path."),
    trace: Path = typer.Option(None, "--trace", "-t", help="Routing trace (.npz, format v1). Required for a MoE architecture; omit for a dense one."),
    arch: str = typer.Option(None, help="Target architecture: a name (see `cosmosim arch`), a .toml architecture file or a Hugging Face config.json (docs/architectures.md). Default: the trace's meta.target_arch."),
    cache_mb: float = typer.Option(None, help="Expert cache budget in MB. Default: the profile's app budget minus resident weights, KV cache and activations."),
    cache_experts: int = typer.Option(None, help="Expert cache size as a number of experts (instead of --cache-mb)."),
    per_layer_cache: bool = typer.Option(False, help="Split the cache into equal per-layer partitions instead of one global cache."),
    cache_shared_experts: bool = typer.Option(False, help="Keep an architecture's shared experts in the expert cache like routed ones (read from flash, evicted) instead of resident; they must be the routed experts' size."),
    loader: str = typer.Option(_DEFAULTS.loader, help=f"How experts reach DRAM: {choices(LOADERS)} (app-cache: the app's own expert cache and reads; mmap: the weights file mapped, the kernel's page cache as the cache, page faults with readahead; docs/simulator.md)."),
    madvise: str = typer.Option(_DEFAULTS.madvise, help=f"With --loader mmap: the advice on the mapping, {choices(ADVICES)} (normal: read-around on each fault; random: the faulting page only; willneed: each expert read ahead as the router picks it)."),
    idle_gap_s: float = typer.Option(_DEFAULTS.idle_gap_s, help="Idle seconds between requests, in which a throttled device cools (its profile's throttle section). Default: back to back."),
    policy: str = typer.Option(_DEFAULTS.policy, help=POLICY_HELP),
    prefetch: str = typer.Option(_DEFAULTS.prefetch, help=f"Prefetcher: {choices(PREFETCHERS)} (next-layer: learned co-occurrence; oracle: an upper bound)."),
    weight_bits: str = typer.Option(str(_DEFAULTS.weight_bits), help=BITS_HELP),
    expert_bits: str = typer.Option(None, help="Bits per weight of the routed experts (what the cache and flash move), as --weight-bits; or two sizes, hot=BITS,cold=BITS: the experts used most in the warm-up at hot bits, a quarter of them unless count=N (over all layers) or mb=M (their bytes) says otherwise, and the cache counts bytes (docs/precision.md). Default: --weight-bits."),
    shared_bits: str = typer.Option(None, help="Bits per weight of the shared experts, as --weight-bits. Default: --weight-bits."),
    tokens: int = typer.Option(None, help="Simulate about this many tokens: whole requests, the last cut short but kept to its prompt + 1 token (dense: rounded up to whole 256-token requests). Default: the whole trace after warm-up (dense: 4096)."),
    prompt_tokens: int = typer.Option(_DEFAULTS.prompt_tokens, help="Prompt tokens per request (prefilled at once; gives TTFT)."),
    context_len: int = typer.Option(_DEFAULTS.context_len, help="KV-cache length bound (tokens); also sizes the KV cache in peak DRAM."),
    json_path: Path = typer.Option(None, "--json", help="Also write the full result as JSON to this path."),
    timeline_path: Path = typer.Option(None, "--timeline", help=f"Also write a Chrome-trace/Perfetto timeline (JSON) of the first {DEFAULT_MAX_PASSES} passes: flash reads, compute, by layer. Open it at https://ui.perfetto.dev."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors (with --json)."),
    engine: str = typer.Option("des", help=f"Engine: {choices(ENGINES)} (des: the discrete-event simulation; analytic: the closed-form model, same JSON keys, no prefetch, policies {choices(EVICTION_RULES)}; docs/analytic-model.md)."),
    target_tps: float = typer.Option(None, "--target-tps", help="Instead of one run, answer: the largest ExRep at which this device, architecture, cache and policy still decode this many tokens/s, with routing synthesised like --trace (its popularity kept, only switching dialled; about 9 runs, docs/sweeps.md)."),
    seed: int = typer.Option(0, help="With --target-tps: the seed of the synthesised traces."),
) -> None:
    """Replay a routing trace through the discrete-event simulation of flash -> DRAM expert cache -> compute.

    Each trace sequence is one request: its first --prompt-tokens tokens are prefilled, the rest decoded one at a
    time (batch 1). The first 10% of sequences only teach policies and prefetchers their statistics.
    Example: cosmosim run --profile wearable --trace traces/bles.npz --json out.json
    """
    check_outputs({"--json": json_path, "--timeline": timeline_path}, {"--trace": trace, "--profile": Path(profile)})
    config = RunConfig(policy=policy, prefetch=prefetch, cache_mb=cache_mb, cache_experts=cache_experts,
                       per_layer_cache=per_layer_cache, cache_shared_experts=cache_shared_experts,
                       **bits_settings(weight_bits, expert_bits, shared_bits), tokens=tokens,
                       prompt_tokens=prompt_tokens, context_len=context_len,
                       loader=loader, madvise=madvise, idle_gap_s=idle_gap_s)
    if target_tps is not None:
        _answer_target(profile, trace, arch, config, engine, target_tps, seed, timeline_path, json_path, quiet)
        return
    if timeline_path is None:
        result = run_scenario(profile, trace, arch, config, engine)
    elif engine != "des":
        raise InputError(f"--timeline: only --engine des has a timeline (the analytic model has no clock), got --engine {engine}")
    else:
        result, timeline = run_with_timeline(profile, trace, arch, config)
        write_timeline(timeline_path, timeline, result)
    if json_path is not None:
        atomic_write_json(json_path, result)
    if not quiet:
        print_summary(result, Console())
        for written in (json_path, timeline_path):
            if written is not None:
                Console().print(f"wrote {written}")


def _answer_target(profile: str, trace: Path | None, arch: str | None, config: RunConfig, engine: str,
                   target_tps: float, seed: int, timeline_path: Path | None, json_path: Path | None, quiet: bool) -> None:
    """`run --target-tps`: the largest ExRep that reaches the speed, each probe printed as it ends."""
    from cosmosim.sweep.target import REACHED, check_target, largest_exrep

    check_target(target_tps)
    if timeline_path is not None:
        raise InputError("--timeline and --target-tps: a search runs many replays; drop one of them")
    if trace is None:
        raise InputError("--target-tps: needs --trace, the routing to synthesise like (its popularity is kept)")
    console = Console(quiet=quiet)
    console.print(f"largest ExRep reaching {target_tps:g} tokens/s, routing synthesised like {trace} (engine {engine}):")
    answer = largest_exrep(profile, trace, target_tps, arch=arch, config=config, engine=engine, seed=seed,
                           on_probe=lambda p: console.print(f"  ExRep {p.exrep:.4f}: {p.tokens_per_s:.4g} tokens/s, "
                                                            f"TPOT {p.tpot_ms:.4g} ms, hit rate {p.hit_rate:.3f}"))
    inputs = answer.inputs
    console.print(f"{inputs['arch']} on {inputs['profile']} · {inputs['policy']} · {cache_label(inputs)} · "
                  f"{precision_label(inputs)}")
    headline = f"[bold]{answer.verdict}[/]"
    if answer.verdict == REACHED:
        headline = (f"[bold]largest ExRep: {answer.largest_exrep:.3f}[/] (the next probe, "
                    f"{answer.smallest_failing_exrep:.3f}, falls short)")
    console.print(f"{headline}: {answer.reason}")
    if json_path is not None:
        atomic_write_json(json_path, answer.to_dict())
        console.print(f"wrote {json_path}")
