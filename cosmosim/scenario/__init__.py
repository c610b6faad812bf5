"""One simulated situation: run settings (one validator for every entry point), resolved against a trace, an architecture and a device."""
