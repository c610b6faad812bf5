"""`cosmosim llama-cpp`: llama.cpp as a second, independent engine (docs/validation.md, "llama.cpp")."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from cosmosim.cli.app import app
from cosmosim.files import atomic_write_json, check_outputs

llama_app = typer.Typer(help="llama.cpp (llama-cpp-python, built by scripts/build_llama_cpp.sh) beside cosmosim: "
                             "GGUF export of a mini, and the experts llama.cpp chooses against a recorded trace.")
app.add_typer(llama_app, name="llama-cpp")


@llama_app.command("export")
def export(
    checkpoint: Path = typer.Option(..., help="A MoE mini's run folder (from `cosmosim train`)."),
    out: Path = typer.Option(..., help="The GGUF file to write (float32, llama architecture with experts)."),
    tokenizer: Path = typer.Option(Path("traces/tokenizer.json"), help="The tokenizer the mini was trained with."),
) -> None:
    """Write a mini's checkpoint as a GGUF file llama.cpp loads (its `llama` architecture, as Mixtral)."""
    from cosmosim.host.gguf_export import export_checkpoint

    check_outputs({"--out": out}, {"--checkpoint": checkpoint, "--tokenizer": tokenizer})
    typer.echo(f"wrote {export_checkpoint(checkpoint, out, tokenizer)}")


@llama_app.command("routing")
def routing(
    checkpoint: Path = typer.Option(..., help="A MoE mini's run folder (from `cosmosim train`)."),
    trace: Path = typer.Option(..., help="The trace `cosmosim record` wrote from that checkpoint at its last step."),
    sequences: int = typer.Option(8, min=1, help="How many of the trace's sequences to decode (one token at a time)."),
    tokenizer: Path = typer.Option(Path("traces/tokenizer.json"), help="The tokenizer the mini was trained with."),
    threads: int = typer.Option(1, min=1, help="llama.cpp's threads."),
    gguf: Path = typer.Option(None, help="Also keep the converted GGUF file here (default: a scratch file)."),
    json_path: Path = typer.Option(None, "--json", help="Also write the comparison as JSON."),
) -> None:
    """Decode the trace's tokens with llama.cpp from the checkpoint's weights and compare the experts it
    chooses, token by token and layer by layer, with those the trace recorded in torch.

    Example: cosmosim llama-cpp routing --checkpoint runs/wearable-moe-mini --trace traces/moe.npz --json r.json
    """
    from cosmosim.host.llama_cpp import compare_routing

    check_outputs({"--gguf": gguf, "--json": json_path},
                  {"--checkpoint": checkpoint, "--trace": trace, "--tokenizer": tokenizer})
    with Progress(transient=True) as bar:
        task = bar.add_task("llama.cpp decoding", total=sequences)
        report = compare_routing(checkpoint, trace, tokenizer_path=tokenizer, sequences=sequences, threads=threads,
                                 gguf_path=gguf, progress=lambda done, total: bar.update(task, completed=done, total=total))
    if json_path is not None:
        atomic_write_json(json_path, report)
    table = Table(title=f"llama.cpp {report['llama_cpp_python']} against {report['trace']}: {report['tokens']} tokens "
                        f"x {report['layers']} layers, top-{report['top_k']}")
    for column in ("same experts", "same first expert", "slots in common", "same experts, worst layer"):
        table.add_column(column, justify="right")
    table.add_row(*(f"{100 * value:.2f} %" for value in (report["same_set"], report["same_first"],
                                                        report["slots_in_common"], min(report["same_set_by_layer"]))))
    Console().print(table)


@llama_app.command("speed")
def speed(
    arch: str = typer.Option("wearable-moe", help="The MoE to time at its real size (see `cosmosim arch`)."),
    tokens: int = typer.Option(64, min=8, help="Decode tokens timed (after 32 untimed ones that fault the weights in)."),
    threads: int = typer.Option(1, min=1, help="llama.cpp's threads."),
    seed: int = typer.Option(0, help="Seed of the random weights and tokens."),
    directory: Path = typer.Option(None, "--dir", help="Parent folder for the scratch GGUF files (about 2 bytes a weight)."),
    json_path: Path = typer.Option(None, "--json", help="Also write the comparison as JSON."),
) -> None:
    """Time llama.cpp decoding ARCH (random float16 weights, every weight resident) against cosmosim's prediction
    on a profile calibrated on llama.cpp's dense decode here, not on the MoE runs compared.

    Example: cosmosim llama-cpp speed --arch wearable-moe --json s.json
    """
    from cosmosim.host.llama_speed import measure_speed
    from cosmosim.inputs.arch import get_arch

    check_outputs({"--json": json_path})
    console = Console(stderr=True)
    report = measure_speed(get_arch(arch), tokens=tokens, threads=threads, seed=seed, directory=directory,
                           progress=lambda message: console.print(f"[dim]{message}[/]"))
    if json_path is not None:
        atomic_write_json(json_path, report)
    fit = report["calibration"]
    table = Table(title=f"llama.cpp vs cosmosim: {report['arch']}, f16, every weight resident, {report['threads']} "
                        f"thread(s), {report['decode_tokens']} tokens · calibrated {fit['bytes_per_s'] / 1e9:.2f} GB/s, "
                        f"{fit['layer_overhead_us']:.1f} µs per layer")
    for column in ("", "TPOT (ms)", "tokens/s", "error"):
        table.add_column(column, justify="left" if not column else "right")
    table.add_row(f"llama.cpp, measured (IQR {report['measured_spread_pct']:.1f} %)", f"{report['measured_tpot_ms']:.2f}",
                  f"{report['measured_tokens_per_s']:.1f}", "")
    for engine, predicted in report["predicted"].items():
        table.add_row(f"cosmosim {engine}", f"{predicted['tpot_ms']:.2f}", f"{predicted['tokens_per_s']:.1f}",
                      f"{predicted['error_pct']:+.1f} %")
    Console().print(table)
