"""`cosmosim paper bles-speedup`: the CoSMoEs BlES generation speed-up, predicted by the analytic model."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from cosmosim.cli.app import app
from cosmosim.engines.analytic.paper import (
    BLES,
    DEFAULT_LINK,
    LINKS,
    NO_OFFLOAD_TOKENS_PER_S,
    OFFLOAD,
    OVERHEADS,
    Prediction,
    predict,
    sensitivity,
)
from cosmosim.files import atomic_write_json, check_outputs

paper_app = typer.Typer(help="Reproduce published results with cosmosim's models.")
app.add_typer(paper_app, name="paper")
LINKS_BY_NAME = {link.name: link for link in LINKS.values()}


def _percent(fraction: float) -> str:
    return f"{100 * fraction:+.1f}%"


def _print(main: Prediction, rows: list[Prediction], console: Console) -> None:
    table = Table(title=f"CoSMoEs phone MoE, kactive offload, {main.link} ({main.link_gb_per_s:.2f} GB/s), "
                        f"overhead per {main.overhead}: o = {main.overhead_ms_per_layer:.3f} ms (fitted)")
    for column in ("row", "ExRep (synth.)", "experts swapped / token", "swap ms / token", "tok/s paper", "tok/s model"):
        table.add_column(column, justify="right" if column != "row" else "left")
    table.add_row("MoE, no offload", "–", "0", "0", f"{NO_OFFLOAD_TOKENS_PER_S:.2f}", "(input)")
    for row, swaps, model in ((OFFLOAD, main.offload, "(fitted)"), (BLES, main.bles, f"{main.bles_tokens_per_s:.2f}")):
        table.add_row(row.name, f"{100 * swaps.exrep:.2f}%", f"{swaps.experts_per_token:.2f}",
                      f"{1e3 * swaps.swap_s_per_token:.2f}", f"{row.tokens_per_s:.2f}", model)
    console.print(table)
    console.print(f"BlES: predicted {main.bles_tokens_per_s:.2f} tok/s ({_percent(main.bles_error)} vs "
                  f"{BLES.tokens_per_s}), speed-up x{main.speedup:.3f} ({_percent(main.speedup_error)} vs "
                  f"x{BLES.tokens_per_s / OFFLOAD.tokens_per_s:.3f})")
    console.print(f"link: {LINKS_BY_NAME[main.link].citation}")
    console.print(ASSUMPTION)

    spread = Table(title="How the prediction moves with the link and the overhead model")
    for column in ("link", "GB/s", "overhead paid per", "o (ms/layer)", "BlES tok/s", "error", "speed-up"):
        spread.add_column(column, justify="left" if column in ("link", "overhead paid per") else "right")
    for p in rows:
        fitted = f"{p.overhead_ms_per_layer:.3f}" + (" (<0: link too slow)" if p.overhead_ms_per_layer < 0 else "")
        spread.add_row(p.link, f"{p.link_gb_per_s:.2f}", p.overhead, fitted, f"{p.bles_tokens_per_s:.2f}",
                       _percent(p.bles_error), f"x{p.speedup:.3f}")
    console.print(spread)
    console.print("Routing: synthetic, in memory, with the paper's ExRep (its only published routing statistic).")


ASSUMPTION = (f"Assumed (the paper names no GPU, link or copy path): {LINKS[DEFAULT_LINK].name}, "
              f"{LINKS[DEFAULT_LINK].bytes_per_s / 1e9:.2f} GB/s, an A100-class host link copying from "
              "page-locked memory. Stock PyTorch .to(device) of a non-pinned host tensor goes through the "
              "pageable staging path instead; pageable rates vary by host (pcie4-pageable: 10.0 GB/s, too slow "
              "to fit the offload row). See the sensitivity table.")


@paper_app.command("bles-speedup")
def bles_speedup(
    link: str = typer.Option(DEFAULT_LINK, help="Host-GPU link whose rate prices a swap: " + ", ".join(LINKS) +
                             " (pcieN: the specification's raw rate; -pinned / -pageable: a cited bandwidthTest "
                             f"measurement). Default {DEFAULT_LINK}: {LINKS[DEFAULT_LINK].name}, "
                             f"{LINKS[DEFAULT_LINK].bytes_per_s / 1e9:.2f} GB/s, assumed because the paper "
                             "names no GPU, link or copy path."),
    overhead: str = typer.Option("layer", help="Where the fitted offload overhead is paid: " +
                                 "; ".join(f"{name}: {text}" for name, text in OVERHEADS.items()) + "."),
    sequences: int = typer.Option(100, help="Synthetic sequences (1-token prompt + 128 generated tokens each)."),
    seed: int = typer.Option(0, help="Seed of the synthetic routing."),
    json_path: Path = typer.Option(None, "--json", help="Also write the prediction and the sensitivity rows as JSON."),
) -> None:
    """Fit one per-layer offload overhead on CoSMoEs' MoE + offload row (ExRep 43.82%, 15.02 tok/s), then
    predict the BlES row (ExRep 6.55%; measured 23.10 tok/s, x1.54). The link is assumed (the paper names
    none): by default the measured pinned PCIe 4.0 x16 rate (CUDA bandwidthTest, DGX A100, 25.7 GB/s at
    32 MB a copy); every link, specified and measured, is in the sensitivity table. Formulas:
    docs/analytic-model.md."""
    check_outputs({"--json": json_path})
    main = predict(link, overhead, n_sequences=sequences, seed=seed)
    rows = sensitivity(n_sequences=sequences, seed=seed)
    if json_path is not None:
        atomic_write_json(json_path, {"prediction": asdict(main), "sensitivity": [asdict(row) for row in rows]})
    _print(main, rows, Console())
