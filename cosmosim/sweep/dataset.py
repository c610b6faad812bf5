"""The results of a sweep: a folder of Parquet part files and a manifest.

    RESULTS/
      sweep.json             format, fingerprint and what it is made of, the spec, point count
      part-0000000.parquet   rows of some points (named by its smallest point_id)
      part-0000040.parquet   ...

Each part is written whole or not at all (temp file + rename), so a sweep killed at any moment
leaves only complete parts; the points they hold are done, every other point is not. A rerun
reads the `point_id`s of the parts and computes the rest. Parts never overlap, so no point is
lost or duplicated.

The fingerprint is the sha256 of the sweep's axes (in order: they number the points), the
engine, the cosmosim version and the sha256 of every trace and profile file. A folder holding
another fingerprint is refused: results of two different sweeps are never mixed.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import cosmosim
from cosmosim.errors import InputError
from cosmosim.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from cosmosim.sweep.evaluate import COLUMNS, as_frame
from cosmosim.sweep.spec import SweepSpec

FORMAT = "cosmosim-sweep/1"
MANIFEST = "sweep.json"
PART_GLOB = "part-*.parquet"


def fingerprint_parts(spec: SweepSpec, engine: str) -> dict:
    """What the fingerprint covers, each part separately, so a refusal can say what changed."""
    return {
        "axes": [[name, list(values)] for name, values in spec.axes],
        "engine": engine,
        "cosmosim_version": cosmosim.__version__,
        "traces": {value: facts.sha256 for value, facts in spec.traces.items()},
        "profiles": {value: facts.sha256 for value, facts in spec.profiles.items()},
    }


def fingerprint(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=False, separators=(",", ":")).encode()).hexdigest()


def read_manifest(out_dir: str | Path) -> dict:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise InputError(f"{out_dir}: not a sweep results folder (no {MANIFEST}); run `cosmosim sweep` first")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(f"{path}: format: expected {FORMAT!r}, got {manifest.get('format') if isinstance(manifest, dict) else manifest!r}")
    return manifest


def open_results(out_dir: str | Path, spec: SweepSpec, engine: str, n_points: int) -> dict:
    """Create the results folder for this sweep, or check that an existing one is this sweep's.

    Also clears temp files a killed run left behind (they are never read)."""
    out_dir = Path(out_dir)
    parts = fingerprint_parts(spec, engine)
    wanted = fingerprint(parts)
    if (out_dir / MANIFEST).is_file():
        manifest = read_manifest(out_dir)
        if manifest.get("fingerprint") != wanted:
            old = manifest.get("fingerprint_parts", {})
            changed = [key for key in parts if old.get(key) != parts[key]] or ["fingerprint"]
            raise InputError(f"{out_dir}: holds results of a different sweep ({', '.join(changed)} changed); "
                             "choose another --out folder or delete this one")
        for stale in out_dir.glob(".part-*.tmp"):
            stale.unlink(missing_ok=True)
        return manifest
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"{out_dir}: exists and is not an empty folder or a sweep results folder; choose another --out")
    manifest = {
        "format": FORMAT, "name": spec.name, "description": spec.description, "spec_source": spec.source,
        "fingerprint": wanted, "fingerprint_parts": parts, "n_points": n_points,
        "traces": {value: {"path": facts.path, "sha256": facts.sha256} for value, facts in spec.traces.items()},
        "profiles": {value: {"path": facts.path, "name": facts.name, "sha256": facts.sha256}
                     for value, facts in spec.profiles.items()},
    }
    atomic_write_json(out_dir / MANIFEST, manifest)
    return manifest


def _part_paths(out_dir: Path) -> list[Path]:
    return sorted(out_dir.glob(PART_GLOB))


# The Arrow type each column's pandas dtype is stored as (strings may come back as large_string).
_ARROW_KINDS = {"int64": pa.types.is_int64, "Int64": pa.types.is_int64, "Float64": pa.types.is_float64,
                "boolean": pa.types.is_boolean,
                "string": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)}


def _check_part(path: Path, schema: pa.Schema) -> None:
    """A part of this format has exactly the sweep's columns, each of its kind; say which one is off."""
    for name in schema.names:
        if name not in COLUMNS:
            raise InputError(f"{path}: column {name!r} is not a sweep column; not a part of a cosmosim sweep "
                             "(move it out of the results folder)")
    for name, dtype in COLUMNS.items():
        if name not in schema.names:
            raise InputError(f"{path}: column {name!r} is missing; delete the part to recompute its points")
        kind = schema.field(name).type
        if not (_ARROW_KINDS[dtype](kind) or pa.types.is_null(kind)):
            raise InputError(f"{path}: column {name!r} holds {kind}, expected {dtype}; delete the part to recompute "
                             "its points")


def _read_part(path: Path, columns: list[str] | None = None) -> pa.Table:
    try:
        _check_part(path, pq.read_schema(path))
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as error:
        raise InputError(f"{path}: not a readable Parquet part ({error}); delete it to recompute its points") from None


def done_point_ids(out_dir: str | Path) -> set[int]:
    """The points some part already holds."""
    done: set[int] = set()
    for path in _part_paths(Path(out_dir)):
        done.update(_read_part(path, ["point_id"]).column("point_id").to_pylist())
    return done


def write_part(out_dir: str | Path, rows: pd.DataFrame) -> Path:
    """Write one part atomically, named by its smallest point_id (parts never share a point)."""
    buffer = io.BytesIO()
    rows.to_parquet(buffer, index=False)
    return atomic_write_bytes(Path(out_dir) / f"part-{int(rows['point_id'].min()):07d}.parquet", buffer.getvalue())


def read_results(out_dir: str | Path) -> pd.DataFrame:
    """Every finished row, by point_id; `frame.attrs` holds the manifest (and `n_points` planned)."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    tables = [_read_part(path) for path in _part_paths(out_dir)]
    frame = as_frame([]) if not tables else pa.concat_tables(tables).to_pandas().sort_values("point_id", ignore_index=True)
    if frame["point_id"].duplicated().any():
        repeated = int(frame.loc[frame["point_id"].duplicated(), "point_id"].iloc[0])
        raise InputError(f"{out_dir}: point {repeated} is in two part files; the folder was edited by hand")
    frame.attrs["manifest"] = manifest
    return frame


def export_csv(results: pd.DataFrame, path: str | Path) -> Path:
    """The results frame as one CSV file (written atomically)."""
    return atomic_write_text(path, results.to_csv(index=False))
