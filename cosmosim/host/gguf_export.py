"""A decoder as a GGUF file that llama.cpp runs: its `llama` architecture with experts (as Mixtral).

Two sources of weights: a trained mini's checkpoint (`export_checkpoint`, for comparing routing), and a
decoder of any architecture's real size with random weights (`cosmosim.host.llama_speed`, for timing);
dense decoders (a SwiGLU FFN per layer) too. Names and
layouts follow llama.cpp's own converter (convert_hf_to_gguf.py, its LlamaModel): each matrix in
nn.Linear's [out, in] order, a layer's experts stacked in one tensor per matrix ([E, F, D] for gate and
up, [E, D, F] for down), and the query and key rows permuted from the rotary layout used here (each
head's first half of channels paired with its second) to llama.cpp's (adjacent channels paired). The
router is a softmax over experts, top-k, the k weights renormalised, which is what llama.cpp's llama
architecture does with experts and what `cosmosim.model.moe.Router` does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cosmosim.errors import InputError
from cosmosim.files import atomic_path

RMS_EPS = 1e-5  # cosmosim.model.layers.RMSNorm's default


@dataclass(frozen=True)
class GGUFShape:
    """What llama.cpp's llama architecture needs to know of a MoE decoder."""

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_hidden: int  # one expert's width, or the dense FFN's
    n_experts: int  # 0: dense
    top_k: int
    vocab_size: int
    context_len: int
    rope_theta: float = 10000.0


def rotary_permute(weight_OI: np.ndarray, n_heads: int) -> np.ndarray:
    """Query or key rows from half-split rotary pairs (j, j + Hd/2) to llama.cpp's adjacent ones (2i, 2i + 1),
    as convert_hf_to_gguf.py's LlamaModel.permute does for Hugging Face's Llama."""
    out, n_in = weight_OI.shape
    return weight_OI.reshape(n_heads, 2, out // n_heads // 2, n_in).swapaxes(1, 2).reshape(out, n_in)


def byte_level_vocab(tokenizer_path: Path) -> tuple[list[str], list[str]]:
    """(tokens by id, merges as "a b") of a Hugging Face byte-level BPE tokenizer.json (the corpus's)."""
    try:
        model = json.loads(Path(tokenizer_path).read_text())["model"]
        vocab, merges = model["vocab"], model["merges"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"{tokenizer_path}: expected a tokenizers BPE tokenizer.json ({error})") from None
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    return tokens, [merge if isinstance(merge, str) else " ".join(merge) for merge in merges]


def placeholder_vocab(vocab_size: int) -> tuple[list[str], list[str]]:
    """Tokens "<0>", "<1>", ... for a model fed token ids only (random weights): llama.cpp checks ids against
    the vocabulary's size, and its BPE loader needs at least one merge."""
    return [f"<{i}>" for i in range(vocab_size)], ["<0> <1>"]


def write_gguf(path: Path, shape: GGUFShape, tensors: Iterator[tuple[str, np.ndarray]],
               vocab: tuple[list[str], list[str]] | None = None, name: str = "cosmosim",
               matrix_dtype: type = np.float32) -> Path:
    """Write the GGUF file atomically. `vocab` (tokens, merges): a byte-level BPE (`placeholder_vocab` for a
    model fed token ids only); None: no vocabulary (llama.cpp's "none", which refuses every token id). Matrices are stored as `matrix_dtype` (float32 or
    float16), norm weights as float32 (what llama.cpp expects of them)."""
    import gguf

    with atomic_path(path) as scratch:
        writer = gguf.GGUFWriter(str(scratch), arch="llama")
        writer.add_name(name)
        writer.add_context_length(shape.context_len)
        writer.add_embedding_length(shape.d_model)
        writer.add_block_count(shape.n_layers)
        writer.add_feed_forward_length(shape.ffn_hidden)
        writer.add_head_count(shape.n_heads)
        writer.add_head_count_kv(shape.n_kv_heads)
        writer.add_key_length(shape.head_dim)
        writer.add_value_length(shape.head_dim)
        writer.add_rope_dimension_count(shape.head_dim)
        writer.add_rope_freq_base(shape.rope_theta)
        writer.add_layer_norm_rms_eps(RMS_EPS)
        if shape.n_experts:
            writer.add_expert_count(shape.n_experts)
            writer.add_expert_used_count(shape.top_k)
        writer.add_vocab_size(shape.vocab_size)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if matrix_dtype == np.float16 else gguf.LlamaFileType.ALL_F32)
        if vocab is None:
            writer.add_tokenizer_model("none")
        else:
            tokens, merges = vocab
            if len(tokens) != shape.vocab_size:
                raise InputError(f"the tokenizer has {len(tokens)} tokens, the model {shape.vocab_size}")
            writer.add_tokenizer_model("gpt2")
            writer.add_tokenizer_pre("default")
            writer.add_token_list(tokens)
            writer.add_token_types([gguf.TokenType.NORMAL] * len(tokens))
            writer.add_token_merges(merges)
            writer.add_add_bos_token(False)
        for tensor_name, array in tensors:
            stored = array.astype(matrix_dtype) if array.ndim >= 2 else array.astype(np.float32)
            writer.add_tensor(tensor_name, np.ascontiguousarray(stored))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return Path(path)


