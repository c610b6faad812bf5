"""The importers by name (`cosmosim trace import FORMAT`), and the one call that runs one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cosmosim.errors import InputError
from cosmosim.inputs.importers.base import ImportedLog, build_trace
from cosmosim.inputs.importers.sglang import read_sglang
from cosmosim.inputs.importers.table import read_table
from cosmosim.inputs.importers.vllm import read_vllm
from cosmosim.inputs.trace import Trace

# FORMAT -> (reader, what it reads); each reader imports its heavy library (torch, pandas) itself
IMPORTERS: dict[str, tuple[Callable[[Path], ImportedLog], str]] = {
    "vllm": (read_vllm, "vLLM server responses with routed_experts (JSON, JSON Lines or stream events)"),
    "sglang": (read_sglang, "an SGLang expert distribution recorder dump in per_token mode (.pt)"),
    "table": (read_table, "a long table: request, token, layer, rank, expert[, gate] (.csv, .parquet)"),
}


def import_trace(format_name: str, path: str | Path, *, n_experts: int | None = None, seq_len: int | None = None,
                 arch: str | None = None) -> Trace:
    """The v1 trace of the log at `path`, written by `format_name`'s project (docs/trace-format.md, "Importing")."""
    path = Path(path)
    if format_name not in IMPORTERS:
        raise InputError(f"format {format_name!r}: expected one of {', '.join(IMPORTERS)}")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    read, _ = IMPORTERS[format_name]
    return build_trace(read(path), path, n_experts=n_experts, seq_len=seq_len, arch=arch)
