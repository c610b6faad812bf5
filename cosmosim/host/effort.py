"""How big and how long each of calibrate's measurements is: the full effort, and a quick one
for trying the command and for the tests."""

from __future__ import annotations

from dataclasses import dataclass

from cosmosim.units import GIB, MIB

MIN_FILE_BYTES = 64 * MIB  # the read curve's largest size, 8 MiB, needs 8 of them


@dataclass(frozen=True)
class Effort:
    """How big and how long each measurement is."""

    name: str
    max_file_bytes: int  # the flash test file is the expert file's size, at most this
    seconds_per_point: float  # each throughput figure
    dram_bytes: int  # the copied buffer
    working_set_bytes: int  # distinct weights per matrix shape: more than the CPU's last-level cache
    overhead_tokens: int  # decoded tokens per sequence of the overhead replay
    overhead_sequences: int  # its sequences; the first is the workload's warm-up, not replayed
    step_reads: int  # all-miss steps' reads (top-k experts at once), for the flash latency

    def flash_file_bytes(self, expert_file_bytes: int) -> int:
        """The flash test file: as big as the expert file replay reads (the storage beneath a bypassed
        page cache reads a small file faster than a large one), in whole MiB, at least MIN_FILE_BYTES
        so the read curve reaches 8 MiB, at most `max_file_bytes`."""
        whole_mib = -(-expert_file_bytes // MIB) * MIB
        return min(max(whole_mib, MIN_FILE_BYTES), self.max_file_bytes)


FULL = Effort("full", 8 * GIB, 0.5, 256 * MIB, 128 * MIB, 64, 4, 200)
QUICK = Effort("quick", 16 * MIB, 0.02, 8 * MIB, 2 * MIB, 12, 2, 10)
