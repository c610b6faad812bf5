"""A sweep's results as one self-contained HTML page of plotly figures (plotly.js inlined, no
external script), or as PNG files when kaleido and a Chromium are installed.

Figures (each a function of the results frame, so notebooks draw them too):

    tpot-vs-dram       TPOT vs DRAM: the fastest point within each budget, per trace and device
    hit-rate-vs-cache  expert-cache hit rate vs cache size, per policy
    bles               ExRep, TPOT and validation loss vs the BlES weight λ (per τ)
    exrep              tokens/s and TPOT vs ExRep: synthesised traces as lines, recorded ones as points
    devices            tokens/s and energy per token of each device, per architecture, trace and policy
    pareto             Pareto fronts of (peak DRAM, TPOT), one per device
    memory-breakdown   peak DRAM by part, for the points on the fronts
    time-breakdown     TPOT by part, for the points on the fronts
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import plotly.offline
from plotly.subplots import make_subplots

from cosmosim.engines.analytic.paper import BLES, OFFLOAD
from cosmosim.errors import InputError
from cosmosim.files import atomic_write_bytes, atomic_write_text
from cosmosim.results import catalog
from cosmosim.sweep.analysis import DRAM, TPOT, feasible, pareto_front
from cosmosim.sweep.dataset import read_results

TEMPLATE = "plotly_white"
MAX_BREAKDOWN_BARS = 40


def _with_series(rows: pd.DataFrame) -> pd.DataFrame:
    """Adds `series`: the trace's file name, or the architecture for a dense point (no trace)."""
    return rows.assign(series=[f"{arch} (dense)" if pd.isna(trace) else Path(trace).stem
                               for trace, arch in zip(rows["trace"], rows["arch"])])


def _no_data(title: str, why: str) -> go.Figure:
    figure = go.Figure(layout={"title": title, "template": TEMPLATE})
    figure.add_annotation(text=why, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    return figure.update_xaxes(visible=False).update_yaxes(visible=False)


def tpot_vs_dram(results: pd.DataFrame) -> go.Figure:
    title = "TPOT vs peak DRAM: the fastest point within each DRAM budget, per trace and device"
    rows = feasible(results)
    if rows.empty:
        return _no_data(title, "no point of this sweep ran")
    fronts = pareto_front(_with_series(rows), by=("profile", "series"))
    figure = px.line(fronts, x=DRAM, y=TPOT, color="series", facet_col="profile", markers=True, template=TEMPLATE,
                     hover_data=["point_id", "arch", "policy", "cache_mb", "weight_bits"], title=title,
                     labels={DRAM: "peak DRAM (MB)", TPOT: "TPOT mean (ms)", "series": "trace"})
    return figure.update_yaxes(rangemode="tozero")


def hit_rate_vs_cache(results: pd.DataFrame) -> go.Figure:
    title = "Expert-cache hit rate vs cache size, per policy (mean over the other axes; bars: min to max)"
    rows = feasible(results, ["hit_rate", "cache_mb", "policy"])
    if rows.empty:
        return _no_data(title, "no MoE point of this sweep ran")
    stats = (rows.groupby(["profile", "policy", "cache_mb"])["hit_rate"].agg(["mean", "min", "max"]).reset_index()
                 .astype({"mean": float, "min": float, "max": float, "cache_mb": float}))
    stats["above"], stats["below"] = stats["max"] - stats["mean"], stats["mean"] - stats["min"]
    figure = px.line(stats, x="cache_mb", y="mean", color="policy", facet_col="profile", markers=True,
                     error_y="above", error_y_minus="below", template=TEMPLATE, title=title,
                     labels={"cache_mb": "expert cache (MB)", "mean": "hit rate (decode)"})
    return figure.update_yaxes(range=[0, 1.02])


def bles_effect(results: pd.DataFrame) -> go.Figure:
    title = "BlES: ExRep, TPOT and validation loss vs λ (per τ; TPOT: median over the other axes)"
    rows = feasible(results, ["bles_lambda", "trace_exrep"])
    if rows.empty:
        return _no_data(title, "no trace of this sweep records BlES λ in its meta.training (synthetic or older traces)")
    figure = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                           subplot_titles=("ExRep (fraction of top-k slots switching per token)",
                                           "TPOT mean (ms), per device", "validation loss (nats/token)"))
    rows = rows.assign(tau=rows["bles_tau"].astype(object).where(rows["bles_tau"].notna(), "–").astype(str))
    per_trace = rows.drop_duplicates("trace").sort_values("bles_lambda")
    for tau, group in per_trace.groupby("tau"):
        common = {"x": group["bles_lambda"].astype(float), "mode": "lines+markers", "legendgroup": f"τ={tau}",
                  "text": group["trace"]}
        figure.add_trace(go.Scatter(y=group["trace_exrep"].astype(float), name=f"τ={tau}", **common), row=1, col=1)
        figure.add_trace(go.Scatter(y=group["val_loss"].astype(float), name=f"τ={tau}", showlegend=False, **common),
                         row=3, col=1)
    medians = rows.groupby(["profile", "tau", "bles_lambda"])[TPOT].median().reset_index()
    for (profile, tau), group in medians.groupby(["profile", "tau"]):
        figure.add_trace(go.Scatter(x=group["bles_lambda"].astype(float), y=group[TPOT].astype(float),
                                    mode="lines+markers", name=f"{profile}, τ={tau}"), row=2, col=1)
    figure.update_xaxes(title_text="BlES weight λ", row=3, col=1)
    return figure.update_layout(title=title, template=TEMPLATE, height=800)


