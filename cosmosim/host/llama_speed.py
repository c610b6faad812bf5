"""llama.cpp's decode speed against cosmosim's prediction, every weight resident in DRAM.

1. Calibrate llama.cpp on this host with *dense* decoders of the target's width, at two depths and two
   FFN widths (random float16 weights, so that layers and bytes vary apart): at batch 1 a token's time is a per-layer cost plus its weight bytes over an
   effective rate (f16 GEMV does 1 FLOP per byte, so one rate covers memory and arithmetic). Least squares
   on the measured per-token times gives the rate and the per-layer cost; nothing of the MoE is fitted.
2. Build the target MoE at its real size with random float16 weights, record its routing in torch on
   random tokens (the same weights), and time llama.cpp decoding those tokens one by one.
3. Predict with cosmosim (both engines) on a profile holding the fitted figures, every expert cached, and
   compare tokens per second.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np

from cosmosim.errors import InputError
from cosmosim.host.gguf_export import mini_shape, mini_tensors, placeholder_vocab, write_gguf
from cosmosim.host.llama_cpp import decode_one, llama_context
from cosmosim.inputs.arch import Architecture

WARMUP_TOKENS = 32  # decode steps that fault the mmapped weights in (every expert, all but surely): not timed;
# cosmosim takes them as the prompt, so its cache holds every expert they chose before the timed tokens
CALIBRATION_DEPTHS = (0.5, 1.0)  # dense decoders at these fractions of the target's depth,
CALIBRATION_WIDTHS = (1, 3)  # with an FFN of these multiples of the target's active experts' width


def decode_seconds(gguf_path: Path, tokens: np.ndarray, threads: int) -> np.ndarray:
    """Wall seconds of each decode step of `tokens` (one at a time, from position 0), warm-up ones dropped."""
    seconds = []
    with llama_context(gguf_path, len(tokens), threads) as context:
        for token_id in tokens:
            start = time.perf_counter()
            decode_one(context, int(token_id), f"{gguf_path}: llama_decode failed")
            seconds.append(time.perf_counter() - start)
    return np.array(seconds[WARMUP_TOKENS:])


def random_decoder(arch: Architecture, seq_len: int, seed: int):
    """A torch Decoder of `arch`'s shape with its initial (random) weights."""
    import torch

    from cosmosim.model.config import ModelConfig
    from cosmosim.model.llama import Decoder

    torch.manual_seed(seed)
    with torch.no_grad():
        return Decoder(ModelConfig.of(arch, seq_len=seq_len)).train(False)


def _write(model, path: Path) -> Path:
    return write_gguf(path, mini_shape(model.config), mini_tensors(model), placeholder_vocab(model.config.vocab_size),
                      matrix_dtype=np.float16)


def calibrate_llama_cpp(target: Architecture, tokens: np.ndarray, threads: int, scratch: Path, seed: int) -> dict:
    """llama.cpp's per-layer cost and effective byte rate on this host, from dense decoders of the target's
    d_model at CALIBRATION_DEPTHS of its depth and CALIBRATION_WIDTHS of its top_k experts' width."""
    points = []
    for fraction, width in itertools.product(CALIBRATION_DEPTHS, CALIBRATION_WIDTHS):
        dense = dataclasses.replace(target, name=f"dense-L{fraction:g}-F{width}", n_experts=1, top_k=1,
                                    n_layers=max(1, round(fraction * target.n_layers)),
                                    ffn_hidden=width * target.top_k * target.ffn_hidden,
                                    n_shared_experts=0, dense_layers=(), wd_rank=None)
        path = _write(random_decoder(dense, len(tokens), seed), scratch / f"{dense.name}.gguf")
        seconds = float(np.median(decode_seconds(path, tokens, threads)))
        path.unlink()
        weight_bytes = dense.active_params() * 2 - dense.embedding_params() * 2  # f16; a lookup reads one row
        points.append({"arch": dense.name, "n_layers": dense.n_layers, "weight_mb": weight_bytes / 1e6,
                       "tpot_ms": seconds * 1e3})
    layers = np.array([p["n_layers"] for p in points], float)
    weight_bytes = np.array([p["weight_mb"] * 1e6 for p in points])
    tpot_s = np.array([p["tpot_ms"] / 1e3 for p in points])
    (per_layer_s, s_per_byte), *_ = np.linalg.lstsq(np.stack([layers, weight_bytes], axis=1), tpot_s, rcond=None)
    if per_layer_s < 0 or s_per_byte <= 0:
        raise InputError(f"llama.cpp calibration gave no positive fit (per layer {per_layer_s * 1e6:.1f} µs, "
                         f"{1 / s_per_byte / 1e9 if s_per_byte > 0 else 0:.2f} GB/s): the host was too noisy")
    for point, layer_count, nbytes, measured_s in zip(points, layers, weight_bytes, tpot_s):  # how well it fits
        point["fit_error_pct"] = 100 * float((layer_count * per_layer_s + nbytes * s_per_byte) / measured_s - 1)
    return {"points": points, "layer_overhead_us": float(per_layer_s * 1e6), "bytes_per_s": float(1 / s_per_byte)}


