"""Record a routing trace: run a trained checkpoint over the held-out trace split.

The split is cut into non-overlapping windows of the training length, every domain in turn
(`sequential_windows`), and each window is one sequence of the trace: positions restart at 0,
tokens and domain labels are kept. Per token and MoE layer the trace holds the router's top-k
experts by descending gate and their renormalised gates (trace format v1, `cosmosim.inputs.trace`).
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import torch
from rich.progress import track

from cosmosim.data.corpus import MANIFEST_FILE
from cosmosim.data.dataset import load_split, sequential_windows
from cosmosim.errors import InputError
from cosmosim.inputs.trace import SCHEMA_VERSION, Trace, save_trace
from cosmosim.model.llama import Decoder
from cosmosim.model.checkpoint import CONFIG_FILE, load_checkpoint
from cosmosim.provenance import repository_commit, sha256_file

MODEL_META_KEYS = ("n_layers", "d_model", "n_heads", "n_kv_heads", "n_experts", "top_k", "ffn_hidden",
                   "wd_rank", "vocab_size", "seq_len")
WINDOWS_PER_BATCH = 16


@torch.no_grad()
def route_windows(model: Decoder, windows_NT: torch.Tensor, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Expert ids int16 [N·T, L, K] and gates float16 [N·T, L, K], windows laid end to end."""
    experts, gates = [], []
    batches = windows_NT.split(WINDOWS_PER_BATCH)
    for batch_BT in track(batches, description="record", disable=not progress):
        _, routings = model(batch_BT)
        experts.append(torch.stack([r.expert_ids_BTK for r in routings], dim=2).flatten(0, 1))  # [B·T, L, K]
        gates.append(torch.stack([r.gates_BTK for r in routings], dim=2).flatten(0, 1))
    return torch.cat(experts).numpy().astype(np.int16), torch.cat(gates).numpy().astype(np.float16)


def model_meta(config) -> dict:
    """meta.model: the config's shape; with shared experts or dense layers also what `record --hf` gives
    (`n_shared_experts`, `shared_ffn_hidden`; `n_layers` counts the MoE layers, the trace's, `moe_layers`
    lists them and `n_model_layers` is the depth)."""
    model = {key: getattr(config, key) for key in MODEL_META_KEYS}
    arch = config.arch
    if arch.n_shared_experts:
        model.update(n_shared_experts=arch.n_shared_experts, shared_ffn_hidden=arch.shared_ffn_hidden)
    if arch.dense_layers:
        model.update(n_layers=arch.n_moe_layers, moe_layers=list(arch.moe_layers), n_model_layers=arch.n_layers,
                     dense_layers=list(arch.dense_layers), dense_ffn_hidden=arch.dense_ffn_hidden)
    return model


def record(checkpoint_dir: str | Path, out_path: str | Path, *, corpus_dir: str | Path,
           n_tokens: int | None = None, progress: bool = True) -> Path:
    """Write the trace of the checkpoint's routing over the trace split; returns out_path.

    `n_tokens` keeps the first n_tokens // seq_len windows (every domain in turn); None records
    the whole split. Asking for more than the split holds is an InputError.
    """
    checkpoint_dir, corpus_dir = Path(checkpoint_dir), Path(corpus_dir)
    checkpoint = load_checkpoint(checkpoint_dir)
    model, header = checkpoint.model, checkpoint.header
    config = model.config
    if not config.is_moe:
        raise InputError(f"{checkpoint_dir / CONFIG_FILE}: model.n_experts: {config.n_experts} (a dense model); "
                         "expected an MoE checkpoint, a dense one has no routing to record")
    manifest_sha256 = sha256_file(corpus_dir / MANIFEST_FILE) if (corpus_dir / MANIFEST_FILE).is_file() else None
    trained_on = header.get("corpus", {}).get("manifest_sha256")
    if manifest_sha256 != trained_on:
        raise InputError(f"{corpus_dir / MANIFEST_FILE}: sha256 {str(manifest_sha256)[:12]}… is not the corpus the "
                         f"checkpoint was trained on ({str(trained_on)[:12]}…); its tokenizer would not match")
    split = load_split(corpus_dir, "trace")
    windows, window_domains = sequential_windows(split, config.seq_len, max_tokens=n_tokens)
    experts, gates = route_windows(model, torch.from_numpy(windows), progress)

    n_windows, seq_len = windows.shape
    state, training = header["state"], header["training"]
    meta = {
        "schema_version": SCHEMA_VERSION,
        "model": model_meta(config),
        "training": {
            "corpus_manifest_sha256": trained_on,
            "config_name": header.get("config_name"),
            "run": checkpoint_dir.resolve().name,
            "steps": state["step"],
            "tokens_seen": state["tokens_seen"],
            "seed": training["seed"],
            "train_loss": state["train_loss"],
            "val_loss": state["val_loss"],
            "bles_lambda": config.bles_lambda,
            "bles_tau": config.bles_tau,
            "load_balance_weight": config.load_balance_weight,
            "load_balance_level": config.load_balance_level,
            "train_time_s": state["train_time_s"],
            "commit": header.get("commit"),
        },
        "target_arch": header.get("target_arch"),
        **({"mini": header["mini"]} if "mini" in header else {}),  # the target a `cosmosim mini` config shrank
        "domain_names": split.domain_names,
        "source": f"recorded from {checkpoint_dir} on the trace split",
        "commit": repository_commit(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    trace = Trace(
        experts=experts,
        gates=gates,
        positions=np.tile(np.arange(seq_len, dtype=np.int32), n_windows),
        tokens=windows.reshape(-1).astype(np.int32),
        domains=np.repeat(window_domains, seq_len),
        meta=meta,
    )
    return save_trace(trace, out_path)
