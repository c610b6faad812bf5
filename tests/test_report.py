"""What is read out of results: analyses (Pareto, budgets, best knobs), the HTML report, the timeline."""

import json
import os
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cosmosim.cli import main
from cosmosim.errors import InputError
from cosmosim.files import CACHE_DIR_ENV
from cosmosim.inputs.synthetic import sticky_trace
from cosmosim.inputs.trace import save_trace
from cosmosim.results.timeline import chrome_trace, write_timeline
from cosmosim.runner import run, run_with_timeline
from cosmosim.scenario.settings import RunConfig
from cosmosim.sweep import analysis
from cosmosim.sweep.dataset import read_results
from cosmosim.sweep.evaluate import as_frame
from cosmosim.sweep.execute import run_sweep
from cosmosim.sweep.report import FIGURES, figures, report_html, write_report
from cosmosim.sweep.spec import spec_from_dict


def frame(rows: list[dict]) -> pd.DataFrame:
    """A results frame in the sweep's columns from a few hand-made rows."""
    return as_frame([{"point_id": i, "weight_bits": 16, "prompt_tokens": 16, "context_len": 1024, **row}
                     for i, row in enumerate(rows)])


# ---------------------------------------------------------------------------- analyses


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 6), st.integers(1, 6), st.sampled_from(["a", "b"]), st.booleans()),
                min_size=1, max_size=25))
def test_pareto_front_is_undominated_and_dominates_the_rest(points):
    rows = frame([{"profile": p, "peak_dram_mb": x, "tpot_ms_mean": y, "error": "infeasible" if bad else None}
                  for x, y, p, bad in points])
    front = analysis.pareto_front(rows)
    ran = rows[rows["error"].isna()]
    for profile, group in ran.groupby("profile"):
        mine = front[front["profile"] == profile]
        xy = group[["peak_dram_mb", "tpot_ms_mean"]].to_numpy(float)
        for x, y in mine[["peak_dram_mb", "tpot_ms_mean"]].to_numpy(float):
            strictly_better = (xy[:, 0] <= x) & (xy[:, 1] <= y) & ((xy[:, 0] < x) | (xy[:, 1] < y))
            assert not strictly_better.any()
        front_xy = mine[["peak_dram_mb", "tpot_ms_mean"]].to_numpy(float)
        for x, y in xy:
            assert ((front_xy[:, 0] <= x) & (front_xy[:, 1] <= y)).any()
        assert len(set(map(tuple, front_xy))) == len(front_xy)  # ties keep one point
    assert set(front["error"].dropna()) == set()


def test_smallest_dram_budget_per_group_by_hand():
    rows = frame([
        {"profile": "watch", "trace": "t", "peak_dram_mb": 300, "tpot_ms_mean": 90},
        {"profile": "watch", "trace": "t", "peak_dram_mb": 200, "tpot_ms_mean": 120},
        {"profile": "watch", "trace": "t", "peak_dram_mb": 400, "tpot_ms_mean": 60},
        {"profile": "watch", "trace": "t", "peak_dram_mb": 100, "tpot_ms_mean": 50, "error": "infeasible"},
        {"profile": "phone", "trace": "t", "peak_dram_mb": 900, "tpot_ms_mean": 150},
    ])
    answer = analysis.smallest_dram_budget(rows, tpot_target_ms=100).set_index("profile")
    assert answer.loc["watch", "dram_budget_mb"] == 300 and answer.loc["watch", "point_id"] == 0
    assert answer.loc["watch", "fastest_tpot_ms"] == 60 and answer.loc["watch", "meets_target"]
    assert np.isnan(answer.loc["phone", "dram_budget_mb"]) and not answer.loc["phone", "meets_target"]
    assert answer.loc["phone", "fastest_tpot_ms"] == 150
    with pytest.raises(InputError, match="TPOT target"):
        analysis.smallest_dram_budget(rows, tpot_target_ms=0)


