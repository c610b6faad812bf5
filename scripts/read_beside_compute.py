"""Does a hit expert's compute slow the miss read in flight beside it? Times one expert read alone and
one with an expert's SwiGLU computing while it is in flight (as replay computes a layer's hit before
waiting for its miss), alternately, on replay's expert file (1 torch thread).

    python scripts/read_beside_compute.py [--arch wearable-moe] [--reads 150]

The flash model hides the whole compute behind the read: wait after compute = read alone - compute.
Needs a calibrated host profile and an idle machine: it times real reads.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from cosmosim.engines.replay.compute import torch_threads
from cosmosim.engines.replay.run import HostModel
from cosmosim.engines.replay.storage import aligned_buffer, submit_read
from cosmosim.inputs.arch import get_arch
from cosmosim.inputs.profiles import host_profile_path, load_profile
from cosmosim.model.layers import swiglu

GAP_S = 0.002  # busy CPU work between reads, as calibrate's step reads have


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="wearable-moe")
    parser.add_argument("--reads", type=int, default=150)
    args = parser.parse_args()
    arch, flash = get_arch(args.arch), load_profile(host_profile_path()).flash
    rng, clock = np.random.default_rng(0), time.perf_counter
    times = {"read alone": [], "compute alone": [], "read with compute": [], "compute beside the read": [],
             "wait after compute": []}
    with torch_threads(1), HostModel(arch, None) as model, torch.inference_mode():
        stride = model.layout.stride
        slots = aligned_buffer(2 * stride)
        torch.frombuffer(slots, dtype=torch.uint8).fill_(0)
        target, hit = memoryview(slots)[:stride], model.layout.factors(slots, 1)
        h_TD = torch.randn(1, arch.d_model, dtype=torch.bfloat16)
        with ThreadPoolExecutor(flash.queue_depth) as pool:
            for index in range(args.reads):
                key = int(rng.integers(arch.n_layers * arch.n_experts))
                start = clock()
                reads = submit_read(pool, model.reader, target, key * stride, flash.max_request_bytes)
                if index % 2:
                    computing = clock()
                    swiglu(h_TD, *hit)
                    computed = clock()
                    for read in reads:
                        read.result()
                    times["compute beside the read"].append(computed - computing)
                    times["wait after compute"].append(clock() - computed)
                    times["read with compute"].append(clock() - start)
                else:
                    for read in reads:
                        read.result()
                    times["read alone"].append(clock() - start)
                    computing = clock()
                    swiglu(h_TD, *hit)
                    times["compute alone"].append(clock() - computing)
                done = clock()
                while clock() - done < GAP_S:
                    pass
    median = {name: float(np.median(values)) * 1e3 for name, values in times.items()}
    print(", ".join(f"{name} {value:.3f} ms" for name, value in median.items()))
    print(f"the model's wait after compute: {median['read alone'] - median['compute alone']:.3f} ms")


if __name__ == "__main__":
    main()
