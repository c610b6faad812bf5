"""The metric tables of docs/metrics.md, rendered from the metric catalogue.

The page keeps its prose; each table sits between two markers,

    <!-- catalogue: Latency -->
    | key | column | unit | engines | definition |
    ...
    <!-- /catalogue -->

and is the catalogue's section of that name. `python -m cosmosim.results.metrics_doc` rewrites the
tables after a catalogue change; tests/test_catalog.py fails while the page and the catalogue differ.
"""

from __future__ import annotations

import re

from cosmosim.files import atomic_write_text
from cosmosim.provenance import REPOSITORY
from cosmosim.results.catalog import CATALOG, EVERY, SECTIONS, Metric

DOC = REPOSITORY / "docs" / "metrics.md"
BLOCK = re.compile(r"<!-- catalogue: (?P<section>[^>]+?) -->\n.*?<!-- /catalogue -->", re.DOTALL)


def _row(metric: Metric) -> str:
    column = f"`{metric.column}`" if metric.column else "–"
    engines = "all" if metric.engines == EVERY else ", ".join(metric.engines)
    return f"| `{metric.key}` | {column} | {metric.unit} | {engines} | {metric.definition} |"


def table(section: str) -> str:
    """The section's block: markers, header and one row per metric, in catalogue order."""
    rows = [_row(metric) for metric in CATALOG if metric.section == section]
    return "\n".join([f"<!-- catalogue: {section} -->", "| key | column | unit | engines | definition |",
                      "|---|---|---|---|---|", *rows, "<!-- /catalogue -->"])


def sections_in(text: str) -> list[str]:
    """The sections whose tables `text` holds, in order."""
    return [match["section"] for match in BLOCK.finditer(text)]


def render(text: str) -> str:
    """`text` with every table block replaced by the catalogue's; ValueError for an unknown section."""
    unknown = [section for section in sections_in(text) if section not in SECTIONS]
    if unknown:
        raise ValueError(f"{DOC.name}: no catalogue section {unknown[0]!r} (sections: {', '.join(SECTIONS)})")
    return BLOCK.sub(lambda match: table(match["section"]), text)


if __name__ == "__main__":
    atomic_write_text(DOC, render(DOC.read_text(encoding="utf-8")))
