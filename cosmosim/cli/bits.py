"""The bits-per-weight flags every command spells the same way: a number or a format name."""

from __future__ import annotations

from cosmosim.inputs.precision import FORMATS, Precision, parse_bits, parse_expert_bits

BITS_HELP = (f"Bits per weight of every weight not set otherwise: a number (16, 8, 4.5) or a storage format "
             f"({', '.join(FORMATS)}; block formats count their scales: q4_K is 4.5, docs/precision.md).")


def bits_settings(weight_bits: str, expert_bits: str | None = None, shared_bits: str | None = None) -> dict:
    """RunConfig's weight_bits, expert_bits and shared_bits from the flags' text (InputError naming the flag)."""
    given = {"weight_bits": weight_bits, "shared_bits": shared_bits}
    settings = {name: None if text is None else parse_bits(text, "--" + name.replace("_", "-"))
                for name, text in given.items()}
    return {**settings, **({"expert_bits": None} if expert_bits is None else parse_expert_bits(expert_bits, "--expert-bits"))}


def precision_label(inputs: dict) -> str:
    """'16-bit', or each class's bits when they differ, from a result's inputs."""
    bits = inputs["weight_bits"]
    expert, shared = inputs.get("expert_bits"), inputs.get("shared_bits")
    return Precision(bits, bits if expert is None else expert, bits if shared is None else shared,
                     inputs.get("hot_expert_bits")).label()
