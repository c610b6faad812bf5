"""Where every weight of an `Architecture` lies in a GGUF file, as llama.cpp lays out a MoE.

An engine that mmaps its weights file (llama.cpp) turns the kernel's page cache into its expert
cache, and what the page cache reads depends on where the bytes are: one routed expert is not one
range of the file but three, one slice in each of the layer's stacked expert tensors. This module
gives those byte ranges; `cosmosim.device.pagecache` turns them into pages.

The file (GGUF spec, ggml-org/ggml docs/gguf.md): a header, the metadata key/values (tokenizer
vocabulary included) and the tensor infos, padded to `general.alignment` (default 32 bytes,
GGUF_DEFAULT_ALIGNMENT in ggml's gguf.h), then the tensor data. Each tensor's data starts at a
multiple of the alignment, and gguf-py's writer pads after every tensor too (GGUFWriter.write_padding
in gguf-py/gguf/gguf_writer.py), so the file ends aligned. The header's size depends on the metadata,
which this model does not know: `header_bytes` says it (default 0: offsets are then data offsets).

Tensor order and shapes follow llama.cpp (names: gguf-py/gguf/constants.py TENSOR_NAMES; shapes:
src/llama-model.cpp create_tensor, ggml ne order, fastest dimension first):
- token_embd {d, vocab}
- per layer blk.N: attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, then
  - a MoE layer: ffn_gate_inp {d, E} (the router) and the routed experts as three stacked tensors
    ffn_gate_exps {d, f, E}, ffn_down_exps {f, d, E}, ffn_up_exps {d, f, E}: expert e's copy of a
    matrix is the contiguous slice at e * (one matrix's bytes) of its tensor; then, if the arch has
    shared experts, ffn_gate_shexp / ffn_down_shexp / ffn_up_shexp of width n_shared * shared width
    (llama.cpp concatenates the shared experts into one FFN, e.g. n_ff_exp * n_expert_shared);
  - a dense layer: ffn_gate, ffn_down, ffn_up;
- output_norm, and output {d, vocab} unless the embeddings are tied.
A real file's order is whatever its converter wrote (each tensor info carries its own offset); this
is the order llama.cpp's loader creates them in, a stand-in, not a promise about any one file.

Sizes come from the package's one counter, `cosmosim.inputs.arch.Architecture`, at a `Precision`
(each class its bits: routed experts, shared experts, the rest) with its rounding (`weight_bytes`:
ceil(params * bits / 8), per tensor here; per expert slice for the stacked tensors), so the slices of
one expert add up to `arch.expert_bytes(bits)` and the other tensors to `arch.resident_bytes(bits)`,
up to that per-tensor rounding (under one byte a tensor) and the alignment padding. Like the counter,
norms count at the other weights' bits (real GGUFs keep them F32: a few KiB a layer); a block format's
scales count through its bits per weight (cosmosim.inputs.precision). A weight-decomposed expert (wd_rank r) has no llama.cpp tensor: each of its matrices is
stored as its two stacked factor tensors, ffn_<m>_exps_a {rows, r, E} then ffn_<m>_exps_b {r, cols,
E}, so such an expert has six extents.
"""

from __future__ import annotations

from dataclasses import dataclass

from cosmosim.inputs.arch import Architecture
from cosmosim.inputs.precision import Precision, weight_bytes

GGUF_DEFAULT_ALIGNMENT = 32  # ggml/include/gguf.h; docs/gguf.md: "If the alignment is not specified, assume it is 32"
SWIGLU_NAMES = ("gate", "down", "up")  # llama-model.cpp creates ffn_gate*, ffn_down*, ffn_up* in this order

Extent = tuple[int, int]  # a byte range [start, end) of the file


@dataclass(frozen=True)
class TensorData:
    """One tensor's data: `nbytes` bytes from byte `start` of the file."""

    name: str
    start: int
    nbytes: int

    @property
    def end(self) -> int:
        return self.start + self.nbytes

    @property
    def extent(self) -> Extent:
        return (self.start, self.end)


def align(offset: int, alignment: int) -> int:
    """The GGUF spec's align_offset: the next multiple of `alignment` at or after `offset`."""
    return offset + (-offset % alignment)


