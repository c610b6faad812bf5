"""Train a mini model on the corpus: AdamW, warmup + cosine, checkpoints that resume exactly.

A run's folder holds:

    model.safetensors      weights
    optimizer.safetensors  AdamW moments and the torch RNG state
    config.json            model config, training args, corpus checksum, commit, progress, numpy RNG
    log.jsonl              one record per training step ("split": "train") and per validation ("val")

Each file is replaced atomically; config.json, written last, names the step, and both safetensors
carry that step in their metadata, so a checkpoint torn by a crash between renames is refused
instead of silently mixed. Resuming restores weights, optimizer, both RNGs and the log, so an
interrupted run ends bit for bit where an uninterrupted one does.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cosmosim.data.corpus import MANIFEST_FILE
from cosmosim.data.dataset import TokenSplit, load_split, sample_batch, sequential_windows
from cosmosim.errors import InputError
from cosmosim.model.checkpoint import (
    CHECKPOINT_FORMAT,
    CONFIG_FILE,
    LOG_FILE,
    RunState,
    resume,
    save_checkpoint,
)
from cosmosim.model.config import MINI_TARGET_ARCH, ModelConfig, get_config
from cosmosim.model.llama import Decoder
from cosmosim.model.mini import is_mini_file, load_mini_file
from cosmosim.model.losses import moe_aux_losses
from cosmosim.provenance import repository_commit, sha256_file

WD_FACTOR_NAMES = (".left", ".right")  # a WD expert matrix's two factors (cosmosim.model.moe.ExpertLinear)
TRAIN_LOSS_SMOOTHING = 0.98  # EMA of the per-step loss, ~50 steps: what the bar and summaries show


@dataclass(frozen=True)
class TrainArgs:
    """Everything that shapes the result; a resumed run must repeat these exactly."""

    steps: int
    seed: int = 0
    batch_size: int = 16
    lr: float = 2e-3
    min_lr: float = 2e-4  # where the cosine ends
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_windows: int = 64  # validation windows of seq_len tokens, the same ones at every eval
    checkpoint_every: int = 100
    router_lr_scale: float = 1.0  # the routers' learning rate as a multiple of lr (the locality study's knob)
    wd_lr_scale: float = 1.0  # the same for WD experts' factors (the WD study's knob)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "eval_windows", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise InputError(f"training: {name}: expected a positive integer, got {getattr(self, name)}")
        if not 0 < self.min_lr <= self.lr:
            raise InputError(f"training: lr {self.lr}, min_lr {self.min_lr}: expected 0 < min_lr <= lr")
        for name in ("router_lr_scale", "wd_lr_scale"):
            if not getattr(self, name) > 0:
                raise InputError(f"training: {name}: expected a positive number, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip <= 0:
            raise InputError("training: warmup_steps and weight_decay must be >= 0, grad_clip > 0")


# What an argument that a checkpoint predates is taken to have been (`checkpoint.resume`).
TRAINING_DEFAULTS = {field.name: field.default for field in dataclasses.fields(TrainArgs)
                     if field.default is not dataclasses.MISSING}


def lr_at(step: int, args: TrainArgs) -> float:
    """Linear warmup to `lr`, then a cosine down to `min_lr` at the last step."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * progress))


def target_arch_of(config_name: str | None) -> str | None:
    """The paper architecture a mini stands in for ('wearable-bles-mini' -> 'wearable-moe')."""
    return MINI_TARGET_ARCH.get(config_name) if config_name else None


# --- the loop ---------------------------------------------------------------------------------


def make_optimizer(model: Decoder, args: TrainArgs) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on norm gains), as in nanoGPT. The routers' gates and the WD
    experts' factors are groups of their own whose learning rates are `router_lr_scale` and `wd_lr_scale`
    times the schedule's."""
    named = list(model.named_parameters())
    routers = [p for name, p in named if ".router." in name]
    factors = [p for name, p in named if name.endswith(WD_FACTOR_NAMES)]
    matrices = [p for name, p in named if p.dim() >= 2 and ".router." not in name and not name.endswith(WD_FACTOR_NAMES)]
    groups = [{"params": matrices, "weight_decay": args.weight_decay, "lr_scale": 1.0},
              {"params": routers, "weight_decay": args.weight_decay, "lr_scale": args.router_lr_scale},
              {"params": factors, "weight_decay": args.weight_decay, "lr_scale": args.wd_lr_scale},
              {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0, "lr_scale": 1.0}]
    return torch.optim.AdamW([group for group in groups if group["params"]], lr=args.lr, betas=(0.9, 0.95))


