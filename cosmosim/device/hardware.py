"""The hardware the simulated decoder runs on: a flash device and a compute unit.

Both serve work first-come first-served, so each is kept as arithmetic on "free-at" times instead
of SimPy Resource requests: exact for FIFO service, and several times faster (SimPy here: ~190k
Resource cycles/s against ~1.4M bare timeouts/s; see docs/simulator.md). The engine advances SimPy's clock to the times these
objects compute.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cosmosim.inputs.profiles import FlashSpec


@dataclass
class FlashStats:
    reads: int = 0
    requests: int = 0
    bytes: int = 0
    busy_s: float = 0.0  # time the transfer channel was moving bytes


@dataclass
class Flash:
    """A flash device: up to `queue_depth` requests in flight, whose fixed latencies overlap, and one
    transfer channel at the bandwidth B(request size) that all in-flight requests share.

    A request issued at t waits for a free slot, then for its latency, then for the channel:
        start = max(slot_free + latency, channel_free);  end = start + size / B(size)
    A read larger than `max_request_bytes` is split into requests that go through in order.
    """

    spec: FlashSpec
    stats: FlashStats = field(default_factory=FlashStats)

    def __post_init__(self) -> None:
        self._slot_free = [0.0] * self.spec.queue_depth  # FIFO: requests take slots round-robin
        self._next_slot = 0
        self._channel_free = 0.0
        self._split: dict[int, list[tuple[int, float]]] = {}
        self._throughput_fraction = 1.0  # of the spec's bandwidth: below 1 while the device is throttled

    def set_throughput_fraction(self, fraction: float) -> None:
        """Transfer at `fraction` of the spec's bandwidth from now on (sustained-load throttling); latency unchanged."""
        if fraction != self._throughput_fraction:
            self._throughput_fraction = fraction
            self._split.clear()

    def _requests(self, nbytes: int) -> list[tuple[int, float]]:
        """The read as the device sees it: (size, transfer time) of each request, memoised."""
        requests = self._split.get(nbytes)
        if requests is None:
            limit = self.spec.max_request_bytes
            sizes = [limit] * (nbytes // limit) + ([nbytes % limit] if nbytes % limit else [])
            bandwidth = self.spec.bandwidth_bytes_per_s
            requests = [(size, size / (bandwidth(size) * self._throughput_fraction)) for size in sizes]
            self._split[nbytes] = requests
        return requests

    def read(self, nbytes: int, issue_s: float) -> float:
        """Queue a read of `nbytes` at time `issue_s`; return when its last byte has arrived."""
        latency, depth, slot_free = self.spec.latency_s, self.spec.queue_depth, self._slot_free
        end = issue_s
        requests = self._requests(nbytes)
        for _, transfer in requests:
            slot = self._next_slot
            ready = (slot_free[slot] if slot_free[slot] > issue_s else issue_s) + latency
            end = (ready if ready > self._channel_free else self._channel_free) + transfer
            self._channel_free = slot_free[slot] = end
            self._next_slot = (slot + 1) % depth
            self.stats.busy_s += transfer
        self.stats.requests += len(requests)
        self.stats.reads += 1
        self.stats.bytes += nbytes
        return end


def idle_flash_read_times(spec: FlashSpec, nbytes: int, n_reads: int) -> list[float]:
    """Completion times (from 0) of `n_reads` reads of `nbytes` issued together on an idle device.

    The analytical model prices a (token, layer) with m misses by this: the same recurrence the
    simulator runs, evaluated once per m instead of once per access.
    """
    flash = Flash(spec)
    return [flash.read(nbytes, 0.0) for _ in range(n_reads)]


@dataclass
class ComputeUnit:
    """One compute unit that runs operations back to back; tracks busy time by kind."""

    free_s: float = 0.0
    busy_s: float = 0.0

    def run(self, ready_s: float, duration_s: float) -> tuple[float, float]:
        """Start an operation once its inputs are ready and the unit is free; return (start, end)."""
        start = ready_s if ready_s > self.free_s else self.free_s
        self.free_s = start + duration_s
        self.busy_s += duration_s
        return start, self.free_s
