"""Architecture files: a model's shape as TOML, every number citing its source, and a Hugging Face
config.json read as one.

A file gives the keys of docs/architectures.md (the `Architecture` fields, with `n_experts = 0` for a
dense model), a `description`, a `[sources]` table citing every shape key it gives, and optionally
the `[published]` parameter counts its source states. Shipped files live in `architectures/`, a
user's in the folder named by $COSMOSIM_ARCHS_DIR; both are found by name (the file's stem), any file
by its path. `hf_architecture` maps a config.json's fields onto the same keys (the one mapping,
`cosmosim record --hf` uses it too) and says what it had to approximate. Bad input is one InputError
line naming the file, the key and what was expected.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cosmosim.errors import InputError
from cosmosim.inputs.arch import Architecture
from cosmosim.inputs.hf_config import hf_architecture
from cosmosim.provenance import REPOSITORY

ARCHS_DIR_ENV = "COSMOSIM_ARCHS_DIR"
SHIPPED_DIR = REPOSITORY / "architectures"

_INT, _BOOL, _LAYERS = "an integer", "true or false", "an array of layer indices"
SHAPE_KEYS: dict[str, tuple[str, bool]] = {  # key -> (what it must be, required)
    "n_layers": (_INT, True), "d_model": (_INT, True), "n_heads": (_INT, True), "n_kv_heads": (_INT, True),
    "head_dim": (_INT, False), "vocab_size": (_INT, True), "tied_embeddings": (_BOOL, True),
    "ffn_hidden": (_INT, True), "n_experts": (_INT, True), "top_k": (_INT, False),
    "n_shared_experts": (_INT, False), "shared_ffn_hidden": (_INT, False), "dense_layers": (_LAYERS, False),
    "dense_ffn_hidden": (_INT, False), "wd_rank": (_INT, False),
}
TOP_LEVEL_KEYS = ("name", "description", *SHAPE_KEYS, "published", "sources")
PUBLISHED_KEYS = ("total_params", "active_params", "total_rounding", "active_rounding", "source")
RELATIVE_TOLERANCE = 0.01  # a published count matches within 1%, or within its own rounding if coarser


@dataclass(frozen=True)
class Published:
    """Parameter counts as a model's source states them; `*_rounding` is the unit of the figure's last
    digit where the source rounds ("1.3B": 1e8), so the figure stands for ± half of it."""

    source: str
    total_params: float | None = None
    active_params: float | None = None
    total_rounding: float | None = None
    active_rounding: float | None = None

    def tolerance(self, which: str) -> float:
        """How far ours may lie from the `which` ("total" or "active") figure and still match it."""
        figure, rounding = getattr(self, f"{which}_params"), getattr(self, f"{which}_rounding")
        return max(RELATIVE_TOLERANCE * figure, (rounding or 0) / 2)


@dataclass(frozen=True, eq=False)
class ArchFile:
    arch: Architecture
    description: str
    sources: dict[str, str]
    published: Published | None
    data: dict  # the keys as given (None: does not apply), what `to_toml` writes back
    path: Path | None = None
    sha256: str | None = None
    notes: tuple[str, ...] = ()  # what a Hugging Face mapping approximated


# ---------------------------------------------------------------------------------------- parsing


def _value(source: str, key: str, value: Any, kind: str) -> Any:
    is_int = isinstance(value, int) and not isinstance(value, bool)
    ok = {_INT: is_int, _BOOL: isinstance(value, bool),
          _LAYERS: isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)}
    if not ok[kind]:
        raise InputError(f"{source}: {key} must be {kind}, got {value!r}")
    return tuple(value) if kind == _LAYERS else value


def _text(source: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{source}: {key} must be a non-empty string, got {value!r}")
    return value


def _table(source: str, key: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise InputError(f"{source}: {key} must be a table, got {value!r}")
    return value


def _check_sources(source: str, raw: Any, given: list[str]) -> dict[str, str]:
    """Every shape key the file gives cites where its number comes from (a config.json, a paper and its
    table, or 'fit: <reasoning>'); an uncited key, or a citation of a key not given, is an error."""
    sources = _table(source, "sources", raw)
    for key in given:
        if key not in sources:
            raise InputError(f"{source}: sources.{key} is missing: every key given needs a citation (a config.json "
                             "and its field, a paper with its arXiv id and table, or 'fit: <reasoning>')")
    for key, citation in sources.items():
        if key not in given:
            raise InputError(f"{source}: sources.{key} cites a key the file does not give (given: {', '.join(given)})")
        _text(source, f"sources.{key}", citation)
    return dict(sources)


def _count(source: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InputError(f"{source}: {key} must be a number > 0, got {value!r}")
    return value


def _published(source: str, raw: Any) -> Published | None:
    if raw is None:
        return None
    table = _table(source, "published", raw)
    for key in table:
        if key not in PUBLISHED_KEYS:
            raise InputError(f"{source}: published.{key} is not a known key (expected keys: {', '.join(PUBLISHED_KEYS)})")
    if "source" not in table:
        raise InputError(f"{source}: published.source is missing: say where the published counts are stated")
    if "total_params" not in table and "active_params" not in table:
        raise InputError(f"{source}: published: give total_params, active_params or both")
    for which in ("total", "active"):
        if f"{which}_rounding" in table and f"{which}_params" not in table:
            raise InputError(f"{source}: published.{which}_rounding: rounds no published.{which}_params")
    numbers = {key: _count(source, f"published.{key}", value) for key, value in table.items() if key != "source"}
    return Published(source=_text(source, "published.source", table["source"]), **numbers)


def arch_from_dict(data: Any, *, source: str) -> ArchFile:
    """Validate a parsed architecture file (the TOML layout); `source` names it in messages."""
    data = _table(source, "the architecture", data)
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise InputError(f"{source}: {key} is not a known key (expected keys: {', '.join(TOP_LEVEL_KEYS)})")
    required = ["name", "description", *(key for key, (_, needed) in SHAPE_KEYS.items() if needed), "sources"]
    for key in required:
        if key not in data:
            raise InputError(f"{source}: {key} is missing (required keys: {', '.join(required)})")
    name, description = _text(source, "name", data["name"]), _text(source, "description", data["description"])
    values = {key: _value(source, key, data[key], kind) for key, (kind, _) in SHAPE_KEYS.items() if key in data}
    sources = _check_sources(source, data["sources"], list(values))
    published = _published(source, data.get("published"))
    n_experts, top_k = values["n_experts"], values.get("top_k")
    if n_experts == 1 or n_experts < 0:
        raise InputError(f"{source}: n_experts must be 0 (a dense model) or >= 2 routed experts, got {n_experts}")
    if n_experts and top_k is None:
        raise InputError(f"{source}: top_k is missing: a MoE (n_experts = {n_experts}) routes each token to top_k")
    if not n_experts and top_k not in (None, 0):
        raise InputError(f"{source}: top_k must be 0 or absent for a dense model (n_experts = 0), got {top_k}")
    for key, needs, what in (("shared_ffn_hidden", "n_shared_experts", "shared experts"),
                             ("dense_ffn_hidden", "dense_layers", "dense layers")):
        if key in values and not values.get(needs):
            raise InputError(f"{source}: {key} is given but {needs} names no {what}; drop it or give {needs}")
    dense = not n_experts
    fields = {key: value for key, value in values.items() if key not in ("n_experts", "top_k")}
    try:
        arch = Architecture(name=name, **{"wd_rank": None, **fields}, n_experts=1 if dense else n_experts,
                            top_k=1 if dense else top_k,
                            paper_total_params=published.total_params if published else None,
                            paper_active_params=published.active_params if published else None)
    except InputError as error:
        raise InputError(f"{source}: {error}") from None
    return ArchFile(arch, description, sources, published, dict(data))


# ---------------------------------------------------------------------------------------- writing


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string, ASCII-escaped, is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return repr(value)


def to_toml(data: dict, header: str = "") -> str:
    """An architecture dict (the file's keys; None: does not apply, left out) as the TOML of a file."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"{key} = {_toml_value(data[key])}" for key in TOP_LEVEL_KEYS[:-2] if data.get(key) is not None]
    for table in ("published", "sources"):
        if data.get(table):
            lines += ["", f"[{table}]"] + [f"{key} = {_toml_value(value)}" for key, value in data[table].items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------- files

_LOADED: dict[Path, tuple[tuple[int, int], ArchFile]] = {}  # resolved path -> (mtime, size), the file
_BY_PATH: dict[str, ArchFile] = {}  # name -> the file last loaded by path with that name (see `find`)


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def looks_like_path(text: str) -> bool:
    return text.endswith((".toml", ".json")) or "/" in text or os.sep in text


def user_dir() -> Path | None:
    """The user's folder of architecture files: $COSMOSIM_ARCHS_DIR (unset: none)."""
    folder = os.environ.get(ARCHS_DIR_ENV)
    if not folder:
        return None
    if not Path(folder).is_dir():
        raise InputError(f"{ARCHS_DIR_ENV}={folder}: not a folder of architecture .toml files")
    return Path(folder)


def named_paths() -> dict[str, tuple[Path, str]]:
    """name -> (file, "shipped" or "user"): the shipped files, then the user's. A user's file may not
    take a shipped name: a name means one architecture, in every result that names it."""
    found = {path.stem: (path, "shipped") for path in sorted(SHIPPED_DIR.glob("*.toml"))}
    folder = user_dir()
    for path in sorted(folder.glob("*.toml")) if folder else ():
        if path.stem in found:
            raise InputError(f"{_display(path)}: {path.stem!r} is a shipped architecture's name "
                             f"({_display(found[path.stem][0])}); give yours another name (or pass its path)")
        found[path.stem] = (path, "user")
    return found


def load_arch_file(path: str | Path) -> ArchFile:
    """An architecture .toml, or a Hugging Face config.json (`hf_architecture`), by its path."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: architecture file does not exist")
    stat = path.stat()
    stamp, key = (stat.st_mtime_ns, stat.st_size), path.resolve()
    if key in _LOADED and _LOADED[key][0] == stamp:
        return _LOADED[key][1]
    source, raw = _display(path), path.read_bytes()
    try:
        text = raw.decode("utf-8")
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        kind = "JSON" if path.suffix == ".json" else "TOML"
        raise InputError(f"{source}: not a valid UTF-8 {kind} file: {error}") from None
    if path.suffix == ".json":
        name = path.parent.resolve().name if path.stem == "config" else path.stem
        mapped = hf_architecture(_table(source, "config.json", data), name=name, source=source)
        given = {key: value for key, value in mapped.data.items() if value is not None}
        file = replace(arch_from_dict(given, source=source), notes=mapped.notes)
    else:
        file = arch_from_dict(data, source=source)
    file = replace(file, path=key, sha256=hashlib.sha256(raw).hexdigest())
    _LOADED[key] = (stamp, file)
    return file


def load_named(name: str) -> ArchFile:
    """A shipped or user architecture by name."""
    paths = named_paths()
    if name not in paths:
        raise InputError(f"unknown architecture {name!r}: expected one of {', '.join(paths)}, or a path to a .toml "
                         "architecture file or a Hugging Face config.json")
    file = load_arch_file(paths[name][0])
    if file.arch.name != name:
        raise InputError(f"{_display(paths[name][0])}: name {file.arch.name!r} must be the file's name {name!r} "
                         "(architectures are found by file name)")
    return file


def find(name_or_path: str | Path) -> ArchFile:
    """An architecture by name (shipped, the user's, or one loaded by path earlier in this process: a sweep
    worker prices a path's architecture by its name) or by path. A file loaded by path may not take the
    name of a shipped or user architecture with other numbers."""
    text = str(name_or_path)
    if not (isinstance(name_or_path, Path) or looks_like_path(text)):
        if text not in named_paths() and text in _BY_PATH:
            return _BY_PATH[text]
        return load_named(text)
    file = load_arch_file(name_or_path)
    name = file.arch.name
    if name in named_paths() and load_named(name).arch != file.arch:
        raise InputError(f"{text}: name {name!r} is that of `cosmosim arch {name}`, whose numbers differ; "
                         "give the file another name (a name means one architecture in every result)")
    _BY_PATH[name] = file
    return file


def notes_of(arch: Architecture) -> tuple[str, ...]:
    """What the Hugging Face mapping approximated for an architecture loaded from a config.json."""
    file = _BY_PATH.get(arch.name)
    return file.notes if file is not None and file.arch.with_wd_rank(arch.wd_rank) == arch else ()

