"""The CoSMoEs BlES speed-up (Huber et al. 2025, arXiv 2503.00245, Tables 3 and 4), reproduced.

The paper's experiment: the phone MoE (24 layers, d 1440, bf16, 8 experts, top-2) decodes 128
tokens after a 1-token prefill on a server GPU, with its experts offloaded to host memory under the
paper's policy (Eq. 8, our `kactive`): per layer only the current token's k experts are on the GPU,
and a change of selection copies the new experts in over PCIe. Its rows (tokens/s):

    MoE, no offload                    40.60
    MoE + offload     ExRep 43.82 %    15.02
    MoE + offload + BlES  ExRep 6.55 % 23.10   (x1.54)

The model (every symbol in docs/analytic-model.md):

    TPOT = t_no_swap + L * o + mean over tokens of sum over layers of swap_s(m[t, l])

t_no_swap is the no-offload row's time per token, measured. m[t, l], the experts layer l swaps in
for token t, comes from the analytic kactive outcomes on a synthetic routing with the paper's ExRep
(the only routing statistic it publishes). swap_s(m) is the completion time of m copies on the
host-GPU link, the simulator's flash recurrence at one fixed rate (no latency, one copy at a time:
stock PyTorch copies synchronously, before the layer computes). o, a per-layer offload overhead, is
the one free parameter: fitted on the offload row, then the BlES row is predicted. The synthetic
routing lives in memory only, never under traces/.

The link's rate. The paper names neither its GPU, nor its link, nor its copy path. The default,
`pcie4-pinned`, is a *measured* effective host-to-device rate, not the specification's: 25.7 GB/s,
CUDA's bandwidthTest on a DGX A100 (PCIe 4.0 x16 host link) from page-locked memory at 32 MB a copy
(one phone-MoE expert is 33.2 MB in bf16, so the measured size is the copy size). Assumed: an A100-class
GPU on PCIe 4.0 x16 copying at the pinned rate. Why pinned, when stock PyTorch `.to(device)` of an
ordinary (non-pinned) host tensor takes the pageable path (the driver stages it through a pinned
bounce buffer): (1) pinned rates agree across published measurements on PCIe 4.0 x16 (25.7, 26.2 and
24-26 GB/s, see LINKS), while pageable ones spread by host (10.0 and 3.3 GB/s at 32 MB on two A100
hosts, 13-18 GB/s on an RTX 4090 host), so no single pageable figure stands for "the" link; (2) the
paper's own offload row bounds the rate from below: its 15.02 tok/s leaves 1/15.02 - 1/40.60 s per
token for every swap, which the kactive swaps at ExRep 43.82% only fit above about 16.6 GB/s; the
cited pageable rate (10.0 GB/s) and PCIe 3.0's pinned rate (12.7 GB/s) are below it (their fitted o
is negative). The sensitivity table prices every link, specification and measured, under both
overhead models; no figure in it is tuned to the BlES row.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from cosmosim.engines.analytic.latency import read_done_s
from cosmosim.engines.analytic.reuse import lru_depths
from cosmosim.engines.analytic.steps import step_arrays
from cosmosim.errors import InputError
from cosmosim.inputs.arch import get_arch
from cosmosim.inputs.locality import exrep
from cosmosim.inputs.profiles import FlashSpec
from cosmosim.inputs.synthetic import synthesize
from cosmosim.inputs.trace import Trace
from cosmosim.workload.stream import build_workload

ARCH = "phone-moe"
WEIGHT_BITS = 16  # bf16
PROMPT_TOKENS, GENERATED_TOKENS = 1, 128
NO_OFFLOAD_TOKENS_PER_S = 40.60  # Table 4, MoE


@dataclass(frozen=True)
class PaperRow:
    name: str
    exrep: float  # Table 3, as a fraction
    tokens_per_s: float  # Table 4, GPU


OFFLOAD = PaperRow("MoE + offload", 0.4382, 15.02)
BLES = PaperRow("MoE + offload + BlES", 0.0655, 23.10)


@dataclass(frozen=True)
class Link:
    name: str
    bytes_per_s: float
    citation: str


def _pcie_x16(gigatransfers_per_s: float) -> float:
    """Bytes/s one way over 16 lanes with 128b/130b encoding (PCIe 3.0 and later)."""
    return gigatransfers_per_s * 1e9 * 16 * (128 / 130) / 8


LINKS = {
    "pcie3": Link("PCIe 3.0 x16", _pcie_x16(8), "PCI-SIG, PCI Express Base Specification Revision 3.0 (2010): "
                  "8 GT/s per lane, 128b/130b encoding; x16, one direction: 15.75 GB/s"),
    "pcie4": Link("PCIe 4.0 x16", _pcie_x16(16), "PCI-SIG, PCI Express Base Specification Revision 4.0 (2017): "
                  "16 GT/s per lane, 128b/130b encoding; x16, one direction: 31.51 GB/s (the A100's host link)"),
    "pcie5": Link("PCIe 5.0 x16", _pcie_x16(32), "PCI-SIG, PCI Express Base Specification Revision 5.0 (2019): "
                  "32 GT/s per lane, 128b/130b encoding; x16, one direction: 63.02 GB/s (the H100's host link)"),
    # Measured effective host-to-device rates, at the copy size of one expert (~32 MB). No PCIe 5.0 x16
    # bandwidthTest or nvbandwidth figure with its GPU, size and memory kind named was found, nor a
    # PCIe 3.0 x16 pageable one; they are left out rather than guessed.
    "pcie3-pinned": Link("PCIe 3.0 x16, pinned (measured)", 12150.7 * 2**20,
                         "CUDA bandwidthTest (quick mode, 33,554,432 B, page-locked host memory, NUMA-local), "
                         "Tesla P100-PCIE-16GB: host to device 12150.7 MB/s (bandwidthTest's MB = 2^20 B: "
                         "12.74 GB/s). P. Steinbach, mpicbg-scicomp/gearshifft pull request 82 (2017), "
                         "https://github.com/mpicbg-scicomp/gearshifft/pull/82"),
    "pcie4-pinned": Link("PCIe 4.0 x16, pinned (measured)", 25.7e9,
                         "CUDA bandwidthTest (cuda-samples v11.4, quick mode, 32,000,000 B, --memory=pinned), "
                         "DGX A100 (A100-SXM4-80GB, PCIe 4.0 x16 host link): host to device 25.7 GB/s. "
                         "gengwg, nvda_gpu_benchmark.md (2023), https://github.com/gengwg/gpu. Agrees with "
                         "A100-PCIE-40GB, bandwidthTest range mode, pinned: 26.2 GB/s at 200-500 MB "
                         "(jdh4/della-gpu-A100 README, 2021, https://github.com/jdh4/della-gpu-A100) and "
                         "8x RTX 4090, nvbandwidth host_to_device_memcpy_ce: 23.90-26.38 GB/s "
                         "(NVIDIA/nvbandwidth issue 15, 2024, https://github.com/NVIDIA/nvbandwidth/issues/15)"),
    "pcie4-pageable": Link("PCIe 4.0 x16, pageable (measured)", 10.0e9,
                           "CUDA bandwidthTest (cuda-samples v11.4, quick mode, 32,000,000 B, --memory=pageable), "
                           "the same DGX A100 as pcie4-pinned: host to device 10.0 GB/s. gengwg, "
                           "nvda_gpu_benchmark.md (2023), https://github.com/gengwg/gpu. Pageable rates depend "
                           "on the host: the same page measures 3.3 GB/s on a Dell A100 80GB PCIe host; an "
                           "RTX 4090 (PCIe 4.0 x16) measures 18.42 GB/s at 16 MiB and 12.88 GB/s at 64 MiB "
                           "(NVlabs/cuda-oxide pull request 976, https://github.com/NVlabs/cuda-oxide/pull/976)"),
}
DEFAULT_LINK = "pcie4-pinned"
OVERHEADS = {
    "layer": "o is paid by every layer of every token (the offload bookkeeping runs whether or not it swaps)",
    "swap": "o is paid only by a (token, layer) that swaps at least one expert",
}


def synthetic_routing(exrep_target: float, *, n_sequences: int = 100, generated_tokens: int = GENERATED_TOKENS,
                      seed: int = 0) -> Trace:
    """Phone-MoE routing with a given ExRep, from `cosmosim.inputs.synthetic.synthesize` without a source
    and with uniform popularity: from one token to the next, each of a layer's top_k experts is
    replaced, independently with probability `exrep_target`, by an expert the layer did not use;
    so E|S_t \\ S_t-1| / top_k = exrep_target. Each sequence is the 1-token prompt + the generated
    tokens. Synthetic, labelled so in its meta, and never written to disk here."""
    arch, seq_len = get_arch(ARCH), PROMPT_TOKENS + generated_tokens
    trace = synthesize(exrep_target=exrep_target, n_layers=arch.n_layers, n_experts=arch.n_experts, top_k=arch.top_k,
                       n_tokens=n_sequences * seq_len, seq_len=seq_len, skew=0.0, seed=seed)
    trace.meta["target_arch"] = ARCH
    return trace


@lru_cache(maxsize=8)
def kactive_swaps(exrep_target: float, n_sequences: int = 100, seed: int = 0) -> tuple[float, np.ndarray]:
    """(measured ExRep, experts swapped in per decode token and layer [tokens, layers]) of the
    synthetic routing, under kactive: per layer a cache of top_k entries, LRU (see reuse.py)."""
    trace = synthetic_routing(exrep_target, n_sequences=n_sequences, seed=seed)
    workload = build_workload(trace, get_arch(ARCH).n_layers, prompt_tokens=PROMPT_TOKENS, context_len=trace.n_tokens)
    misses = step_arrays(workload).decode_misses(lru_depths(workload, per_layer=True) < trace.top_k)
    misses.setflags(write=False)  # shared by every caller of the cache
    return exrep(trace.experts, trace.positions)[0], misses


@dataclass(frozen=True)
class Swaps:
    """What a routing costs the offloaded model per decode token."""

    exrep: float  # measured on the synthetic routing
    experts_per_token: float  # swapped in, all layers
    swapping_layers_per_token: float  # layers that swap at least one expert
    swap_s_per_token: float  # on the link


def swaps(row: PaperRow, link: Link, n_sequences: int = 100, seed: int = 0) -> Swaps:
    measured_exrep, misses = kactive_swaps(row.exrep, n_sequences, seed)
    arch = get_arch(ARCH)
    expert_bytes = arch.expert_bytes(WEIGHT_BITS)
    pcie = FlashSpec(bandwidth_curve=((1, link.bytes_per_s),), latency_s=0.0, queue_depth=1,
                     max_request_bytes=expert_bytes)
    swap_s = np.concatenate([[0.0], read_done_s(pcie, expert_bytes, arch.top_k)])  # m = 0..top_k copies
    return Swaps(exrep=measured_exrep, experts_per_token=float(misses.sum(axis=1).mean()),
                 swapping_layers_per_token=float((misses > 0).sum(axis=1).mean()),
                 swap_s_per_token=float(swap_s[misses].sum(axis=1).mean()))


@dataclass(frozen=True)
class Prediction:
    link: str
    link_gb_per_s: float
    overhead: str  # a key of OVERHEADS
    overhead_ms_per_layer: float  # fitted on the offload row; negative: the link alone is too slow to fit
    offload: Swaps
    bles: Swaps
    bles_tokens_per_s: float  # predicted
    bles_error: float  # (predicted - measured) / measured
    speedup: float  # predicted BlES tokens/s over the offload row's
    speedup_error: float


def predict(link_name: str = DEFAULT_LINK, overhead: str = "layer", *, n_sequences: int = 100, seed: int = 0) -> Prediction:
    """Fit o on the offload row and predict the BlES row, on one link and one overhead model."""
    if link_name not in LINKS:
        raise InputError(f"--link: expected one of {', '.join(LINKS)}, got {link_name!r}")
    if overhead not in OVERHEADS:
        raise InputError(f"--overhead: expected one of {', '.join(OVERHEADS)}, got {overhead!r}")
    if n_sequences < 10:
        raise InputError(f"--sequences: expected >= 10 (a tenth are warm-up), got {n_sequences}")
    link, n_layers = LINKS[link_name], get_arch(ARCH).n_layers
    offload, bles = (swaps(row, link, n_sequences, seed) for row in (OFFLOAD, BLES))
    no_swap_s = 1 / NO_OFFLOAD_TOKENS_PER_S

    def paying_layers(routing: Swaps) -> float:
        return n_layers if overhead == "layer" else routing.swapping_layers_per_token

    overhead_s = (1 / OFFLOAD.tokens_per_s - no_swap_s - offload.swap_s_per_token) / paying_layers(offload)
    bles_tokens_per_s = 1 / (no_swap_s + paying_layers(bles) * overhead_s + bles.swap_s_per_token)
    speedup, measured_speedup = bles_tokens_per_s / OFFLOAD.tokens_per_s, BLES.tokens_per_s / OFFLOAD.tokens_per_s
    return Prediction(link=link.name, link_gb_per_s=link.bytes_per_s / 1e9, overhead=overhead,
                      overhead_ms_per_layer=overhead_s * 1e3, offload=offload, bles=bles,
                      bles_tokens_per_s=bles_tokens_per_s,
                      bles_error=(bles_tokens_per_s - BLES.tokens_per_s) / BLES.tokens_per_s,
                      speedup=speedup, speedup_error=(speedup - measured_speedup) / measured_speedup)


def sensitivity(*, n_sequences: int = 100, seed: int = 0) -> list[Prediction]:
    """The prediction on every link (specification and measured) and under both overhead models."""
    return [predict(link, overhead, n_sequences=n_sequences, seed=seed) for overhead in OVERHEADS for link in LINKS]
