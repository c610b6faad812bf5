import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cosmosim.errors import InputError
from cosmosim.inputs.arch import LLAMA3_VOCAB_SIZE, TABLE_1, Architecture, arch_table, catalog, catalog_groups, get_arch

TABLE_1_NAMES = [
    "phone-dense-fa",
    "phone-moe",
    "phone-wd",
    "phone-dense-pa",
    "wearable-dense-fa",
    "wearable-moe",
    "wearable-wd",
    "wearable-dense-pa",
]


def tiny_moe(**changes) -> Architecture:
    """Small enough to count by hand: see the expected numbers in the tests below."""
    fields = dict(
        name="tiny", n_layers=2, d_model=8, n_heads=2, n_kv_heads=1, vocab_size=10,
        ffn_hidden=16, n_experts=4, top_k=2, wd_rank=None,
    )
    return Architecture(**{**fields, **changes})


# ------------------------------------------------------------------------------ catalog


def test_catalog_starts_with_the_eight_table_1_rows_in_the_papers_order():
    assert list(TABLE_1) == TABLE_1_NAMES
    assert list(catalog())[:8] == TABLE_1_NAMES
    assert [group for name, group in catalog_groups().items() if name in TABLE_1_NAMES] == ["Table 1"] * 8
    for name in TABLE_1_NAMES:
        arch = catalog()[name]
        assert arch.name == name
        assert arch.vocab_size == LLAMA3_VOCAB_SIZE


@pytest.mark.parametrize("name", TABLE_1_NAMES)
def test_counts_within_two_percent_of_the_paper(name):
    arch = get_arch(name)
    assert arch.active_params() == pytest.approx(arch.paper_active_params, rel=0.02)
    assert arch.total_params() == pytest.approx(arch.paper_total_params, rel=0.02)


