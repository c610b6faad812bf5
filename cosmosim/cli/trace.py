"""`cosmosim trace validate|info|stats|synth|import|export`: check, describe, measure, synthesize, import
routing traces, and export their access streams."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from cosmosim.cli.app import app
from cosmosim.errors import InputError
from cosmosim.files import read_json
from cosmosim.inputs.trace import load_trace, trace_info
from cosmosim.scenario.settings import RunConfig, check_settings

trace_app = typer.Typer(help="Check, describe, measure, synthesize and import routing traces (format v1, "
                             "docs/trace-format.md), and export their access streams.")
app.add_typer(trace_app, name="trace")
_DEFAULTS = RunConfig()


@trace_app.command()
def validate(paths: list[Path] = typer.Argument(..., help="Trace files (.npz).")) -> None:
    """Load each trace with every check the simulator relies on; exit 2 at the first bad one."""
    for path in paths:
        trace = load_trace(path)
        typer.echo(f"{path}: ok ({trace.n_tokens} tokens, {len(trace.sequences())} sequences, "
                   f"{trace.n_layers} layers, top-{trace.top_k} of {trace.n_experts} experts)")


@trace_app.command()
def info(path: Path = typer.Argument(..., help="Trace file (.npz)."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a readable listing.")) -> None:
    """Show what a trace holds and how it was made (its meta)."""
    summary = trace_info(load_trace(path))
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    console = Console()
    for key, value in summary.items():
        if isinstance(value, dict):
            console.print(f"[bold]{key}[/]:")
            for inner, inner_value in value.items():
                console.print(f"  {inner}: {inner_value}")
        else:
            console.print(f"[bold]{key}[/]: {value}")


_MARKDOWN_HEADER = (
    "| trace | mini (run) | target arch | λ | τ | steps | tokens seen | train time | val loss (nats/token) "
    "| ExRep | ExRep from usage alone | ΔUni | SRP(16) % | SCH(2,16) % |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def _markdown_row(name: str, training: dict, arch: str, stats: dict | None) -> str:
    def number(value, fmt):
        return "–" if value is None else format(value, fmt)

    tokens, seconds = training.get("tokens_seen"), training.get("train_time_s")
    routing = ["–"] * 5 if stats is None else [
        f"{stats['exrep']['value']:.3f}", f"{stats['exrep_from_usage']['value']:.3f}", f"{stats['delta_uniform']['value']:.3f}",
        f"{stats['srp_percent']['value']:.1f}", f"{stats['sch_percent']['value']:.1f}"]
    cells = [name, training.get("run") or training.get("config_name") or "–", arch,
             number(training.get("bles_lambda"), "g"), number(training.get("bles_tau"), "g"),
             number(training.get("steps"), "d"), "–" if tokens is None else f"{tokens / 1e6:.2f}M",
             "–" if seconds is None else f"{seconds / 60:.0f} min", number(training.get("val_loss"), ".3f"), *routing]
    return "| " + " | ".join(cells) + " |"


def _markdown_table(rows: list[tuple[str, dict, dict]], minis: dict) -> str:
    """One row per trace (how it was made, from meta.training; its locality), then the minis of
    `minis` that have no trace (dense models), then random routing."""
    lines = [_MARKDOWN_HEADER]
    traced_runs = set()
    for name, meta, stats in rows:
        training = meta.get("training") or {}
        traced_runs.add(training.get("run"))
        arch = meta.get("target_arch") or "–"
        wd_rank = (meta.get("model") or {}).get("wd_rank")
        lines.append(_markdown_row(name, training, arch + (f" (WD r={wd_rank})" if wd_rank else ""), stats))
    for run, mini in minis.items():
        if run not in traced_runs:
            lines.append(_markdown_row("–", {**mini, "run": run}, mini.get("target_arch") or "–", None))
    first = rows[0][2]
    lines.append(f"| random top-{first['top_k']} of {first['n_experts']} | – | – | – | – | – | – | – | – | "
                 f"{first['exrep']['random']:.3f} | {first['exrep_from_usage']['random']:.3f} | "
                 f"{first['delta_uniform']['random']:.3f} | "
                 f"{first['srp_percent']['random']:.1f} | {first['sch_percent']['random']:.1f} |")
    return "\n".join(lines)


def _read_minis(path: Path | None) -> dict:
    if path is None:
        return {}
    minis = read_json(path, hint="expected a minis.json written by scripts/summarize_minis.py")
    if not isinstance(minis, dict):
        raise InputError(f"{path}: expected a JSON object of runs")
    return minis


@trace_app.command()
def stats(
    paths: list[Path] = typer.Argument(..., help="Trace files (.npz)."),
    as_json: bool = typer.Option(False, "--json", help="Print every statistic (per layer too) as JSON."),
    markdown: bool = typer.Option(False, "--markdown", help="Print one Markdown table row per trace (the README's table)."),
    minis: Path = typer.Option(None, help="With --markdown: a minis.json (scripts/summarize_minis.py) whose runs without a trace (dense minis) get rows too."),
    m: int = typer.Option(16, help="Window length in tokens for SRP and SCH."),
    rho: float = typer.Option(2.0, help="SCH cache size as a multiple of top_k."),
    seed: int = typer.Option(0, help="Seed of the random-routing baselines that need a Monte-Carlo run."),
) -> None:
    """Routing locality of traces: ExRep, ΔUni, expert usage, reuse distances, SRP(m), SCH(ρ, m), each
    beside the same statistic for uniformly random routing (formulas: docs/metrics.md)."""
    from cosmosim.inputs.locality import format_summary, locality_summary  # scipy: only here

    if as_json and markdown:
        raise InputError("--json and --markdown: choose one output format")
    rows = []
    for path in paths:
        trace = load_trace(path)
        summary = locality_summary(trace.experts, trace.positions, trace.n_experts, m=m, rho=rho, seed=seed)
        rows.append((path.stem, trace.meta, summary))
    if as_json:
        typer.echo(json.dumps({str(path): summary for path, (_, _, summary) in zip(paths, rows)}, indent=2))
    elif markdown:
        typer.echo(_markdown_table(rows, _read_minis(minis)))
    else:
        for path, (_, _, summary) in zip(paths, rows):
            typer.echo(f"{path}\n{format_summary(summary)}\n")


@trace_app.command()
def synth(
    out: Path = typer.Option(..., help="Where to write the synthetic trace (.npz); never inside the repository's traces/."),
    like: Path = typer.Option(None, help="A trace to imitate: its per-layer expert popularity, layer-to-layer "
                                         "co-occurrence, gates, shape and target_arch are kept; only switching changes."),
    exrep_target: float = typer.Option(None, "--exrep", help="ExRep to hit (docs/metrics.md), within 0.01. Default with "
                                                             "--like: the source's own; required without."),
    layers: int = typer.Option(None, help="Without --like: MoE layers (default 19, the wearable MoE's)."),
    experts: int = typer.Option(None, help="Without --like: experts per layer (default 8)."),
    top_k: int = typer.Option(None, "--top-k", help="Without --like: experts per token and layer (default 2)."),
    tokens: int = typer.Option(None, help="Tokens (default: the source's, else 32768)."),
    seq_len: int = typer.Option(None, help="Tokens per sequence (default: the source's own sequences, else 128)."),
    skew: float = typer.Option(None, help="Without --like: Zipf exponent of expert popularity, ∝ 1/(e+1)^skew in "
                                          "every layer (default 1.0; 0: uniform)."),
    seed: int = typer.Option(0, help="Seed: the same seed and inputs give the same trace."),
) -> None:
    """Write a synthetic trace with a locality dial: the routing of --like (or of a stated popularity),
    switching at the asked ExRep. The model, its guarantees and its limits: docs/trace-format.md."""
    from cosmosim.files import check_outputs
    from cosmosim.inputs.synthetic import synthesize
    from cosmosim.inputs.trace import save_trace
    from cosmosim.provenance import REPOSITORY

    check_outputs({"--out": out}, {"--like": like})
    recorded = REPOSITORY / "traces"
    if recorded.resolve() in out.resolve().parents:
        raise InputError(f"--out {out}: is inside {recorded}, which holds only traces recorded from trained models; "
                         "write synthetic traces elsewhere")
    trace = synthesize(like=None if like is None else load_trace(like), exrep_target=exrep_target, n_layers=layers,
                       n_experts=experts, top_k=top_k, n_tokens=tokens, seq_len=seq_len, skew=skew, seed=seed)
    save_trace(trace, out)
    made = trace.meta["synthetic"]
    typer.echo(f"{out}: {trace.n_tokens} tokens, {len(trace.sequences())} sequences, {trace.n_layers} layers, "
               f"top-{trace.top_k} of {trace.n_experts}; ExRep {made['measured_exrep']:.4f} "
               f"(target {made['target_exrep']:.4f}), seed {made['seed']}")


def _import_help() -> str:
    from cosmosim.inputs.importers.formats import IMPORTERS

    return "Log format: " + "; ".join(f"{name}: {what}" for name, (_, what) in IMPORTERS.items()) + "."


@trace_app.command("import")
def import_log(
    format_name: str = typer.Argument(..., metavar="FORMAT", help=_import_help()),
    src: Path = typer.Argument(..., metavar="SRC", help="The log file."),
    out: Path = typer.Option(..., help="Where to write the trace (.npz)."),
    n_experts: int = typer.Option(None, "--n-experts", help="Experts per MoE layer of the model that served the log. "
                                  "Default: what the log says (SGLang's expert map), else the largest id seen + 1."),
    seq_len: int = typer.Option(None, help="Cut each request into sequences of at most this many tokens (each a "
                                           "request to the simulator). Default: one sequence per request."),
    arch: str = typer.Option(None, help="Target architecture for meta.target_arch, the default --arch of `cosmosim run` "
                                        "(see `cosmosim arch`). Default: none."),
) -> None:
    """Turn a serving engine's routing log into a v1 trace: each request, its tokens in order, one sequence.

    Interleaved requests are taken apart; layers that route nothing (dense layers) are left out.

    A log without gates gets uniform 1/k (meta.gates.present false).

    Fields read, and the versions whose source defines them: docs/trace-format.md, "Importing".

    Example: cosmosim trace import vllm responses.jsonl --out mine.npz --arch phone-moe
    """
    from cosmosim.files import check_outputs
    from cosmosim.inputs.importers.formats import import_trace
    from cosmosim.inputs.trace import save_trace

    check_outputs({"--out": out}, {"SRC": src})
    trace = import_trace(format_name, src, n_experts=n_experts, seq_len=seq_len, arch=arch)
    save_trace(trace, out)
    made = trace.meta["import"]
    typer.echo(f"{out}: {trace.n_tokens} tokens of {made['requests']} requests ({len(trace.sequences())} sequences), "
               f"{trace.n_layers} layers, top-{trace.top_k} of {trace.n_experts} experts "
               f"({made['n_experts_from']}), gates {'kept' if trace.meta['gates']['present'] else 'absent: 1/k'}")


@trace_app.command()
def export(
    path: Path = typer.Argument(..., metavar="TRACE", help="Trace file (.npz)."),
    format_name: str = typer.Option("libcachesim-csv", "--format", help="File layout: libcachesim-csv (time, obj_id, "
                                    "obj_size per access, with a header; libCacheSim's csv reader)."),
    out: Path = typer.Option(..., help="Where to write the stream (.csv)."),
    arch: str = typer.Option(None, help="Target architecture: its layer mapping, and its expert bytes as the object size. "
                                        "Default: the trace's meta.target_arch; with none, the trace's layers and size 1."),
    weight_bits: str = typer.Option(str(_DEFAULTS.weight_bits), help="Bits per weight of the experts (the object "
                                    "size): a number or a format, as `cosmosim run --expert-bits`."),
    prompt_tokens: int = typer.Option(_DEFAULTS.prompt_tokens, help="Prompt tokens per request, as "
                                                                    "`cosmosim run --prompt-tokens`."),
    warmup_fraction: float = typer.Option(_DEFAULTS.warmup_fraction, help="Leading fraction of sequences held out, "
                                                                          "as the engines do (0: none)."),
    tokens: int = typer.Option(None, help="About this many tokens, as `cosmosim run --tokens`. Default: all after warm-up."),
) -> None:
    """Write the demand access stream every engine replays, one access per line, for other cache simulators.

    Columns: time, the step (one layer of one pass); obj_id, layer * n_experts + expert; obj_size, its bytes.

    Reader options of libCacheSim's cachesim and Python bindings: docs/trace-format.md, "Exporting".

    Example: cosmosim trace export traces/bles.npz --out bles.csv
    """
    import numpy as np

    from cosmosim.files import check_outputs
    from cosmosim.scenario.build import resolve_arch
    from cosmosim.workload.export import EXPORT_FORMATS, LIBCACHESIM_TRACE_PARAMS, export_stream

    from cosmosim.inputs.precision import parse_bits

    check_outputs({"--out": out}, {"TRACE": path})
    bits = parse_bits(weight_bits, "--weight-bits")
    if format_name not in EXPORT_FORMATS:
        raise InputError(f"--format {format_name}: expected one of {', '.join(EXPORT_FORMATS)}")
    check_settings(RunConfig(weight_bits=bits, prompt_tokens=prompt_tokens, warmup_fraction=warmup_fraction,
                             tokens=tokens))
    trace = load_trace(path)
    target = resolve_arch(arch, trace) if arch or trace.meta.get("target_arch") else None
    stream = export_stream(trace, target, weight_bits=bits, prompt_tokens=prompt_tokens,
                           warmup_fraction=warmup_fraction, max_tokens=tokens)
    EXPORT_FORMATS[format_name](stream, out)
    typer.echo(f"{out}: {stream.key.size} accesses ({int(stream.decode.sum())} in decode steps), "
               f"{np.unique(stream.key).size} experts of {stream.size} bytes; "
               f"cachesim {out} csv lru SIZE -t \"{LIBCACHESIM_TRACE_PARAMS}\"")
