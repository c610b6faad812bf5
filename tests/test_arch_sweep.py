"""Architecture sweeps: override axes derive variants of each point's architecture, each paired with a
trace that fits it (the recorded one, else one synthesised with its shape, else an error row), and
every variant's row equals a single run of the same architecture and trace."""

import json
import os

import pandas as pd
import pytest

from cosmosim.errors import InputError
from cosmosim.files import CACHE_DIR_ENV
from cosmosim.inputs.arch import get_arch
from cosmosim.inputs.arch_variants import derive, variant_name
from cosmosim.inputs.synthetic import sticky_trace
from cosmosim.inputs.trace import load_trace, save_trace
from cosmosim.results import catalog
from cosmosim.runner import run
from cosmosim.scenario.settings import RunConfig
from cosmosim.sweep import evaluate
from cosmosim.sweep.dataset import read_results
from cosmosim.sweep.evaluate import INPUT_COLUMNS, _resolve
from cosmosim.sweep.execute import run_sweep
from cosmosim.sweep.grid import grid
from cosmosim.sweep.spec import load_spec, spec_from_dict

TOKENS = 300


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Synthesised traces go to this test's own cache folder."""
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    evaluate._shaped.cache_clear()  # this process's memo of the files made


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    """A recorded-looking wearable-MoE trace (top-2 of 8, 19 layers, 128-token sequences)."""
    folder = tmp_path_factory.mktemp("traces")
    trace = sticky_trace(n_tokens=768, n_layers=19, seq_len=128, stay=0.5, seed=2)
    trace.meta["target_arch"] = "wearable-moe"
    save_trace(trace, folder / "moe.npz")
    return folder


def spec(traces, engine="analytic", **axes):
    return spec_from_dict({"engine": engine, "axes": {"profile": ["wearable"], "trace": ["moe.npz"],
                                                      "tokens": [TOKENS], **axes}},
                          base_dir=traces, source="spec.toml")


# ---------------------------------------------------------------------------- variants


def test_a_variant_has_the_overridden_shape_and_a_name_saying_what_changed():
    base = get_arch("wearable-moe")
    arch = derive(base, {"n_experts": 16, "top_k": 1, "ffn_hidden": None})
    assert (arch.n_experts, arch.top_k, arch.ffn_hidden, arch.n_layers) == (16, 1, base.ffn_hidden, base.n_layers)
    assert arch.name == "wearable-moe[n_experts=16,top_k=1]" == variant_name(base, {"top_k": 1, "n_experts": 16})
    assert derive(base, {"n_experts": base.n_experts, "top_k": base.top_k}) is base  # nothing changed
    wide = derive(base, {"d_model": 2 * base.d_model, "n_layers": 10, "n_shared_experts": 1})
    assert wide.name == f"wearable-moe[n_layers=10,d_model={2 * base.d_model},n_shared_experts=1]"
    assert wide.head_dim == 2 * base.head_dim and wide.n_moe_layers == 10  # default heads follow d_model
    assert wide.total_params() > base.total_params()
    with pytest.raises(InputError, match=r"wearable-moe\[top_k=9\]'.*top_k must be <= n_experts"):
        derive(base, {"top_k": 9})


def test_override_axes_are_in_the_grid_and_the_rows(traces):
    points = grid(spec(traces, n_experts=[8, 16], top_k=[1, 2]))
    assert [point.overrides for point in points] == [(("n_experts", 8), ("top_k", 1)), (("n_experts", 8), ("top_k", 2)),
                                                     (("n_experts", 16), ("top_k", 1)), (("n_experts", 16), ("top_k", 2))]
    assert all(point.arch == "wearable-moe" for point in points)  # the trace's target, named by the variant
    rows = [_resolve(point, "analytic").row for point in points]
    assert [row["arch"] for row in rows] == ["wearable-moe[top_k=1]", "wearable-moe", "wearable-moe[n_experts=16,top_k=1]",
                                             "wearable-moe[n_experts=16]"]
    assert [(row["n_experts"], row["top_k"], row["d_model"]) for row in rows] == [(8, 1, None), (8, 2, None),
                                                                                   (16, 1, None), (16, 2, None)]
    assert all(INPUT_COLUMNS[name] == "Int64" for name in ("n_experts", "top_k", "ffn_hidden", "n_layers", "d_model",
                                                          "n_shared_experts"))


def test_a_dense_variant_drops_the_trace_and_the_routing_axes(traces):
    points = grid(spec(traces, n_experts=[1, 8], top_k=[1], policy=["lru", "belady"]))
    dense = [point for point in points if dict(point.overrides)["n_experts"] == 1]
    assert len(points) == 3 and len(dense) == 1 and dense[0].trace is None
    resolved = _resolve(dense[0], "des")
    assert resolved.error is None and not resolved.arch.is_moe and resolved.row["policy"] is None


# ---------------------------------------------------------------------------- traces that fit


def test_a_fitting_trace_is_used_as_recorded_and_another_shape_is_synthesised_like_it(traces):
    fitting, other = grid(spec(traces, n_experts=[8, 16]))
    used = _resolve(fitting, "analytic")
    assert used.error is None and used.trace_path == str(traces / "moe.npz") and used.note is None
    made = _resolve(other, "analytic")
    trace = load_trace(made.trace_path)
    recorded = load_trace(traces / "moe.npz")
    assert made.error is None and (trace.n_experts, trace.top_k) == (16, 2) and trace.experts.max() >= 8
    assert (trace.n_layers, trace.n_tokens) == (recorded.n_layers, recorded.n_tokens)
    assert made.trace_path.startswith(os.environ[CACHE_DIR_ENV] + "/synthetic/")
    assert trace.meta["synthetic"]["like"]["sha256"] == fitting.trace_facts.sha256
    assert abs(trace.meta["synthetic"]["target_exrep"] - fitting.trace_facts.exrep) < 1e-12  # the source's ExRep
    assert made.row["trace"] == "moe.npz" and made.row["trace_exrep"] == trace.meta["synthetic"]["measured_exrep"]
    assert "synthesised like moe.npz" in made.note
    again = _resolve(other, "analytic")  # made once: the cached file is read back
    assert again.trace_path == made.trace_path


