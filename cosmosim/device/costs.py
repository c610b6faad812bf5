"""What each operation of a decode step costs on a device: the shared arithmetic of both engines.

The discrete-event simulator and the analytical model price every operation with these functions,
so wherever they disagree it is because of how operations overlap, never because of what one
operation costs. Formulas and units are in docs/metrics.md; all values are SI (seconds, bytes,
FLOPs, joules).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cosmosim.inputs.arch import Architecture
from cosmosim.inputs.profiles import DeviceProfile

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
class StepCosts:
    """Per-operation costs of one architecture on one device at one weight bit-width.

    Context-dependent costs (attention over the KV cache) are functions; the rest are constants
    computed once, because the simulator asks for them millions of times.
    """

    arch: Architecture
    profile: DeviceProfile
    weight_bits: int
    expert_bytes: int
    expert_decode: OpCost  # one expert, one token (GEMV)
    lm_head: OpCost  # final norm + LM head, one token
    layer_overhead_s: float

    @classmethod
    def build(cls, arch: Architecture, profile: DeviceProfile, weight_bits: int) -> "StepCosts":
        compute, dram = profile.compute, profile.dram
        expert_bytes = arch.expert_bytes(weight_bits) if arch.is_moe else 0
        expert = roofline(arch.expert_flops_per_token() if arch.is_moe else 0, expert_bytes,
                          compute.gemv_flops_per_s, dram.bandwidth_bytes_per_s)
        lm_bytes = arch.lm_head_params() * weight_bits / 8 + arch.vocab_size * LOGIT_BYTES
        lm_head = roofline(arch.lm_head_flops_per_token(), lm_bytes, compute.gemv_flops_per_s, dram.bandwidth_bytes_per_s)
        return cls(arch, profile, weight_bits, expert_bytes, expert, lm_head, compute.layer_overhead_s)

    def kv_bytes_per_token_per_layer(self) -> float:
        return self.arch.kv_bytes_per_token(ACTIVATION_BYTES * 8) / self.arch.n_layers

    def _step_nonexpert(self, step: int, price_layer: Callable[[int], OpCost]) -> OpCost:
        """A replay step's model layers bar their routed experts (`Architecture.step_layers`): the step's
        MoE layer and the dense layers it runs, each priced alone and run one after another; a dense
        layer pays its own layer overhead here, the MoE layer's is the step's."""
        layers = self.arch.step_layers[step]
        ops = [price_layer(layer) for layer in layers]
        if len(ops) == 1:
            return ops[0]
        memory_s = sum(op.time_s for op in ops if op.memory_bound)
        time_s = sum(op.time_s for op in ops) + (len(ops) - 1) * self.layer_overhead_s
        return OpCost(sum(op.flops for op in ops), sum(op.dram_bytes for op in ops), time_s,
                      memory_s > time_s - memory_s)

    def _layer_decode(self, context_len: int, layer: int) -> OpCost:
        arch = self.arch
        dram_bytes = arch.nonexpert_bytes_of(layer, self.weight_bits) + context_len * self.kv_bytes_per_token_per_layer()
        return roofline(arch.nonexpert_flops_of(layer, context_len), dram_bytes,
                        self.profile.compute.gemv_flops_per_s, self.profile.dram.bandwidth_bytes_per_s)

    def _layer_prefill(self, prompt_len: int, layer: int) -> OpCost:
        arch = self.arch
        flops = sum(arch.nonexpert_flops_of(layer, c) for c in range(1, prompt_len + 1))
        dram_bytes = arch.nonexpert_bytes_of(layer, self.weight_bits) + 2 * prompt_len * self.kv_bytes_per_token_per_layer()
        return roofline(flops, dram_bytes, self.profile.compute.gemm_flops_per_s, self.profile.dram.bandwidth_bytes_per_s)

    def nonexpert_decode(self, context_len: int, step: int) -> OpCost:
        """Replay step `step` bar its routed experts (attention, norms, router and shared experts; the
        FFN of dense layers) for one token attending over `context_len` tokens."""
        return self._step_nonexpert(step, lambda layer: self._layer_decode(context_len, layer))

    def nonexpert_prefill(self, prompt_len: int, step: int) -> OpCost:
        """Replay step `step` bar its routed experts over a whole prompt (GEMM: weights read once)."""
        return self._step_nonexpert(step, lambda layer: self._layer_prefill(prompt_len, layer))

    def expert_prefill(self, n_tokens: int) -> OpCost:
        """One expert applied to the `n_tokens` prompt tokens routed to it (weights read once)."""
        if n_tokens == 1:
            return self.expert_decode
        return roofline(n_tokens * self.expert_decode.flops, self.expert_bytes,
                        self.profile.compute.gemm_flops_per_s, self.profile.dram.bandwidth_bytes_per_s)

    def kv_cache_bytes(self, context_len: int) -> int:
        return int(self.arch.kv_bytes_per_token(ACTIVATION_BYTES * 8) * context_len)

    def activation_bytes(self, prompt_len: int) -> int:
        """Peak activations: the prompt's hidden states through one FFN, or one token's logits."""
        arch = self.arch
        prefill = prompt_len * (2 * arch.d_model + 2 * arch.ffn_hidden) * ACTIVATION_BYTES
        return int(max(prefill, arch.vocab_size * LOGIT_BYTES))
