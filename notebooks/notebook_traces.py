"""Traces for the notebooks: the recorded ones in traces/, else small synthetic ones, labelled.

The notebooks run on any checkout. When traces/ holds recorded traces (scripts/make_traces.sh),
they use those. When it does not, they fall back to Markov-routing traces from
cosmosim.inputs.synthetic: no trained model is behind them (no validation loss, no λ), and every
table and figure built on them says SYNTHETIC.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cosmosim.inputs.synthetic import sticky_trace
from cosmosim.inputs.trace import load_trace, save_trace

ROOT = next(folder for folder in (Path.cwd(), *Path.cwd().parents) if (folder / "pyproject.toml").is_file())
SYNTHETIC_LABEL = "SYNTHETIC fixture trace (cosmosim.inputs.synthetic: Markov routing, no trained model)"


@dataclass(frozen=True)
class TraceSet:
    paths: list[Path]
    synthetic: bool

    @property
    def label(self) -> str:
        if self.synthetic:
            return SYNTHETIC_LABEL
        return "recorded traces: " + ", ".join(path.name for path in self.paths)


def synthetic_traces(stays: tuple[float, ...], n_tokens: int = 4096) -> list[Path]:
    """Sticky synthetic traces (19 layers, top-2 of 8, for wearable-moe) in a temporary folder;
    `stay` is the chance a token keeps the previous token's experts: higher routes more locally."""
    folder = Path(tempfile.mkdtemp(prefix="cosmosim-notebook-"))
    paths = []
    for index, stay in enumerate(stays):
        trace = sticky_trace(n_tokens=n_tokens, n_layers=19, seq_len=128, stay=stay, seed=index)
        trace.meta.update(target_arch="wearable-moe", source=f"{SYNTHETIC_LABEL}, stay={stay}")
        paths.append(save_trace(trace, folder / f"synthetic-stay{stay:g}.npz"))
    return paths


def traces_or_fixture(pattern: str = "*.npz", *, at_least: int = 1, where: Callable[[dict], bool] | None = None,
                      stays: tuple[float, ...] = (0.6,)) -> TraceSet:
    """Recorded traces under traces/ matching `pattern` (and whose meta satisfies `where`), if there
    are `at_least` of them; else synthetic ones, one per `stays` value."""
    recorded = sorted((ROOT / "traces").glob(pattern))
    if where is not None:
        recorded = [path for path in recorded if where(load_trace(path).meta)]
    if len(recorded) >= at_least:
        return TraceSet(recorded, synthetic=False)
    return TraceSet(synthetic_traces(stays), synthetic=True)