TOKENS_PER_S = catalog.column_of("tokens_per_s")
PALETTE = px.colors.qualitative.Plotly + px.colors.qualitative.Dark24


def _exrep_medians(rows: pd.DataFrame) -> pd.DataFrame:
    """Median tokens/s and TPOT per (device, architecture, policy, trace, ExRep), over the other axes."""
    rows = _with_series(rows).assign(exrep=rows["trace_exrep"].astype(float))
    keys = ["profile", "arch", "policy", "series", "exrep_target", "exrep"]
    return (rows.astype({"exrep_target": object}).fillna({"exrep_target": "recorded"})
                .groupby(keys)[[TOKENS_PER_S, TPOT]].median().reset_index().sort_values("exrep"))


def exrep_effect(results: pd.DataFrame) -> go.Figure:
    title = ("Tokens/s and TPOT vs ExRep: traces synthesised like each trace (lines), the traces as recorded "
             "(diamonds); median over the other axes")
    rows = feasible(results, [TOKENS_PER_S, TPOT, "trace_exrep"])
    if rows.empty or rows["exrep_target"].isna().all():
        return _no_data(title, "this sweep has no exrep axis (see docs/sweeps.md)")
    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1,
                           subplot_titles=("tokens/s (log)", "TPOT mean (ms, log)"))
    groups = _exrep_medians(rows).groupby(["profile", "arch", "policy", "series"])
    for index, ((profile, arch, policy, series), group) in enumerate(groups):
        name, color = f"{profile} · {arch} · {policy} · {series}", PALETTE[index % len(PALETTE)]
        recorded = group["exrep_target"] == "recorded"
        for panel, column in ((1, TOKENS_PER_S), (2, TPOT)):
            shown = {"legendgroup": name, "showlegend": panel == 1}
            figure.add_trace(go.Scatter(x=group.loc[~recorded, "exrep"], y=group.loc[~recorded, column].astype(float),
                                        mode="lines+markers", name=name, line={"color": color}, **shown), row=panel, col=1)
            if recorded.any():
                figure.add_trace(go.Scatter(x=group.loc[recorded, "exrep"], y=group.loc[recorded, column].astype(float),
                                            mode="markers", marker={"symbol": "diamond", "size": 12, "color": color},
                                            name=f"{name} (recorded)", **{**shown, "showlegend": False}), row=panel, col=1)
    for paper in (OFFLOAD, BLES):
        figure.add_vline(x=paper.exrep, line_dash="dash", line_color="gray", row=1, col=1,
                         annotation_text=f"paper: {paper.name.split(' + ', 1)[1]}, {paper.exrep:.3f}",
                         annotation_position="bottom right")
        figure.add_vline(x=paper.exrep, line_dash="dash", line_color="gray", row=2, col=1)
    figure.update_yaxes(type="log")
    figure.update_xaxes(title_text="ExRep (measured on the replayed trace)", row=2, col=1)
    return figure.update_layout(title=title, template=TEMPLATE, height=850)


