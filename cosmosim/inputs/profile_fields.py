"""The checks every device-profile section shares: known keys, numbers in range, a citation for each.

`cosmosim.inputs.profiles` (the required sections) and `cosmosim.inputs.profile_options` (the
optional ones) validate with these, so every bad value gets the same one-line `InputError` naming
the file, the field and what was expected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from cosmosim.errors import InputError

MICRO = Fraction(1, 10**6)
GIGA = Fraction(10**9)
PICO = Fraction(1, 10**12)


@dataclass(frozen=True)
class Field:
    """One TOML key (in a human unit) and the dataclass field it fills (in SI)."""

    attr: str
    to_si: Fraction  # exact, so 80 us becomes 8e-05 s rather than 7.999...e-05
    plausible: tuple[float, float]  # (lowest, highest) any real device could have, in the TOML unit
    integer: bool = False  # a count in SI (bytes, requests): rounded after scaling
    toml_integer: bool = False  # must be written as a TOML integer (a fractional queue depth is a typo)


def check_keys(source: str, where: str, table: dict, allowed: tuple[str, ...] | list[str],
               optional: tuple[str, ...] = ()) -> None:
    """Every key of `allowed` but the `optional` ones present, and nothing else."""
    missing = [key for key in allowed if key not in table and key not in optional]
    unknown = [key for key in table if key not in allowed]
    if missing:
        raise InputError(f"{source}: {where}{missing[0]} is missing (expected keys: {', '.join(allowed)})")
    if unknown:
        raise InputError(
            f"{source}: {where}{unknown[0]} is not a known key (expected keys: {', '.join(allowed)})"
        )


def table(source: str, field: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise InputError(f"{source}: {field} must be a table, got {value!r}")
    return value


def positive_number(source: str, field: str, value: Any, integer_only: bool = False) -> float:
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if integer_only and not is_int:
        raise InputError(f"{source}: {field} must be an integer, got {value!r}")
    if not (is_int or isinstance(value, float)):
        raise InputError(f"{source}: {field} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{source}: {field} must be > 0, got {value!r}")
    return value


def to_si(source: str, field: str, value: float, spec: Field) -> int | float:
    low, high = spec.plausible
    if not low <= value <= high:
        raise InputError(f"{source}: {field} must be between {low:g} and {high:g} (any real device), got {value!r}")
    # Fraction(repr) takes the decimal the user wrote (68.26), not its binary approximation.
    scaled = Fraction(repr(value)) * spec.to_si
    return round(scaled) if spec.integer else float(scaled)  # the plausible range keeps a count >= 1


def parse_number(source: str, field: str, value: Any, spec: Field) -> int | float:
    """A TOML number checked (> 0, integer where it must be, in the plausible range) and in SI."""
    return to_si(source, field, positive_number(source, field, value, integer_only=spec.toml_integer), spec)


def check_sources(source: str, section: str, values: dict, expected: list[str]) -> None:
    """Every number cites where it comes from: a spec sheet, a paper (arXiv id, table), the kernel's
    source, or 'estimate: <reasoning>'. An uncited number is an error, not a warning."""
    sources = table(source, f"{section}.sources", values["sources"])
    for key in expected:
        if key not in sources:
            raise InputError(
                f"{source}: {section}.sources.{key} is missing: every number needs a citation "
                "(a spec sheet, a paper with its arXiv id and table, or 'estimate: <reasoning>')"
            )
    for key, citation in sources.items():
        if key not in expected:
            raise InputError(
                f"{source}: {section}.sources.{key} cites a field that does not exist "
                f"(fields: {', '.join(expected)})"
            )
        if not isinstance(citation, str) or not citation.strip():
            raise InputError(
                f"{source}: {section}.sources.{key} must be a non-empty citation string, got {citation!r}"
            )
