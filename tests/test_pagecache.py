"""The GGUF layout and the page-cache model: offsets, readahead and the two lists worked by hand, and
the cache against two plain reference implementations written here."""

import math
import random

import pytest

from cosmosim.device.gguf_layout import GgufLayout
from cosmosim.device.pagecache import ACTIVE, ACTIVE_REF, INACTIVE_REF, PageCache
from cosmosim.inputs.arch import Architecture, get_arch

PAGE = 4096


def tiny(**changes) -> Architecture:
    """d 8, 2 heads of 4 (q and o: 8 x 8), 1 KV head (k, v: 8 x 4), vocab 10, 4 experts of width 16."""
    fields = {"name": "tiny", "n_layers": 2, "d_model": 8, "n_heads": 2, "n_kv_heads": 1, "vocab_size": 10,
              "ffn_hidden": 16, "n_experts": 4, "top_k": 2, "wd_rank": None}
    return Architecture(**{**fields, **changes})


def pages(first: int, last: int) -> tuple[int, int]:
    """The byte extent of pages first..last inclusive."""
    return (first * PAGE, (last + 1) * PAGE)


# ------------------------------------------------------------------------------ layout


def test_the_offsets_of_one_expert_by_hand():
    """16-bit weights, 2 bytes a parameter, each tensor at the next multiple of 32: token_embd 160 B at
    0; blk.0 attn_norm 16 B at 160; attn_q 128 B at 192; attn_k 64 at 320; attn_v 64 at 384; attn_output
    128 at 448; ffn_norm 16 at 576; ffn_gate_inp 64 at 608; then the stacked experts, 4 x 256 B each:
    ffn_gate_exps at 672, ffn_down_exps at 1696, ffn_up_exps at 2720."""
    layout = GgufLayout(tiny(), 16)
    assert [(t.name, t.start, t.nbytes) for t in layout.tensors[:11]] == [
        ("token_embd.weight", 0, 160), ("blk.0.attn_norm.weight", 160, 16), ("blk.0.attn_q.weight", 192, 128),
        ("blk.0.attn_k.weight", 320, 64), ("blk.0.attn_v.weight", 384, 64), ("blk.0.attn_output.weight", 448, 128),
        ("blk.0.ffn_norm.weight", 576, 16), ("blk.0.ffn_gate_inp.weight", 608, 64),
        ("blk.0.ffn_gate_exps.weight", 672, 1024), ("blk.0.ffn_down_exps.weight", 1696, 1024),
        ("blk.0.ffn_up_exps.weight", 2720, 1024)]
    assert layout.expert_extents(0, 1) == ((928, 1184), (1952, 2208), (2976, 3232))
    assert layout.nonexpert_extents(0) == ((160, 176), (192, 320), (320, 384), (384, 448), (448, 576),
                                           (576, 592), (608, 672))
    # blk.1 repeats from 3744 (each layer spans 3744 - 160 = 3584 bytes); then output_norm and output.
    assert layout.expert_extents(1, 0) == ((3744 + 512, 3744 + 768), (3744 + 1536, 3744 + 1792),
                                           (3744 + 2560, 3744 + 2816))
    assert layout.head_extents() == ((7328, 7344), (7360, 7520))
    assert layout.file_bytes == 7520


def test_a_header_shifts_every_tensor_to_the_next_aligned_offset():
    plain, headed = GgufLayout(tiny(), 16), GgufLayout(tiny(), 16, header_bytes=100)
    assert headed.data_offset == 128
    assert [t.start for t in headed.tensors] == [t.start + 128 for t in plain.tensors]
    assert headed.file_bytes == plain.file_bytes + 128


def check_sums(arch: Architecture, bits: int) -> None:
    """One expert's slices add up to the counter's expert bytes and the other tensors to its resident
    bytes (every count here is even, so no per-tensor rounding); the rest is alignment padding."""
    layout = GgufLayout(arch, bits)
    for layer in arch.moe_layers:
        for expert in (0, arch.n_experts - 1):
            assert sum(end - start for start, end in layout.expert_extents(layer, expert)) == arch.expert_bytes(bits)
    resident = sum(end - start for layer in range(arch.n_layers) for start, end in layout.nonexpert_extents(layer))
    resident += layout.tensor("token_embd.weight").nbytes + layout.tensor("output_norm.weight").nbytes
    resident += 0 if arch.tied_embeddings else layout.tensor("output.weight").nbytes
    assert resident == arch.resident_bytes(bits)
    stored = sum(t.nbytes for t in layout.tensors)
    assert stored == resident + arch.total_experts * arch.expert_bytes(bits)
    assert all(t.start % 32 == 0 for t in layout.tensors)
    assert 0 <= layout.file_bytes - stored < 32 * len(layout.tensors)