@pytest.mark.parametrize(
    "name, layers, heads, d_model",
    [
        ("phone-dense-fa", 16, 32, 2048),
        ("phone-moe", 24, 18, 1440),
        ("phone-wd", 26, 20, 1600),
        ("phone-dense-pa", 28, 24, 3072),
        ("wearable-dense-fa", 19, 8, 512),
        ("wearable-moe", 19, 8, 432),
        ("wearable-wd", 32, 10, 400),
        ("wearable-dense-pa", 29, 12, 768),
    ],
)
def test_shapes_are_the_papers(name, layers, heads, d_model):
    arch = get_arch(name)
    assert (arch.n_layers, arch.n_heads, arch.d_model) == (layers, heads, d_model)
    assert (arch.n_experts, arch.top_k) == ((8, 2) if "dense" not in name else (1, 1))
    assert arch.wd_rank == (d_model // 2 if name.endswith("-wd") else None)


def test_dense_rows_have_equal_active_and_total_and_no_experts():
    for arch in catalog().values():  # every catalog architecture, Table 1 and published
        if not arch.is_moe:
            assert arch.expert_params() == 0
            assert arch.total_params() == arch.active_params() == arch.resident_params()


def test_unknown_architecture_lists_the_known_names():
    with pytest.raises(InputError, match="phone-moe.*wearable-dense-pa"):
        get_arch("phone-mega")


def test_arch_table_one_row_per_arch_with_small_errors():
    table = arch_table(weight_bits=8)
    assert list(table["name"]) == list(catalog())
    table_1 = table[table["group"] == "Table 1"]
    assert list(table_1["name"]) == TABLE_1_NAMES
    assert table_1["total_error_pct"].abs().max() < 2
    assert table_1["active_error_pct"].abs().max() < 2
    assert table_1["total_within_tolerance"].all() and table_1["active_within_tolerance"].all()
    moe = table.set_index("name").loc["wearable-moe"]
    assert moe["expert_mb"] == pytest.approx(get_arch("wearable-moe").expert_params() / 1e6)
    assert table_1["wd_rank"].isna().sum() == 6
    assert (table.set_index("name").loc["phone-dense-fa", ["experts", "top_k"]] == 0).all()  # a file's dense: 0


# ------------------------------------------------------------------------------ counts


def test_tiny_moe_parameter_counts_by_hand():
    arch = tiny_moe()
    # head_dim 4, one KV head: q, o 8x8 each; k, v 8x4 each.
    assert arch.attention_params_per_layer() == 2 * 64 + 2 * 32 == 192
    # + two RMSNorm weights (8 each) + router 4x8
    assert arch.nonexpert_params_of(0) == 192 + 16 + 32 == 240
    assert arch.expert_params() == 3 * 8 * 16 == 384
    assert arch.embedding_params() == arch.lm_head_params() == 80
    assert arch.resident_params() == 80 + 2 * 240 + 8 + 80 == 648
    assert arch.total_params() == 648 + 2 * 4 * 384 == 3720
    assert arch.active_params() == 648 + 2 * 2 * 384 == 2184


def test_tiny_dense_counts_by_hand():
    dense = tiny_moe(n_layers=1, n_kv_heads=2, n_experts=1, top_k=1)
    assert not dense.is_moe
    # MHA 4 x 64, norms 16, the FFN 3 x 8 x 16, no router
    assert dense.nonexpert_params_of(0) == 256 + 16 + 384 == 656
    assert dense.total_params() == 80 + 656 + 8 + 80 == 824


def test_tied_embeddings_drop_the_lm_head():
    assert tiny_moe(tied_embeddings=True).total_params() == tiny_moe().total_params() - 80


def test_weight_decomposed_expert_by_hand():
    # each d x f (or f x d) matrix becomes d x r + r x f: 3 x 4 x (8 + 16)
    assert tiny_moe(wd_rank=4).expert_params() == 288


@pytest.mark.parametrize("name", ["phone-moe", "phone-wd", "wearable-moe", "wearable-wd"])
def test_wd_at_full_rank_is_no_smaller_than_the_dense_expert(name):
    arch = get_arch(name)
    full_rank = min(arch.d_model, arch.ffn_hidden)
    assert arch.with_wd_rank(full_rank).expert_params() >= arch.with_wd_rank(None).expert_params()


@given(d=st.integers(1, 4096), f=st.integers(1, 16384))
def test_wd_full_rank_property(d, f):
    arch = tiny_moe(d_model=d, n_heads=1, n_kv_heads=1, ffn_hidden=f)
    assert arch.with_wd_rank(min(d, f)).expert_params() >= arch.expert_params()


def test_with_wd_rank_changes_only_the_rank():
    arch = get_arch("phone-wd")
    assert arch.with_wd_rank(400).wd_rank == 400
    assert arch.with_wd_rank(400).n_layers == arch.n_layers
    assert arch.with_wd_rank(None).expert_params() == 3 * 1600 * 4352
    with pytest.raises(InputError, match="wd_rank"):
        arch.with_wd_rank(0)


# ------------------------------------------------------------------------------ bytes


@pytest.mark.parametrize("name", TABLE_1_NAMES)
def test_bytes_scale_with_bits(name):
    arch = get_arch(name)
    for count, to_bytes in [
        (arch.expert_params(), arch.expert_bytes),
        (arch.nonexpert_params_of(0), lambda bits: arch.nonexpert_bytes_of(0, bits)),
        (arch.resident_params(), arch.resident_bytes),
    ]:
        assert to_bytes(16) == 2 * count
        assert to_bytes(8) == count
        assert to_bytes(4) == math.ceil(count / 2)


def test_kv_bytes_per_token_by_hand():
    # keys + values, 2 layers, 1 KV head of dim 4
    assert tiny_moe().kv_bytes_per_token() == 2 * 2 * 1 * 4 * 2 == 32
    assert tiny_moe().kv_bytes_per_token(kv_bits=8) == 16


@pytest.mark.parametrize("bits", [0, 0.5, 33, float("nan"), True, "4"])
def test_absurd_bit_widths_are_rejected(bits):
    with pytest.raises(InputError, match="bits per weight"):
        tiny_moe().expert_bytes(bits)
    with pytest.raises(InputError, match="bits per weight"):
        tiny_moe().kv_bytes_per_token(bits)


# ------------------------------------------------------------------------------ FLOPs


def test_tiny_moe_flops_by_hand():
    arch = tiny_moe()
    assert arch.expert_flops_per_token() == 2 * 384 == 768
    # projections + router: 2 x (240 - 16 norm weights); attention: 2 x 2 x d x 5 keys
    assert arch.nonexpert_flops_of(0, 5) == 448 + 160 == 608
    assert arch.lm_head_flops_per_token() == 2 * 10 * 8 == 160
    assert arch.decode_flops_per_token(5) == 2 * (608 + 2 * 768) + 160 == 4448
    # 3 prompt tokens attend to 1 + 2 + 3 keys; the LM head runs once
    assert arch.prefill_flops(3) == 3 * 2 * (448 + 2 * 768) + 2 * 32 * 6 + 160 == 12448


def test_tiny_wd_flops_follow_the_factored_matrices():
    assert tiny_moe(wd_rank=4).expert_flops_per_token() == 2 * 288


@given(prompt_len=st.integers(1, 300), name=st.sampled_from(TABLE_1_NAMES))
def test_prefill_is_the_sum_of_its_tokens(prompt_len, name):
    arch = get_arch(name)
    head = arch.lm_head_flops_per_token()
    per_token = sum(arch.decode_flops_per_token(i) - head for i in range(1, prompt_len + 1))
    assert arch.prefill_flops(prompt_len) == per_token + head


def test_dense_decode_counts_the_ffn_once_per_layer():
    dense = get_arch("phone-dense-fa")
    ffn = 3 * 2048 * 8192
    attention_projections = dense.attention_params_per_layer()
    expected = 16 * (2 * (attention_projections + ffn) + 4 * 2048 * 100) + 2 * LLAMA3_VOCAB_SIZE * 2048
    assert dense.decode_flops_per_token(100) == expected


def test_context_and_prompt_lengths_must_be_positive():
    with pytest.raises(ValueError):
        tiny_moe().decode_flops_per_token(0)
    with pytest.raises(ValueError):
        tiny_moe().prefill_flops(0)


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"n_layers": 0}, "n_layers must be a positive integer, got 0"),
        ({"d_model": -8}, "d_model must be a positive integer, got -8"),
        ({"ffn_hidden": 16.0}, "ffn_hidden must be a positive integer"),
        ({"vocab_size": True}, "vocab_size must be a positive integer"),
        ({"top_k": 5}, r"top_k must be <= n_experts \(4\), got 5"),
        ({"n_heads": 3}, r"n_heads must divide d_model \(8\), got 3"),
        ({"n_kv_heads": 3, "n_heads": 4, "d_model": 8}, r"n_kv_heads must divide n_heads \(4\), got 3"),
        ({"wd_rank": 0}, r"wd_rank must be an integer in \[1, 8\]"),
        ({"wd_rank": 9}, r"wd_rank must be an integer in \[1, 8\]"),
        ({"n_experts": 1, "top_k": 1, "wd_rank": 4}, "wd_rank applies to MoE experts only"),
    ],
)
def test_invalid_architectures_raise_input_error(changes, message):
    with pytest.raises(InputError, match=message) as caught:
        tiny_moe(**changes)
    assert str(caught.value).startswith("architecture 'tiny': ")
    assert "\n" not in str(caught.value)


