"""Replay a scenario's workload for real: torch compute, a RAM expert cache, cold reads from disk.

The engine walks exactly the steps and accesses the simulator walks (`Scenario.workload`) and asks
the same `ExpertCache` and policy classes which expert to evict, so its hits and misses are the
simulator's, access for access. What differs is that everything here happens:

1. attention (with its KV cache), norms and the router run in torch on resident weights: the training
   model's own blocks (`cosmosim.model.llama`), one layer at a time;
2. each of the step's experts is looked up in the cache; a miss takes the victim's slot (or a free
   one) and its read is issued at once, split into requests of the profile's `max_request_bytes`,
   with up to `queue_depth` requests in flight on I/O threads (reads release the GIL);
3. experts compute as the simulator orders them: hits first, then misses in the order their reads
   were issued, each as soon as its bytes are in; one expert's compute overlaps the next one's read.
   Each is the model's SwiGLU (`cosmosim.model.layers.swiglu`) on the matrices in its cache slot.

A prefill step pins only the expert being loaded (as in the simulator), so a small cache can evict
an expert of the same step before it has computed; the engine then computes what is pending before
the slot is overwritten.
"""

from __future__ import annotations

import gc
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from cosmosim.engines.replay.compute import decode_gates
from cosmosim.engines.replay.storage import ALIGN, ColdReader, aligned_buffer, check_memory, submit_read
from cosmosim.engines.replay.weights import WEIGHT_BITS, ExpertLayout, ResidentWeights
from cosmosim.errors import InputError
from cosmosim.inputs.precision import Precision
from cosmosim.model.layers import swiglu
from cosmosim.scenario.build import Scenario
from cosmosim.workload.stream import DECODE, PREFILL

# Where a decode token's measured time goes, summed over decode tokens (docs/validation.md):
# attention_router (norms, attention, router), expert_compute (the expert FFNs and their gates),
# flash_wait (blocked on a read), lm_head (final norm, LM head, argmax), and bookkeeping: the rest
# (cache decisions, issuing reads, summing expert outputs, the loop itself).
MEASURED_PARTS = ("attention_router", "expert_compute", "flash_wait", "lm_head", "bookkeeping")


@dataclass
class ReplayRecords:
    decode_latency_s: list[float] = field(default_factory=list)  # per decode token, first layer to logits
    decode_parts_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(MEASURED_PARTS, 0.0))
    decode_read_bytes: list[int] = field(default_factory=list)  # per decode token
    ttft_s: list[float] = field(default_factory=list)  # per request: prefill pass + LM head
    outcomes: dict[str, int] = field(default_factory=lambda: {"hit": 0, "miss": 0, "prefill_hit": 0, "prefill_miss": 0})
    generated: list[int] = field(default_factory=list)  # greedy token of every pass: the decode's output
    read_bytes: int = 0
    wall_s: float = 0.0


