"""Record a routing trace from a Hugging Face MoE model folder (config.json + safetensors weights).

The model is loaded with the installed `transformers`, offline (nothing is ever downloaded), on the
CPU in float32, and run over token windows from a text (the folder's own tokenizer), a file of token
ids, or a corpus split's raw text. Routing is read with forward hooks on the router modules that
transformers itself records `router_logits` from: each returns (logits, top-k weights, top-k ids),
so the trace holds exactly the experts and gates the model weighs its experts with, whatever rule
its family uses. Shared experts (every token takes them) are not routed and so not in `experts`;
layers without experts are not in the trace at all; `meta` says which layers are and what was left.
"""

from __future__ import annotations

import datetime
import os
import re
from pathlib import Path

import numpy as np
import torch
from rich.progress import track

from cosmosim.data.corpus import MANIFEST_FILE, SPLITS, default_corpus_dir, read_manifest, verify_file
from cosmosim.data.dataset import TokenSplit, sequential_windows
from cosmosim.errors import InputError
from cosmosim.files import atomic_write_text, read_json
from cosmosim.inputs.arch_files import to_toml
from cosmosim.inputs.hf_config import EXPERT_COUNT_KEYS, hf_architecture
from cosmosim.inputs.trace import SCHEMA_VERSION, Trace, save_trace
from cosmosim.provenance import repository_commit, sha256_file

INSTALL_HINT = 'pip install "cosmosim[hf]"'
DEFAULT_SEQ_LEN = 256  # unless the model's context is shorter
WINDOWS_PER_BATCH = 8
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def _transformers():
    """The transformers module, set to never reach a hub and to print neither logs nor its own bars."""
    # huggingface_hub reads these once, when it is first imported: set them before that.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import transformers
    except ImportError:
        raise InputError(f"recording from a Hugging Face model needs the transformers package; "
                         f"{INSTALL_HINT}") from None
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return transformers


def read_model_config(model_dir: Path) -> tuple[dict, object]:
    """(config.json as a dict, the transformers config) of an MoE model folder; InputError otherwise."""
    transformers = _transformers()
    config_path = model_dir / "config.json"
    expected = "expected a Hugging Face model folder (config.json + *.safetensors)"
    if not model_dir.is_dir():
        raise InputError(f"{model_dir}: no such folder; {expected}")
    raw = read_json(config_path, hint=expected)
    if not isinstance(raw, dict):
        raise InputError(f"{config_path}: expected a JSON object")
    model_type = raw.get("model_type")
    known = transformers.models.auto.configuration_auto.CONFIG_MAPPING_NAMES
    if not isinstance(model_type, str) or model_type not in known:
        raise InputError(f"{config_path}: model_type: {model_type!r} is not a model type transformers "
                         f"{transformers.__version__} knows")
    try:
        config = transformers.AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise InputError(f"{config_path}: transformers cannot read it ({' '.join(str(error).split())})") from None
    text_config = config.get_text_config()
    if not any(getattr(text_config, key, None) for key in EXPERT_COUNT_KEYS) or not getattr(
            text_config, "num_experts_per_tok", None):
        raise InputError(f"{config_path}: model_type {model_type!r}: not a Mixture-of-Experts model (no "
                         f"{' / '.join(EXPERT_COUNT_KEYS)} and num_experts_per_tok); it has no routing to record")
    if not list(model_dir.glob("*.safetensors")):
        raise InputError(f"{model_dir}: no *.safetensors weights (only safetensors are loaded: they cannot run code)")
    return raw, config


def shape_of(arch: dict) -> dict:
    """The routed and shared experts' counts and widths, from the model's architecture (`architecture`)."""
    return {key: arch[key] for key in ("n_experts", "top_k", "ffn_hidden", "n_shared_experts", "shared_ffn_hidden")}


def gate_rule(model_type: str, text_config, router_name: str) -> tuple[bool | None, str]:
    """(whether gates are renormalised over the top-k, how the router computes them); None: measure it."""
    if model_type == "mixtral":
        return True, ("softmax over all experts' router logits, top-k, renormalised over the top-k "
                      "(always: MixtralTopKRouter)")
    if model_type in ("olmoe", "qwen2_moe", "qwen3_moe"):
        norm = bool(text_config.norm_topk_prob)
        then = "renormalised over the top-k" if norm else "the top-k softmax probabilities as they are, unnormalised"
        return norm, (f"softmax over all experts' router logits, top-k; config norm_topk_prob {str(norm).lower()}: "
                      f"{then}")
    return None, (f"the top-k weights {router_name} returns (model_type {model_type!r}: cosmosim does not know its "
                  "rule, so renormalised means every token's top-k weights have one common sum)")


