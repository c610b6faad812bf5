"""What each operation of a decode step costs on a device: the shared arithmetic of both engines.

The discrete-event simulator and the analytical model price every operation with these functions,
so wherever they disagree it is because of how operations overlap, never because of what one
operation costs. Formulas and units are in docs/metrics.md; all values are SI (seconds, bytes,
FLOPs, joules).

Each class of operations (the non-expert work, the routed experts, the LM head) runs at its own
`Rates`: the profile's `[compute_classes]` figures where given, else its `[compute]` ones, so a device
whose NPU runs attention while its CPU runs the experts is priced unit by unit. A decode pass's
operations depend on one another in order, so the units take turns and the engines' single compute
timeline stays exact (docs/device-profiles.md), except where the profile says the units compute at
once (`concurrent`): then a MoE layer's shared experts are priced apart (`shared_op`), and the
engines run them on the attention unit beside the routed experts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cosmosim.inputs.arch import Architecture
from cosmosim.inputs.precision import Precision, weight_bytes
from cosmosim.inputs.profile_options import OP_CLASSES, ComputeClasses
from cosmosim.inputs.profiles import DeviceProfile
from cosmosim.workload.stream import DECODE, PREFILL

ACTIVATION_BYTES = 2  # activations and KV cache are kept in 16-bit, whatever the weight bit-width
LOGIT_BYTES = 4  # the LM head's output is kept in fp32 for sampling


@dataclass(frozen=True)
class OpCost:
    """One operation priced by the roofline: it takes max(compute time, DRAM time)."""

    flops: float
    dram_bytes: float
    time_s: float
    memory_bound: bool


def roofline(flops: float, dram_bytes: float, flops_per_s: float, dram_bytes_per_s: float) -> OpCost:
    compute_s = flops / flops_per_s
    memory_s = dram_bytes / dram_bytes_per_s
    return OpCost(flops, dram_bytes, max(compute_s, memory_s), memory_s > compute_s)


@dataclass(frozen=True)
class Rates:
    """The compute ceilings (FLOP/s) one class of operations runs at, and the unit that runs it."""

    gemv_flops_per_s: float  # batch-1 decode
    gemm_flops_per_s: float  # prefill
    unit: str | None = None  # the profile's label ("npu", "cpu"); None where it names none

    @classmethod
    def of(cls, profile: DeviceProfile, op_class: str) -> "Rates":
        """`op_class` ("attention", "expert" or "lm_head") on this device: its [compute_classes] figures,
        each one not given the [compute] section's."""
        if op_class not in OP_CLASSES:
            raise ValueError(f"op_class must be one of {', '.join(OP_CLASSES)}, got {op_class!r}")
        compute, given = profile.compute, getattr(profile.compute_classes or ComputeClasses(), op_class)
        gemv = compute.gemv_flops_per_s if given.gemv_flops_per_s is None else given.gemv_flops_per_s
        gemm = compute.gemm_flops_per_s if given.gemm_flops_per_s is None else given.gemm_flops_per_s
        return cls(gemv, gemm, given.unit)

    def flops_per_s(self, kind: int) -> float:
        """The ceiling for a decode (GEMV) or prefill (GEMM) operation."""
        return self.gemv_flops_per_s if kind == DECODE else self.gemm_flops_per_s


@dataclass(frozen=True)
class OpTable:
    """Operations priced at many points at once: arrays of one shape (e.g. [contexts, steps])."""

    time_s: np.ndarray
    flops: np.ndarray
    dram_bytes: np.ndarray
    memory_bound: np.ndarray

    def op(self, *index) -> OpCost:
        return OpCost(float(self.flops[index]), float(self.dram_bytes[index]), float(self.time_s[index]),
                      bool(self.memory_bound[index]))

    def take(self, rows: np.ndarray, columns: np.ndarray) -> OpTable:
        """The table at (rows, columns), broadcast together."""
        return OpTable(*(getattr(self, name)[rows, columns] for name in ("time_s", "flops", "dram_bytes", "memory_bound")))


