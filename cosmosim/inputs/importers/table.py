"""A long table of routing decisions, one row per expert a token chose at a layer (CSV or Parquet).

Columns (docs/trace-format.md, "Importing"): `request` (any label), `token` (its index in the
request), `layer`, `rank` (0 for the largest gate), `expert`, and optionally `gate`. Rows may come
in any order, requests interleaved as a serving log writes them; a request's tokens must be
consecutive, every token needs every layer that appears in the table, and every (request, token,
layer) the ranks 0..k-1 once each. The file's suffix chooses the reader: `.csv` (pandas) or
`.parquet` / `.pq` (pyarrow).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cosmosim.errors import InputError
from cosmosim.inputs.importers.base import ImportedLog, RequestRouting

if TYPE_CHECKING:
    import pandas

FORMAT_VERSION = "1"  # cosmosim's own layout, described in docs/trace-format.md
INTEGER_COLUMNS = ("token", "layer", "rank", "expert")
COLUMNS = ("request", *INTEGER_COLUMNS)
GATE = "gate"


def _shown(value: object) -> str:
    """A cell as the user wrote it: 1.5, not np.float64(1.5)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


class _Table:
    """The table's columns as arrays, sorted by (request, token, layer, rank), and where each row was."""

    def __init__(self, path: Path, frame: pandas.DataFrame) -> None:
        import pandas as pd

        self.path, self.csv = path, path.suffix.lower() == ".csv"
        missing = [name for name in COLUMNS if name not in frame.columns]
        if missing:
            raise self.fail(missing[0], f"missing; expected columns {', '.join(COLUMNS)} (and optionally {GATE})")
        unknown = [str(name) for name in frame.columns if name not in (*COLUMNS, GATE)]
        if unknown:
            raise self.fail(unknown[0], f"unknown; expected only {', '.join(COLUMNS)} and {GATE}")
        if frame["request"].isna().any():
            raise self.fail("request", "expected a request id on every row", int(np.argmax(frame["request"].isna())))
        codes, self.names = pd.factorize(frame["request"], sort=False)  # requests in order of first appearance
        columns = {"request": codes.astype(np.int64)}
        for name in INTEGER_COLUMNS:
            values = frame[name]
            numbers = pd.to_numeric(values, errors="coerce").to_numpy(np.float64, na_value=np.nan)
            bad = np.isnan(numbers) | (numbers != np.round(numbers)) | pd.api.types.is_bool_dtype(values)
            if bad.any():
                row = int(np.argmax(bad))
                raise self.fail(name, f"expected integers, got {_shown(values.iloc[row])}", row)
            if (numbers < 0).any():
                row = int(np.argmax(numbers < 0))
                raise self.fail(name, f"expected integers >= 0, got {int(numbers[row])}", row)
            columns[name] = numbers.astype(np.int64)
        if GATE in frame.columns:
            gates = pd.to_numeric(frame[GATE], errors="coerce").to_numpy(np.float64, na_value=np.nan)
            bad = ~np.isfinite(gates) | (gates < 0)
            if bad.any():
                row = int(np.argmax(bad))
                raise self.fail(GATE, f"expected finite numbers >= 0, got {_shown(frame[GATE].iloc[row])}", row)
            columns[GATE] = gates
        self.row = np.lexsort([columns[name] for name in reversed(COLUMNS)])  # sorted position -> file row
        self.columns = {name: values[self.row] for name, values in columns.items()}

    def where(self, row: int) -> str:
        return f"line {row + 2}" if self.csv else f"row {row}"  # a CSV's line 1 is its header

    def fail(self, column: str, expected: str, row: int | None = None) -> InputError:
        at = "" if row is None else f" ({self.where(row)})"
        return InputError(f"{self.path}: column {column!r}: {expected}{at}")

    def label(self, i: int, *names: str) -> str:
        """The (request, token, layer, ...) of sorted row i, for messages."""
        parts = {"request": repr(str(self.names[self.columns["request"][i]]))}
        return ", ".join(f"{name} {parts.get(name, self.columns[name][i])}" for name in names)