ENERGY = catalog.column_of("energy_mj_per_token")


def devices(results: pd.DataFrame) -> go.Figure:
    title = "Devices side by side: tokens/s and energy per token (median over the other axes; infeasible points absent)"
    rows = feasible(results, [TOKENS_PER_S, ENERGY])
    if rows.empty or rows["profile"].nunique() < 2:
        return _no_data(title, "this sweep has fewer than two devices")
    rows = _with_series(rows)
    rows = rows.assign(case=[f"{arch} · {series} · {policy}" if pd.notna(policy) else f"{arch}"
                             for arch, series, policy in zip(rows["arch"], rows["series"], rows["policy"])])
    medians = rows.groupby(["profile", "case"])[[TOKENS_PER_S, ENERGY]].median().reset_index()
    order = medians.groupby("profile")[TOKENS_PER_S].max().sort_values(ascending=False).index.tolist()
    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                           subplot_titles=("tokens/s (log)", "energy per token (mJ, log)"))
    for index, (case, group) in enumerate(medians.groupby("case")):
        color = PALETTE[index % len(PALETTE)]
        for panel, column in ((1, TOKENS_PER_S), (2, ENERGY)):
            figure.add_trace(go.Bar(x=group["profile"], y=group[column].astype(float), name=case, legendgroup=case,
                                    marker_color=color, showlegend=panel == 1), row=panel, col=1)
    figure.update_yaxes(type="log")
    figure.update_xaxes(categoryorder="array", categoryarray=order)
    return figure.update_layout(title=title, template=TEMPLATE, height=850, barmode="group")


def pareto_fronts(results: pd.DataFrame) -> go.Figure:
    title = "Pareto fronts of (peak DRAM, TPOT), per device: no other point is both smaller and faster"
    rows = feasible(results)
    if rows.empty:
        return _no_data(title, "no point of this sweep ran")
    figure = px.scatter(rows, x=DRAM, y=TPOT, color="profile", opacity=0.25, template=TEMPLATE, title=title,
                        hover_data=["point_id", "arch", "trace", "policy", "cache_mb"],
                        labels={DRAM: "peak DRAM (MB)", TPOT: "TPOT mean (ms)"})
    for profile, front in pareto_front(rows).groupby("profile"):
        figure.add_trace(go.Scatter(x=front[DRAM].astype(float), y=front[TPOT].astype(float), mode="lines+markers",
                                    name=f"{profile}: front", text=front["point_id"].astype(str)))
    return figure


def _front_bars(results: pd.DataFrame, parts: dict[str, str], title: str, value_label: str) -> go.Figure:
    rows = feasible(results)
    if rows.empty:
        return _no_data(title, "no point of this sweep ran")
    front = _with_series(pareto_front(rows)).head(MAX_BREAKDOWN_BARS)
    front = front.assign(point=[f"#{p.point_id} {p.profile} · {p.series} · {p.cache_mb:.0f} MB cache"
                                for p in front.itertuples()])
    long = front.melt(id_vars=["point"], value_vars=list(parts), var_name="part", value_name=value_label)
    long["part"] = long["part"].map(parts)
    figure = px.bar(long, x="point", y=value_label, color="part", template=TEMPLATE, title=title)
    return figure.update_layout(barmode="stack", xaxis_title="points on the Pareto fronts, smallest first")


