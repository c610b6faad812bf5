"""What the user brings: routing traces (format, locality statistics, synthesis), device profiles and target architectures (the one parameter/byte/FLOP counter)."""
