"""llama.cpp as a second, independent engine: the experts it selects, read while it decodes.

llama.cpp (through llama-cpp-python, built by scripts/build_llama_cpp.sh) decodes a GGUF file one token
at a time. Its graph names each MoE layer's chosen experts `ffn_moe_topk-<layer>` (src/llama-graph.cpp,
build_moe_ffn); the scheduler's evaluation callback (`cb_eval` of llama_context_params) asks which nodes
to observe and hands each observed one over once it is computed, and the callback copies it out with
ggml_backend_tensor_get. The node is a view of ggml_argsort's output ([n_experts, n_tokens], descending),
its first top_k columns, so a token's experts come by descending gate as the trace stores them.
"""

from __future__ import annotations

import ctypes
import functools
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from cosmosim.errors import InputError

TOPK_NODE = b"ffn_moe_topk-"
BUILD_HINT = "build it with `bash scripts/build_llama_cpp.sh`"


_LOG_SINK = []  # the ctypes log callback, kept alive as long as llama.cpp may call it


def _drop_log(llama_cpp):
    if not _LOG_SINK:
        _LOG_SINK.append(llama_cpp.llama_log_callback(lambda level, text, user_data: None))
    return _LOG_SINK[0]


@functools.cache
def load_llama_cpp():
    """The llama_cpp module and ggml's library (set up once), or InputError saying how to build them."""
    try:
        import llama_cpp
        from llama_cpp._ggml import libggml
    except ImportError as error:
        raise InputError(f"llama-cpp-python is not installed ({error}); {BUILD_HINT}") from None
    llama_cpp.llama_log_set(_drop_log(llama_cpp), ctypes.c_void_p())  # it logs every load to stderr
    libggml.ggml_get_name.restype, libggml.ggml_get_name.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
    libggml.ggml_nbytes.restype, libggml.ggml_nbytes.argtypes = ctypes.c_size_t, [ctypes.c_void_p]
    libggml.ggml_backend_tensor_get.restype = None
    libggml.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    return llama_cpp, libggml


@contextmanager
def llama_context(gguf_path: str | Path, n_ctx: int, threads: int, eval_callback=None):
    """A llama.cpp context on the GGUF file (CPU, `n_ctx` positions, `threads` threads), freed afterwards;
    `eval_callback` (a ggml_backend_sched_eval_callback, kept alive by the caller) observes graph nodes."""
    llama_cpp, _ = load_llama_cpp()
    llama_cpp.llama_backend_init()
    model_params = llama_cpp.llama_model_default_params()
    model_params.n_gpu_layers = 0
    model = llama_cpp.llama_model_load_from_file(str(gguf_path).encode(), model_params)
    if not model:
        raise InputError(f"{gguf_path}: llama.cpp could not load it as a GGUF model")
    context_params = llama_cpp.llama_context_default_params()
    context_params.n_ctx = context_params.n_batch = context_params.n_ubatch = n_ctx
    context_params.n_threads = context_params.n_threads_batch = threads
    if eval_callback is not None:
        context_params.cb_eval, context_params.cb_eval_user_data = eval_callback, None
    context = llama_cpp.llama_init_from_model(model, context_params)
    try:
        yield context
    finally:
        llama_cpp.llama_free(context)
        llama_cpp.llama_model_free(model)


def decode_one(context, token_id: int, failure: str) -> None:
    """One token through the context at its next position."""
    llama_cpp, _ = load_llama_cpp()
    token = (llama_cpp.llama_token * 1)(token_id)
    if llama_cpp.llama_decode(context, llama_cpp.llama_batch_get_one(token, 1)) != 0:
        raise InputError(failure)


