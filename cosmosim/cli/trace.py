"""`cosmosim trace validate|info|stats`: check, describe and measure routing traces."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from cosmosim.cli import app
from cosmosim.errors import InputError
from cosmosim.locality import format_summary, locality_summary
from cosmosim.trace import load_trace, trace_info

trace_app = typer.Typer(help="Check, describe and measure routing traces (format v1, docs/trace-format.md).",
                        no_args_is_help=True)
app.add_typer(trace_app, name="trace")


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


def _markdown_table(rows: list[tuple[str, dict, dict]]) -> str:
    """One row per trace: how it was made (meta.training) and its locality, random routing last."""
    header = ("| trace | arch | λ | τ | val loss (nats/token) | tokens seen | ExRep | ΔUni | SRP(16) % | SCH(2,16) % |\n"
              "|---|---|---|---|---|---|---|---|---|---|")
    lines = [header]
    for name, meta, stats in rows:
        training = meta.get("training") or {}
        model = meta.get("model") or {}
        arch = meta.get("target_arch") or "–"
        if model.get("wd_rank"):
            arch += f" (WD r={model['wd_rank']})"
        val_loss = training.get("val_loss")
        tokens_seen = training.get("tokens_seen")
        lines.append(
            f"| {name} | {arch} | {training.get('bles_lambda', '–')} | {training.get('bles_tau', '–')} | "
            f"{'–' if val_loss is None else f'{val_loss:.3f}'} | {'–' if tokens_seen is None else f'{tokens_seen / 1e6:.1f}M'} | "
            f"{stats['exrep']['value']:.3f} | {stats['delta_uniform']['value']:.3f} | "
            f"{stats['srp_percent']['value']:.1f} | {stats['sch_percent']['value']:.1f} |")
    first = rows[0][2]
    lines.append(f"| random top-{first['top_k']} of {first['n_experts']} | – | – | – | – | – | "
                 f"{first['exrep']['random']:.3f} | {first['delta_uniform']['random']:.3f} | "
                 f"{first['srp_percent']['random']:.1f} | {first['sch_percent']['random']:.1f} |")
    return "\n".join(lines)


@trace_app.command()
def stats(
    paths: list[Path] = typer.Argument(..., help="Trace files (.npz)."),
    as_json: bool = typer.Option(False, "--json", help="Print every statistic (per layer too) as JSON."),
    markdown: bool = typer.Option(False, "--markdown", help="Print one Markdown table row per trace (the README's table)."),
    m: int = typer.Option(16, help="Window length in tokens for SRP and SCH."),
    rho: float = typer.Option(2.0, help="SCH cache size as a multiple of top_k."),
    seed: int = typer.Option(0, help="Seed of the random-routing baselines that need a Monte-Carlo run."),
) -> None:
    """Routing locality of traces: ExRep, ΔUni, expert usage, reuse distances, SRP(m), SCH(ρ, m), each
    beside the same statistic for uniformly random routing (formulas: docs/metrics.md)."""
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
        typer.echo(_markdown_table(rows))
    else:
        for path, (_, _, summary) in zip(paths, rows):
            typer.echo(f"{path}\n{format_summary(summary)}\n")
