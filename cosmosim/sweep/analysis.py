"""Questions asked of a sweep's results frame (`cosmosim.sweep.read_results`): pure functions.

- `pareto_front`: the points no other point beats on both peak DRAM and TPOT, per device;
- `smallest_dram_budget`: the least peak DRAM that meets a TPOT target;
- `best_under_budget` (`best_wd_rank`, `best_bles`): within a DRAM budget, the fastest point for
  each WD rank or each BlES (λ, τ), with the validation loss of the model whose routing it replays
  and that loss's cost against the best-trained candidate.

Rows with an `error` (infeasible combinations) or no metrics take part in none of them. Every
function returns a new frame and leaves its input alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from cosmosim.errors import InputError
from cosmosim.results.catalog import column_of

DRAM = column_of("peak_dram_mb")
TPOT = column_of("tpot_ms.mean")


def _require(results: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [column for column in columns if column not in results.columns]
    if missing:
        raise InputError(f"results frame: column {missing[0]!r} is missing (is this a cosmosim sweep's results?)")


def feasible(results: pd.DataFrame, columns: Sequence[str] = (DRAM, TPOT)) -> pd.DataFrame:
    """The rows that ran (no error) and have every one of `columns`."""
    _require(results, ["error", *columns])
    keep = results["error"].isna()
    for column in columns:
        keep &= results[column].notna()
    return results[keep.to_numpy(dtype=bool)]


def _groups(frame: pd.DataFrame, by: Sequence[str]):
    """(key, group) pairs; NA is a group of its own (a dense point has no trace)."""
    if not by:
        return [((), frame)]
    return frame.groupby(list(by), dropna=False, sort=True)


def _front(group: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    ordered = group.sort_values([x, y, "point_id"], kind="stable")
    ys = ordered[y].to_numpy(dtype=float)
    best_before = np.minimum.accumulate(np.concatenate([[np.inf], ys[:-1]]))
    return ordered[ys < best_before]  # strictly faster than everything at least as small


def pareto_front(results: pd.DataFrame, *, x: str = DRAM, y: str = TPOT, by: Sequence[str] = ("profile",)) -> pd.DataFrame:
    """Rows on the (x, y) Pareto front (both minimised) of each group, sorted by group, then x.

    Ties keep the lowest point_id; a point equal to a front point on both is left out."""
    rows = feasible(results, [x, y, *by])
    fronts = [_front(group, x, y) for _, group in _groups(rows, by)]
    return pd.concat(fronts, ignore_index=True) if fronts else rows.iloc[0:0]


def smallest_dram_budget(results: pd.DataFrame, tpot_target_ms: float, *, by: Sequence[str] = ("profile", "trace"),
                         tpot: str = TPOT) -> pd.DataFrame:
    """Per group: the least peak DRAM of a point with `tpot` <= the target.

    Columns: the `by` columns, `dram_budget_mb` (NaN when no point meets the target), `tpot_ms`
    of that point, its `point_id` (<NA> when none), `fastest_tpot_ms` of the group, `meets_target`.
    """
    if not tpot_target_ms > 0:
        raise InputError(f"TPOT target: expected > 0 ms, got {tpot_target_ms}")
    rows = feasible(results, [DRAM, tpot])
    answers = []
    for key, group in _groups(rows, by):
        meeting = group[group[tpot] <= tpot_target_ms].sort_values([DRAM, tpot, "point_id"])
        best = meeting.iloc[0] if len(meeting) else None
        answers.append({
            **dict(zip(by, key if isinstance(key, tuple) else (key,))),
            "dram_budget_mb": np.nan if best is None else float(best[DRAM]),
            "tpot_ms": np.nan if best is None else float(best[tpot]),
            "point_id": pd.NA if best is None else int(best["point_id"]),
            "fastest_tpot_ms": float(group[tpot].min()),
            "meets_target": best is not None,
        })
    frame = pd.DataFrame(answers, columns=[*by, "dram_budget_mb", "tpot_ms", "point_id", "fastest_tpot_ms", "meets_target"])
    return frame.astype({"point_id": "Int64"})


def best_under_budget(results: pd.DataFrame, dram_budget_mb: float, knobs: Sequence[str], *,
                      by: Sequence[str] = ("profile",)) -> pd.DataFrame:
    """Within `dram_budget_mb` of peak DRAM: for each group and each value of the `knobs`, the
    fastest point, fastest first. A knob's <NA> is a value like any other (full rank has no WD rank).

    Columns: `by`, `knobs`, `point_id`, `tpot_ms_mean`, `peak_dram_mb`, `trace`, `val_loss` (of the
    trace's model; NaN for a synthetic trace), `val_loss_cost` (val_loss minus the lowest val_loss
    among the group's rows), `best` (True on the group's fastest row).
    """
    if not dram_budget_mb > 0:
        raise InputError(f"DRAM budget: expected > 0 MB, got {dram_budget_mb}")
    _require(results, knobs)
    rows = feasible(results)
    rows = rows[rows[DRAM] <= dram_budget_mb]
    columns = [*by, *knobs, "point_id", TPOT, DRAM, "trace", "val_loss"]
    answers = []
    for _, group in _groups(rows, by):
        fastest = (group.sort_values([TPOT, DRAM, "point_id"], kind="stable")
                        .drop_duplicates(list(knobs)).loc[:, columns].copy())
        fastest["val_loss_cost"] = fastest["val_loss"] - fastest["val_loss"].min()
        fastest["best"] = np.arange(len(fastest)) == 0
        answers.append(fastest)
    if not answers:
        return pd.DataFrame(columns=[*columns, "val_loss_cost", "best"])
    return pd.concat(answers, ignore_index=True)


def best_wd_rank(results: pd.DataFrame, dram_budget_mb: float, *, by: Sequence[str] = ("profile",)) -> pd.DataFrame:
    """The WD rank that minimises TPOT within the DRAM budget, over MoE points (one row per rank;
    <NA> is full rank)."""
    _require(results, ["total_experts"])
    return best_under_budget(results[(results["total_experts"] > 0).fillna(False).to_numpy(dtype=bool)],
                             dram_budget_mb, ("wd_rank",), by=by)


def best_bles(results: pd.DataFrame, dram_budget_mb: float, *, by: Sequence[str] = ("profile",)) -> pd.DataFrame:
    """The BlES (λ, τ) that minimises TPOT within the DRAM budget, over traces that record λ."""
    _require(results, ["bles_lambda"])
    return best_under_budget(results[results["bles_lambda"].notna().to_numpy(dtype=bool)], dram_budget_mb,
                             ("bles_lambda", "bles_tau"), by=by)
