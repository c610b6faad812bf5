"""The analytical cost model: closed-form latency, memory and energy that agree with the simulator.

- `analyze(scenario)`: one scenario's records, the analytic twin of `cosmosim.sim.engine.simulate`
  (behind `cosmosim run --engine analytic`);
- `evaluate_points(frame)`: many design points at once, vectorised over a pandas DataFrame.

Formulas and where they are exact: docs/analytic-model.md.
"""

from cosmosim.analytic.engine import analyze
from cosmosim.analytic.frame import evaluate_points

__all__ = ["analyze", "evaluate_points"]
