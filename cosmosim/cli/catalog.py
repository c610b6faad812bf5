"""`cosmosim profiles` and `cosmosim arch`: what the simulator knows about devices and models."""

from __future__ import annotations

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from cosmosim.cli.app import app
from cosmosim.inputs.arch import arch_table
from cosmosim.inputs.profiles import load_profile, shipped_profiles


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
    "name": ("name", "{}"), "group": ("from", "{}"), "layers": ("L", "{}"), "d_model": ("d", "{}"),
    "heads": ("heads", "{}"), "experts": ("experts", "{}"), "wd_rank": ("rank", "{}"),
    "total_params_m": ("total M\nours/published", "{:.0f}"), "total_error_pct": ("Δ %", "{:+.2f}"),
    "active_params_m": ("active M\nours/published", "{:.0f}"), "active_error_pct": ("Δ %", "{:+.2f}"),
    "expert_mb": ("expert MB", "{:.2f}"), "resident_mb": ("resident MB", "{:.0f}"),
}


def _missing(value) -> bool:
    return value is None or value != value or str(value) == "<NA>"


def _cell(row: dict, column: str, fmt: str) -> str:
    value = row[column]
    if column == "heads":
        cell = f"{value}/{row['kv_heads']}" + (f" ×{row['head_dim']}" if row["head_dim"] * value != row["d_model"] else "")
    elif column == "experts":
        cell = "dense" if not value else f"{value} top-{row['top_k']}" + (
            f" +{row['shared_experts']} shared" if row["shared_experts"] else "") + (
            f", {row['dense_layers']} dense" if row["dense_layers"] else "")
    else:
        cell = "–" if _missing(value) else fmt.format(value)
    if column in ("total_params_m", "active_params_m") and not _missing(row["published_" + column]):
        cell += f"/{row['published_' + column]:.0f}"
    if column.endswith("_error_pct") and row[column.replace("error_pct", "within_tolerance")] is False:
        cell += " *"
    return cell


def _details(file, weight_bits: float) -> dict:
    """Everything `cosmosim arch NAME` shows: the keys as given, the counts, the published ones, the notes."""
    arch, published = file.arch, file.published
    counts = {"total_params": arch.total_params(), "active_params": arch.active_params(),
              "resident_params": arch.resident_params(), "expert_params": arch.expert_params(),
              "shared_expert_params": arch.shared_expert_params(), "routed_experts": arch.total_experts,
              "moe_layers": arch.n_moe_layers, "expert_mb": arch.expert_bytes(weight_bits) / 1e6,
              "resident_mb": arch.resident_bytes(weight_bits) / 1e6, "kv_bytes_per_token": arch.kv_bytes_per_token()}
    against = None
    if published is not None:
        against = {"source": published.source}
        for which in ("total", "active"):
            figure = getattr(published, f"{which}_params")
            if figure is not None:
                ours = counts[f"{which}_params"]
                against[which] = {"published": figure, "ours": ours, "error_pct": 100 * (ours - figure) / figure,
                                  "tolerance": published.tolerance(which),
                                  "within_tolerance": abs(ours - figure) <= published.tolerance(which)}
    keys = {key: list(value) if isinstance(value, tuple) else value for key, value in file.data.items()
            if key not in ("name", "description", "published", "sources")}
    return {"name": arch.name, "path": str(file.path) if file.path else None, "sha256": file.sha256,
            "description": file.description, "keys": keys, "sources": file.sources, "weight_bits": weight_bits,
            "counts": counts, "published": against, "notes": list(file.notes)}


def _print_details(details: dict) -> None:
    console = Console()
    console.print(f"[bold]{details['name']}[/] ({details['path']})\n{details['description']}")
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("key", "value", "source"):
        table.add_column(column, overflow="fold")
    for key, value in details["keys"].items():
        table.add_row(key, str(value).lower() if isinstance(value, bool) else str(value), details["sources"].get(key, ""))
    console.print(table)
    counts = details["counts"]
    console.print(f"total {counts['total_params']:,} parameters, active {counts['active_params']:,}, resident "
                  f"{counts['resident_params']:,}; one routed expert {counts['expert_params']:,} "
                  f"({counts['expert_mb']:.2f} MB at {details['weight_bits']:g} bits) of {counts['routed_experts']} "
                  f"in {counts['moe_layers']} MoE layers; KV cache {counts['kv_bytes_per_token']:,} bytes per token")
    if details["published"]:
        for which in ("total", "active"):
            if which in details["published"]:
                got = details["published"][which]
                verdict = "within" if got["within_tolerance"] else "[red]outside[/]"
                console.print(f"{which}: ours {got['ours']:,} vs published {got['published']:,.0f} "
                              f"({got['error_pct']:+.2f}%, {verdict} ±{got['tolerance']:,.0f})")
        console.print(f"published: {details['published']['source']}")
    for note in details["notes"]:
        console.print(f"[yellow]note:[/] {note}")


@app.command()
def arch(
    target: str = typer.Argument(None, metavar="[NAME|PATH]", help="One architecture to show in full: a name, or the "
                                 "path of a .toml architecture file or a Hugging Face config.json."),
    weight_bits: str = typer.Option("16", help="Bits per weight for the byte columns: a number (16, 8, 4.5) or a "
                                               "format (q4_K, mxfp4; docs/precision.md)."),
    csv: bool = typer.Option(False, "--csv", help="Print every column of the list as CSV instead of a table."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the architectures (CoSMoEs Table 1, published MoEs, your $COSMOSIM_ARCHS_DIR files) with parameter
    counts against the published ones, or show one in full (every key and its source, counts, notes)."""
    import json

    from cosmosim.inputs.arch_files import find
    from cosmosim.inputs.precision import parse_bits

    weight_bits = parse_bits(weight_bits, "--weight-bits")
    if target is not None:
        details = _details(find(target), weight_bits)
        typer.echo(json.dumps(details, indent=2)) if as_json else _print_details(details)
        return
    frame = arch_table(weight_bits)
    if csv or as_json:
        text = frame.to_csv(index=False) if csv else frame.to_json(orient="records", indent=2) + "\n"
        typer.echo(text, nl=False)
        return
    console = Console()
    console = console if console.is_terminal else Console(width=200)  # a pipe or a file: no wrapped cells
    table = Table(title=f"Architectures, {weight_bits:g}-bit weights; parameters ours/published (all columns: --csv)",
                  caption="* outside the published figure's tolerance (1%, or its rounding): the file says why",
                  box=box.SIMPLE_HEAD)
    for header, _ in _ARCH_COLUMNS.values():
        table.add_column(header, justify="left" if header in ("name", "from", "experts") else "right",
                         no_wrap=header == "name")
    group = None
    for row in frame.to_dict("records"):
        if group is not None and row["group"] != group:
            table.add_section()
        group = row["group"]
        table.add_row(*(_cell(row, column, fmt) for column, (_, fmt) in _ARCH_COLUMNS.items()))
    console.print(table)