class GgufLayout:
    """The byte offsets of every tensor of `arch` at `bits` (a Precision or one bit-width) in a GGUF-like file (see the module
    docstring for the order and sizes), and the extents an engine touches: one expert's slices, one
    layer's resident tensors, the head."""

    def __init__(self, arch: Architecture, bits: Precision | float, header_bytes: int = 0,
                 alignment: int = GGUF_DEFAULT_ALIGNMENT) -> None:
        if not isinstance(header_bytes, int) or header_bytes < 0:
            raise ValueError(f"header_bytes must be an integer >= 0, got {header_bytes!r}")
        if not isinstance(alignment, int) or alignment <= 0 or alignment % 8:
            raise ValueError(f"alignment must be a positive multiple of 8 (GGUF spec), got {alignment!r}")
        self.arch, self.precision, self.alignment = arch, Precision.of(bits), alignment
        self.data_offset = align(header_bytes, alignment)
        self._offset = self.data_offset
        self._tensors: list[TensorData] = []
        self._resident: dict[int, list[TensorData]] = {}  # layer -> its non-expert tensors, in file order
        self._stacked: dict[int, list[tuple[TensorData, int]]] = {}  # MoE layer -> (tensor, one expert's slice)
        self._build()
        self.file_bytes = self._offset
        self.tensors: tuple[TensorData, ...] = tuple(self._tensors)  # in file order
        self._by_name = {tensor.name: tensor for tensor in self.tensors}

    # ------------------------------------------------------------------ building

    def _add(self, name: str, nbytes: int) -> TensorData:
        tensor = TensorData(name, self._offset, nbytes)
        self._tensors.append(tensor)
        self._offset = align(tensor.end, self.alignment)
        return tensor

    def _bytes(self, n_params: int, bits: float | None = None) -> int:
        """n_params weights at `bits` (default: the other weights' bits)."""
        return weight_bytes(n_params, self.precision.weights if bits is None else bits)

    def _build(self) -> None:
        arch, d = self.arch, self.arch.d_model
        self._add("token_embd.weight", self._bytes(arch.embedding_params()))
        moe_layers = set(arch.moe_layers)
        q_width, kv_width = arch.n_heads * arch.head_dim, arch.n_kv_heads * arch.head_dim
        for layer in range(arch.n_layers):
            blk = f"blk.{layer}."
            resident = [self._add(blk + name, self._bytes(n)) for name, n in (
                ("attn_norm.weight", d), ("attn_q.weight", d * q_width), ("attn_k.weight", d * kv_width),
                ("attn_v.weight", d * kv_width), ("attn_output.weight", q_width * d), ("ffn_norm.weight", d))]
            if layer in moe_layers:
                resident.append(self._add(blk + "ffn_gate_inp.weight", self._bytes(arch.n_experts * d)))
                self._stacked[layer] = [(self._add(f"{blk}ffn_{name}.weight", arch.n_experts * part), part)
                                        for name, part in self._expert_parts()]
                if arch.n_shared_experts:
                    width = arch.n_shared_experts * arch.shared_ffn_hidden
                    resident += [self._add(f"{blk}ffn_{m}_shexp.weight", self._bytes(d * width, self.precision.shared))
                                 for m in SWIGLU_NAMES]
            else:
                width = arch.dense_ffn_hidden if arch.is_moe else arch.ffn_hidden
                resident += [self._add(f"{blk}ffn_{m}.weight", self._bytes(d * width)) for m in SWIGLU_NAMES]
            self._resident[layer] = resident
        self._add("output_norm.weight", self._bytes(d))
        if not arch.tied_embeddings:
            self._add("output.weight", self._bytes(arch.lm_head_params()))

    def _expert_parts(self) -> list[tuple[str, int]]:
        """(name stem, bytes of one expert's slice) of each stacked expert tensor, in file order: the
        three SwiGLU matrices, or their rank-r factors (rows x r, then r x cols) for a WD expert."""
        d, f, rank = self.arch.d_model, self.arch.ffn_hidden, self.arch.wd_rank
        shapes = {"gate": (d, f), "down": (f, d), "up": (d, f)}
        bits = self.precision.routed
        if rank is None:
            return [(f"{m}_exps", self._bytes(rows * cols, bits)) for m, (rows, cols) in shapes.items()]
        return [part for m, (rows, cols) in shapes.items()
                for part in ((f"{m}_exps_a", self._bytes(rows * rank, bits)), (f"{m}_exps_b", self._bytes(rank * cols, bits)))]

    # ------------------------------------------------------------------ queries

    def tensor(self, name: str) -> TensorData:
        """A tensor by its GGUF name (e.g. "blk.0.ffn_up_exps.weight")."""
        try:
            return self._by_name[name]
        except KeyError:
            raise ValueError(f"no tensor {name!r} in the layout of {self.arch.name!r}") from None

    def expert_extents(self, layer: int, expert: int) -> tuple[Extent, ...]:
        """The byte ranges of routed expert `expert` of model layer `layer` (one of `arch.moe_layers`):
        its slice of each stacked tensor, in file order (3 for a SwiGLU expert, 6 for a WD one)."""
        if layer not in self._stacked:
            raise ValueError(f"layer {layer} of {self.arch.name!r} has no routed experts; its MoE layers are "
                             f"{list(self.arch.moe_layers)}")
        if not 0 <= expert < self.arch.n_experts:
            raise ValueError(f"expert must be in [0, {self.arch.n_experts}), got {expert}")
        return tuple((tensor.start + expert * part, tensor.start + (expert + 1) * part)
                     for tensor, part in self._stacked[layer])

    def nonexpert_extents(self, layer: int) -> tuple[Extent, ...]:
        """The byte ranges of model layer `layer`'s resident tensors, in file order: attention and norms,
        and the router and shared experts (MoE layer) or the FFN (dense layer)."""
        if layer not in self._resident:
            raise ValueError(f"layer must be in [0, {self.arch.n_layers}), got {layer}")
        return tuple(tensor.extent for tensor in self._resident[layer])

    def head_extents(self) -> tuple[Extent, ...]:
        """What the LM head reads per token: the final norm and the output matrix (the token embedding
        when the embeddings are tied)."""
        head = "token_embd.weight" if self.arch.tied_embeddings else "output.weight"
        return (self.tensor("output_norm.weight").extent, self.tensor(head).extent)
