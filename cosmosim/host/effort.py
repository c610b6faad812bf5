"""How big and how long each of calibrate's measurements is: the full effort, and a quick one
for trying the command and for the tests."""

from __future__ import annotations

from dataclasses import dataclass

from cosmosim.units import GIB, MIB


@dataclass(frozen=True)
class Effort:
    """How big and how long each measurement is."""

    name: str
    file_bytes: int  # the flash test file
    seconds_per_point: float  # each throughput figure
    dram_bytes: int  # the copied buffer
    working_set_bytes: int  # distinct weights per matrix shape: more than the CPU's last-level cache
    overhead_tokens: int  # decoded tokens per sequence of the overhead replay
    overhead_sequences: int  # its sequences; the first is the workload's warm-up, not replayed
    isolated_reads: int  # isolated reads of one expert, for the flash latency


FULL = Effort("full", 1 * GIB, 0.5, 256 * MIB, 128 * MIB, 64, 4, 200)
QUICK = Effort("quick", 16 * MIB, 0.02, 8 * MIB, 2 * MIB, 12, 2, 10)
