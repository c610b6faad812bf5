"""--loader mmap worked by hand: which pages the page faults read (with and without read-around), what the
first request's TTFT is when every fault is read in turn, and the settings it refuses."""

import dataclasses

import numpy as np
import pytest

from cosmosim.device.gguf_layout import GgufLayout
from cosmosim.engines.des import Simulation
from cosmosim.errors import InputError
from cosmosim.inputs.profiles import PageCacheSpec
from cosmosim.inputs.synthetic import sticky_trace
from cosmosim.runner import run
from cosmosim.scenario.build import prepare
from cosmosim.scenario.settings import RunConfig

PAGE = 4096


@pytest.fixture(scope="module")
def trace():
    return sticky_trace(n_tokens=1024, n_layers=2, seq_len=128, seed=9)


def mapped(tiny_profile, size_bytes: int, **profile_changes):
    """The tiny device (100 us + 4096 B / 100 MB/s = 140.96 us a page, queue depth 1) with a page cache."""
    return dataclasses.replace(tiny_profile(**profile_changes), page_cache=PageCacheSpec(size_bytes=size_bytes))


def touches_in_order(scenario, layout: GgufLayout) -> list[tuple]:
    """The extents the decoder touches, in the order it touches them: each step's layer tensors then its
    experts in gate order, and the head after each pass's last layer."""
    workload = scenario.workload
    touches = []
    for step, (layer, lo, hi) in enumerate(zip(workload.step_layer, workload.step_offsets[:-1],
                                               workload.step_offsets[1:])):
        touches.append(layout.nonexpert_extents(int(layer)))
        touches += [layout.expert_extents(int(layer), int(key) - int(layer) * workload.n_experts)
                    for key in workload.access_key[lo:hi]]
        if layer == workload.n_layers - 1:
            touches.append(layout.head_extents())
    return touches


