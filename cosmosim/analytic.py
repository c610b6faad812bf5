"""The analytical model's public entry points, kept where notebooks and sweeps have always found them.

The model itself lives in `cosmosim.engines.analytic`; this module only names its two front doors.
"""

from cosmosim.engines.analytic.engine import analyze
from cosmosim.engines.analytic.frame import evaluate_points

__all__ = ["analyze", "evaluate_points"]
