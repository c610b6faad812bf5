"""A real MoE decode on this host that streams experts from disk into a RAM cache (entry point: `cosmosim.engines.replay.run`)."""