def pages_of(extents) -> list[int]:
    return list(dict.fromkeys(page for start, end in extents for page in range(start // PAGE, (end - 1) // PAGE + 1)))


def simulation(tiny_profile, tiny_arch, trace, advice, size_bytes=1 << 20, **changes):
    arch = tiny_arch(n_layers=2, n_experts=8, top_k=2)
    scenario = prepare(mapped(tiny_profile, size_bytes, **changes), trace, arch,
                       RunConfig(loader="mmap", madvise=advice, tokens=512))
    return scenario, Simulation(scenario)


def test_random_advice_reads_each_touched_page_once_when_the_file_fits(tiny_profile, tiny_arch, trace):
    scenario, sim = simulation(tiny_profile, tiny_arch, trace, "random")
    records = sim.run()
    layout = GgufLayout(scenario.arch, 16)
    touched = {page for extents in touches_in_order(scenario, layout) for page in pages_of(extents)}
    assert sim.flash.stats.reads == len(touched)  # one 4 KiB fault each, none evicted (1 MiB > the file)
    assert sim.flash.stats.bytes == len(touched) * PAGE
    assert records.flash_busy_s == pytest.approx(len(touched) * PAGE / 100e6, rel=1e-12)
    assert len(touched) < -(-layout.file_bytes // PAGE)  # the embedding and unused experts stay on flash


def test_read_around_reads_the_windows_a_plain_set_predicts(tiny_profile, tiny_arch, trace):
    """normal advice: a fault at page p reads the missing pages of [max(0, p - 16), +32) within the file."""
    scenario, sim = simulation(tiny_profile, tiny_arch, trace, "normal")
    sim.run()
    layout = GgufLayout(scenario.arch, 16)
    n_pages, resident, read = -(-layout.file_bytes // PAGE), set(), 0
    for extents in touches_in_order(scenario, layout):
        for page in pages_of(extents):
            if page not in resident:
                start = max(0, page - 16)
                window = [q for q in range(start, min(n_pages, start + 32)) if q not in resident]
                resident.update(window)
                read += len(window)
    assert sim.flash.stats.bytes == read * PAGE
    assert sim.weights.cache.stats.evictions == 0


def test_the_first_ttft_is_every_fault_in_turn_plus_the_compute(tiny_profile, tiny_arch, trace):
    """Faults block the thread: under random advice the first prefill pass waits for each of its pages in turn
    (140.96 us each) and computes nothing meanwhile, so its TTFT is the two sums."""
    scenario, sim = simulation(tiny_profile, tiny_arch, trace, "random")
    records = sim.run()
    workload, costs, layout = scenario.workload, scenario.costs, GgufLayout(scenario.arch, 16)
    first_pass = touches_in_order(scenario, layout)[:2 + int(workload.step_offsets[2])]  # 2 layers, then the head
    first_pass.append(layout.head_extents())
    pages = {page for extents in first_pass for page in pages_of(extents)}
    prompt = int(workload.step_context[0])
    nonexpert = costs.nonexpert_table(0, np.array([prompt])).time_s[0].sum() + 2 * costs.layer_overhead_s
    experts = sum(costs.expert_prefill(int(n)).time_s for n in workload.access_tokens[:workload.step_offsets[2]])
    expected = len(pages) * (100e-6 + PAGE / 100e6) + nonexpert + experts + costs.lm_head.time_s
    assert records.ttft_s[0] == pytest.approx(expected, rel=1e-9)


def test_willneed_reads_the_same_pages_and_overlaps_them(tiny_profile, tiny_arch, trace):
    results = {advice: run(mapped(tiny_profile, 1 << 20, queue_depth=8), trace,
                           tiny_arch(n_layers=2, n_experts=8, top_k=2),
                           RunConfig(loader="mmap", madvise=advice, tokens=512)) for advice in ("random", "willneed")}
    random, willneed = results["random"], results["willneed"]
    assert willneed["flash_mb_per_token"] == pytest.approx(random["flash_mb_per_token"])
    assert willneed["tpot_ms"]["mean"] < random["tpot_ms"]["mean"]


def test_a_small_page_cache_evicts_and_misses(tiny_profile, tiny_arch, trace):
    scenario, sim = simulation(tiny_profile, tiny_arch, trace, "normal", size_bytes=120 * PAGE)
    records = sim.run()
    assert sim.weights.cache.stats.evictions > 0
    assert sim.weights.peak_resident_bytes <= 120 * PAGE
    misses = sum(records.layer_outcomes["miss"])
    assert 0 < misses < records.layer_outcomes["hit"].sum() + records.layer_outcomes["late_hit"].sum() + misses


def test_a_page_cache_smaller_than_one_use_is_refused(tiny_profile, tiny_arch, trace):
    with pytest.raises(InputError, match="cannot hold one use of the weights at once"):
        prepare(mapped(tiny_profile, 4 * PAGE), trace, tiny_arch(n_layers=2, n_experts=8, top_k=2),
                RunConfig(loader="mmap"))


@pytest.mark.parametrize("config, message", [
    (RunConfig(loader="mmap", policy="lfu"), "the kernel's page cache is the expert cache.*drop --policy"),
    (RunConfig(loader="mmap", cache_mb=10.0), "drop --cache-mb"),
    (RunConfig(madvise="random"), "--madvise random: advice on a mapping needs --loader mmap"),
    (RunConfig(loader="ramdisk"), "--loader: expected one of app-cache, mmap"),
    (RunConfig(idle_gap_s=-1.0), "--idle-gap-s: expected a finite number >= 0"),
])
def test_contradictory_settings_get_one_line(tiny_profile, tiny_arch, trace, config, message):
    with pytest.raises(InputError, match=message):
        prepare(mapped(tiny_profile, 1 << 20), trace, tiny_arch(n_layers=2, n_experts=8, top_k=2), config)


def test_the_analytic_engine_refuses_mmap(tiny_profile, tiny_arch, trace):
    with pytest.raises(InputError, match="--loader mmap is not modelled in closed form"):
        run(mapped(tiny_profile, 1 << 20), trace, tiny_arch(n_layers=2, n_experts=8, top_k=2),
            RunConfig(loader="mmap"), engine="analytic")


def test_the_memory_is_the_page_cache_it_filled(tiny_profile, tiny_arch, trace):
    arch = tiny_arch(n_layers=2, n_experts=8, top_k=2)
    result = run(mapped(tiny_profile, 1 << 20), trace, arch, RunConfig(loader="mmap", tokens=512))
    memory, resident = result["memory_mb"], arch.resident_bytes(16) / 1e6
    assert memory["resident_weights"] == pytest.approx(resident)
    assert result["inputs"]["page_cache_mb"] == pytest.approx((1 << 20) / 1e6)
    held = memory["resident_weights"] + memory["expert_cache"]
    assert held <= (1 << 20) / 1e6 and held == pytest.approx(result["peak_dram_mb"] - memory["kv_cache"]
                                                             - memory["activations"])