def _tokenizer(model_dir: Path):
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        raise InputError(f"{model_dir}: no tokenizer in the model folder ({' / '.join(TOKENIZER_FILES)}); pass "
                         "--token-ids FILE instead (a .npy of token ids, or a text file of whitespace-separated ints)")
    try:
        return _transformers().AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise InputError(f"{model_dir}: its tokenizer does not load ({' '.join(str(error).split())}); "
                         "pass --token-ids FILE instead") from None


def _encode(tokenizer, text: str) -> np.ndarray:
    return np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int32)


def read_token_ids(path: Path) -> np.ndarray:
    """Token ids (int64 [N]) from a .npy array (never unpickled) or a text file of whitespace-separated ints."""
    if not path.is_file():
        raise InputError(f"{path}: no such token-ids file")
    if path.suffix == ".npy":
        try:
            ids = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            raise InputError(f"{path}: not a readable .npy array ({error})") from None
        if not isinstance(ids, np.ndarray) or ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise InputError(f"{path}: expected a 1-D integer array of token ids, got {getattr(ids, 'dtype', '?')} "
                             f"{getattr(ids, 'shape', '')}")
        return ids.astype(np.int64)
    try:
        words = path.read_text("utf-8").split()
        return np.array([int(word) for word in words], dtype=np.int64)
    except (UnicodeDecodeError, ValueError) as error:
        raise InputError(f"{path}: expected whitespace-separated integer token ids ({error})") from None


def token_split(model_dir: Path, *, text: Path | None, token_ids: Path | None, corpus_split: str | None,
                corpus_dir: Path, vocab_size: int) -> tuple[TokenSplit, str]:
    """The tokens to route, as a split of one domain per text (the corpus: each of its domains), and a
    phrase saying where they came from."""
    given = {"--text": text, "--token-ids": token_ids, "--corpus-split": corpus_split}
    if sum(value is not None for value in given.values()) != 1:
        named = [flag for flag, value in given.items() if value is not None] or ["none"]
        raise InputError(f"{', '.join(given)}: give exactly one token source, got {' and '.join(named)}")
    if corpus_split is not None:
        # The corpus keeps its raw text, so the model's own tokenizer encodes it: the corpus
        # tokenizer's ids would mean other words to this model.
        if corpus_split not in SPLITS:
            raise InputError(f"--corpus-split {corpus_split!r}: expected one of {', '.join(SPLITS)}")
        manifest = read_manifest(corpus_dir)
        tokenizer = _tokenizer(model_dir)
        names = list(manifest["domains"])
        files = [verify_file(corpus_dir, manifest, f"{corpus_split}/{name}.txt") for name in names]
        encoded = [_encode(tokenizer, file.read_text("utf-8")) for file in files]
        what = f"the {corpus_split} split of corpus {corpus_dir} (the model's tokenizer)"
    elif text is not None:
        if not text.is_file():
            raise InputError(f"{text}: no such text file")
        try:
            encoded = [_encode(_tokenizer(model_dir), text.read_text("utf-8"))]
        except UnicodeDecodeError as error:
            raise InputError(f"{text}: not UTF-8 text ({error})") from None
        names, what = [text.stem], f"text {text} (the model's tokenizer)"
    else:
        ids = read_token_ids(token_ids)
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            raise InputError(f"{token_ids}: token ids in [{ids.min()}, {ids.max()}]; expected [0, {vocab_size}), "
                             "the model's vocabulary")
        encoded, names, what = [ids.astype(np.int32)], [token_ids.stem], f"token ids {token_ids}"
    tokens = np.concatenate(encoded).astype(np.int32)
    domains = np.repeat(np.arange(len(encoded), dtype=np.int8), [len(e) for e in encoded])
    return TokenSplit(tokens, domains, names, vocab_size, name=what), what


