"""Architecture variants: a base architecture with some of its sizes overridden (a sweep's override axes).

`derive(base, {"n_experts": 16, "top_k": 1})` is `dataclasses.replace(base, ...)` named for what
changed, `wearable-moe[n_experts=16,top_k=1]`; `Architecture.__post_init__` validates the result, so
an impossible variant (top_k > n_experts, a d_model its heads do not divide) is an InputError saying
why. An override equal to the base's own value changes nothing and is left out of the name (a variant
that changes nothing is the base, by its own name).

What follows an override: `d_model` also resizes the heads when the base's head_dim is the default
d_model / n_heads (an explicit head_dim is kept); `ffn_hidden` is one routed expert's width (a dense
model's FFN), and the shared experts and dense layers keep their own widths; `n_layers` keeps the
base's dense layers (indices past the new count are refused). The WD rank is applied after, as for
the base (`Architecture.with_wd_rank`).
"""

from __future__ import annotations

from dataclasses import replace

from cosmosim.errors import InputError
from cosmosim.inputs.arch import Architecture

# In the order a variant's name lists them.
OVERRIDES = ("n_experts", "top_k", "ffn_hidden", "n_layers", "d_model", "n_shared_experts")


def changes(base: Architecture, overrides: dict) -> dict:
    """The overrides (None: not overridden) that differ from the base's own values, in OVERRIDES order."""
    unknown = [name for name in overrides if name not in OVERRIDES]
    if unknown:
        raise InputError(f"{unknown[0]!r}: not an architecture override (expected one of {', '.join(OVERRIDES)})")
    return {name: overrides[name] for name in OVERRIDES
            if overrides.get(name) is not None and overrides[name] != getattr(base, name)}


def variant_name(base: Architecture, overrides: dict) -> str:
    """`base[name=value,...]` for the overrides that change something; the base's name if none does."""
    changed = changes(base, overrides)
    if not changed:
        return base.name
    return f"{base.name}[{','.join(f'{name}={value}' for name, value in changed.items())}]"


def derive(base: Architecture, overrides: dict) -> Architecture:
    """The base with `overrides` applied (None values skipped), validated; InputError naming the variant."""
    changed = changes(base, overrides)
    if not changed:
        return base
    fields = dict(changed, name=variant_name(base, overrides))
    default_heads = base.d_model % base.n_heads == 0 and base.head_dim == base.d_model // base.n_heads
    if "d_model" in changed and default_heads:
        fields["head_dim"] = None  # recomputed from the new d_model (and checked)
    return replace(base, **fields)
