"""cosmosim: simulate and model on-device decoding of CoSMoEs-style Mixture-of-Experts models."""

from cosmosim import moved as _moved  # noqa: F401  (old module paths say where they went)

__version__ = "0.1.0"