def train_step(model: Decoder, optimizer: torch.optim.Optimizer, x_BT: torch.Tensor, y_BT: torch.Tensor,
               *, lr: float, grad_clip: float) -> dict[str, float]:
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
    logits_BTV, routings = model(x_BT)
    cross_entropy = F.cross_entropy(logits_BTV.flatten(0, 1), y_BT.flatten())
    aux = moe_aux_losses(routings=routings, config=model.config)
    optimizer.zero_grad(set_to_none=True)
    (cross_entropy + aux.total).backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return {"loss": cross_entropy.item(), "aux_loss": aux.total.item(), "load_balance": aux.load_balance.item(),
            "exrep": aux.exrep.item(), "grad_norm": grad_norm.item()}


@torch.no_grad()
def evaluate(model: Decoder, windows_NT: torch.Tensor, batch_size: int) -> dict[str, float]:
    """Validation loss in nats/token and the mean routing metrics over fixed windows (on the model's device)."""
    model.train(False)
    totals = {"val_loss": 0.0, "val_load_balance": 0.0, "val_exrep": 0.0}
    n_windows = windows_NT.shape[0]
    device = next(model.parameters()).device
    for batch_NT in windows_NT.to(device).split(batch_size):
        logits_BTV, routings = model(batch_NT[:, :-1])
        aux = moe_aux_losses(routings=routings, config=model.config)
        share = batch_NT.shape[0] / n_windows
        totals["val_loss"] += share * F.cross_entropy(logits_BTV.flatten(0, 1), batch_NT[:, 1:].flatten()).item()
        totals["val_load_balance"] += share * aux.load_balance.item()
        totals["val_exrep"] += share * aux.exrep.item()
    model.train()
    return totals


def validation_windows(split: TokenSplit, seq_len: int, n_windows: int) -> torch.Tensor:
    """The first n windows of seq_len + 1 tokens (input plus shifted target), every domain in turn."""
    windows, _ = sequential_windows(split, seq_len + 1)
    if windows.shape[0] == 0:
        raise InputError(f"split {split.name}: shorter than one window of {seq_len + 1} tokens")
    return torch.from_numpy(windows[:n_windows])


def resolve_config(config_name_or_config: str | ModelConfig, overrides: dict | None = None) -> tuple[ModelConfig, str | None]:
    """The config and its registry name; `overrides` (e.g. bles_lambda) replace fields of a named config."""
    if isinstance(config_name_or_config, ModelConfig):
        config, name = config_name_or_config, None
    else:
        config, name = get_config(config_name_or_config), config_name_or_config
    return (dataclasses.replace(config, **overrides) if overrides else config), name