def test_the_exrep_axis_sets_the_synthesised_variant_traces_exrep(traces):
    points = grid(spec(traces, n_experts=[16], exrep=[0.2]))
    trace = load_trace(_resolve(points[0], "analytic").trace_path)
    assert trace.n_experts == 16 and trace.meta["synthetic"]["target_exrep"] == 0.2


def test_an_impossible_variant_is_an_error_row_with_its_reason(tmp_path, traces):
    # top_k 9 of 8 experts: no such architecture; top_k 5 of 8: the synthesiser draws from unused experts,
    # so it needs top_k <= E / 2; d_model 1001: the heads do not divide it.
    run_sweep(spec(traces, top_k=[9, 5, 2], d_model=[1001, get_arch("wearable-moe").d_model]), tmp_path / "r",
              progress=False)
    rows = read_results(tmp_path / "r").set_index(["top_k", "d_model"])
    assert "top_k must be <= n_experts" in rows.loc[(9, 1001), "error"]
    assert "top_k must be <= n_experts" in rows.loc[(9, 432), "error"]
    assert "no trace of that shape can be synthesised" in rows.loc[(5, 432), "error"]
    assert "at most half of --experts" in rows.loc[(5, 432), "error"]
    assert "n_heads must divide d_model" in rows.loc[(2, 1001), "error"]
    assert rows.loc[(2, 1001), "arch"] == "wearable-moe[d_model=1001]"
    assert pd.isna(rows.loc[(2, 432), "error"]) and rows.loc[(2, 432), "arch"] == "wearable-moe"
    assert rows["tpot_ms_mean"].notna().sum() == 1


# ---------------------------------------------------------------------------- rows equal single runs


@pytest.mark.parametrize("engine", ["des", "analytic"])
def test_each_variant_point_equals_a_single_run_of_its_architecture_and_trace(tmp_path, traces, engine):
    the_spec = spec(traces, engine, n_experts=[8, 16], top_k=[1, 2], ffn_hidden=[640], weight_bits=[16, 4],
                    cache_fraction=[0.5])
    run_sweep(the_spec, tmp_path / "r", progress=False)
    rows = read_results(tmp_path / "r")
    assert len(rows) == 8 and rows["error"].isna().all(), rows["error"].tolist()
    assert rows["ffn_hidden"].eq(640).all() and rows["arch"].str.contains("ffn_hidden=640").all()
    base = get_arch("wearable-moe")
    for point, (_, row) in zip(grid(the_spec), rows.iterrows()):
        arch = derive(base, dict(point.overrides))
        resolved = _resolve(point, engine)
        assert row["arch"] == arch.name and resolved.arch == arch
        trace = traces / "moe.npz" if (arch.n_experts, arch.top_k) == (8, 2) else resolved.trace_path
        cache_experts = max(arch.top_k, round(0.5 * arch.total_experts))
        config = RunConfig(weight_bits=point.config.weight_bits, tokens=TOKENS, cache_experts=cache_experts)
        single = run("wearable", trace, arch, config, engine)
        for metric in catalog.COLUMNS:
            expected = catalog.lookup(single, metric)
            if expected is None or pd.isna(expected):
                assert pd.isna(row[metric.column]), (point.overrides, metric.key)
            else:
                assert row[metric.column] == pytest.approx(expected, rel=1e-9), (point.overrides, metric.key)


# ---------------------------------------------------------------------------- bad values


@pytest.mark.parametrize("axis, value, message", [
    ("n_experts", 0, "axes.n_experts: 0: expected an integer >= 1"),
    ("top_k", 1.5, "axes.top_k: 1.5: expected an integer >= 1"),
    ("ffn_hidden", "wide", "axes.ffn_hidden: 'wide': expected an integer >= 1"),
    ("n_layers", True, "axes.n_layers: True: expected an integer >= 1"),
    ("d_model", -4, "axes.d_model: -4: expected an integer >= 1"),
    ("n_shared_experts", -1, "axes.n_shared_experts: -1: expected an integer >= 0"),
])
def test_a_bad_override_value_is_one_line(cli, tmp_path, traces, axis, value, message):
    (tmp_path / "moe.npz").write_bytes((traces / "moe.npz").read_bytes())
    path = tmp_path / "spec.toml"
    lines = ["[axes]", 'profile = ["wearable"]', 'trace = ["moe.npz"]', f"{axis} = [{json.dumps(value)}]"]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=message) as caught:
        load_spec(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)
    code, out, err = cli("sweep", path, "--out", tmp_path / "r")
    assert code == 2 and out == "" and message.split(": ", 1)[1] in err and len(err.strip().splitlines()) == 1


def test_an_n_experts_axis_on_a_dense_architecture_needs_a_trace(traces):
    with pytest.raises(InputError, match="axes.trace: required: an n_experts variant is a MoE"):
        spec_from_dict({"axes": {"profile": ["wearable"], "arch": ["wearable-dense-fa"], "n_experts": [1, 8]}},
                       base_dir=traces, source="spec.toml")


def test_the_own_design_example_is_eight_variant_points():
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / "own_design.toml"
    points = grid(load_spec(path))
    assert len(points) == 8 and {dict(point.overrides)["n_experts"] for point in points} == {8, 16}