@pytest.mark.parametrize("bits", [16, 8, 4])
@pytest.mark.parametrize("changes", [
    {}, {"wd_rank": 2}, {"tied_embeddings": True},
    {"n_layers": 3, "dense_layers": (0,), "dense_ffn_hidden": 32, "n_shared_experts": 2, "shared_ffn_hidden": 8},
    {"n_experts": 1, "top_k": 1},  # dense
], ids=["moe", "wd", "tied", "dense-layer+shared", "dense"])
def test_the_layout_sums_agree_with_the_counter(bits, changes):
    check_sums(tiny(**changes), bits)


def test_a_wd_expert_is_six_factor_slices():
    """Rank 2, 16 bits: gate d x r = 16 params (32 B) and r x f = 32 (64 B); down f x r (64 B) and r x d
    (32 B); up as gate: 288 B in all, 3 x r x (d + f) x 2."""
    layout = GgufLayout(tiny(wd_rank=2), 16)
    extents = layout.expert_extents(0, 1)
    assert [end - start for start, end in extents] == [32, 64, 64, 32, 32, 64]
    assert extents[0][0] == layout.tensor("blk.0.ffn_gate_exps_a.weight").start + 32
    assert extents[5][0] == layout.tensor("blk.0.ffn_up_exps_b.weight").start + 64


def test_shared_experts_dense_layers_and_tied_heads_have_their_tensors():
    arch = tiny(n_layers=3, dense_layers=(0,), dense_ffn_hidden=32, n_shared_experts=2, shared_ffn_hidden=8)
    layout = GgufLayout(arch, 16)
    assert layout.tensor("blk.0.ffn_gate.weight").nbytes == 2 * 8 * 32
    assert layout.tensor("blk.1.ffn_down_shexp.weight").nbytes == 2 * 8 * (2 * 8)  # the two concatenated
    with pytest.raises(ValueError, match="layer 0 .* has no routed experts"):
        layout.expert_extents(0, 0)
    with pytest.raises(ValueError, match="expert must be in"):
        layout.expert_extents(1, 4)
    tied = GgufLayout(tiny(tied_embeddings=True), 16)
    assert tied.head_extents()[1] == tied.tensor("token_embd.weight").extent
    with pytest.raises(ValueError, match="no tensor 'output.weight'"):
        tied.tensor("output.weight")


# ------------------------------------------------------------------------------ readahead


def test_a_fault_reads_the_read_around_window_clipped_to_the_file():
    """128 KiB of 4 KiB pages: 32 pages from the faulting page - 16."""
    assert PageCache(100, 100).readahead_pages == 32 and PageCache(100, 100, page_bytes=16384).readahead_pages == 8
    cache = PageCache(100, 100)
    assert cache.access([(50 * PAGE, 50 * PAGE + 1)]) == [(34, 32)]
    assert cache.access([pages(70, 70)]) == [(66, 20)]  # window 54..85; 54..65 are resident
    assert cache.access([pages(3, 3)]) == [(0, 32)]  # window starts at 0 ...
    assert cache.access([pages(95, 95)]) == [(86, 14)]  # ... and ends at the file's last page (79..99)
    assert PageCache(100, 100).access([pages(95, 95)]) == [(79, 21)]
    assert cache.stats.faults == 4 and cache.stats.pages_read == 32 + 20 + 32 + 14


def test_resident_pages_split_a_window_into_runs():
    """An 8-page window around the fault at 24 is 20..27, and 20..23 are resident; a one-page WILLNEED
    makes page 10 resident, so the fault at 11 (window 7..14) reads around it in two runs."""
    cache = PageCache(100, 100, readahead_pages=8)
    assert cache.access([pages(20, 20)]) == [(16, 8)]
    assert cache.access([pages(22, 26)]) == [(24, 4)]
    island = PageCache(100, 100, readahead_pages=8, advice="willneed", willneed_max_pages=1)
    assert island.access([pages(10, 13)]) == [(10, 1), (7, 3), (11, 4)]