def test_best_bles_and_wd_rank_within_a_budget_by_hand():
    moe = {"profile": "watch", "total_experts": 152}
    rows = frame([
        {**moe, "trace": "l0", "bles_lambda": 0.0, "bles_tau": 10.0, "val_loss": 4.25, "peak_dram_mb": 300, "tpot_ms_mean": 90},
        {**moe, "trace": "l1", "bles_lambda": 1.0, "bles_tau": 10.0, "val_loss": 4.27, "peak_dram_mb": 300, "tpot_ms_mean": 70},
        {**moe, "trace": "l1", "bles_lambda": 1.0, "bles_tau": 10.0, "val_loss": 4.27, "peak_dram_mb": 900, "tpot_ms_mean": 20},
        {**moe, "trace": "l3", "bles_lambda": 3.0, "bles_tau": 10.0, "val_loss": 4.40, "peak_dram_mb": 350, "tpot_ms_mean": 75},
        {**moe, "trace": "s", "wd_rank": 100, "peak_dram_mb": 250, "tpot_ms_mean": 60},  # synthetic: no λ
        {"profile": "watch", "total_experts": 0, "peak_dram_mb": 200, "tpot_ms_mean": 30},  # dense
    ])
    bles = analysis.best_bles(rows, dram_budget_mb=400)
    assert bles["bles_lambda"].tolist() == [1.0, 3.0, 0.0] and bles["best"].tolist() == [True, False, False]
    assert bles["tpot_ms_mean"].tolist() == [70, 75, 90]  # the 900 MB point is over the budget
    assert bles["val_loss_cost"].tolist() == pytest.approx([0.02, 0.15, 0.0])
    ranks = analysis.best_wd_rank(rows, dram_budget_mb=400)
    assert ranks["wd_rank"].tolist() == [100, pd.NA] and ranks["point_id"].tolist() == [4, 1]  # dense left out


# ---------------------------------------------------------------------------- the report


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    for name, stay, bles_lambda in (("moe", 0.4, 0.0), ("bles", 0.7, 1.0)):
        trace = sticky_trace(n_tokens=768, n_layers=19, seq_len=128, stay=stay, seed=3)
        trace.meta["target_arch"] = "wearable-moe"
        trace.meta["training"] = {"val_loss": 4.25 + bles_lambda / 4, "bles_lambda": bles_lambda, "bles_tau": 10.0}
        save_trace(trace, folder / f"{name}.npz")
    spec = spec_from_dict({"axes": {"profile": ["wearable", "phone"], "arch": ["wearable-moe", "wearable-dense-fa"],
                                    "trace": ["moe.npz", "bles.npz"], "cache_fraction": [0.3, 0.7],
                                    "policy": ["lru", "belady"], "tokens": [300], "exrep": ["recorded", 0.2]}},
                          base_dir=folder, source="report-test")
    with pytest.MonkeyPatch.context() as patch:  # synthesised traces into this test's own cache folder
        patch.setenv(CACHE_DIR_ENV, str(folder / "cache"))
        run_sweep(spec, folder / "results", progress=False)
    return folder / "results"


def test_report_has_every_figure_and_no_external_script(tmp_path, results_dir):
    page = write_report(results_dir, tmp_path / "report.html").read_text()
    assert not re.search(r"<script[^>]*\bsrc\s*=", page)
    assert page.count("<script") >= 1 + len(FIGURES)  # plotly.js inlined once, one script per figure
    for name in FIGURES:
        assert f'id="{name}"' in page
    n_points = len(read_results(results_dir))
    assert f"{n_points} of {n_points} computed, 0 infeasible" in page


def test_every_figure_draws_the_sweep(results_dir):
    drawn = figures(read_results(results_dir))
    assert set(drawn) == set(FIGURES)
    for name, figure in drawn.items():
        assert figure.data, f"{name} has no data"
        assert all(len(trace.x) for trace in figure.data), name
    bles = drawn["bles"]
    lambdas = sorted({x for trace in bles.data for x in trace.x})
    assert lambdas == [0.0, 1.0]


def test_figures_without_data_say_why():
    rows = frame([{"profile": "watch", "peak_dram_mb": 100, "tpot_ms_mean": 50, "error": "infeasible"}])
    for name, figure in figures(rows).items():
        assert not figure.data and figure.layout.annotations[0].text, name
    page = report_html(rows)
    assert all(f'id="{name}"' in page for name in FIGURES)


# ---------------------------------------------------------------------------- timeline


@pytest.fixture(scope="module")
def small_trace():
    trace = sticky_trace(n_tokens=512, n_layers=4, seq_len=64, seed=5)
    trace.meta["target_arch"] = "wearable-moe"
    return trace


