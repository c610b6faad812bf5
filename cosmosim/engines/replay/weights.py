"""Random weights of real sizes: the resident part in RAM, the experts in a file on disk.

The values are random (seeded): replay measures time, and time depends on shapes and bytes, not on
what the numbers are. Matrices are stored as torch's `F.linear` wants them, [out, in].

Expert file layout: expert `key = layer * n_experts + expert` starts at `key * stride`; its matrices
follow one another (bfloat16), and the stride is the expert's bytes padded to ALIGN, so every
expert can be read with O_DIRECT straight into an aligned cache slot.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from cosmosim.engines.replay.storage import align_up, write_durably
from cosmosim.errors import InputError
from cosmosim.inputs.arch import Architecture

DTYPE = torch.bfloat16  # replay's weights and activations: 16-bit, the simulator's --weight-bits 16
DTYPE_NAME = "bfloat16"
WEIGHT_BITS = 16


def scaled_arch(arch: Architecture, factor: int) -> Architecture:
    """`arch` with its expert FFN width divided by `factor` (experts ~factor times smaller); the
    rest of the model keeps its real size. Factor 1 returns `arch` itself."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise InputError(f"--scale: expected an integer >= 1, got {factor!r}")
    if factor == 1:
        return arch
    width = arch.ffn_hidden // factor
    if width < 1:
        raise InputError(f"--scale: {factor} leaves {arch.name}'s experts ({arch.ffn_hidden} wide) no width")
    rank = None if arch.wd_rank is None else min(arch.wd_rank, width, arch.d_model)
    return replace(arch, name=f"{arch.name}/{factor}", ffn_hidden=width, wd_rank=rank,
                   paper_active_params=None, paper_total_params=None)


def expert_shapes(arch: Architecture) -> list[tuple[int, int]]:
    """One expert's matrices, [out, in], in file order: gate, up, down; each a pair of rank-r
    factors (first applied first) when the experts are weight-decomposed."""
    d, f, r = arch.d_model, arch.ffn_hidden, arch.wd_rank
    if r is None:
        return [(f, d), (f, d), (d, f)]
    return [(r, d), (f, r), (r, d), (f, r), (r, f), (d, r)]


@dataclass(frozen=True)
class ExpertLayout:
    shapes: tuple[tuple[int, int], ...]
    nbytes: int  # one expert's weights
    stride: int  # one expert's slot, in the file and in the RAM cache: nbytes padded to ALIGN
    n_keys: int  # layers * experts

    @classmethod
    def of(cls, arch: Architecture) -> ExpertLayout:
        if not arch.is_moe:
            raise InputError(f"--arch {arch.name} is dense: replay streams experts, so it needs a MoE architecture")
        shapes = tuple(expert_shapes(arch))
        nbytes = sum(rows * cols for rows, cols in shapes) * DTYPE.itemsize
        assert nbytes == arch.expert_bytes(WEIGHT_BITS), "layout disagrees with cosmosim.inputs.arch"
        return cls(shapes, nbytes, align_up(nbytes), arch.n_layers * arch.n_experts)

    @property
    def file_bytes(self) -> int:
        return self.n_keys * self.stride

    def views(self, buffer, slot: int) -> tuple[torch.Tensor, ...]:
        """The matrices of the expert in cache slot `slot` of `buffer`, as tensors sharing its memory."""
        views, offset = [], slot * self.stride
        for rows, cols in self.shapes:
            views.append(torch.frombuffer(buffer, dtype=DTYPE, count=rows * cols, offset=offset).view(rows, cols))
            offset += rows * cols * DTYPE.itemsize
        return tuple(views)


def _random(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Normal values scaled by 1/sqrt(fan-in), so activations stay finite through the layers."""
    return (torch.randn(shape, generator=generator) / math.sqrt(shape[-1])).to(DTYPE)


def write_expert_file(path: Path, arch: Architecture, seed: int = 0) -> ExpertLayout:
    """Write every expert of `arch` (random values) to a new file at `path`, fsynced."""
    layout = ExpertLayout.of(arch)
    generator = torch.Generator().manual_seed(seed)
    slot = torch.zeros(layout.stride, dtype=torch.uint8)

    def experts() -> Iterator[memoryview]:
        for _ in range(layout.n_keys):
            flat = torch.cat([_random(shape, generator).reshape(-1) for shape in layout.shapes])
            slot[:layout.nbytes] = flat.view(torch.uint8)
            yield memoryview(slot.numpy())

    write_durably(path, experts())
    return layout


@dataclass(frozen=True)
class LayerWeights:
    attn_norm: torch.Tensor  # [d]
    wq: torch.Tensor  # [heads * head_dim, d]
    wk: torch.Tensor  # [kv_heads * head_dim, d]
    wv: torch.Tensor  # [kv_heads * head_dim, d]
    wo: torch.Tensor  # [d, d]
    ffn_norm: torch.Tensor  # [d]
    router: torch.Tensor  # [n_experts, d]


@dataclass(frozen=True)
class ResidentWeights:
    """Everything but the experts, in RAM: what a real offloading runtime keeps resident."""

    embedding: torch.Tensor  # [vocab, d]
    layers: tuple[LayerWeights, ...]
    final_norm: torch.Tensor  # [d]
    lm_head: torch.Tensor  # [vocab, d]

    @classmethod
    def random(cls, arch: Architecture, seed: int = 0) -> ResidentWeights:
        generator = torch.Generator().manual_seed(seed + 1)  # not the experts' stream
        d, kv_width = arch.d_model, arch.n_kv_heads * arch.head_dim
        ones = torch.ones(d, dtype=DTYPE)

        def layer() -> LayerWeights:
            return LayerWeights(ones, _random((d, d), generator), _random((kv_width, d), generator),
                                _random((kv_width, d), generator), _random((d, d), generator), ones,
                                _random((arch.n_experts, d), generator))

        return cls(_random((arch.vocab_size, d), generator), tuple(layer() for _ in range(arch.n_layers)), ones,
                   _random((arch.vocab_size, d), generator))

    @staticmethod
    def nbytes_of(arch: Architecture) -> int:
        return arch.resident_bytes(WEIGHT_BITS)
