"""`cosmosim profiles` and `cosmosim arch`: what the simulator knows about devices and models."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from cosmosim.arch import arch_table
from cosmosim.cli import app
from cosmosim.profiles import load_profile, shipped_profiles


@app.command()
def profiles() -> None:
    """List the shipped device profiles (device_profiles/*.toml) with their key figures."""
    table = Table(title="Device profiles")
    for column in ("name", "flash GB/s (1 MiB)", "flash latency µs", "queue", "DRAM GB/s", "app budget MB",
                   "GEMV GFLOP/s", "description"):
        table.add_column(column)
    for name in shipped_profiles():
        p = load_profile(name)
        table.add_row(name, f"{p.flash.bandwidth_bytes_per_s(1 << 20) / 1e9:.2f}", f"{p.flash.latency_s * 1e6:.0f}",
                      str(p.flash.queue_depth), f"{p.dram.bandwidth_bytes_per_s / 1e9:.1f}",
                      f"{p.dram.app_budget_bytes / 1e6:.0f}", f"{p.compute.gemv_flops_per_s / 1e9:.1f}", p.description)
    Console().print(table)


@app.command()
def arch(
    weight_bits: int = typer.Option(16, help="Weight bit-width for the byte columns: 16, 8 or 4."),
    csv: bool = typer.Option(False, "--csv", help="Print CSV instead of a table."),
) -> None:
    """List the target architectures (CoSMoEs Table 1) with parameter counts against the paper."""
    frame = arch_table(weight_bits)
    if csv:
        typer.echo(frame.to_csv(index=False), nl=False)
        return
    table = Table(title=f"Target architectures ({weight_bits}-bit weights)")
    for column in frame.columns:
        table.add_column(str(column))
    for row in frame.itertuples(index=False):
        table.add_row(*[f"{v:.3g}" if isinstance(v, float) else str(v) for v in row])
    Console().print(table)