def mini_tensors(model) -> Iterator[tuple[str, np.ndarray]]:
    """A `cosmosim.model.llama.Decoder` (a MoE of full-rank experts without shared experts or dense layers,
    or a dense decoder) under llama.cpp's tensor names, float32."""
    config = model.config

    def array(tensor) -> np.ndarray:
        return tensor.detach().float().cpu().numpy()

    yield "token_embd.weight", array(model.embedding.weight)
    for index, block in enumerate(model.layers):
        prefix, attention = f"blk.{index}.", block.attention
        yield prefix + "attn_norm.weight", array(block.attention_norm.weight)
        yield prefix + "attn_q.weight", rotary_permute(array(attention.wq.weight), config.n_heads)
        yield prefix + "attn_k.weight", rotary_permute(array(attention.wk.weight), config.n_kv_heads)
        yield prefix + "attn_v.weight", array(attention.wv.weight)
        yield prefix + "attn_output.weight", array(attention.wo.weight)
        yield prefix + "ffn_norm.weight", array(block.ffn_norm.weight)
        if not block.is_moe:  # nn.Linear weights are [out, in] already
            for ours, theirs in (("w_gate", "ffn_gate"), ("w_up", "ffn_up"), ("w_down", "ffn_down")):
                yield prefix + theirs + ".weight", array(getattr(block.ffn, ours).weight)
            continue
        yield prefix + "ffn_gate_inp.weight", array(block.ffn.router.gate.weight)
        # Expert banks hold x·W matrices [E, in, out]; llama.cpp wants [E, out, in].
        for ours, theirs in (("w_gate", "ffn_gate_exps"), ("w_up", "ffn_up_exps"), ("w_down", "ffn_down_exps")):
            yield prefix + theirs + ".weight", array(getattr(block.ffn.experts, ours).weight).transpose(0, 2, 1)
    yield "output_norm.weight", array(model.norm.weight)
    yield "output.weight", array(model.output.weight)


def mini_shape(config) -> GGUFShape:
    """The GGUF shape of a mini's ModelConfig; InputError for what llama.cpp's llama architecture lacks."""
    arch = config.arch
    if config.is_moe and (config.wd_rank is not None or arch.n_shared_experts or arch.dense_layers):
        raise InputError("llama.cpp's llama architecture holds full-rank routed experts in every layer: export a MoE "
                         "without WD experts, shared experts or dense layers (or a dense decoder)")
    return GGUFShape(n_layers=config.n_layers, d_model=config.d_model, n_heads=config.n_heads,
                     n_kv_heads=config.n_kv_heads, head_dim=config.head_dim, ffn_hidden=config.ffn_hidden,
                     n_experts=config.n_experts if config.is_moe else 0, top_k=config.top_k if config.is_moe else 0,
                     vocab_size=config.vocab_size,
                     context_len=config.seq_len, rope_theta=config.rope_theta)


def export_checkpoint(checkpoint_dir: str | Path, out_path: str | Path, tokenizer_path: str | Path) -> Path:
    """A `cosmosim train` checkpoint as GGUF (float32, the mini's own tokenizer)."""
    from cosmosim.model.checkpoint import load_checkpoint

    model = load_checkpoint(checkpoint_dir).model
    return write_gguf(Path(out_path), mini_shape(model.config), mini_tensors(model),
                      byte_level_vocab(Path(tokenizer_path)), name=Path(checkpoint_dir).name)
