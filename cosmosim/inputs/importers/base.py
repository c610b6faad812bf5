"""What every importer hands over, and how it becomes a v1 trace.

A reader turns one log into `RequestRouting`s, one per request in the order the log first names
them, each holding that request's tokens in order, so a log's interleaving of concurrent requests is
undone before anything else happens. `build_trace` lays the requests end to end (each request is a
sequence: its positions restart at 0), fills uniform gates where the log has none, and writes the
provenance into meta.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cosmosim.errors import InputError
from cosmosim.inputs.arch import get_arch
from cosmosim.inputs.trace import SCHEMA_VERSION, Trace, validate
from cosmosim.provenance import repository_commit, sha256_file


@dataclass
class RequestRouting:
    request: str  # the request's id in the log
    experts: np.ndarray  # int64 [tokens, layers, top_k]: in the router's order (descending gate)
    gates: np.ndarray | None = None  # float [tokens, layers, top_k]; None: the log records none


@dataclass
class ImportedLog:
    """A log's requests and what the reader learned about the model that served them."""

    format: str  # the importer's name (`cosmosim trace import FORMAT`)
    format_version: str  # the version of the project whose source defines the layout read
    requests: list[RequestRouting]
    layers: list[int]  # the model's layer index of each trace layer (layers that route no expert are left out)
    n_experts: int | None = None  # what the log says, when it says (else the largest id + 1)
    notes: dict = field(default_factory=dict)  # format-specific provenance for meta["import"]


def unrouted_layers(stacked: np.ndarray, fill: int) -> np.ndarray:
    """Layers where every id of every token is `fill`: the dense layers of a model that mixes dense and
    MoE layers, which the engines' capture buffers never write."""
    return (stacked == fill).all(axis=(0, 2))


def _fail(source: str, request: RequestRouting, token: int, what: str) -> InputError:
    return InputError(f"{source}: request {request.request!r}, token {token}: {what}")


def build_trace(log: ImportedLog, path: str | Path, *, n_experts: int | None = None, seq_len: int | None = None,
                arch: str | None = None) -> Trace:
    """The v1 trace of an imported log: requests in log order, one sequence each (or pieces of at most
    `seq_len` tokens), ids checked against `n_experts` (default: the log's, else the largest id + 1)."""
    source = str(path)
    requests = [request for request in log.requests if len(request.experts)]  # aborted before any pass: nothing routed
    if not requests:
        raise InputError(f"{source}: no request with routing in the log")
    if seq_len is not None and seq_len < 1:
        raise InputError(f"--seq-len: expected a positive number of tokens, got {seq_len}")
    if arch is not None:
        get_arch(arch)  # an unknown name fails here, not at the first run
    experts = np.concatenate([request.experts for request in requests])
    if n_experts is not None:
        origin = "--n-experts"
    elif log.n_experts is not None:
        n_experts, origin = log.n_experts, "log"
    else:
        n_experts, origin = int(experts.max()) + 1, "largest id + 1"
    if n_experts < 1:
        raise InputError(f"--n-experts: expected a positive number of experts, got {n_experts}")
    top_k = experts.shape[2]
    for request in requests:
        too_large = np.flatnonzero((request.experts >= n_experts).any(axis=(1, 2)))
        if too_large.size:
            raise _fail(source, request, int(too_large[0]), f"expert id {int(request.experts[too_large[0]].max())}: "
                        f"expected < {n_experts} experts (--n-experts)")
        ordered = np.sort(request.experts, axis=2)
        repeated = np.flatnonzero((ordered[:, :, 1:] == ordered[:, :, :-1]).any(axis=(1, 2)))
        if repeated.size:
            raise _fail(source, request, int(repeated[0]), "the same expert twice in one layer's top-k")
    if all(request.gates is None for request in requests):
        gates = np.full(experts.shape, 1.0 / top_k)
        gates_meta = {"present": False, "note": f"{log.format} logs record no gates: uniform 1/top_k"}
    else:
        raw = np.concatenate([request.gates for request in requests])
        total = raw.sum(axis=2, keepdims=True)
        # Renormalised over the top-k (the format's definition); a token whose gates are all 0 keeps zeros.
        gates = np.divide(raw, total, out=np.zeros_like(raw, dtype=np.float64), where=total > 0)
        gates_meta = {"present": True}
    positions = np.concatenate([np.arange(len(request.experts)) % (seq_len or len(request.experts))
                                for request in requests])
    meta = {
        "schema_version": SCHEMA_VERSION,
        "model": {"n_layers": len(log.layers), "n_experts": n_experts, "top_k": top_k},
        "training": None,
        "target_arch": arch,
        "source": f"imported from {log.format} log {source}",
        "import": {"format": log.format, "format_version": log.format_version, "path": source,
                   "sha256": sha256_file(path), "requests": len(requests), "layers": log.layers,
                   "n_experts_from": origin, "seq_len": seq_len, **log.notes},
        "gates": gates_meta,
        "commit": repository_commit(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    trace = Trace(experts.astype(np.int16), gates.astype(np.float16), positions.astype(np.int32), meta)
    validate(trace, source)
    return trace