def _part_columns(group: str) -> dict[str, str]:
    """A group's columns (the catalogue's), each with its part's name as the legend shows it."""
    return {metric.column: metric.part.replace("_", " ") for metric in catalog.group(group)}


def memory_breakdown(results: pd.DataFrame) -> go.Figure:
    parts = _part_columns(catalog.MEMORY_GROUP)
    return _front_bars(results, parts, "Peak DRAM by part, for the points on the Pareto fronts", "MB")


def time_breakdown(results: pd.DataFrame) -> go.Figure:
    parts = _part_columns(catalog.TIME_GROUP)
    return _front_bars(results, parts, "TPOT by part, for the points on the Pareto fronts", "ms per token")


FIGURES: dict[str, Callable[[pd.DataFrame], go.Figure]] = {
    "tpot-vs-dram": tpot_vs_dram,
    "hit-rate-vs-cache": hit_rate_vs_cache,
    "bles": bles_effect,
    "exrep": exrep_effect,
    "devices": devices,
    "pareto": pareto_fronts,
    "memory-breakdown": memory_breakdown,
    "time-breakdown": time_breakdown,
}


def figures(results: pd.DataFrame) -> dict[str, go.Figure]:
    return {name: draw(results) for name, draw in FIGURES.items()}


def _summary_table(results: pd.DataFrame) -> str:
    manifest = results.attrs.get("manifest", {})
    errors = int(results["error"].notna().sum()) if "error" in results else 0
    facts = {
        "sweep": manifest.get("name", "–"), "spec": manifest.get("spec_source", "–"),
        "points": f"{len(results)} of {manifest.get('n_points', '?')} computed, {errors} infeasible (rows with an error)",
        "engine": manifest.get("fingerprint_parts", {}).get("engine", "–"),
        "cosmosim": manifest.get("fingerprint_parts", {}).get("cosmosim_version", "–"),
        "fingerprint": manifest.get("fingerprint", "–"),
    }
    cells = "".join(f"<tr><th>{html.escape(key)}</th><td>{html.escape(str(value))}</td></tr>" for key, value in facts.items())
    return f"<table>{cells}</table>"


def report_html(results: pd.DataFrame, title: str = "cosmosim sweep report") -> str:
    """One HTML page: a summary table, then every figure, with plotly.js inlined once."""
    sections = []
    for name, figure in figures(results).items():
        body = figure.to_html(full_html=False, include_plotlyjs=False, div_id=name, default_width="100%")
        sections.append(f'<section id="section-{name}">{body}</section>')
    style = ("body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px}"
             "th{text-align:left;padding-right:1em}section{margin:2em 0}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style><script type=\"text/javascript\">{plotly.offline.get_plotlyjs()}</script></head>"
            f"<body><h1>{html.escape(title)}</h1>{_summary_table(results)}{''.join(sections)}</body></html>\n")


def write_report(results_dir: str | Path, out_path: str | Path) -> Path:
    """Read a sweep's results folder and write its report page (atomically)."""
    results = read_results(results_dir)
    name = results.attrs["manifest"].get("name", Path(results_dir).name)
    return atomic_write_text(out_path, report_html(results, f"cosmosim sweep report: {name}"))


def static_export_available() -> bool:
    """Whether PNG export can work: kaleido installed (it also needs a Chromium, found at export)."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return False
    return True


def write_pngs(results: pd.DataFrame, out_dir: str | Path, width: int = 1100, height: int = 550) -> list[Path]:
    """Every figure as `<name>.png` in `out_dir`, through kaleido (with Debian's chromium)."""
    if not static_export_available():
        raise InputError("PNG export: kaleido is not installed (pip install kaleido; apt-get install chromium)")
    written = []
    for name, figure in figures(results).items():
        try:
            data = figure.to_image(format="png", width=width, height=figure.layout.height or height)
        except (RuntimeError, ValueError, OSError) as error:
            raise InputError(f"PNG export: kaleido could not render {name} ({error}); is chromium installed?") from None
        written.append(atomic_write_bytes(Path(out_dir) / f"{name}.png", data))
    return written
