"""cosmosim: simulate and model on-device decoding of CoSMoEs-style Mixture-of-Experts models."""

__version__ = "0.1.0"
