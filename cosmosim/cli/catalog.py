"""`cosmosim profiles` and `cosmosim arch`: what the simulator knows about devices and models."""

from __future__ import annotations

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from cosmosim.cli.app import app
from cosmosim.inputs.arch import WEIGHT_BITS, arch_table
from cosmosim.inputs.profiles import load_profile, shipped_profiles
from cosmosim.scenario.settings import choices


@app.command()
def profiles() -> None:
    """List the shipped device profiles (device_profiles/*.toml) with their key figures."""
    console = Console()
    table = Table(title="Device profiles (sources: in each file)", box=box.SIMPLE_HEAD)
    for column in ("name", "flash GB/s\n@1 MiB", "flash\nlatency µs", "queue", "DRAM\nGB/s", "app budget\nMB",
                   "GEMV\nGFLOP/s", "GEMM\nGFLOP/s"):
        table.add_column(column, justify="left" if column == "name" else "right")
    loaded = [load_profile(name) for name in shipped_profiles()]
    for p in loaded:
        table.add_row(p.name, f"{p.flash.bandwidth_bytes_per_s(1 << 20) / 1e9:.2f}", f"{p.flash.latency_s * 1e6:.0f}",
                      str(p.flash.queue_depth), f"{p.dram.bandwidth_bytes_per_s / 1e9:.1f}",
                      f"{p.dram.app_budget_bytes / 1e6:.0f}", f"{p.compute.gemv_flops_per_s / 1e9:.1f}",
                      f"{p.compute.gemm_flops_per_s / 1e9:.1f}")
    console.print(table)
    for p in loaded:
        console.print(f"[bold]{p.name}[/]: {p.description} ({p.path})")


_ARCH_COLUMNS = {  # arch_table column -> (header, format)
    "name": ("name", "{}"), "layers": ("L", "{}"), "wd_rank": ("rank", "{}"),
    "active_params_m": ("active M", "{:.0f}"), "total_params_m": ("total M", "{:.0f}"),
    "expert_mb": ("expert MB", "{:.2f}"), "resident_mb": ("resident MB", "{:.0f}"),
}


@app.command()
def arch(
    weight_bits: int = typer.Option(16, help=f"Weight bit-width for the byte columns: {choices(WEIGHT_BITS)}."),
    csv: bool = typer.Option(False, "--csv", help="Print every column as CSV instead of a table."),
) -> None:
    """List the target architectures (CoSMoEs Table 1) with parameter counts against the paper's."""
    frame = arch_table(weight_bits)
    if csv:
        typer.echo(frame.to_csv(index=False), nl=False)
        return
    table = Table(title=f"CoSMoEs Table 1 architectures, {weight_bits}-bit weights; params ours/paper (all: --csv)",
                  box=box.SIMPLE_HEAD)
    for header, _ in _ARCH_COLUMNS.values():
        table.add_column(header, justify="left" if header == "name" else "right", no_wrap=header == "name")
    for row in frame.to_dict("records"):
        cells = []
        for column, (_, fmt) in _ARCH_COLUMNS.items():
            value = row[column]
            cell = "–" if value is None or value != value or str(value) == "<NA>" else fmt.format(value)
            if column in ("active_params_m", "total_params_m"):
                paper = row["paper_" + column]
                cell += f"/{paper:.0f}"
            cells.append(cell)
        table.add_row(*cells)
    Console().print(table)
