"""Shared fixtures: a sample corpus, a tiny hand-worked device and architecture whose costs
the simulator tests can add up by hand, and validate's host probe held at a profile's figures."""

from pathlib import Path

import pytest

import cosmosim.host.probe
from cosmosim.data.corpus import assemble_corpus
from cosmosim.data.sources import read_text_folder
from cosmosim.inputs.arch import Architecture
from cosmosim.inputs.profiles import DeviceProfile, profile_from_dict

SAMPLE_DIR = Path(__file__).parent / "data" / "sample"


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory) -> Path:
    """A corpus folder built from tests/data/sample: 4 domains, vocab 512, val/trace ~4 KB each."""
    corpus_dir = tmp_path_factory.mktemp("sample_corpus")
    assemble_corpus(
        read_text_folder(SAMPLE_DIR),
        corpus_dir,
        vocab_size=512,
        seed=0,
        holdout_fraction=0.1,
        min_holdout_chars=4_000,
        strict_vocab_range=False,
    )
    return corpus_dir


def make_tiny_profile(queue_depth: int = 1, latency_us: float = 100.0, mb_per_s: float = 100.0,
                      miss_overhead_us: float | None = None) -> DeviceProfile:
    return profile_from_dict(make_tiny_profile_dict(queue_depth, latency_us, mb_per_s, miss_overhead_us), source="tiny.toml")


def make_tiny_profile_dict(queue_depth: int = 1, latency_us: float = 100.0, mb_per_s: float = 100.0,
                           miss_overhead_us: float | None = None) -> dict:
    """The tiny profile as its TOML would parse: for tests that add or break a section. `miss_overhead_us`:
    None leaves the optional key out."""
    cite = lambda keys: {key: "test value" for key in keys}  # noqa: E731
    data = {
        "name": "tiny", "description": "hand-worked test device",
        "flash": {"bandwidth_curve": [{"read_kib": 4, "mb_per_s": mb_per_s}, {"read_kib": 1024, "mb_per_s": mb_per_s}],
                  "latency_us": latency_us, "queue_depth": queue_depth, "max_request_kib": 1024,
                  "sources": cite(["bandwidth_curve", "latency_us", "queue_depth", "max_request_kib"])},
        "dram": {"capacity_gib": 1, "app_budget_gib": 0.5, "bandwidth_gb_per_s": 1.0,
                 "sources": cite(["capacity_gib", "app_budget_gib", "bandwidth_gb_per_s"])},
        "compute": {"gemv_gflops": 1.0, "gemm_gflops": 2.0, "layer_overhead_us": 10,
                    "sources": cite(["gemv_gflops", "gemm_gflops", "layer_overhead_us"])},
        "energy": {"flash_pj_per_byte": 100, "dram_pj_per_bit": 10, "pj_per_flop": 1, "idle_mw": 50,
                   "sources": cite(["flash_pj_per_byte", "dram_pj_per_bit", "pj_per_flop", "idle_mw"])},
    }
    if miss_overhead_us is not None:
        data["compute"]["miss_overhead_us"] = miss_overhead_us
        data["compute"]["sources"]["miss_overhead_us"] = "test value"
    return data


def make_tiny_arch(n_layers: int = 1, n_experts: int = 2, top_k: int = 1) -> Architecture:
    return Architecture(name="tiny", n_layers=n_layers, d_model=64, n_heads=2, n_kv_heads=2, vocab_size=32,
                        ffn_hidden=128, n_experts=n_experts, top_k=top_k, wd_rank=None)


@pytest.fixture(scope="session")
def tiny_profile():
    """`tiny_profile(queue_depth=1, latency_us=100, mb_per_s=100, miss_overhead_us=None)`: a flat-bandwidth
    device, 1 GFLOP/s."""
    return make_tiny_profile


@pytest.fixture(scope="session")
def tiny_profile_dict():
    """`tiny_profile_dict(queue_depth=1, latency_us=100, mb_per_s=100)`: the tiny profile before parsing."""
    return make_tiny_profile_dict


@pytest.fixture(scope="session")
def tiny_arch():
    """`tiny_arch(n_layers=1, n_experts=2, top_k=1)`: d_model 64, vocab 32, experts of width 128."""
    return make_tiny_arch


@pytest.fixture
def cli(capsys):
    """`cli("run", "--profile", ...)` -> (exit code, stdout, stderr) of the command line, run in process."""
    from cosmosim.cli import main

    def invoke(*args) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as stop:
            main([str(arg) for arg in args])
        out, err = capsys.readouterr()
        return stop.value.code, out, err
    return invoke


def hold_probe_at(monkeypatch, profile: DeviceProfile, spread_per_seed: float = 0.0) -> None:
    """validate's host probe measures `profile`'s own figures (deterministic): the flash read rate at
    each request size, scaled by 1 + spread_per_seed x (seed - 101) to give the repeats a spread, and
    the profile's GEMV throughput."""
    def read_rate(reader, file_bytes, read_bytes, depth, seconds, seed):
        return profile.flash.bandwidth_bytes_per_s(read_bytes) * (1 + spread_per_seed * (seed - 101))

    monkeypatch.setattr(cosmosim.host.probe, "_read_rate", read_rate)
    monkeypatch.setattr(cosmosim.host.probe, "gemv_rates",
                        lambda arch, effort, repeats: [profile.compute.gemv_flops_per_s] * repeats)