@contextmanager
def _gc_paused():
    """A collection in the middle of a token adds milliseconds that belong to no part of the model."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass
class _Pending:
    """An expert of the current step waiting to compute: its slot, rows, gate and reads in flight."""

    slot: int
    rows: int
    gate: torch.Tensor
    reads: list[Future] = field(default_factory=list)
    output: torch.Tensor | None = None  # gate * expert(h) of its rows, once computed


class ReplayEngine:
    def __init__(self, scenario: Scenario, weights: ResidentWeights, layout: ExpertLayout, reader: ColdReader) -> None:
        config, workload = scenario.config, scenario.workload
        if config.prefetch != "none":
            raise InputError(f"--prefetch {config.prefetch}: replay runs demand reads only; use --prefetch none")
        if config.precision != Precision.uniform(WEIGHT_BITS):
            raise InputError(f"--weight-bits/--expert-bits/--shared-bits {config.precision.label()}: replay runs "
                             f"bfloat16 weights; use {WEIGHT_BITS} bits for every weight")
        self.scenario, self.model, self.layout, self.reader = scenario, weights.model, layout, reader
        self.cache = scenario.expert_cache()
        check_memory(self.cache.capacity * layout.stride, f"replay's expert cache of {self.cache.capacity} experts")
        self.slots = aligned_buffer(self.cache.capacity * layout.stride)
        torch.frombuffer(self.slots, dtype=torch.uint8).fill_(0)  # fault the pages in now, not inside a token
        self.slot_factors = [layout.factors(self.slots, slot) for slot in range(self.cache.capacity)]
        self.slot_of: dict[int, int] = {}
        self.free_slots = list(range(self.cache.capacity - 1, -1, -1))
        self.request_bytes = max(ALIGN, scenario.profile.flash.max_request_bytes // ALIGN * ALIGN)
        longest = config.prompt_tokens + workload.n_decode_tokens  # bound on any position
        self.model.setup_cache(config.context_len, longest)
        self.keys, self.tokens = workload.access_key.tolist(), workload.access_tokens.tolist()
        self.step_wait_s = self.step_compute_s = 0.0  # the current step's, added to by _compute

    # -- reads ------------------------------------------------------------------------------------
    def _issue_read(self, pool: ThreadPoolExecutor, key: int, slot: int) -> list[Future]:
        stride = self.layout.stride
        slot_bytes = memoryview(self.slots)[slot * stride:(slot + 1) * stride]
        return submit_read(pool, self.reader, slot_bytes, key * stride, self.request_bytes)

    # -- one step ---------------------------------------------------------------------------------
    def _compute(self, h_TD: torch.Tensor, pending: list[_Pending]) -> None:
        """Compute the experts not computed yet in the simulator's order: hits (no reads) first,
        then misses in issue order, each once its reads are done. Adds the time blocked on reads
        and the time in expert arithmetic to `self.step_wait_s` and `self.step_compute_s`."""
        clock = time.perf_counter
        for expert in sorted(pending, key=lambda p: bool(p.reads)):  # stable: issue order kept
            if expert.output is None:
                waited = clock()
                for read in expert.reads:
                    read.result()
                started = clock()
                rows = expert.rows
                expert.output = expert.gate * swiglu(h_TD[:rows], *self.slot_factors[expert.slot])
                self.step_wait_s += started - waited
                self.step_compute_s += clock() - started

    def _experts(self, pool: ThreadPoolExecutor, kind: int, h_TD: torch.Tensor, logits_TE: torch.Tensor,
                 lo: int, hi: int) -> tuple[torch.Tensor, int, int]:
        """The step's expert accesses [lo, hi): cache decisions, reads, compute. Returns the FFN
        output and the step's hits and misses."""
        keys, n_experts = self.keys, self.scenario.workload.n_experts
        step_keys = keys[lo:hi]
        if kind == DECODE:
            gates = decode_gates(logits_TE, [key % n_experts for key in step_keys])
        else:  # a prompt token's gates are not in the workload; equal weights cost the same
            gates = torch.full((hi - lo,), 1.0 / self.scenario.workload.top_k, dtype=h_TD.dtype)
        decode_pins = set(step_keys)  # a decode step's experts stay together; prefill streams them
        pending: list[_Pending] = []
        hits = misses = 0
        for clock in range(lo, hi):
            key = keys[clock]
            expert = _Pending(slot=-1, rows=self.tokens[clock], gate=gates[clock - lo])
            if key in self.cache:
                expert.slot = self.slot_of[key]
                hits += 1
            else:
                evicted = self.cache.insert(key, clock, 0.0, decode_pins if kind == DECODE else {key})
                if evicted is None:
                    expert.slot = self.free_slots.pop()
                else:
                    expert.slot = self.slot_of.pop(evicted)
                    if any(p.slot == expert.slot and p.output is None for p in pending):
                        self._compute(h_TD, pending)  # prefill only: compute before the slot is overwritten
                self.slot_of[key] = expert.slot
                expert.reads = self._issue_read(pool, key, expert.slot)
                misses += 1
            self.cache.touch(key, clock)
            pending.append(expert)
        self._compute(h_TD, pending)
        # Summed in access order, whatever order they computed in: the cache never changes the result.
        out_TD = torch.zeros_like(h_TD)
        for expert in pending:
            out_TD[:expert.rows] += expert.output
        return out_TD, hits, misses

    # -- the replay -------------------------------------------------------------------------------
    def run(self) -> ReplayRecords:
        """Execute the workload once; the engine's cache starts empty and is used up."""
        scenario, model, records = self.scenario, self.model, ReplayRecords()
        workload, config = scenario.workload, scenario.config
        kinds, layers = workload.step_kind.tolist(), workload.step_layer.tolist()
        contexts, offsets = workload.step_context.tolist(), workload.step_offsets.tolist()
        last_layer, prompt, vocab = workload.n_layers - 1, config.prompt_tokens, scenario.arch.vocab_size
        stride = self.layout.stride
        position, next_token = 0, 0
        clock, parts = time.perf_counter, records.decode_parts_s
        started = clock()
        with ThreadPoolExecutor(scenario.profile.flash.queue_depth) as pool, torch.inference_mode(), _gc_paused():
            for step, kind in enumerate(kinds):
                layer = layers[step]
                if layer == 0:
                    pass_start, pass_misses = clock(), 0
                    if kind == PREFILL:
                        position = 0
                        positions_T = torch.arange(prompt)
                        tokens_BT = (positions_T % vocab)[None]  # prompt ids do not change the cost
                    else:
                        positions_T = torch.tensor([position])
                        tokens_BT = torch.tensor([[next_token]])
                    # The KV cache attends over min(last position + 1, context) keys: what the simulator priced.
                    assert min(int(positions_T[-1]) + 1, config.context_len) == contexts[step]
                    x_BTD = model.embedding(tokens_BT)
                    cos_TP, sin_TP = model.rope(positions_T)
                block = model.layers[layer]
                step_start = clock()
                x_BTD = block.attend(x_BTD, cos_TP, sin_TP, positions_T)
                h_TD = block.ffn_norm(x_BTD)[0]
                logits_TE = block.ffn.router.gate(h_TD)
                router_s = clock() - step_start
                self.step_wait_s = self.step_compute_s = 0.0
                out_TD, hits, misses = self._experts(pool, kind, h_TD, logits_TE, offsets[step], offsets[step + 1])
                x_BTD = x_BTD + out_TD
                if kind == DECODE:
                    parts["attention_router"] += router_s
                    parts["flash_wait"] += self.step_wait_s
                    parts["expert_compute"] += self.step_compute_s
                pass_misses += misses
                prefix = "" if kind == DECODE else "prefill_"
                records.outcomes[prefix + "hit"] += hits
                records.outcomes[prefix + "miss"] += misses
                if layer == last_layer:
                    head_start = clock()
                    next_token = int(model.head(x_BTD[:, -1:]).argmax())  # greedy decode of the last position
                    end = clock()
                    latency = end - pass_start
                    records.generated.append(next_token)
                    if kind == DECODE:
                        parts["lm_head"] += end - head_start
                        records.decode_latency_s.append(latency)
                        records.decode_read_bytes.append(pass_misses * stride)
                    else:
                        records.ttft_s.append(latency)
                    records.read_bytes += pass_misses * stride
                    position += prompt if kind == PREFILL else 1
        records.wall_s = clock() - started
        measured = sum(parts[part] for part in MEASURED_PARTS if part != "bookkeeping")
        parts["bookkeeping"] = sum(records.decode_latency_s) - measured
        return records