@dataclass(frozen=True)
class StepCosts:
    """Per-operation costs of one architecture on one device at one weight precision.

    Context-dependent costs (attention over the KV cache) are functions; the rest are constants
    computed once, because the simulator asks for them millions of times.
    """

    arch: Architecture
    profile: DeviceProfile
    precision: Precision  # bits per weight of each class (routed experts, shared experts, the rest)
    expert_bytes: int
    expert_decode: OpCost  # one expert, one token (GEMV)
    lm_head: OpCost  # final norm + LM head, one token
    layer_overhead_s: float
    step_layers: tuple[tuple[int, ...], ...]  # arch.step_layers, kept: asked for at every priced step
    attention_rates: Rates  # the non-expert work: attention, norms, router, shared experts, dense FFNs
    expert_rates: Rates  # the routed experts
    lm_head_rates: Rates  # final norm + LM head (always one token: its GEMV rate)
    concurrent_shared: bool = False  # the shared experts run beside the routed ones, not in the non-expert work
    miss_overhead_s: float = 0.0  # a decode miss's expert computes this much longer (the profile's figure)

    @classmethod
    def build(cls, arch: Architecture, profile: DeviceProfile, bits: Precision | float) -> "StepCosts":
        """`bits`: a Precision, or one bit-width for every weight."""
        precision = Precision.of(bits)
        dram_bytes_per_s = profile.dram.bandwidth_bytes_per_s
        attention, experts, head = (Rates.of(profile, op_class) for op_class in OP_CLASSES)
        expert_bytes = arch.expert_bytes(precision) if arch.is_moe else 0
        expert = roofline(arch.expert_flops_per_token() if arch.is_moe else 0, expert_bytes,
                          experts.gemv_flops_per_s, dram_bytes_per_s)
        lm_bytes = arch.lm_head_params() * precision.weights / 8 + arch.vocab_size * LOGIT_BYTES
        lm_head = roofline(arch.lm_head_flops_per_token(), lm_bytes, head.gemv_flops_per_s, dram_bytes_per_s)
        concurrent = bool(profile.compute_classes and profile.compute_classes.concurrent and arch.n_shared_experts)
        return cls(arch, profile, precision, expert_bytes, expert, lm_head, profile.compute.layer_overhead_s,
                   arch.step_layers, attention, experts, head, concurrent, profile.compute.miss_overhead_s)

    def decode_expert_s(self, miss: np.ndarray | bool, expert_s: np.ndarray | float | None = None) -> np.ndarray:
        """Each decode access's expert compute: `expert_s` (default one expert's GEMV), plus the
        per-miss overhead where it missed."""
        base_s = self.expert_decode.time_s if expert_s is None else expert_s
        return np.where(miss, base_s + self.miss_overhead_s, base_s)

    def units(self) -> dict[str, str | None]:
        """Which unit the profile says runs each class of operations (None where it names none)."""
        return {"attention": self.attention_rates.unit, "expert": self.expert_rates.unit,
                "lm_head": self.lm_head_rates.unit}

    def shared_op(self, kind: int, n_tokens: int) -> OpCost:
        """A MoE layer's shared experts over `n_tokens` tokens (decode: 1; prefill: the prompt), at the
        attention rates: what runs beside the routed experts when `concurrent_shared`."""
        arch = self.arch
        params = arch.n_shared_experts * arch.shared_expert_params()
        return roofline(2 * params * n_tokens, weight_bytes(params, self.precision.shared),
                        self.attention_rates.flops_per_s(kind), self.profile.dram.bandwidth_bytes_per_s)

    def concurrent_s(self, kind: int, n_tokens: int) -> float:
        """The time a step's routed-expert phase cannot end before: its shared experts' where they run at
        once beside it, else 0 (they are part of the non-expert work)."""
        return self.shared_op(kind, n_tokens).time_s if self.concurrent_shared else 0.0

    def kv_bytes_per_token_per_layer(self) -> float:
        return self.arch.kv_bytes_per_token(ACTIVATION_BYTES * 8) / self.arch.n_layers

    def nonexpert_table(self, kind: int, contexts: np.ndarray) -> OpTable:
        """Every replay step bar its routed experts (attention, norms, router and, unless
        `concurrent_shared`, shared experts; the FFN of dense layers) at each context: decode, one token attending over that many tokens (GEMV);
        prefill, a whole prompt of that length (GEMM: weights read once). [contexts, steps]. Priced at
        `attention_rates`.

        A step runs its model layers (`Architecture.step_layers`: its MoE layer and the dense layers
        before it) one after another, each priced alone by the roofline; a dense layer pays its own
        layer overhead here, the MoE layer's is the step's. Counts are exact integers below 2^53, so
        these floats equal a scalar computation's."""
        arch, dram = self.arch, self.profile.dram
        layers = range(arch.n_layers)
        # A layer's FLOPs are its projections plus attention linear in the keys: split them from two contexts.
        attention_flops_per_key = float(arch.nonexpert_flops_of(0, 2) - arch.nonexpert_flops_of(0, 1))
        projection_flops_L = np.array([arch.nonexpert_flops_of(layer, 1) for layer in layers], float) - attention_flops_per_key
        weight_bytes_L = np.array([arch.nonexpert_bytes_of(layer, self.precision) for layer in layers], float)
        if self.concurrent_shared:  # the shared experts are priced apart (shared_op)
            shared_L = np.array([arch.shared_params_of(layer) for layer in layers])
            projection_flops_L -= 2 * shared_L
            weight_bytes_L -= [weight_bytes(int(n), self.precision.shared) for n in shared_L]
        kv_bytes = self.kv_bytes_per_token_per_layer()
        contexts_C1 = np.asarray(contexts, dtype=float).reshape(-1, 1)
        if kind == DECODE:
            flops_CL = projection_flops_L + attention_flops_per_key * contexts_C1
            bytes_CL = weight_bytes_L + contexts_C1 * kv_bytes
        else:
            keys_attended = contexts_C1 * (contexts_C1 + 1) / 2
            flops_CL = contexts_C1 * projection_flops_L + attention_flops_per_key * keys_attended
            bytes_CL = weight_bytes_L + 2 * contexts_C1 * kv_bytes
        compute_s, memory_s = flops_CL / self.attention_rates.flops_per_s(kind), bytes_CL / dram.bandwidth_bytes_per_s
        time_CL, bound_CL = np.maximum(compute_s, memory_s), memory_s > compute_s
        starts = np.array([group[0] for group in self.step_layers])
        extra_layers = np.array([len(group) - 1 for group in self.step_layers])
        time_CS = np.add.reduceat(time_CL, starts, axis=1) + extra_layers * self.layer_overhead_s
        bound_time_CS = np.add.reduceat(np.where(bound_CL, time_CL, 0.0), starts, axis=1)
        return OpTable(time_CS, np.add.reduceat(flops_CL, starts, axis=1), np.add.reduceat(bytes_CL, starts, axis=1),
                       bound_time_CS > time_CS - bound_time_CS)

    def nonexpert_decode(self, context_len: int, step: int) -> OpCost:
        """Replay step `step` bar its routed experts, one token attending over `context_len` tokens."""
        return self.nonexpert_table(DECODE, np.array([context_len])).op(0, step)

    def nonexpert_prefill(self, prompt_len: int, step: int) -> OpCost:
        """Replay step `step` bar its routed experts over a whole prompt."""
        return self.nonexpert_table(PREFILL, np.array([prompt_len])).op(0, step)

    def expert_prefill(self, n_tokens: int) -> OpCost:
        """One expert applied to the `n_tokens` prompt tokens routed to it (weights read once)."""
        if n_tokens == 1:
            return self.expert_decode
        return roofline(n_tokens * self.expert_decode.flops, self.expert_bytes,
                        self.expert_rates.gemm_flops_per_s, self.profile.dram.bandwidth_bytes_per_s)

    def kv_cache_bytes(self, context_len: int) -> int:
        return int(self.arch.kv_bytes_per_token(ACTIVATION_BYTES * 8) * context_len)

    def activation_bytes(self, prompt_len: int) -> int:
        """Peak activations: the prompt's hidden states through one FFN, or one token's logits."""
        arch = self.arch
        prefill = prompt_len * (2 * arch.d_model + 2 * arch.ffn_hidden) * ACTIVATION_BYTES
        return int(max(prefill, arch.vocab_size * LOGIT_BYTES))
