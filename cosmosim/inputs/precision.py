"""Weight precision: bits per weight for each class of tensor, and the storage formats that give them.

A block format stores its scales beside the quantised weights, so its cost is a real number of bits
per weight: llama.cpp's Q4_K keeps 256 weights in 144 bytes (two fp16 super-block scales, 12 bytes of
6-bit sub-block scales and mins, 128 bytes of 4-bit quants), 4.5 bits a weight. Every format below
is (weights per block, bytes per block) as its source lays the block out; `tests/test_precision.py`
checks the GGUF ones against the `gguf` package's own table (GGML_QUANT_SIZES).

Three classes of weight may differ (`Precision`): the routed experts (what the cache and the flash
move), the shared experts, and everything else (attention, embeddings, norms, routers, dense FFNs,
the LM head). The KV cache and activations stay 16-bit. The routed experts may themselves come in
two sizes: the "hot" ones (the most used in a trace's warm-up) at more bits than the rest
(`parse_expert_bits`: `hot=8,cold=4`), which makes the expert cache count bytes, not experts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cosmosim.errors import InputError

MIN_BITS, MAX_BITS = 1, 32


@dataclass(frozen=True)
class WeightFormat:
    name: str
    block_weights: int
    block_bytes: int
    source: str

    @property
    def bits(self) -> float:
        return 8 * self.block_bytes / self.block_weights


_GGML = "ggml/src/ggml-common.h"
FORMATS: dict[str, WeightFormat] = {f.name: f for f in (
    WeightFormat("f32", 1, 4, "IEEE 754 binary32"),
    WeightFormat("bf16", 1, 2, "bfloat16: 8-bit exponent, 7-bit mantissa"),
    WeightFormat("f16", 1, 2, "IEEE 754 binary16"),
    WeightFormat("fp8", 1, 1, "FP8 E4M3/E5M2 (Micikevicius et al., arXiv 2209.05433); one scale per tensor, not counted"),
    WeightFormat("int8", 1, 1, "8-bit integers with one scale per output channel, not counted"),
    WeightFormat("int4", 2, 1, "4-bit integers with one scale per output channel, not counted"),
    WeightFormat("q8_0", 32, 34, f"{_GGML} block_q8_0: fp16 scale + 32 int8 quants"),
    WeightFormat("q6_k", 256, 210, f"{_GGML} block_q6_K: ql[128] + qh[64] + 16 int8 scales + fp16 scale"),
    WeightFormat("q5_k", 256, 176, f"{_GGML} block_q5_K: 2 fp16 scales + scales[12] + qh[32] + qs[128]"),
    WeightFormat("q4_k", 256, 144, f"{_GGML} block_q4_K: 2 fp16 scales + scales[12] + qs[128]"),
    WeightFormat("q4_0", 32, 18, f"{_GGML} block_q4_0: fp16 scale + 16 bytes of 4-bit quants"),
    WeightFormat("iq4_xs", 256, 136, f"{_GGML} block_iq4_xs: fp16 scale + scales_h (2) + scales_l[4] + qs[128]"),
    WeightFormat("mxfp4", 32, 17, "OCP Microscaling Formats (MX) v1.0: 32 FP4 (E2M1) elements + one E8M0 scale; "
                                  f"{_GGML} block_mxfp4"),
    WeightFormat("q3_k", 256, 110, f"{_GGML} block_q3_K: hmask[32] + qs[64] + scales[12] + fp16 scale"),
    WeightFormat("q2_k", 256, 84, f"{_GGML} block_q2_K: scales[16] + qs[64] + 2 fp16 scales"),
)}


def parse_bits(value: object, where: str, *, numbers_as_text: bool = True) -> float:
    """Bits per weight from a number (1-32, e.g. 4 or 4.25) or a format name (q4_K, bf16, mxfp4; any
    case); InputError naming `where` otherwise. A whole number stays an int (16, not 16.0). A number
    written as text ("4.5") counts only with `numbers_as_text` (a flag's text; not a TOML string)."""
    if isinstance(value, str):
        text = value.strip()
        known = FORMATS.get(text.lower())
        if known is not None:
            bits = known.bits
            return int(bits) if bits.is_integer() else bits
        try:
            if not numbers_as_text:
                raise ValueError(text)
            value = float(text)
        except ValueError:
            raise InputError(f"{where}: expected bits per weight ({MIN_BITS}-{MAX_BITS}) or a format "
                             f"({', '.join(FORMATS)}), got {text!r}") from None
    try:
        check_bits(value)
    except ValueError as bad:
        raise InputError(f"{where}: {bad} or a format name, got {value!r}") from None
    return int(value) if float(value).is_integer() else float(value)


def check_bits(value: object) -> None:
    """ValueError unless `value` is already a number of bits per weight (what a RunConfig holds)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not MIN_BITS <= value <= MAX_BITS:
        raise ValueError(f"expected bits per weight in [{MIN_BITS}, {MAX_BITS}]")


@dataclass(frozen=True)
class Precision:
    """Bits per weight of each class: `weights` (everything not named), `routed` and `shared` experts."""

    weights: float = 16
    routed: float = 16  # every routed expert, or the cold ones when `hot` is set
    shared: float = 16
    hot: float | None = None  # the hot routed experts' bits (None: one size for every routed expert)

    @classmethod
    def uniform(cls, bits: float) -> Precision:
        return cls(bits, bits, bits)

    @classmethod
    def of(cls, bits: Precision | float) -> Precision:
        """A Precision as given, or one number for every class."""
        return bits if isinstance(bits, Precision) else cls.uniform(bits)

    @property
    def is_uniform(self) -> bool:
        return self.weights == self.routed == self.shared and self.hot is None

    def label(self) -> str:
        """'16-bit', or 'experts 4.5 / shared 8 / other 16 bits' when the classes differ (experts
        'hot 8, cold 4' when they come in two sizes)."""
        if self.is_uniform:
            return f"{self.weights:g}-bit"
        experts = f"{self.routed:g}" if self.hot is None else f"hot {self.hot:g}, cold {self.routed:g}"
        return f"experts {experts} / shared {self.shared:g} / other {self.weights:g} bits"


HOT_SHARE = 0.25  # the hot experts when neither a count nor a budget is given: this share of all routed experts


def parse_expert_bits(value: str, where: str) -> dict:
    """RunConfig's routed-expert settings from `--expert-bits`: bits for every routed expert ("4.5", "q4_K"),
    or two sizes, "hot=BITS,cold=BITS", optionally with how many are hot: "count=N" (experts, over all
    layers) or "mb=M" (the hot experts' bytes, at their bits); by default a quarter of them."""
    if "=" not in value:
        return {"expert_bits": parse_bits(value, where)}
    parts: dict[str, str] = {}
    for item in value.split(","):
        name, sep, text = item.partition("=")
        name = name.strip().lower()
        if not sep or name not in ("hot", "cold", "count", "mb") or name in parts:
            raise InputError(f"{where}: expected hot=BITS,cold=BITS[,count=N or mb=M], got {value!r}")
        parts[name] = text.strip()
    if "hot" not in parts or "cold" not in parts:
        raise InputError(f"{where}: expected both hot=BITS and cold=BITS, got {value!r}")
    if "count" in parts and "mb" in parts:
        raise InputError(f"{where}: give the hot experts as count=N or mb=M, not both, got {value!r}")
    settings = {"expert_bits": parse_bits(parts["cold"], f"{where} cold"),
                "hot_expert_bits": parse_bits(parts["hot"], f"{where} hot")}
    try:
        if "count" in parts:
            settings["hot_experts"] = int(parts["count"])
        if "mb" in parts:
            settings["hot_mb"] = float(parts["mb"])
    except ValueError:
        raise InputError(f"{where}: count= takes a whole number of experts and mb= a size in MB, got {value!r}") from None
    return settings


def weight_bytes(n_params: int, bits: float) -> int:
    """Bytes of n_params weights at `bits` per weight, rounded up to whole bytes."""
    try:
        check_bits(bits)
    except ValueError as bad:
        raise InputError(f"bits per weight: {bad}, got {bits!r}") from None
    return math.ceil(n_params * bits / 8)