# ------------------------------------------------------------------------------ shapes beyond Table 1


def test_head_dim_other_than_d_over_heads_by_hand():
    arch = tiny_moe(head_dim=6)  # 2 heads of 6 (12 wide) on d 8, one KV head of 6
    assert arch.attention_params_per_layer() == 2 * 8 * 12 + 2 * 8 * 6 == 288
    assert arch.kv_bytes_per_token() == 2 * 2 * 1 * 6 * 2
    # attention: 2 x 2 x (heads x head_dim) per key
    assert arch.nonexpert_flops_of(0, 5) == 2 * (288 + 32) + 2 * 2 * 12 * 5
    assert tiny_moe(n_heads=3, head_dim=4).head_dim == 4  # 3 does not divide 8: fine once head_dim is given


def test_shared_experts_are_resident_and_active_by_hand():
    base, shared = tiny_moe(), tiny_moe(n_shared_experts=2, shared_ffn_hidden=4)
    one_shared = 3 * 8 * 4
    assert shared.shared_expert_params() == one_shared
    assert shared.nonexpert_params_of(1) == base.nonexpert_params_of(1) + 2 * one_shared
    assert shared.resident_params() == base.resident_params() + 2 * 2 * one_shared
    assert shared.total_params() - base.total_params() == shared.active_params() - base.active_params() == 4 * one_shared
    assert tiny_moe(n_shared_experts=1).shared_ffn_hidden == 16  # defaults to the routed experts' width


def test_dense_layers_have_a_dense_ffn_and_no_experts_by_hand():
    arch = tiny_moe(dense_layers=(0,), dense_ffn_hidden=32)
    assert arch.moe_layers == (1,) and arch.n_moe_layers == 1 and arch.total_experts == 4
    assert arch.nonexpert_params_of(0) == 192 + 16 + 3 * 8 * 32  # attention, norms, dense FFN; no router
    assert arch.nonexpert_params_of(1) == 240
    assert arch.total_params() == 80 + (192 + 16 + 768) + 240 + 8 + 80 + 4 * 384
    assert arch.active_params() == arch.resident_params() + 2 * 384
    assert arch.decode_flops_per_token(5) == (2 * (192 + 768) + 2 * 2 * 8 * 5) + 608 + 2 * 768 + 160


@pytest.mark.parametrize(("changes", "message"), [
    ({"dense_layers": (2,)}, r"dense_layers must be distinct indices in \[0, 2\), got \[2\]"),
    ({"dense_layers": (0, 0)}, "dense_layers must be distinct"),
    ({"dense_layers": (0, 1)}, "lists every one of the 2 layers"),
    ({"n_shared_experts": -1}, "n_shared_experts must be an integer >= 0"),
    ({"n_experts": 1, "top_k": 1, "n_shared_experts": 1}, "apply to a MoE"),
    ({"head_dim": 0}, "head_dim must be a positive integer"),
    ({"shared_ffn_hidden": 0, "n_shared_experts": 1}, "shared_ffn_hidden must be a positive integer"),
])
def test_bad_new_fields_name_the_field(changes, message):
    with pytest.raises(InputError, match=message):
        tiny_moe(**changes)
