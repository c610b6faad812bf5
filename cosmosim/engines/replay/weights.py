"""Random weights of real sizes: the resident part in RAM, the experts in a file on disk.

The values are random (seeded): replay measures time, and time depends on shapes and bytes, not on
what the numbers are. The resident part is the training model itself (`cosmosim.model.llama.Decoder`)
built without its experts. Expert matrices are stored as torch's `F.linear` wants them, [out, in],
and computed from transposed views ([in, out], `cosmosim.model.layers.swiglu`), as F.linear does.

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
from cosmosim.model.config import ModelConfig
from cosmosim.model.llama import Decoder

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
        beyond = [what for what, present in (("shared experts", arch.n_shared_experts), ("dense layers", arch.dense_layers),
                                             ("head_dim != d_model / n_heads", arch.head_dim * arch.n_heads != arch.d_model))
                  if present]
        if beyond:
            raise InputError(f"--arch {arch.name}: replay decodes with the minis' layers, which have no {beyond[0]}; "
                             "the simulator and the analytic model take this architecture")
        shapes = tuple(expert_shapes(arch))
        nbytes = sum(rows * cols for rows, cols in shapes) * DTYPE.itemsize
        assert nbytes == arch.expert_bytes(WEIGHT_BITS), "layout disagrees with cosmosim.inputs.arch"
        return cls(shapes, nbytes, align_up(nbytes), arch.total_experts)

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

    def factors(self, buffer, slot: int) -> tuple[tuple[torch.Tensor, ...], ...]:
        """The expert in cache slot `slot` as `swiglu` takes it: gate, up and down, each one [in, out]
        matrix or its two rank-r factors (first applied first), as views of `buffer`."""
        matrices = [matrix.T for matrix in self.views(buffer, slot)]
        per_projection = len(matrices) // 3
        return tuple(tuple(matrices[i * per_projection:(i + 1) * per_projection]) for i in range(3))


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
class ResidentWeights:
    """Everything but the experts, in RAM: what a real offloading runtime keeps resident. It is the
    training model, bfloat16, its MoE layers holding only their routers; decoding switches its KV
    cache and rotary tables on first (`Decoder.setup_cache`)."""

    model: Decoder

    @classmethod
    def random(cls, arch: Architecture, seed: int = 0) -> ResidentWeights:
        with torch.device("meta"):  # shapes only: the values come below, straight in bfloat16
            model = Decoder(ModelConfig.of(arch), resident_experts=False)
        generator = torch.Generator().manual_seed(seed + 1)  # not the experts' stream
        values = {name: torch.ones(tuple(weight.shape), dtype=DTYPE) if weight.dim() == 1  # the norms
                  else _random(tuple(weight.shape), generator) for name, weight in model.named_parameters()}
        model.load_state_dict(values, assign=True)
        return cls(model.train(False))

    @staticmethod
    def nbytes_of(arch: Architecture) -> int:
        return arch.resident_bytes(WEIGHT_BITS)