def windows_of(split: TokenSplit, seq_len: int, n_tokens: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Whole windows of seq_len tokens (int64 [N, S]), every text in turn, at most n_tokens tokens in all."""
    available = sum((end - start) // seq_len for start, end in split.domain_spans()) * seq_len
    if available == 0:
        raise InputError(f"{split.name}: {split.tokens.size} tokens, fewer than one window of --seq-len {seq_len}; "
                         "give more text or a smaller --seq-len")
    if n_tokens is not None and n_tokens < seq_len:
        raise InputError(f"--tokens {n_tokens}: fewer than one window of --seq-len {seq_len}")
    return sequential_windows(split, seq_len, max_tokens=min(n_tokens or available, available))


def find_routers(model, model_type: str) -> list[tuple[int, torch.nn.Module]]:
    """(model layer index, router module) of every MoE layer, in layer order."""
    recorder = getattr(model, "_can_record_outputs", None) or {}
    router_class = getattr(recorder.get("router_logits"), "target_class", None)
    if not isinstance(router_class, type):
        raise InputError(f"model_type {model_type!r}: transformers records no router outputs for it "
                         "(output_router_logits); recording its routing is not supported")
    routers = []
    for name, module in model.named_modules():
        if isinstance(module, router_class):
            match = _LAYER_INDEX.search(name + ".")
            if match is None:
                raise InputError(f"model_type {model_type!r}: router {name} is not inside a numbered decoder layer; "
                                 "recording its routing is not supported")
            routers.append((int(match.group(1)), module))
    if not routers:
        raise InputError(f"model_type {model_type!r}: the model has no {router_class.__name__} module to record")
    return sorted(routers, key=lambda pair: pair[0])


@torch.no_grad()
def route_windows(model, routers: list[torch.nn.Module], windows_NT: torch.Tensor, top_k: int, model_type: str,
                  progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Expert ids int16 [N·T, L, K] and gates float32 [N·T, L, K] (descending), windows laid end to end."""
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # slot in `routers` -> (weights, ids)

    def keeper(slot: int):
        def keep(module, _inputs, output) -> None:
            if not (isinstance(output, tuple) and len(output) == 3 and output[1].dim() == 2
                    and output[1].shape[-1] == top_k and output[2].shape == output[1].shape):
                raise InputError(f"model_type {model_type!r}: {type(module).__name__} returns something other than "
                                 f"(logits, top-{top_k} weights, top-{top_k} ids); recording it is not supported")
            captured[slot] = (output[1].float(), output[2])
        return keep

    handles = [router.register_forward_hook(keeper(slot)) for slot, router in enumerate(routers)]
    experts, gates = [], []
    try:
        for batch_BT in track(windows_NT.split(WINDOWS_PER_BATCH), description="record", disable=not progress):
            captured.clear()
            try:
                model(input_ids=batch_BT, use_cache=False)
            except RuntimeError as error:  # the folder's config or weights, not cosmosim: a shape, or memory
                raise InputError(f"model_type {model_type!r}: the model's forward pass failed "
                                 f"({' '.join(str(error).split())})") from None
            # Routers see the batch flattened to [B·T, d], so rows are already in windows-end-to-end order.
            gates_NLK = torch.stack([captured[slot][0] for slot in range(len(routers))], dim=1)
            ids_NLK = torch.stack([captured[slot][1] for slot in range(len(routers))], dim=1)
            # Some routers (DeepSeek's) take top-k unsorted; the trace orders each token's k by gate.
            gates_NLK, order_NLK = gates_NLK.sort(dim=-1, descending=True, stable=True)
            experts.append(ids_NLK.gather(-1, order_NLK))
            gates.append(gates_NLK)
    finally:
        for handle in handles:
            handle.remove()
    return torch.cat(experts).numpy().astype(np.int16), torch.cat(gates).numpy()


def architecture(model_dir: Path, text_config, moe_layers: list[int]) -> dict:
    """The whole model in the keys of cosmosim's architecture files (None: does not apply), by the one mapping of
    a config onto them (cosmosim.inputs.hf_config); the layers with routers are the MoE layers."""
    return hf_architecture(text_config.to_dict(), name=model_dir.resolve().name, source=str(model_dir / "config.json"),
                           moe_layers=moe_layers).data


def architecture_toml(arch: dict) -> str:
    """The architecture dict as an architecture file (`cosmosim run --arch FILE`); keys that do not apply are absent."""
    return to_toml(arch, header="Written by `cosmosim record --hf` from the model's config.json; keys that do not "
                                "apply are absent.\nSchema: docs/architectures.md.")


def record_hf(model_dir: str | Path, out_path: str | Path, *, text: str | Path | None = None,
              token_ids: str | Path | None = None, corpus_split: str | None = None,
              corpus_dir: str | Path | None = None, n_tokens: int | None = None, seq_len: int | None = None,
              arch_out: str | Path | None = None, progress: bool = True) -> Path:
    """Write the trace of a Hugging Face MoE model's routing over the given tokens; returns out_path.

    Exactly one of `text` (encoded with the folder's tokenizer), `token_ids` (.npy or whitespace-separated
    ints) and `corpus_split` (that split of `corpus_dir`, default $COSMOSIM_CORPUS or ./corpus, encoded with
    the folder's tokenizer). Windows of `seq_len` (default min(max_position_embeddings, 256)) are sequences;
    `n_tokens` keeps whole windows up to that many tokens. `arch_out` also writes `meta.architecture` as TOML.
    """
    model_dir = Path(model_dir)
    corpus_dir = default_corpus_dir() if corpus_dir is None else Path(corpus_dir)
    raw_config, config = read_model_config(model_dir)
    transformers = _transformers()
    text_config = config.get_text_config()
    model_type = raw_config["model_type"]
    max_positions = getattr(text_config, "max_position_embeddings", None) or DEFAULT_SEQ_LEN
    seq_len = min(max_positions, DEFAULT_SEQ_LEN) if seq_len is None else seq_len
    if not 1 <= seq_len <= max_positions:
        raise InputError(f"--seq-len {seq_len}: expected 1–{max_positions} (the model's max_position_embeddings)")
    split, what = token_split(model_dir, text=None if text is None else Path(text),
                              token_ids=None if token_ids is None else Path(token_ids), corpus_split=corpus_split,
                              corpus_dir=corpus_dir, vocab_size=int(text_config.vocab_size))
    windows, window_domains = windows_of(split, seq_len, n_tokens)

    try:
        model = transformers.AutoModel.from_pretrained(str(model_dir), dtype=torch.float32, local_files_only=True,
                                                       use_safetensors=True)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as error:
        raise InputError(f"{model_dir}: transformers cannot load the model ({' '.join(str(error).split())})") from None
    model.eval()
    layer_routers = find_routers(model, model_type)
    moe_layers = [index for index, _ in layer_routers]
    arch = architecture(model_dir, text_config, moe_layers)
    shape = shape_of(arch)
    experts, gates = route_windows(model, [router for _, router in layer_routers], torch.from_numpy(windows),
                                   shape["top_k"], model_type, progress)

    renormalised, how = gate_rule(model_type, text_config, type(layer_routers[0][1]).__name__)
    if renormalised is None:
        # A constant sum other than 1 is a renormalisation and then a scale (DeepSeek's routed_scaling_factor).
        sums = gates.sum(axis=-1)
        renormalised = bool(sums.max() - sums.min() <= 1e-3 * sums.max())
        how += f"; measured: each token's top-k weights sum to {sums.min():.4g}–{sums.max():.4g}"
    n_windows = windows.shape[0]
    meta = {
        "schema_version": SCHEMA_VERSION,
        "model": {"n_layers": len(moe_layers), "n_experts": shape["n_experts"], "top_k": shape["top_k"],
                  "d_model": arch["d_model"], "n_heads": arch["n_heads"], "n_kv_heads": arch["n_kv_heads"],
                  "ffn_hidden": shape["ffn_hidden"], "wd_rank": None, "vocab_size": arch["vocab_size"],
                  "seq_len": seq_len, "moe_layers": moe_layers, "n_model_layers": arch["n_layers"],
                  "n_shared_experts": shape["n_shared_experts"], "shared_ffn_hidden": shape["shared_ffn_hidden"]},
        "gates": {"present": True, "renormalised_top_k": renormalised, "how": how},
        "hf": {"path": str(model_dir), "model_type": model_type, "config": raw_config,
               "transformers_version": transformers.__version__},
        "architecture": arch,
        "training": None,
        "target_arch": None,
        # The corpus manifest lists every file's sha256, so its own hash names the text.
        "input": {"what": what, "sha256": sha256_file(corpus_dir / MANIFEST_FILE if corpus_split is not None
                                                      else text or token_ids)},
        "source": f"recorded from Hugging Face model at {model_dir} on {what}",
        "commit": repository_commit(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    if corpus_split is not None:
        meta["domain_names"] = split.domain_names
    trace = Trace(
        experts=experts,
        gates=gates,
        positions=np.tile(np.arange(seq_len, dtype=np.int32), n_windows),
        tokens=windows.reshape(-1).astype(np.int32),
        domains=np.repeat(window_domains, seq_len) if corpus_split is not None else None,
        meta=meta,
    )
    path = save_trace(trace, out_path)
    if arch_out is not None:
        atomic_write_text(arch_out, architecture_toml(arch))
    return path
