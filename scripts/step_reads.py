"""Does this host's flash pay a fixed cost per decode step? calibrate's all-miss step read
(`flash_measure._step_read_s`: experts issued at once, then 2 ms of CPU work) with 1, 2 and 4 experts,
interleaved over `--rounds` so that drift lands on all three, on replay's own expert file.

    python scripts/step_reads.py [--arch wearable-moe] [--rounds 5] [--steps 60]

Prints the median step time per expert count and 2*T(1) - T(2), the fixed cost per step that a model
linear in the bytes would miss. Needs a calibrated host profile and an idle machine: it times real reads.
"""

from __future__ import annotations

import argparse

import numpy as np

from cosmosim.engines.replay.compute import torch_threads
from cosmosim.engines.replay.run import HostModel
from cosmosim.host.flash_measure import _step_read_s
from cosmosim.inputs.arch import get_arch
from cosmosim.inputs.profiles import host_profile_path, load_profile

EXPERT_COUNTS = (1, 2, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="wearable-moe")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=60, help="steps per expert count and round")
    args = parser.parse_args()
    arch, flash = get_arch(args.arch), load_profile(host_profile_path()).flash
    times_ms: dict[int, list[float]] = {count: [] for count in EXPERT_COUNTS}
    with torch_threads(1), HostModel(arch, None) as model:
        size, stride = model.layout.file_bytes, model.layout.stride
        for round_index in range(args.rounds):
            for count in EXPERT_COUNTS:
                seconds = _step_read_s(model.reader, size, stride, count, flash.max_request_bytes, flash.queue_depth,
                                       args.steps, 11 + round_index)
                times_ms[count].append(seconds * 1e3)
            print(f"round {round_index + 1}: " + ", ".join(f"{count} experts {times[-1]:.3f} ms"
                                                          for count, times in times_ms.items()), flush=True)
    median = {count: float(np.median(times)) for count, times in times_ms.items()}
    print(f"{stride / 1e6:.2f} MB experts in {flash.max_request_bytes // 1024} KiB requests, {flash.queue_depth} in flight; "
          "median ms: " + ", ".join(f"{count}: {value:.3f}" for count, value in median.items())
          + f"; fixed cost per step 2*T(1) - T(2) = {2 * median[1] - median[2]:.3f} ms")


if __name__ == "__main__":
    main()
