"""Replay: cold reads, the expert file, the torch arithmetic, and a real decode that makes exactly
the simulator's cache decisions without the cache ever changing what it computes."""

import os
import shutil
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch

from cosmosim.engines.replay import storage
from cosmosim.engines.replay.compute import torch_threads
from cosmosim.engines.replay.run import HostModel, replay
from cosmosim.engines.replay.storage import (
    ALIGN,
    ColdReader,
    aligned_buffer,
    parse_mountinfo,
    scratch_folder,
    write_durably,
)
from cosmosim.engines.replay.weights import DTYPE, ExpertLayout, ResidentWeights, scaled_arch, write_expert_file
from cosmosim.errors import InputError
from cosmosim.files import CACHE_DIR_ENV
from cosmosim.inputs.arch import Architecture, get_arch
from cosmosim.inputs.synthetic import sticky_trace
from cosmosim.model.config import ModelConfig
from cosmosim.model.layers import swiglu
from cosmosim.model.llama import Decoder
from cosmosim.model.moe import Experts
from cosmosim.runner import run
from cosmosim.scenario.build import prepare
from cosmosim.scenario.settings import RunConfig

TINY = Architecture(name="tiny", n_layers=4, d_model=64, n_heads=4, n_kv_heads=2, vocab_size=512, ffn_hidden=128,
                    n_experts=8, top_k=2, wd_rank=None)
TINY_WD = Architecture(name="tiny-wd", n_layers=3, d_model=64, n_heads=4, n_kv_heads=4, vocab_size=256, ffn_hidden=96,
                       n_experts=8, top_k=2, wd_rank=16)


def memory_filesystem() -> Path | None:
    """A writable tmpfs folder on this machine, if there is one."""
    shm = Path("/dev/shm")
    if storage.filesystem_type(shm) in storage.MEMORY_FILESYSTEMS and os.access(shm, os.W_OK):
        return shm
    return None


@pytest.fixture(scope="module")
def disk(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("replay")
    if storage.filesystem_type(folder) in storage.MEMORY_FILESYSTEMS:
        pytest.skip("the temporary folder is in RAM: cold reads need a disk")
    return folder


@pytest.fixture(scope="module")
def trace():
    return sticky_trace(n_tokens=640, n_layers=4, seq_len=64, seed=1)


# ----------------------------------------------------------------------------- storage
MOUNTINFO = """22 27 0:21 / /proc rw - proc proc rw
27 1 253:1 / / rw,relatime - ext4 /dev/vda rw
25 24 0:23 / /dev/shm rw - tmpfs tmpfs rw
30 27 0:40 / /home/a\\040b rw - xfs /dev/vdb rw
"""


@pytest.mark.parametrize("path, expected", [("/work/x", "ext4"), ("/dev/shm/f", "tmpfs"), ("/dev/shmx", "ext4"),
                                            ("/home/a b/c", "xfs"), ("/", "ext4")])
def test_parse_mountinfo_takes_the_deepest_mount(path, expected):
    assert parse_mountinfo(MOUNTINFO, path) == expected


@pytest.mark.parametrize("prefer_direct", [True, False])
def test_cold_reader_reads_exact_bytes_in_both_modes(disk, prefer_direct):
    data = np.random.default_rng(0).bytes(16 * ALIGN)
    path = disk / f"cold-{prefer_direct}.bin"
    write_durably(path, iter([data]))
    with ColdReader(path, prefer_direct) as reader:
        assert reader.mode in (("o_direct", "fadvise") if prefer_direct else ("fadvise",))
        buffer = memoryview(aligned_buffer(4 * ALIGN))
        assert reader.read_into(buffer, 8 * ALIGN) == 4 * ALIGN
        assert bytes(buffer) == data[8 * ALIGN:12 * ALIGN]
        assert reader.read_into(buffer, 14 * ALIGN) == 2 * ALIGN  # short only at the end of the file
    path.unlink()


def test_cold_reader_refuses_where_advice_leaves_pages_cached(disk, monkeypatch):
    path = disk / "advice.bin"
    write_durably(path, iter([bytes(4 * ALIGN)]))
    monkeypatch.setattr(storage, "resident_pages", lambda fd, length: 1)
    with pytest.raises(InputError, match="leaves pages cached"):
        ColdReader(path, prefer_direct=False)
    path.unlink()


def test_resident_pages_sees_reads_and_dropped_pages(disk):
    path = disk / "resident.bin"
    write_durably(path, iter([bytes(8 * ALIGN)]))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.pread(fd, 8 * ALIGN, 0)
        assert storage.resident_pages(fd, 8 * ALIGN) > 0
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert storage.resident_pages(fd, 8 * ALIGN) == 0
    finally:
        os.close(fd)
        path.unlink()


def test_cold_reader_refuses_a_filesystem_in_ram():
    shm = memory_filesystem()
    if shm is None:
        pytest.skip("no writable tmpfs here")
    with scratch_folder(shm, ALIGN, "test") as folder:
        write_durably(folder / "f.bin", iter([bytes(ALIGN)]))
        with pytest.raises(InputError, match="tmpfs, a filesystem in RAM"):
            ColdReader(folder / "f.bin")


def test_scratch_folder_is_removed_and_refuses_short_disk(tmp_path, monkeypatch):
    with scratch_folder(tmp_path, 1, "test") as folder:
        (folder / "f").write_bytes(b"x")
    assert not folder.exists() and tmp_path.exists()
    with pytest.raises(InputError, match="not an existing folder"):
        with scratch_folder(tmp_path / "missing", 1, "test"):
            pass
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 10 * 2**20))
    with pytest.raises(InputError, match=r"needs 100 MB .* only 10 MB free"):
        with scratch_folder(tmp_path, 10**8, "test"):
            pass
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- weights
@pytest.mark.parametrize("arch", [TINY, TINY_WD, get_arch("wearable-moe"), get_arch("phone-wd")])
def test_layout_matches_the_architecture(arch):
    layout = ExpertLayout.of(arch)
    assert layout.nbytes == arch.expert_bytes(16)
    assert layout.stride % ALIGN == 0 and 0 <= layout.stride - layout.nbytes < ALIGN
    assert layout.file_bytes == arch.n_layers * arch.n_experts * layout.stride


