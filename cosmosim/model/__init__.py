"""The CoSMoEs mini models (a Llama-3 style decoder with optional MoE, full-rank or WD, FFNs), their training and trace recording."""