def test_random_advice_reads_only_the_faulting_page():
    cache = PageCache(100, 100, advice="random")
    assert cache.access([pages(10, 12)]) == [(10, 1), (11, 1), (12, 1)]
    assert cache.stats.faults == 3 and cache.stats.reads == 3 and cache.bytes_read == 3 * PAGE


def test_willneed_reads_each_extent_as_one_run_before_touching():
    cache = PageCache(100, 100, advice="willneed")
    assert cache.access([pages(10, 19)]) == [(10, 10)]
    assert cache.stats.faults == 0
    cache = PageCache(100, 100, advice="willneed")
    cache.access([pages(15, 15)])
    assert cache.access([pages(10, 19), pages(40, 41)]) == [(10, 5), (16, 4), (40, 2)]


def test_a_capped_willneed_leaves_the_rest_to_read_around():
    """One MADV_WILLNEED call reads at most willneed_max_pages (force_page_cache_ra); page 14 then
    faults, and its window 0..31 reads what is missing of it."""
    cache = PageCache(100, 100, advice="willneed", willneed_max_pages=4)
    assert cache.access([pages(10, 19)]) == [(10, 4), (0, 10), (14, 18)]
    assert cache.stats.faults == 1


def test_a_resident_extent_is_a_hit_with_no_reads():
    cache = PageCache(100, 100)
    cache.access([pages(10, 12)])
    assert cache.access([pages(10, 12)]) == []
    assert (cache.stats.pages_touched, cache.stats.hits, cache.stats.misses) == (6, 3, 3)


# ------------------------------------------------------------------------------ the two lists


def test_a_page_used_twice_survives_a_scan_of_pages_used_once():
    """Capacity 4. Page 0, accessed twice, is active; the scan 1..10 cycles through the inactive list
    (3 slots) and evicts 1..7. A plain LRU would have evicted page 0 at the fourth scanned page."""
    cache = PageCache(20, 4, advice="random")
    for page in [0, 0, *range(1, 11)]:
        cache.access([pages(page, page)])
    assert cache.active == (0,) and cache.inactive == (8, 9, 10)
    assert cache.stats.evictions == 7


def test_the_active_list_is_demoted_when_the_inactive_one_is_low():
    """Under 1 GiB the ratio is 1: inactive is low when smaller than active. 0, 1, 2 active (0 used again
    while active), 3 inactive: making room for 4 demotes 0 to the inactive head (inactive 3, 0: no
    longer low) and evicts 3. Page 0 kept its referenced mark, so one more access re-activates it."""
    cache = PageCache(20, 4, advice="random")
    for page in [0, 0, 1, 1, 2, 2, 0, 3, 4]:
        cache.access([pages(page, page)])
    assert cache.active == (1, 2) and cache.inactive == (0, 4)
    assert cache.state(0) == INACTIVE_REF and cache.state(3) == 0
    cache.access([pages(0, 0)])
    assert cache.active == (1, 2, 0) and cache.state(0) == ACTIVE
    cache.access([pages(1, 1)])
    assert cache.state(1) == ACTIVE_REF


@pytest.mark.parametrize("page_bytes, active, inactive", [
    (PAGE, (2, 3, 4, 5), (7, 0, 1, 8)),  # 32 KiB: ratio 1, two pages demoted before 6 is evicted
    (256 << 20, (0, 1, 2, 3, 4, 5), (7, 8)),  # 2 GiB: ratio int_sqrt(20) = 4, 2 x 4 >= 6: not low
])
def test_the_inactive_ratio_grows_with_the_square_root_of_the_lists(page_bytes, active, inactive):
    cache = PageCache(20, 8, page_bytes=page_bytes, advice="random")
    for page in [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 7, 8]:
        cache.access([(page * page_bytes, page * page_bytes + 1)])
    assert cache.active == active and cache.inactive == inactive


def test_an_access_larger_than_the_cache_is_an_error():
    with pytest.raises(ValueError, match=r"touches 4 pages \(16384 bytes\).*holds 3 pages \(12288 bytes\)"):
        PageCache(100, 3).access([pages(0, 3)])
    with pytest.raises(ValueError, match="inside the 409600-byte file"):
        PageCache(100, 3).access([(0, 101 * PAGE)])