def test_scaled_arch_divides_the_expert_width_only():
    arch = get_arch("wearable-moe")
    assert scaled_arch(arch, 1) is arch
    half = scaled_arch(arch, 2)
    assert half.ffn_hidden == 640 and half.name == "wearable-moe/2"
    assert half.resident_params() == arch.resident_params()
    with pytest.raises(InputError, match="--scale"):
        scaled_arch(arch, 0)
    with pytest.raises(InputError, match="no width"):
        scaled_arch(arch, 5000)
    with pytest.raises(InputError, match="dense"):
        ExpertLayout.of(get_arch("wearable-dense-fa"))


@pytest.mark.parametrize("arch", [TINY, TINY_WD])
def test_expert_file_holds_each_expert_at_its_stride(disk, arch):
    path = disk / f"experts-{arch.name}.bin"
    layout = write_expert_file(path, arch, seed=3)
    assert path.stat().st_size == layout.file_bytes
    key = layout.n_keys - 1
    with ColdReader(path) as reader:
        buffer = aligned_buffer(layout.stride)
        reader.read_into(memoryview(buffer), key * layout.stride)
        matrices = layout.views(buffer, 0)
    assert [tuple(m.shape) for m in matrices] == list(layout.shapes)
    assert all(torch.isfinite(m.float()).all() and m.float().std() > 0 for m in matrices)
    path.unlink()


# ----------------------------------------------------------------------------- arithmetic
@pytest.mark.parametrize("arch", [TINY, TINY_WD])
def test_the_resident_weights_are_the_training_model_without_its_experts(arch):
    model = ResidentWeights.random(arch, seed=0).model
    trained = Decoder(ModelConfig.of(arch)).state_dict()
    assert {name: tuple(t.shape) for name, t in model.state_dict().items()} == {
        name: tuple(t.shape) for name, t in trained.items() if ".ffn.experts." not in name}
    assert sum(p.numel() for p in model.parameters()) == arch.resident_params()
    assert {p.dtype for p in model.parameters()} == {DTYPE}
    assert sum(p.numel() for p in model.parameters()) * DTYPE.itemsize == ResidentWeights.nbytes_of(arch)


