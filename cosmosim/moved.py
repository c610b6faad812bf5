"""Old module paths from before the December 2026 restructure: importing one fails with a message
that names its new home, instead of a bare "No module named ...". The table is docs/architecture.md's.
"""

from __future__ import annotations

import importlib.abc
import sys

MOVED = {
    "cosmosim.io": "cosmosim.files",
    "cosmosim.trace": "cosmosim.inputs.trace",
    "cosmosim.locality": "cosmosim.inputs.locality",
    "cosmosim.synthetic": "cosmosim.inputs.synthetic",
    "cosmosim.profiles": "cosmosim.inputs.profiles",
    "cosmosim.arch": "cosmosim.inputs.arch",
    "cosmosim.costs": "cosmosim.device.costs",
    "cosmosim.sim": "cosmosim.device (hardware, cache, policies, prefetch) and cosmosim.engines.des",
    "cosmosim.records": "cosmosim.results.records",
    "cosmosim.metrics": "cosmosim.results.summary",
    "cosmosim.timeline": "cosmosim.results.timeline (run_with_timeline: cosmosim.runner)",
    "cosmosim.replay": "cosmosim.engines.replay.run",
    "cosmosim.calibrate": "cosmosim.host.calibrate",
    "cosmosim.validate": "cosmosim.host.validate",
    "cosmosim.train": "cosmosim.model.train",
    "cosmosim.record": "cosmosim.model.record",
    "cosmosim.analysis": "cosmosim.sweep.analysis",
    "cosmosim.report": "cosmosim.sweep.report",
}


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Consulted after the ordinary finders, so it only ever sees names that no longer exist."""

    def find_spec(self, fullname, path=None, target=None):
        for old, new in MOVED.items():
            if fullname == old or fullname.startswith(old + "."):
                raise ModuleNotFoundError(f"{fullname} moved to {new} (see docs/architecture.md)", name=fullname)
        return None


if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.append(MovedModuleFinder())
