"""`cosmosim trace validate|info|stats`: check, describe and measure routing traces."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from cosmosim.cli import app
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
