"""The page-cache check (cosmosim.host.pagecache_check) on this kernel: with no limit and MADV_RANDOM, the
kernel reads each touched page once, exactly as the model says. Skips where the temporary folder is not
on a block device (tmpfs pages never come from storage)."""

import numpy as np
import pytest

from cosmosim.device.gguf_layout import GgufLayout
from cosmosim.host.pagecache_check import PAGE_BYTES, check_page_cache, device_read_ahead_bytes, touch_plan
from cosmosim.inputs.arch import Architecture
from cosmosim.inputs.synthetic import sticky_trace
from cosmosim.scenario.build import prepare
from cosmosim.scenario.settings import RunConfig

ARCH = Architecture(name="pagecache-small", n_layers=4, d_model=256, n_heads=4, n_kv_heads=2, vocab_size=1000,
                    ffn_hidden=512, n_experts=8, top_k=2, wd_rank=None)


@pytest.fixture(scope="module")
def trace():
    return sticky_trace(n_tokens=512, n_layers=ARCH.n_moe_layers, seq_len=64, stay=0.3, seed=2)


def distinct_pages(trace) -> int:
    scenario = prepare("wearable", trace, ARCH, RunConfig(weight_bits=4, tokens=120))
    plan = touch_plan(GgufLayout(ARCH, 4), scenario.workload, scenario.costs.step_layers)
    touched = {page for access in plan for start, end in access for page in range(start // PAGE_BYTES, (end - 1) // PAGE_BYTES + 1)}
    return len(touched)


def test_the_plan_touches_each_step_in_the_simulators_order(trace):
    scenario = prepare("wearable", trace, ARCH, RunConfig(weight_bits=4, tokens=120))
    layout, workload = GgufLayout(ARCH, 4), scenario.workload
    plan = touch_plan(layout, workload, scenario.costs.step_layers)
    passes = int(np.sum(workload.step_layer == ARCH.n_moe_layers - 1))
    assert len(plan) == workload.step_layer.size + workload.access_key.size + passes
    assert plan[0] == layout.nonexpert_extents(0)  # the first step's resident tensors, then its experts
    assert plan[1] == layout.expert_extents(0, int(workload.access_key[0]))


def test_unlimited_random_advice_reads_every_touched_page_once(trace, tmp_path):
    _, note = device_read_ahead_bytes(tmp_path)
    if note:
        pytest.skip(f"{note}: the check needs a file on a block device")
    (case,) = check_page_cache(trace, arch=ARCH, tokens=120, cache_mb=None, advices=("random",), folder=tmp_path)
    expected = distinct_pages(trace)
    assert case.model.pages_read == case.model.resident_pages == expected
    assert case.kernel.pages_read == case.kernel.resident_pages == expected, case.to_dict()
    assert case.kernel.faults == expected
