"""The device model every engine imports and none owns: flash, compute, operation costs, the DRAM expert cache, its eviction policies and the prefetchers."""