def llama_cpp_routing(gguf_path: str | Path, sequences_NT: np.ndarray, *, n_layers: int, n_experts: int,
                      top_k: int, threads: int = 1, progress=None) -> np.ndarray:
    """int16 [N·T, L, K]: the experts llama.cpp chose for each token of each sequence, decoded one token at a
    time from an empty KV cache per sequence (positions from 0, as `cosmosim record` runs a window)."""
    llama_cpp, libggml = load_llama_cpp()
    n_sequences, seq_len = sequences_NT.shape
    chosen_LK = np.full((n_layers, top_k), -1, np.int32)

    def observe(tensor, ask, _user_data) -> bool:
        name = libggml.ggml_get_name(tensor) or b""
        if ask:
            return name.startswith(TOPK_NODE)
        nbytes = libggml.ggml_nbytes(tensor)  # one token: its top_k ids (the view's span)
        ids = np.zeros(max(nbytes // 4, top_k), np.int32)
        libggml.ggml_backend_tensor_get(tensor, ids.ctypes.data, 0, nbytes)
        chosen_LK[int(name[len(TOPK_NODE):])] = ids[:top_k]
        return True

    routing = np.empty((n_sequences * seq_len, n_layers, top_k), np.int16)
    with llama_context(gguf_path, seq_len, threads, llama_cpp.ggml_backend_sched_eval_callback(observe)) as context:
        memory = llama_cpp.llama_get_memory(context)
        for n, sequence in enumerate(sequences_NT):
            llama_cpp.llama_memory_clear(memory, True)
            for t, token_id in enumerate(sequence):
                chosen_LK.fill(-1)
                decode_one(context, int(token_id), f"{gguf_path}: llama_decode failed at sequence {n}, token {t}")
                if (chosen_LK < 0).any():
                    raise InputError(f"{gguf_path}: llama.cpp's graph showed no {TOPK_NODE.decode()}* node for some "
                                     "layer; is it a MoE of the llama architecture?")
                routing[n * seq_len + t] = chosen_LK
            if progress is not None:
                progress(n + 1, n_sequences)
    return routing


def routing_agreement(expected_ALK: np.ndarray, got_ALK: np.ndarray) -> dict:
    """How often two engines chose the same experts, per token and layer ([A, L, K], by descending gate):
    the same set, the same first expert, and the share of the K slots in common; overall and per layer."""
    if expected_ALK.shape != got_ALK.shape:
        raise ValueError(f"routing shapes differ: {expected_ALK.shape} and {got_ALK.shape}")
    same_set_AL = (np.sort(expected_ALK, axis=2) == np.sort(got_ALK, axis=2)).all(axis=2)
    same_first_AL = expected_ALK[:, :, 0] == got_ALK[:, :, 0]
    common_AL = (expected_ALK[:, :, :, None] == got_ALK[:, :, None, :]).any(axis=3).mean(axis=2)
    return {
        "tokens": int(expected_ALK.shape[0]), "layers": int(expected_ALK.shape[1]), "top_k": int(expected_ALK.shape[2]),
        "same_set": float(same_set_AL.mean()), "same_first": float(same_first_AL.mean()),
        "slots_in_common": float(common_AL.mean()),
        "same_set_by_layer": [round(float(x), 6) for x in same_set_AL.mean(axis=0)],
    }


def compare_routing(checkpoint_dir: str | Path, trace_path: str | Path, *, tokenizer_path: str | Path,
                    sequences: int = 8, threads: int = 1, gguf_path: str | Path | None = None, progress=None) -> dict:
    """Convert the checkpoint to GGUF, feed llama.cpp the first `sequences` of the trace's token windows one
    token at a time, and compare the experts it chooses with the ones the trace recorded from the same
    weights in torch (`cosmosim record`)."""
    import tempfile

    from cosmosim.host.gguf_export import export_checkpoint
    from cosmosim.inputs.trace import load_trace
    from cosmosim.model.checkpoint import read_header

    trace, header = load_trace(trace_path), read_header(Path(checkpoint_dir))
    recorded_at, step = trace.meta.get("training", {}).get("steps"), header["state"]["step"]
    if trace.tokens is None or recorded_at != step:
        raise InputError(f"{trace_path}: meta.training.steps: expected a trace recorded by `cosmosim record` from "
                         f"{checkpoint_dir} at its step {step}, got {recorded_at!r}"
                         + ("" if trace.tokens is not None else " and no token ids"))
    starts = trace.sequence_starts()
    seq_len = int(np.diff(np.append(starts, trace.n_tokens)).min())
    windows_NT = np.stack([trace.tokens[start:start + seq_len] for start in starts[:sequences]])
    expected_ALK = np.concatenate([trace.experts[start:start + seq_len] for start in starts[:sequences]])
    with tempfile.TemporaryDirectory(prefix="cosmosim-gguf-") as scratch:
        path = Path(gguf_path) if gguf_path is not None else Path(scratch) / "mini.gguf"
        export_checkpoint(checkpoint_dir, path, tokenizer_path)
        got_ALK = llama_cpp_routing(path, windows_NT, n_layers=trace.n_layers, n_experts=trace.n_experts,
                                    top_k=trace.top_k, threads=threads, progress=progress)
    import llama_cpp

    return {"checkpoint": str(checkpoint_dir), "step": step, "trace": str(trace_path),
            "sequences": len(windows_NT), "seq_len": seq_len, "llama_cpp_python": llama_cpp.__version__,
            "weights": "float32", **routing_agreement(expected_ALK.astype(np.int32), got_ALK.astype(np.int32))}
