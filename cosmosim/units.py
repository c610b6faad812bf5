"""Units every stage shares: results report sizes in MB (10^6 bytes); hardware sizes are binary."""

MB = 1e6  # results: memory, flash traffic and cache sizes are reported in MB
KIB, MIB, GIB = 1024, 1024**2, 1024**3
