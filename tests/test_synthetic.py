"""`synthesize` and `cosmosim trace synth`: synthetic routing with a locality dial (docs/trace-format.md)."""

import numpy as np
import pytest

from cosmosim.cli import main
from cosmosim.errors import InputError
from cosmosim.inputs.locality import expert_usage, exrep
from cosmosim.inputs.synthetic import synthesize
from cosmosim.inputs.trace import load_trace
from cosmosim.provenance import REPOSITORY, sha256_file

SOURCE = REPOSITORY / "traces" / "moe.npz"


@pytest.fixture(scope="module")
def source():
    return load_trace(SOURCE)


def co_occurrence(experts_TLK: np.ndarray, n_experts: int) -> np.ndarray:
    """[L-1, E, E]: share of (token, slot at l, slot at l+1) pairs with expert a at l and b at l + 1."""
    n_tokens, n_layers, top_k = experts_TLK.shape
    pairs = experts_TLK[:, :-1, :, None].astype(np.int64) * n_experts + experts_TLK[:, 1:, None, :]
    counts = [np.bincount(pairs[:, layer].ravel(), minlength=n_experts ** 2) for layer in range(n_layers - 1)]
    return np.array(counts).reshape(n_layers - 1, n_experts, n_experts) / (n_tokens * top_k ** 2)


@pytest.mark.parametrize("target", [0.05, 0.2, 0.4, None], ids=["0.05", "0.2", "0.4", "own"])
def test_like_keeps_popularity_and_co_occurrence_and_dials_exrep(source, target):
    trace = synthesize(like=source, exrep_target=target, seed=3)
    wanted = exrep(source.experts, source.positions)[0] if target is None else target
    assert abs(exrep(trace.experts, trace.positions)[0] - wanted) <= 0.01
    usage_l1 = np.abs(expert_usage(trace.experts, 8) - expert_usage(source.experts, 8)).sum(axis=1)
    assert usage_l1.max() <= 0.02
    pair_l1 = np.abs(co_occurrence(trace.experts, 8) - co_occurrence(source.experts, 8)).sum(axis=(1, 2))
    assert pair_l1.max() <= 0.05
    assert trace.experts.shape == source.experts.shape and np.array_equal(trace.positions, source.positions)


def test_deterministic_per_seed_and_says_how_it_was_made(source):
    first, again = (synthesize(like=source, exrep_target=0.3, n_tokens=4000, seq_len=100, seed=1) for _ in range(2))
    other = synthesize(like=source, exrep_target=0.3, n_tokens=4000, seq_len=100, seed=2)
    assert np.array_equal(first.experts, again.experts) and np.array_equal(first.gates, again.gates)
    assert not np.array_equal(first.experts, other.experts)
    assert first.n_tokens == 4000 and len(first.sequences()) == 40
    made = first.meta["synthetic"]
    assert made["like"]["path"] == str(SOURCE) and made["like"]["sha256"] == sha256_file(SOURCE)
    assert made["target_exrep"] == 0.3 and made["measured_exrep"] == pytest.approx(0.3, abs=0.01)
    assert made["seed"] == 1 and made["cosmosim_version"] and "commit" in made
    assert first.meta["source"].startswith("synthetic") and first.meta["training"] is None
    assert first.meta["target_arch"] == source.meta["target_arch"] == "wearable-moe"


def test_without_like_popularity_follows_the_skew():
    trace = synthesize(exrep_target=0.3, n_tokens=8192, seed=0)
    assert trace.experts.shape == (8192, 19, 2) and trace.meta["target_arch"] is None
    assert exrep(trace.experts, trace.positions)[0] == pytest.approx(0.3, abs=0.01)
    usage = expert_usage(trace.experts, 8).mean(axis=0)
    assert (np.diff(usage) < 0).all()  # popularity ∝ 1/(e+1): expert 0 first
    flat = expert_usage(synthesize(exrep_target=0.9, n_tokens=8192, skew=0.0, seed=0).experts, 8)
    assert np.abs(flat - 1 / 8).max() < 0.02
    assert exrep(*(lambda t: (t.experts, t.positions))(synthesize(exrep_target=0.0, n_tokens=600)))[0] == 0.0


@pytest.mark.parametrize("kwargs, message", [
    ({"exrep_target": 0.9, "use_source": True}, r"--exrep: 0.9 is outside the range .* reaches, \[0, 0.73"),
    ({"exrep_target": -0.1}, r"--exrep: expected a fraction in \[0, 1\]"),
    ({"exrep_target": float("nan")}, r"--exrep: expected a fraction"),
    ({}, "--exrep: required without --like"),
    ({"exrep_target": 0.2, "n_layers": 4, "use_source": True}, "--layers: comes from the --like trace"),
    ({"exrep_target": 0.2, "n_tokens": 1}, r"--tokens: expected an integer in \[2,"),
    ({"exrep_target": 0.2, "top_k": 5}, "--top-k: 5, expected at most half of --experts"),
    ({"exrep_target": 0.2, "skew": -1.0}, "--skew: expected a Zipf exponent"),
    ({"exrep_target": 0.2, "seed": -1}, "--seed: expected an integer"),
])
def test_bad_input_is_one_line(source, kwargs, message):
    like = source if kwargs.pop("use_source", False) else None
    with pytest.raises(InputError, match=message) as error:
        synthesize(like=like, **kwargs)
    assert "\n" not in str(error.value)


def run_cli(args, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as stop:
        main(args)
    out, err = capsys.readouterr()
    return stop.value.code, out, err


def test_cli_synth_writes_a_trace_run_can_replay(tmp_path, capsys):
    out_path = tmp_path / "s.npz"
    code, out, _ = run_cli(["trace", "synth", "--out", str(out_path), "--like", str(SOURCE), "--exrep", "0.2",
                            "--tokens", "3000", "--seq-len", "100"], capsys)
    assert code == 0 and "ExRep 0.2" in out
    trace = load_trace(out_path)
    assert trace.meta["target_arch"] == "wearable-moe" and trace.meta["synthetic"]["target_exrep"] == 0.2
    code, out, err = run_cli(["run", "--profile", "wearable", "--trace", str(out_path), "--tokens", "200", "-q"], capsys)
    assert code == 0, err


@pytest.mark.parametrize("out, extra, expected", [
    ("traces/synthetic.npz", ["--exrep", "0.2"], "which holds only traces recorded from trained models"),
    (str(SOURCE), ["--like", str(SOURCE)], "is the --like input"),
    ("{tmp}/s.npz", ["--like", str(SOURCE), "--exrep", "0.95"], "outside the range"),
    ("{tmp}/s.npz", ["--like", "{tmp}/missing.npz"], "no such trace file"),
])
def test_cli_synth_refusals_are_one_line(tmp_path, capsys, out, extra, expected):
    args = [arg.format(tmp=tmp_path) for arg in ["trace", "synth", "--out", out, *extra]]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1
    assert not (REPOSITORY / "traces" / "synthetic.npz").exists() and not (tmp_path / "s.npz").exists()
