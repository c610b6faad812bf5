"""Training checkpoints: a run folder's weights, optimizer state and config.json, saved atomically and
read back exactly (`cosmosim train` resumes from them; `record` and the exporters load them).

    run folder/
      config.json            format, model config, training arguments, corpus, state (step, RNG, ...)
      model.safetensors      the weights, tagged with their step
      optimizer.safetensors  AdamW's state and torch's RNG, tagged with the same step
      log.jsonl              one record per step and per validation (written by the loop)

A checkpoint torn between two renames (files of different steps) is an InputError, never a silent mix.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from cosmosim.errors import InputError
from cosmosim.files import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from cosmosim.model.config import ModelConfig
from cosmosim.model.llama import Decoder

CHECKPOINT_FORMAT = "cosmosim-checkpoint/1"
MODEL_FILE, OPTIMIZER_FILE = "model.safetensors", "optimizer.safetensors"
CONFIG_FILE, LOG_FILE = "config.json", "log.jsonl"


@dataclass
class RunState:
    step: int = 0
    tokens_seen: int = 0
    train_time_s: float = 0.0  # wall time over every session of this run
    train_loss: float | None = None  # EMA of the cross-entropy, nats/token
    val_loss: float | None = None


@dataclass
class Checkpoint:
    model: Decoder
    header: dict  # config.json as saved


def read_header(checkpoint_dir: Path) -> dict:
    path = Path(checkpoint_dir) / CONFIG_FILE
    header = read_json(path, hint="expected a checkpoint folder written by `cosmosim train`")
    if not isinstance(header, dict) or header.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: format: expected {CHECKPOINT_FORMAT!r}")
    for key in ("model", "training", "state"):
        if not isinstance(header.get(key), dict):
            raise InputError(f"{path}: {key}: expected an object")
    if not isinstance(header["state"].get("step"), int):
        raise InputError(f"{path}: state.step: expected an integer, got {header['state'].get('step')!r}")
    return header


def _read_safetensors(path: Path, step: int) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise InputError(f"{path}: missing; the checkpoint folder has no {path.name}")
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (safetensors.SafetensorError, OSError) as error:
        raise InputError(f"{path}: not a readable safetensors file ({error})") from None
    if metadata.get("step") != str(step):
        raise InputError(f"{path}: step {metadata.get('step')} but {CONFIG_FILE} says {step}; "
                         "the checkpoint was torn while saving")
    return tensors, metadata


def load_weights(model: Decoder, checkpoint_dir: Path, step: int) -> None:
    path = Path(checkpoint_dir) / MODEL_FILE
    saved, _ = _read_safetensors(path, step)
    expected = model.state_dict()
    for name in sorted(set(expected) | set(saved)):
        if name not in saved or name not in expected:
            where = "missing from the file" if name not in saved else "not in the model config"
            raise InputError(f"{path}: tensor {name}: {where}")
        if saved[name].shape != expected[name].shape:
            raise InputError(f"{path}: tensor {name}: expected shape {tuple(expected[name].shape)} "
                             f"from {CONFIG_FILE}, got {tuple(saved[name].shape)}")
    model.load_state_dict(saved)


def load_checkpoint(checkpoint_dir: str | Path) -> Checkpoint:
    """The trained model (eval mode) and its config.json; InputError for anything inconsistent."""
    checkpoint_dir = Path(checkpoint_dir)
    header = read_header(checkpoint_dir)
    config = ModelConfig.from_dict(header["model"], source=str(checkpoint_dir / CONFIG_FILE))
    model = Decoder(config)
    load_weights(model, checkpoint_dir, header["state"]["step"])
    return Checkpoint(model.train(False), header)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    """AdamW's state as flat tensors (param index . field) plus its param groups as JSON."""
    state_dict = optimizer.state_dict()
    tensors = {f"{index}.{key}": value.cpu() for index, fields in state_dict["state"].items() for key, value in fields.items()}
    return tensors, json.dumps(state_dict["param_groups"])


def _load_optimizer(optimizer: torch.optim.Optimizer, checkpoint_dir: Path, step: int) -> None:
    tensors, metadata = _read_safetensors(checkpoint_dir / OPTIMIZER_FILE, step)
    torch.set_rng_state(tensors.pop("torch_rng_state"))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})


def save_checkpoint(out_dir: Path, header: dict, state: RunState, model: Decoder,
                    optimizer: torch.optim.Optimizer, rng: np.random.Generator) -> None:
    step_meta = {"step": str(state.step)}
    weights = {name: tensor.cpu() for name, tensor in model.state_dict().items()}
    atomic_write_bytes(out_dir / MODEL_FILE, safetensors.torch.save(weights, metadata=step_meta))
    tensors, param_groups = _optimizer_tensors(optimizer)
    tensors["torch_rng_state"] = torch.get_rng_state()
    atomic_write_bytes(out_dir / OPTIMIZER_FILE,
                 safetensors.torch.save(tensors, metadata={**step_meta, "param_groups": param_groups}))
    progress = {**dataclasses.asdict(state), "numpy_rng": rng.bit_generator.state}
    saved = {**header, "state": progress, "saved_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    atomic_write_json(out_dir / CONFIG_FILE, saved)


def resume(out_dir: Path, header: dict, model: Decoder, optimizer: torch.optim.Optimizer,
           rng: np.random.Generator, training_defaults: dict) -> RunState:
    """The state of the run saved in out_dir, loaded into `model`, `optimizer` and `rng`; InputError unless
    `header` (this run's config and training arguments) is the saved run's. A training argument newer
    than the checkpoint reads as its default (`training_defaults`)."""
    saved = read_header(out_dir)
    # The saved model config as it reads today (a dense one written with n_experts = 0 included).
    sections = {"model": ModelConfig.from_dict(saved["model"], source=str(out_dir / CONFIG_FILE)).to_dict(),
                "training": {**training_defaults, **saved["training"]}}
    for section, fields in sections.items():
        for key, value in header[section].items():
            if fields.get(key) != value:
                raise InputError(f"{out_dir / CONFIG_FILE}: {section}.{key}: the checkpoint has "
                                 f"{fields.get(key)!r}, this run asks {value!r}; resume with the same "
                                 "arguments or use another out_dir")
    if saved.get("corpus", {}).get("manifest_sha256") != header["corpus"]["manifest_sha256"]:
        raise InputError(f"{out_dir / CONFIG_FILE}: corpus.manifest_sha256: the checkpoint was trained on another corpus")
    progress = dict(saved["state"])
    rng.bit_generator.state = progress.pop("numpy_rng")
    state = RunState(**progress)
    load_weights(model, out_dir, state.step)
    _load_optimizer(optimizer, out_dir, state.step)
    _keep_log_until(out_dir / LOG_FILE, state.step)
    return state


def _keep_log_until(path: Path, step: int) -> None:
    """Drop the records written after the checkpoint: the resumed run writes them again."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text("utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break  # a line torn by the interruption: it and everything after are newer than the checkpoint
        if record["step"] <= step:
            kept.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))