@pytest.mark.parametrize("arch", [TINY, TINY_WD])
def test_an_expert_streamed_from_its_file_layout_computes_what_the_models_expert_bank_does(arch):
    """The file stores each matrix [out, in]; replay computes from transposed views of a cache slot
    what the training model's Experts compute from their [in, out] parameters."""
    torch.manual_seed(0)
    bank = Experts(ModelConfig.of(arch), std=0.1, out_std=0.1).to(DTYPE)
    layout, expert = ExpertLayout.of(arch), 5
    buffer = aligned_buffer(layout.stride)
    stored = [factor.T for name in ("w_gate", "w_up", "w_down") for factor in getattr(bank, name).factors(expert)]
    for view, matrix in zip(layout.views(buffer, 0), stored, strict=True):
        view.copy_(matrix)  # the shapes must agree too
    x = torch.randn(3, arch.d_model).to(DTYPE)
    ids, gates = torch.tensor([[expert, 0]] * 3), torch.tensor([[1.0, 0.0]] * 3, dtype=DTYPE)
    with torch.no_grad():
        torch.testing.assert_close(swiglu(x, *layout.factors(buffer, 0)), bank(x, ids, gates))


# ----------------------------------------------------------------------------- the decode
POLICY_CASES = [("lru", 12), ("lru", 2), ("lfu", 5), ("belady", 3), ("pinned", 9), ("kactive", None)]


def test_replay_makes_the_simulators_cache_decisions_and_the_cache_never_changes_the_output(disk, trace):
    generated = []
    with torch_threads(1), HostModel(TINY, disk, seed=1) as model:
        for policy, cache in POLICY_CASES:
            config = RunConfig(policy=policy, cache_experts=cache, tokens=100)
            scenario = prepare("wearable", trace, TINY, config)
            records = model.run(scenario)
            simulated = run("wearable", trace, TINY, config)["accesses"]
            assert records.outcomes == {"hit": simulated["hit"], "miss": simulated["miss"],
                                        "prefill_hit": simulated["prefill"] - simulated["prefill_miss"],
                                        "prefill_miss": simulated["prefill_miss"]}, policy
            misses = records.outcomes["miss"] + records.outcomes["prefill_miss"]
            assert records.read_bytes == misses * model.layout.stride
            assert len(records.decode_latency_s) == scenario.workload.n_decode_tokens
            generated.append(records.generated)
    # A cache of 2 entries evicts experts of a prefill step before they compute: still the same tokens.
    assert all(tokens == generated[0] for tokens in generated)
    assert list(disk.glob("cosmosim-*")) == []


def test_replay_summary_and_cleanup(disk, trace):
    messages = []
    result = replay("wearable", trace, TINY_WD, RunConfig(policy="lru", cache_experts=10, tokens=40), directory=disk,
                    threads=1, progress=messages.append)
    assert result["engine"] == "replay" and result["read_mode"] in ("o_direct", "fadvise")
    assert result["tpot_ms"]["mean"] > 0 and len(result["tpot_ms_per_token"]) == result["inputs"]["decode_tokens"]
    assert 0 <= result["hit_rate"] <= 1 and result["threads"] == 1 and result["dtype"] == "bfloat16"
    assert any("writing" in m for m in messages) and list(disk.glob("cosmosim-*")) == []
    # The measured parts are disjoint intervals of each token's pass, so they add up to its latency.
    parts = result["breakdown"]["time_ms_per_token"]
    assert set(parts) == {"attention_router", "expert_compute", "flash_wait", "lm_head", "bookkeeping"}
    assert all(value >= 0 for value in parts.values()) and parts["expert_compute"] > 0
    assert sum(parts.values()) == pytest.approx(result["tpot_ms"]["mean"], rel=1e-9)


@pytest.mark.parametrize("config, message", [
    (RunConfig(prefetch="oracle", cache_experts=8), "--prefetch oracle"),
    (RunConfig(weight_bits=8, cache_experts=8), "8-bit: replay runs bfloat16 weights"),
    (RunConfig(prompt_tokens=20, context_len=16, cache_experts=8), "--prompt-tokens: expected <= --context-len"),
])
def test_replay_refuses_what_it_cannot_run(disk, trace, config, message):
    with pytest.raises(InputError, match=message):
        replay("wearable", trace, TINY, config, directory=disk)
    assert list(disk.glob("cosmosim-*")) == []


def test_replay_refuses_when_disk_is_short(disk, trace, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 2**20))
    with pytest.raises(InputError, match=r"expert file \(--scale makes it smaller\) needs"):
        replay("wearable", trace, TINY, RunConfig(cache_experts=8), directory=disk)


def test_host_profile_must_be_calibrated_first(trace, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    with pytest.raises(InputError, match="run `cosmosim calibrate` first"):
        replay("host", trace, TINY, RunConfig(cache_experts=8))