def _begins(table: _Table, names: tuple[str, ...]) -> np.ndarray:
    """Whether each sorted row begins a new value of the `names` columns."""
    change = np.ones(table.row.size, dtype=bool)
    change[1:] = False
    for name in names:
        change[1:] |= np.diff(table.columns[name]) != 0
    return change


def _read_frame(path: Path) -> pandas.DataFrame:
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise InputError(f"{path}: expected a .csv, .parquet or .pq table")
    try:
        frame = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    except (ValueError, OSError) as error:  # pandas' and pyarrow's parse errors are ValueErrors
        raise InputError(f"{path}: not a readable {suffix[1:]} table ({error.__class__.__name__}: {error})") from None
    if frame.empty:
        raise InputError(f"{path}: no rows")
    return frame


def read_table(path: Path) -> ImportedLog:
    table = _Table(path, _read_frame(path))
    c, rows = table.columns, table.row.size
    repeated = np.flatnonzero(~_begins(table, COLUMNS))
    if repeated.size:
        i = repeated[0]
        raise table.fail("rank", "expected one row per (request, token, layer, rank), "
                         f"{table.label(i, 'request', 'token', 'layer', 'rank')} appears twice", int(table.row[i]))
    groups = np.flatnonzero(_begins(table, ("request", "token", "layer")))  # one per layer of each token
    sizes = np.diff(groups, append=rows)
    rank_in_group = np.arange(rows) - np.repeat(groups, sizes)
    gap = np.flatnonzero(c["rank"] != rank_in_group)
    if gap.size:
        group = np.searchsorted(groups, gap[0], side="right") - 1
        i = groups[group]
        raise table.fail("rank", f"expected ranks 0..k-1 once each, {table.label(i, 'request', 'token', 'layer')} has "
                         f"ranks {c['rank'][i:i + sizes[group]].tolist()}", int(table.row[gap[0]]))
    top_k = int(sizes[0])
    if (sizes != top_k).any():
        group = int(np.argmax(sizes != top_k))
        raise table.fail("rank", f"expected top-{top_k} everywhere (as the first token), "
                         f"{table.label(groups[group], 'request', 'token', 'layer')} has {sizes[group]}",
                         int(table.row[groups[group]]))
    layers = np.unique(c["layer"])
    tokens = np.flatnonzero(_begins(table, ("request", "token")))
    per_token = np.diff(tokens, append=rows) // top_k  # layers each token has
    short = np.flatnonzero(per_token != layers.size)
    if short.size:
        i = tokens[short[0]]
        lacking = np.setdiff1d(layers, c["layer"][i:i + per_token[short[0]] * top_k])[0]
        raise table.fail("layer", f"expected every token at layers {layers.tolist()}, {table.label(i, 'request', 'token')} "
                         f"lacks layer {lacking}", int(table.row[i]))
    jump = np.flatnonzero((np.diff(c["request"][tokens]) == 0) & (np.diff(c["token"][tokens]) != 1))
    if jump.size:
        i, j = tokens[jump[0]], tokens[jump[0] + 1]
        raise table.fail("token", f"expected a request's tokens consecutive, {table.label(i, 'request')} goes from "
                         f"token {c['token'][i]} to {c['token'][j]}", int(table.row[j]))
    if GATE in c:
        rising = np.flatnonzero((rank_in_group[1:] > 0) & (np.diff(c[GATE]) > 0)) + 1
        if rising.size:
            i = rising[0]
            raise table.fail(GATE, "expected gates non-increasing with rank (rank 0 the largest), "
                             f"{table.label(i, 'request', 'token', 'layer')} rises at rank {c['rank'][i]}",
                             int(table.row[i]))
    shape = (-1, layers.size, top_k)  # sorted and complete: the rows are [tokens, layers, top_k] in order
    experts, gates = c["expert"].reshape(shape), c[GATE].reshape(shape) if GATE in c else None
    parts = np.split(np.arange(tokens.size), np.flatnonzero(np.diff(c["request"][tokens])) + 1)  # tokens per request
    requests = [RequestRouting(str(table.names[c["request"][tokens[part[0]]]]), experts[part],
                               None if gates is None else gates[part]) for part in parts]
    return ImportedLog("table", FORMAT_VERSION, requests, layers=layers.tolist())