def test_timeline_matches_the_run_it_records(small_trace):
    config = RunConfig(cache_experts=12, prefetch="oracle", tokens=200)
    result, timeline = run_with_timeline("wearable", small_trace, "wearable-moe", config, max_passes=None)
    assert result == run("wearable", small_trace, "wearable-moe", config)  # the hook changes nothing
    decode = [end - start for name, _, start, end, kind in timeline if kind == "pass" and name == "decode"]
    assert len(decode) == result["inputs"]["decode_tokens"]
    assert np.mean(decode) * 1e3 == pytest.approx(result["tpot_ms"]["mean"], rel=1e-12)
    compute = sorted((start, end) for _, _, start, end, kind in timeline if kind == "compute")
    assert all(a_end <= b_start + 1e-15 for (_, a_end), (b_start, _) in zip(compute, compute[1:]))
    reads = [event for event in timeline if event[4] == "flash"]
    assert sum(name.startswith("prefetch") for name, *_ in reads) == result["prefetch"]["issued"]

    trace_json = chrome_trace(timeline, result)
    slices = [e for e in trace_json["traceEvents"] if e["ph"] == "X"]
    assert len(slices) == len(timeline) and all(e["dur"] >= 0 for e in slices)
    for lane in {e["tid"] for e in slices if e["cat"] == "flash"}:
        spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in slices if e["tid"] == lane)
        assert all(a_end <= b_start + 1e-6 for (_, a_end), (b_start, _) in zip(spans, spans[1:]))


def test_timeline_keeps_whole_passes_up_to_the_limit(small_trace):
    _, timeline = run_with_timeline("wearable", small_trace, "wearable-moe", RunConfig(cache_experts=12), max_passes=5)
    assert sum(event[4] == "pass" for event in timeline) == 5 and timeline[-1][4] == "pass"


def test_cli_run_writes_a_timeline(capsys, tmp_path, small_trace):
    trace_path = save_trace(small_trace, tmp_path / "t.npz")
    with pytest.raises(SystemExit) as stop:
        main(["run", "--profile", "wearable", "--trace", str(trace_path), "--tokens", "100", "--quiet",
              "--timeline", str(tmp_path / "timeline.json")])
    assert stop.value.code == 0
    written = json.loads((tmp_path / "timeline.json").read_text())
    names = {e["args"]["name"] for e in written["traceEvents"] if e.get("name") == "thread_name"}
    assert {"passes", "compute", "flash 0"} <= names and written["otherData"]["passes"] > 0


def test_write_timeline_is_plain_json(tmp_path, small_trace):
    result, timeline = run_with_timeline("wearable", small_trace, "wearable-moe", RunConfig(cache_experts=12),
                                         max_passes=2)
    path = write_timeline(tmp_path / "t.json", timeline, result)
    assert json.loads(path.read_text())["displayTimeUnit"] == "ms"


# ---------------------------------------------------------------------------- the report in a real browser
# Headless Chromium (Debian's chromium and chromium-driver, which .ci/run installs) opens the page: every
# figure renders its traces, and the console shows no error. Skips where Chromium is absent, except under
# CI (CI=true), where its absence is a failure.

CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"
# Flags that keep Chromium off the network (closed here) and out of a sandbox a root container lacks.
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        if os.environ.get("CI") == "true":
            pytest.fail("CI: Chromium is missing (.ci/run installs Debian's chromium and chromium-driver)")
        pytest.skip("no Chromium here (apt-get install chromium chromium-driver to run this test)")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


# What each figure draws once Plotly has run: {id: (traces in its data, SVG layers Plotly made, traces drawn
# in them)}, or null for an id the page does not (yet) hold.
DRAWN = """
const drawn = {};
for (const name of arguments[0]) {
  const div = document.getElementById(name);
  drawn[name] = div ? [(div.data || []).length, div.querySelectorAll('svg.main-svg').length,
                       div.querySelectorAll('.trace, .scatterlayer .trace, .barlayer .trace, .heatmaplayer .hm').length]
                    : null;
}
return {state: document.readyState, url: location.href, drawn: drawn};
"""


def all_drawn(page_state):
    return page_state["state"] == "complete" and all(d is not None and min(d) > 0 for d in page_state["drawn"].values())


def test_every_figure_renders_without_console_errors(browser, tmp_path, results_dir):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.wait import WebDriverWait

    page = write_report(results_dir, tmp_path / "report.html")
    browser.get(page.resolve().as_uri())
    # get() can hand back before a 4 MB page has parsed on a cold, busy machine (CI saw it once), and
    # Plotly draws asynchronously: poll until every figure is drawn, then judge what the page holds.
    try:
        WebDriverWait(browser, 60, poll_frequency=0.25).until(lambda b: all_drawn(b.execute_script(DRAWN, list(FIGURES))))
    except TimeoutException:
        pass
    page_state = browser.execute_script(DRAWN, list(FIGURES))
    assert page_state["url"].endswith("report.html") and page_state["state"] == "complete", page_state
    for name, drawn in page_state["drawn"].items():
        assert drawn is not None, f"figure {name}: no element with its id"
        n_traces, n_svg, n_drawn = drawn
        assert n_traces > 0 and n_svg > 0 and n_drawn > 0, f"figure {name}: {n_traces} traces, {n_svg} svg, {n_drawn} drawn"
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors
