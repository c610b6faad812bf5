"""The analytical cost model: closed-form latency, memory and energy that agree with the simulator (docs/analytic-model.md)."""