def test_an_access_that_fills_the_cache_keeps_its_pages_and_cuts_readahead():
    """Capacity 8 = the access's pages 40..47. The fault at 40 reads its window from 24 until the cache
    is full of that window (24..31: readahead never evicts what this access read, so 32 ends it), then
    40 itself in the place of 24; each later page evicts one more of 25..31 and is read alone."""
    cache = PageCache(100, 8)
    assert cache.access([pages(40, 47)]) == [(24, 8), *((page, 1) for page in range(40, 48))]
    assert cache.inactive == tuple(range(40, 48)) and cache.stats.evictions == 8
    assert cache.access([pages(40, 47)]) == [] and cache.active == tuple(range(40, 48))


# ------------------------------------------------------------------------------ against references


class ReferenceTwoLists:
    """The documented policy, plainly: lists of pages (tail first), pinned pages skipped where they lie."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.inactive, self.active, self.referenced = capacity, [], [], {}

    def demote(self) -> None:
        self.inactive.append(self.active.pop(0))

    def evict(self, pinned: set[int]) -> None:
        while True:
            while len(self.inactive) < len(self.active):  # inactive_is_low under 1 GiB
                self.demote()
            victim = next((page for page in self.inactive if page not in pinned), None)
            if victim is not None:
                self.inactive.remove(victim)
                return
            self.demote()

    def access(self, touched: list[int]) -> list[int]:
        read = []
        for page in touched:
            if page not in self.inactive and page not in self.active:
                if len(self.inactive) + len(self.active) == self.capacity:
                    self.evict(set(touched))
                self.inactive.append(page)
                self.referenced[page] = False
                read.append(page)
            if page in self.inactive and self.referenced[page]:
                self.inactive.remove(page)
                self.active.append(page)
                self.referenced[page] = False
            else:
                self.referenced[page] = True
        return read


def random_extents(rng: random.Random, n_pages: int) -> list[tuple[int, int]]:
    """One or two ranges of 1 to 4 pages, possibly overlapping: at most 8 distinct pages."""
    starts = [rng.randrange(n_pages - 4) for _ in range(rng.randint(1, 2))]
    return [pages(start, start + rng.randint(0, 3)) for start in starts]


def touched_pages(extents: list[tuple[int, int]]) -> list[int]:
    return list(dict.fromkeys(page for start, end in extents for page in range(start // PAGE, end // PAGE)))


@pytest.mark.parametrize("seed", range(5))
def test_random_advice_matches_a_plain_two_list_reference(seed):
    rng = random.Random(seed)
    cache, reference = PageCache(30, 8, advice="random"), ReferenceTwoLists(8)
    for _ in range(400):
        extents = random_extents(rng, 30)
        runs = cache.access(extents)
        assert [first for first, n in runs] == reference.access(touched_pages(extents))
        assert all(n == 1 for _, n in runs)
        assert cache.inactive == tuple(reference.inactive) and cache.active == tuple(reference.active)
    assert cache.stats.evictions > 100


@pytest.mark.parametrize("seed", range(3))
def test_read_around_matches_a_set_of_windows_when_nothing_is_evicted(seed):
    rng = random.Random(seed)
    cache, resident = PageCache(200, 200), set()
    for _ in range(100):
        extents = random_extents(rng, 200)
        expected = []
        for page in touched_pages(extents):
            if page not in resident:
                start = max(0, page - 16)
                window = [q for q in range(start, min(200, start + 32)) if q not in resident]
                resident.update(window)
                expected += window
        assert [first + i for first, n in cache.access(extents) for i in range(n)] == expected
    assert cache.n_resident == len(resident)


def test_an_expert_of_a_real_layout_reads_its_own_pages():
    """wearable-moe at 4 bits: an expert is 829,440 bytes in three slices; under "random" its first access
    reads exactly the pages its slices cover, and the second nothing."""
    arch = get_arch("wearable-moe")
    layout = GgufLayout(arch, 4, header_bytes=5_000_000)
    extents = layout.expert_extents(arch.moe_layers[3], 5)
    covered = sum((end - 1) // PAGE - start // PAGE + 1 for start, end in extents)
    assert covered >= math.ceil(arch.expert_bytes(4) / PAGE)
    cache = PageCache(math.ceil(layout.file_bytes / PAGE), 1000, advice="random")
    cache.access(extents)
    assert cache.stats.pages_read == covered and cache.access(extents) == []
    normal = PageCache(math.ceil(layout.file_bytes / PAGE), 1000)
    normal.access(extents)
    assert normal.stats.pages_read > covered == normal.stats.misses  # read-around reaches into the neighbours
