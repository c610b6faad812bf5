"""Release check of shipped data: every profile in device_profiles/ loads, says where it came from,
cites a source or an "estimate: <reasoning>" for every number (docs/device-profiles.md), runs the
architecture that fits it, and is listed in the docs' table of shipped devices. A new profile is
checked by being there."""

import hashlib
import math
import re
import tomllib

import pytest

from cosmosim.errors import InputError
from cosmosim.inputs.profiles import load_profile, profiles_dir, shipped_profiles
from cosmosim.inputs.trace import load_trace
from cosmosim.provenance import REPOSITORY
from cosmosim.runner import prepare, run
from cosmosim.scenario.settings import RunConfig

SECTIONS = ("flash", "dram", "compute", "energy")  # every profile has them, or the one it extends has
# The architectures a shipped profile may run, largest first: a profile runs the first one whose default
# expert cache (its app budget minus the resident weights, KV cache and activations) holds top_k experts.
ARCHITECTURES = ("phone-moe", "wearable-moe")
TRACE = REPOSITORY / "traces" / "moe.npz"
DOCS = REPOSITORY / "docs" / "device-profiles.md"
# What a non-estimate citation names: a year, an arXiv id, a standard, a source file, a spec or data sheet, a paper.
SOURCE_MARK = re.compile(r"\b(19|20)\d\d\b|arXiv|JESD|\b[\w.-]+/[\w./-]+\.[ch]\b|spec|data ?sheet|ISSCC", re.IGNORECASE)


def _data(name: str) -> dict:
    return tomllib.loads((profiles_dir() / f"{name}.toml").read_text())


def _cited_sections(data: dict) -> dict[str, dict]:
    """The file's own sections (required and optional), each with its sources."""
    return {section: table for section, table in data.items() if isinstance(table, dict)}


def _citations(name: str) -> dict[str, str]:
    return {f"{section}.{key}": text for section, table in _cited_sections(_data(name)).items()
            for key, text in table["sources"].items()}


def _chain_bytes(name: str) -> bytes:
    """The file's bytes, then those of the profile it extends, and so on: what its sha256 hashes."""
    raw = (profiles_dir() / f"{name}.toml").read_bytes()
    base = tomllib.loads(raw.decode()).get("extends")
    return raw + (_chain_bytes(base) if base else b"")


def _is_estimate(citation: str) -> bool:
    return citation.lower().startswith("estimate")


def fitting_arch(profile, trace) -> str | None:
    """The largest architecture whose default cache fits the profile's app budget (None: neither fits)."""
    for arch in ARCHITECTURES:
        try:
            prepare(profile, trace, arch, RunConfig())
        except InputError:
            continue
        return arch
    return None


def _docs_table() -> dict[str, dict[str, str]]:
    """The table of shipped devices in docs/device-profiles.md: name -> {column: cell}."""
    lines = DOCS.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| name |"))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = dict(zip(header, (cell.strip() for cell in line.strip("|").split("|"))))
        rows[cells["name"].strip("`")] = cells
    return rows


def test_the_profiles_the_readme_uses_ship():
    assert {"phone", "wearable"} <= set(shipped_profiles())


@pytest.mark.parametrize("name", shipped_profiles())
def test_shipped_profile_loads_with_provenance(name):
    profile = load_profile(name)
    assert profile.name == name
    assert profile.path == (profiles_dir() / f"{name}.toml").resolve()
    assert profile.sha256 == hashlib.sha256(_chain_bytes(name)).hexdigest()
    assert profile.dram.app_budget_bytes < profile.dram.capacity_bytes


@pytest.mark.parametrize("name", shipped_profiles())
def test_every_shipped_number_has_a_real_citation(name):
    data = _data(name)
    assert "extends" in data or set(SECTIONS) <= set(data)
    for section, table in _cited_sections(data).items():
        numeric = {key for key, value in table.items() if key != "sources" and not isinstance(value, str)}
        assert set(table["sources"]) == numeric
        for citation in table["sources"].values():
            assert len(citation) > 40  # a sentence naming a source, not a placeholder
            assert "reference-facts" not in citation


@pytest.mark.parametrize("name", shipped_profiles())
def test_every_citation_names_a_source_or_gives_its_reasoning(name):
    for key, citation in _citations(name).items():
        if _is_estimate(citation):
            # "estimate: <reasoning>": the reasoning works from numbers, not a bare guess
            assert re.search(r"\d", citation), f"{name}: {key} is an estimate without figures: {citation!r}"
        else:
            assert SOURCE_MARK.search(citation), f"{name}: {key} names no source (a year, a paper, a spec, a file)"


@pytest.fixture(scope="module")
def trace():
    return load_trace(TRACE)


@pytest.mark.parametrize("name", shipped_profiles())
def test_every_shipped_profile_runs_the_architecture_that_fits_it(name, trace):
    profile = load_profile(name)
    arch = fitting_arch(profile, trace)
    assert arch is not None, f"{name}: its app budget fits neither {' nor '.join(ARCHITECTURES)}"
    engine = "analytic" if profile.throttle is None else "des"  # the analytic engine has no clock to throttle along
    result = run(profile, trace, arch, RunConfig(tokens=2048), engine=engine)
    assert result["tokens_per_s"] > 0 and math.isfinite(result["tokens_per_s"])
    assert result["energy_mj_per_token"] > 0 and math.isfinite(result["energy_mj_per_token"])
    assert result["peak_dram_mb"] * 1e6 <= profile.dram.app_budget_bytes  # the default cache fits the budget


def test_the_docs_list_every_shipped_device_with_its_estimates_and_architecture(trace):
    table = _docs_table()
    assert sorted(table) == shipped_profiles()
    for name, row in table.items():
        citations = _citations(name)
        estimates = sum(map(_is_estimate, citations.values()))
        assert row["estimates"] == f"{estimates} of {len(citations)}", name
        assert row["fits"] == f"`{fitting_arch(load_profile(name), trace)}`", name