def training_device(name: str) -> torch.device:
    """The torch device `name`, refused in one line when it is not one or this machine has none."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(f"--device {name}: expected a torch device such as cpu, cuda or cuda:0") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: this machine has no CUDA device (torch {torch.__version__}); use cpu")
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"--device {name}: expected cpu or cuda")
    return device


def _append_log(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def train(config_name_or_config: str | Path | ModelConfig, *, corpus_dir: str | Path, out_dir: str | Path, steps: int,
          seed: int = 0, batch_size: int = 16, lr: float = 2e-3, min_lr: float = 2e-4, warmup_steps: int = 100,
          weight_decay: float = 0.1, grad_clip: float = 1.0, eval_every: int = 100, eval_windows: int = 64,
          checkpoint_every: int = 100, router_lr_scale: float = 1.0, wd_lr_scale: float = 1.0, threads: int | None = None,
          device: str = "cpu", time_budget_s: float | None = None, overrides: dict | None = None,
          progress: bool = True) -> Path:
    """Train (or resume training) into out_dir and return it. The config: a ModelConfig, a named mini, or
    the path of a .json mini config written by `cosmosim mini` (`cosmosim.model.mini`).

    `threads` sets torch's intra-op threads (default: every core). `device` is where the model trains
    (a torch device: cpu, cuda, cuda:1); weights are initialised and batches drawn on the CPU either way,
    so a run starts the same everywhere, though a GPU's kernels round differently. `time_budget_s` ends
    this session with a checkpoint once that much wall time has passed; calling again resumes.
    """
    args = TrainArgs(steps=steps, seed=seed, batch_size=batch_size, lr=lr, min_lr=min_lr, warmup_steps=warmup_steps,
                     weight_decay=weight_decay, grad_clip=grad_clip, eval_every=eval_every,
                     eval_windows=eval_windows, checkpoint_every=checkpoint_every, router_lr_scale=router_lr_scale,
                     wd_lr_scale=wd_lr_scale)
    device = training_device(device)
    mini = load_mini_file(config_name_or_config) if is_mini_file(config_name_or_config) else None
    config, config_name = resolve_config(mini.config if mini else config_name_or_config, overrides)
    if mini is not None:  # a mini of any target, from `cosmosim mini`
        config_name = mini.name
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    train_split, val_split = load_split(corpus_dir, "train"), load_split(corpus_dir, "val")
    # The vocabulary belongs to the corpus' tokenizer, not to the named config.
    config = dataclasses.replace(config, vocab_size=train_split.vocab_size)
    val_windows = validation_windows(val_split, config.seq_len, args.eval_windows)
    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))

    torch.manual_seed(args.seed)
    model = Decoder(config).train().to(device)
    optimizer = make_optimizer(model, args)
    rng = np.random.default_rng(args.seed)
    header = {"format": CHECKPOINT_FORMAT, "config_name": config_name,
              "target_arch": mini.target_arch if mini else target_arch_of(config_name),
              **({"mini": {"file": str(mini.path), "target": mini.target}} if mini else {}),
              "model": config.to_dict(), "training": dataclasses.asdict(args),
              "corpus": {"dir": str(corpus_dir), "manifest_sha256": sha256_file(corpus_dir / MANIFEST_FILE),
                         "vocab_size": train_split.vocab_size, "domain_names": train_split.domain_names},
              "commit": repository_commit()}
    if (out_dir / CONFIG_FILE).exists():
        state = resume(out_dir, header, model, optimizer, rng, TRAINING_DEFAULTS)
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / LOG_FILE).unlink(missing_ok=True)  # a log without a checkpoint is from an aborted start
        state = RunState()

    tokens_per_step = args.batch_size * config.seq_len
    session_start, time_before, step_before = time.perf_counter(), state.train_time_s, state.step
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"), TimeRemainingColumn())
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task(config_name or "train", total=args.steps, completed=state.step, status="")
        while state.step < args.steps:
            x_BT, y_BT = (batch.to(device) for batch in sample_batch(train_split, args.batch_size, config.seq_len, rng))
            lr_now = lr_at(state.step, args)
            metrics = train_step(model, optimizer, x_BT, y_BT, lr=lr_now, grad_clip=args.grad_clip)
            state.step += 1
            state.tokens_seen += tokens_per_step
            session_s = time.perf_counter() - session_start
            state.train_time_s = time_before + session_s
            state.train_loss = metrics["loss"] if state.train_loss is None else (
                TRAIN_LOSS_SMOOTHING * state.train_loss + (1 - TRAIN_LOSS_SMOOTHING) * metrics["loss"])
            common = {"step": state.step, "tokens_seen": state.tokens_seen, "elapsed_s": round(state.train_time_s, 3)}
            _append_log(out_dir / LOG_FILE, {"split": "train", **common, "lr": lr_now, **metrics})

            last_step = state.step == args.steps
            if state.step % args.eval_every == 0 or last_step:
                val = evaluate(model, val_windows, args.batch_size)
                state.val_loss = val["val_loss"]
                _append_log(out_dir / LOG_FILE, {"split": "val", **common, **val})
            out_of_time = time_budget_s is not None and session_s >= time_budget_s
            if state.step % args.checkpoint_every == 0 or last_step or out_of_time:
                save_checkpoint(out_dir, header, state, model, optimizer, rng)

            tokens_per_s = (state.step - step_before) * tokens_per_step / max(session_s, 1e-9)
            val_text = f" val {state.val_loss:.3f}" if state.val_loss is not None else ""
            bar.update(task, advance=1,
                       status=f"loss {state.train_loss:.3f}{val_text} exrep {metrics['exrep']:.2f} {tokens_per_s:,.0f} tok/s")
            if out_of_time:
                break
    return out_dir