def llama_profile(fit: dict, template: str = "phone") -> dict:
    """A device profile (TOML layout) of this host as llama.cpp runs on it: the shipped template's
    sections with the fitted DRAM rate and per-layer cost; DRAM large enough for every weight."""
    from cosmosim.inputs.profiles import profiles_dir

    data = copy.deepcopy(tomllib.loads((profiles_dir() / f"{template}.toml").read_text()))
    how = "fitted on llama.cpp's batch-1 decode of dense random-weight f16 decoders on this host (cosmosim llama-cpp speed)"
    data["name"], data["description"] = "llama-cpp-host", f"this host as llama.cpp decodes on it ({how})"
    data["dram"].update(capacity_gib=64, app_budget_gib=64, bandwidth_gb_per_s=fit["bytes_per_s"] / 1e9)
    data["dram"]["sources"].update(capacity_gib="estimate: large enough that every weight is resident",
                                   app_budget_gib="estimate: as capacity_gib", bandwidth_gb_per_s=how)
    rate_gflops = 100 * fit["bytes_per_s"] / 1e9
    data["compute"].update(gemv_gflops=rate_gflops, gemm_gflops=rate_gflops, layer_overhead_us=fit["layer_overhead_us"])
    data["compute"]["sources"].update(
        gemv_gflops="estimate: 100x the fitted byte rate, so the byte rate (which folds in f16 GEMV's arithmetic, "
                    "1 FLOP per byte) is what binds", gemm_gflops="estimate: as gemv_gflops (no prefill is compared)",
        layer_overhead_us=how)
    data.pop("throttle", None)
    return data


def measure_speed(arch: Architecture, *, tokens: int = 64, threads: int = 1, seed: int = 0,
                  directory: Path | None = None, progress=None) -> dict:
    """Calibrate on dense decoders, time the MoE, predict it with both engines; the comparison as a dict."""
    from cosmosim.inputs.profiles import profile_from_dict
    from cosmosim.inputs.trace import SCHEMA_VERSION, Trace
    from cosmosim.model.record import model_meta, route_windows
    from cosmosim.runner import run
    from cosmosim.scenario.settings import RunConfig

    import torch

    if not arch.is_moe:
        raise InputError(f"architecture {arch.name!r} is dense: the comparison times a MoE's decode")
    say = progress or (lambda message: None)
    token_ids = np.random.default_rng(seed).integers(0, arch.vocab_size, tokens + WARMUP_TOKENS)
    with tempfile.TemporaryDirectory(prefix="cosmosim-llama-", dir=directory) as folder:
        scratch = Path(folder)
        say("calibrating llama.cpp on dense decoders")
        fit = calibrate_llama_cpp(arch, token_ids, threads, scratch, seed)
        say(f"building {arch.name} with random weights")
        model = random_decoder(arch, len(token_ids), seed)
        experts, gates = route_windows(model, torch.from_numpy(token_ids[None, :].astype(np.int64)))
        path, shape = _write(model, scratch / f"{arch.name}.gguf"), model_meta(model.config)
        del model  # 4 bytes a weight in torch: free it before llama.cpp maps the file
        say("timing llama.cpp")
        measured_s = decode_seconds(path, token_ids, threads)
    trace = Trace(experts=experts, gates=gates, positions=np.arange(len(token_ids), dtype=np.int32),
                  tokens=token_ids.astype(np.int32),
                  meta={"schema_version": SCHEMA_VERSION, "model": shape,
                        "source": f"torch routing of {arch.name} with random weights (seed {seed})"})
    profile = profile_from_dict(llama_profile(fit), source="llama-cpp-host.toml")
    config = RunConfig(prompt_tokens=WARMUP_TOKENS, tokens=len(token_ids), warmup_fraction=0.0,
                       cache_experts=arch.total_experts, weight_bits=16)
    measured_ms = float(np.median(measured_s) * 1e3)
    predicted = {}
    for engine in ("des", "analytic"):
        result = run(profile, trace, arch, config, engine)
        ms = result["tpot_ms"]["mean"]
        predicted[engine] = {"tpot_ms": ms, "tokens_per_s": 1e3 / ms, "error_pct": 100 * (ms / measured_ms - 1),
                             "hit_rate": result["hit_rate"]}
    return {"arch": arch.name, "threads": threads, "decode_tokens": len(measured_s), "calibration": fit,
            "measured_tpot_ms": measured_ms, "measured_tokens_per_s": 1e3 / measured_ms,
            "measured_spread_pct": 100 * float(np.subtract(*np.percentile(measured_s, [75, 25])) / np.median(measured_s)),
            "predicted": predicted}
