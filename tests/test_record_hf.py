"""`cosmosim record --hf`: tiny random models of each supported family, saved as Hugging Face folders,
recorded through the command line, and the trace checked against routing recomputed here from the
router weights and the router's input (not from what the recorder captured)."""

import json
import sys
import tomllib

import numpy as np
import pytest

from cosmosim.inputs.trace import load_trace

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

VOCAB, D_MODEL, HEADS, KV_HEADS = 100, 32, 4, 2
COMMON = {"vocab_size": VOCAB, "hidden_size": D_MODEL, "num_hidden_layers": 3, "num_attention_heads": HEADS,
          "num_key_value_heads": KV_HEADS, "num_experts_per_tok": 2, "max_position_embeddings": 64,
          "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": None}
# family -> (config, routed experts, renormalised over the top-k as its modeling code says, MoE layers,
# shared experts (count, width)). OLMoE and Qwen2-MoE keep their default norm_topk_prob (false).
FAMILIES = {
    "mixtral": (lambda: transformers.MixtralConfig(intermediate_size=48, num_local_experts=4, **COMMON),
                4, True, [0, 1, 2], (0, None)),
    "olmoe": (lambda: transformers.OlmoeConfig(intermediate_size=48, num_experts=8, **COMMON),
              8, False, [0, 1, 2], (0, None)),
    "qwen2_moe": (lambda: transformers.Qwen2MoeConfig(intermediate_size=64, moe_intermediate_size=24, num_experts=6,
                                                      shared_expert_intermediate_size=40, mlp_only_layers=[1],
                                                      **COMMON),
                  6, False, [0, 2], (1, 40)),
    "qwen3_moe": (lambda: transformers.Qwen3MoeConfig(intermediate_size=64, moe_intermediate_size=24, num_experts=8,
                                                      decoder_sparse_step=2, norm_topk_prob=True, **COMMON),
                  8, True, [1], (0, None)),
}
SEQ_LEN = 16


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """family -> (model folder, the model in memory). Router weights are spread (std 0.3) so that top-k
    choices are clear-cut rather than near-ties among almost uniform probabilities."""
    built = {}
    for family, (make_config, *_) in FAMILIES.items():
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(make_config()).eval()
        with torch.no_grad():
            for layer in model.model.layers:
                if hasattr(layer.mlp, "gate") and hasattr(layer.mlp.gate, "top_k"):
                    layer.mlp.gate.weight.normal_(0.0, 0.3)
        folder = tmp_path_factory.mktemp(family)
        model.save_pretrained(folder)
        built[family] = (folder, model)
    return built


@pytest.fixture(scope="module")
def token_ids():
    return np.random.default_rng(0).integers(0, VOCAB, size=200)


@torch.no_grad()
def reference_routing(model, windows_NT, moe_layers, renormalise: bool):
    """Experts [N·T, L, K] and gates from softmax(h @ W_gate.T) top-k, h the router's input (the
    post-attention norm's output), checked against the router logits the model itself returns."""
    inputs = {}
    hooks = [layer.post_attention_layernorm.register_forward_hook(
        lambda _module, _args, out, i=i: inputs.__setitem__(i, out)) for i, layer in enumerate(model.model.layers)]
    out = model(input_ids=windows_NT, output_router_logits=True)
    for hook in hooks:
        hook.remove()
    experts, gates = [], []
    for index, model_logits in zip(moe_layers, out.router_logits, strict=True):
        h_Nd = inputs[index].reshape(-1, D_MODEL).double()
        logits_NE = h_Nd @ model.model.layers[index].mlp.gate.weight.double().T
        torch.testing.assert_close(model_logits.double(), logits_NE, atol=1e-5, rtol=1e-5)
        top_NK, ids_NK = torch.softmax(logits_NE, dim=-1).topk(2, dim=-1)
        gates.append(top_NK / top_NK.sum(-1, keepdim=True) if renormalise else top_NK)
        experts.append(ids_NK)
    return torch.stack(experts, 1).numpy(), torch.stack(gates, 1).numpy()


@pytest.mark.parametrize("family", FAMILIES)
def test_recorded_routing_is_the_routers(cli, models, token_ids, family, tmp_path):
    folder, model = models[family]
    _, n_experts, renormalised, moe_layers, (n_shared, shared_width) = FAMILIES[family]
    if family == "olmoe":  # the other form of token ids: whitespace-separated ints
        ids_path = tmp_path / "ids.txt"
        ids_path.write_text(" ".join(map(str, token_ids)))
    else:
        ids_path = tmp_path / "ids.npy"
        np.save(ids_path, token_ids)
    out, arch_out = tmp_path / "trace.npz", tmp_path / "arch.toml"
    code, _, err = cli("record", "--hf", folder, "--token-ids", ids_path, "--tokens", 150,
                       "--seq-len", SEQ_LEN, "--out", out, "--arch-out", arch_out)
    assert code == 0, err
    trace = load_trace(out)

    n_windows = 150 // SEQ_LEN  # whole windows only
    windows_NT = torch.from_numpy(token_ids[: n_windows * SEQ_LEN].reshape(n_windows, SEQ_LEN))
    experts, gates = reference_routing(model, windows_NT, moe_layers, renormalised)
    assert trace.experts.shape == (n_windows * SEQ_LEN, len(moe_layers), 2)
    np.testing.assert_array_equal(trace.experts, experts)
    np.testing.assert_allclose(trace.gates.astype(np.float64), gates, rtol=2e-3, atol=1e-4)
    assert (np.diff(trace.gates.astype(np.float32), axis=-1) <= 0).all()  # by descending gate
    np.testing.assert_array_equal(trace.tokens, token_ids[: n_windows * SEQ_LEN])
    np.testing.assert_array_equal(trace.positions, np.tile(np.arange(SEQ_LEN), n_windows))

    meta = trace.meta
    assert meta["gates"]["renormalised_top_k"] is renormalised and meta["gates"]["present"] is True
    sums = trace.gates.astype(np.float32).sum(-1)
    assert np.allclose(sums, 1, atol=2e-3) if renormalised else (sums <= 1.001).all() and sums.mean() < 0.95
    assert meta["model"]["n_experts"] == n_experts and meta["model"]["top_k"] == 2
    assert meta["model"]["moe_layers"] == moe_layers and meta["model"]["n_layers"] == len(moe_layers)
    # Shared experts are every token's, not routed: counted in meta, never among the expert ids.
    assert (meta["model"]["n_shared_experts"], meta["model"]["shared_ffn_hidden"]) == (n_shared, shared_width)
    assert trace.experts.max() < n_experts
    assert meta["hf"]["model_type"] == family
    assert meta["hf"]["config"] == json.loads((folder / "config.json").read_text())
    assert meta["hf"]["transformers_version"] == transformers.__version__
    assert meta["training"] is None and meta["target_arch"] is None and meta["source"].startswith(
        f"recorded from Hugging Face model at {folder}")

    arch = meta["architecture"]
    check_architecture(arch, model, moe_layers, n_shared)
    assert tomllib.loads(arch_out.read_text()) == {k: v for k, v in arch.items() if v is not None}


def test_a_family_without_a_known_rule_is_recorded_as_its_router_weighs(cli, token_ids, tmp_path):
    """GPT-OSS takes the top-k of the logits, then a softmax over those k: gates sum to 1, read from the gates."""
    torch.manual_seed(0)
    config = transformers.GptOssConfig(intermediate_size=24, num_local_experts=4, head_dim=8, **COMMON)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(tmp_path / "gpt_oss")
    ids, out = tmp_path / "ids.npy", tmp_path / "trace.npz"
    np.save(ids, token_ids)
    code, _, err = cli("record", "--hf", tmp_path / "gpt_oss", "--token-ids", ids, "--seq-len", SEQ_LEN, "--out", out)
    assert code == 0, err
    trace = load_trace(out)
    n = trace.n_tokens
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(token_ids[:n].reshape(-1, SEQ_LEN)), output_router_logits=True)
    top_LNK, ids_LNK = torch.stack(logits.router_logits).double().topk(2, dim=-1)
    np.testing.assert_array_equal(trace.experts, ids_LNK.permute(1, 0, 2).numpy())
    np.testing.assert_allclose(trace.gates, top_LNK.softmax(-1).permute(1, 0, 2).numpy(), rtol=2e-3, atol=1e-4)
    assert trace.meta["gates"]["renormalised_top_k"] is True and "measured" in trace.meta["gates"]["how"]


def check_architecture(arch, model, moe_layers, n_shared):
    """The architecture's sizes against the model's own modules: every parameter they describe."""
    assert (arch["n_layers"], arch["d_model"], arch["n_heads"], arch["n_kv_heads"], arch["head_dim"]) == (
        3, D_MODEL, HEADS, KV_HEADS, D_MODEL // HEADS)
    assert (arch["vocab_size"], arch["tied_embeddings"], arch["wd_rank"]) == (VOCAB, False, None)
    assert arch["dense_layers"] == [i for i in range(3) if i not in moe_layers]
    params = dict(model.named_parameters())

    def count(part: str) -> int:
        return sum(p.numel() for name, p in params.items() if part in name)

    d, swiglu = arch["d_model"], 3  # gate, up and down matrices
    assert count("embed_tokens") == arch["vocab_size"] * d
    for i in moe_layers:
        assert count(f"layers.{i}.mlp.experts.") == arch["n_experts"] * swiglu * d * arch["ffn_hidden"]
        assert count(f"layers.{i}.mlp.gate.") == arch["n_experts"] * d
        assert count(f"layers.{i}.mlp.shared_expert.") == n_shared * swiglu * d * (arch["shared_ffn_hidden"] or 0)
    for i in arch["dense_layers"]:
        assert count(f"layers.{i}.mlp.") == swiglu * d * arch["dense_ffn_hidden"]
    q_proj = model.model.layers[0].self_attn.q_proj.weight
    k_proj = model.model.layers[0].self_attn.k_proj.weight
    assert q_proj.shape == (arch["n_heads"] * arch["head_dim"], d)
    assert k_proj.shape == (arch["n_kv_heads"] * arch["head_dim"], d)


def char_tokenizer():
    """A character-level tokenizer of the printable ASCII letters, within the models' 100-token vocabulary."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{chr(c): c - 31 for c in range(32, 127)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]")


@pytest.fixture(scope="module")
def with_tokenizer(models, tmp_path_factory):
    """The Mixtral folder again, with a tokenizer saved beside its weights."""
    import shutil

    folder = tmp_path_factory.mktemp("mixtral-tok") / "model"
    shutil.copytree(models["mixtral"][0], folder)
    char_tokenizer().save_pretrained(folder)
    return folder


def test_text_is_encoded_with_the_folders_tokenizer(cli, with_tokenizer, tmp_path):
    text = tmp_path / "story.txt"
    text.write_text("It is a truth universally acknowledged, that a single man in possession of a good fortune. " * 2)
    out = tmp_path / "trace.npz"
    code, _, err = cli("record", "--hf", with_tokenizer, "--text", text, "--seq-len", SEQ_LEN, "--out", out)
    assert code == 0, err
    trace = load_trace(out)
    expected = char_tokenizer()(text.read_text(), add_special_tokens=False)["input_ids"]
    n = len(expected) // SEQ_LEN * SEQ_LEN
    np.testing.assert_array_equal(trace.tokens, expected[:n])


def test_a_corpus_split_is_its_raw_text_encoded_with_the_models_tokenizer(cli, with_tokenizer, sample_corpus,
                                                                          tmp_path):
    out = tmp_path / "trace.npz"
    code, _, err = cli("record", "--hf", with_tokenizer, "--corpus-split", "trace", "--corpus", sample_corpus,
                       "--seq-len", 32, "--tokens", 32 * 8, "--out", out)
    assert code == 0, err
    trace = load_trace(out)
    names = json.loads((sample_corpus / "manifest.json").read_text())["domains"]
    assert trace.meta["domain_names"] == list(names) and trace.n_tokens == 32 * 8
    first = char_tokenizer()((sample_corpus / "trace" / f"{names[0]}.txt").read_text(), add_special_tokens=False)
    np.testing.assert_array_equal(trace.tokens[:32], first["input_ids"][:32])  # window 0 of the first domain
    np.testing.assert_array_equal(trace.domains[::32], np.arange(8) % len(names))  # every domain in turn


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def bad_folders(tmp_path):
    """Folders a user might point --hf at by mistake."""
    empty = tmp_path / "empty"
    empty.mkdir()
    dense, unknown = tmp_path / "llama", tmp_path / "unknown"
    transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=D_MODEL, num_hidden_layers=1,
                             num_attention_heads=HEADS).save_pretrained(dense)
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"model_type": "frobnicator-moe"}))
    return {"empty": empty, "dense": dense, "unknown": unknown}


@pytest.mark.parametrize("case, expected", [
    ("no config.json", "empty/config.json: missing; expected a Hugging Face model folder"),
    ("dense model", "model_type 'llama': not a Mixture-of-Experts model"),
    ("unknown model_type", "model_type: 'frobnicator-moe' is not a model type transformers"),
    ("two token sources", "give exactly one token source, got --text and --token-ids"),
    ("no token source", "give exactly one token source, got none"),
    ("out is an input", "--out {ids}: is the --token-ids input"),
    ("out inside the model folder", "--out {model}/trace.npz: is inside {model}"),
    ("both models", "--checkpoint, --hf: give exactly one model to record from"),
    ("no model", "--checkpoint, --hf: give exactly one model to record from"),
    ("hf flag with a checkpoint", "--token-ids: only with --hf"),
    ("text without a tokenizer", "no tokenizer in the model folder"),
    ("ids outside the vocabulary", "ids.npy: token ids in [0, 199]; expected [0, 100), the model's vocabulary"),
    ("too few tokens", "ids.npy: 50 tokens, fewer than one window of --seq-len 64"),
    ("unknown corpus split", "--corpus-split 'test': expected one of train, val, trace"),
    ("seq-len past the context", "--seq-len 65: expected 1–64 (the model's max_position_embeddings)"),
])
def test_bad_input_is_one_line_naming_it(cli, models, bad_folders, tmp_path, case, expected):
    model = models["qwen3_moe"][0]
    ids, text, out = tmp_path / "ids.npy", tmp_path / "a.txt", tmp_path / "trace.npz"
    special = {"ids outside the vocabulary": np.arange(200), "too few tokens": np.arange(50)}
    np.save(ids, special.get(case, np.arange(200) % VOCAB))
    text.write_text("hello")
    source = ["--token-ids", ids]
    args = {
        "no config.json": ["--hf", bad_folders["empty"], *source, "--out", out],
        "dense model": ["--hf", bad_folders["dense"], *source, "--out", out],
        "unknown model_type": ["--hf", bad_folders["unknown"], *source, "--out", out],
        "two token sources": ["--hf", model, "--text", text, *source, "--out", out],
        "no token source": ["--hf", model, "--out", out],
        "out is an input": ["--hf", model, *source, "--out", ids],
        "out inside the model folder": ["--hf", model, *source, "--out", model / "trace.npz"],
        "both models": ["--hf", model, "--checkpoint", tmp_path, *source, "--out", out],
        "no model": [*source, "--out", out],
        "hf flag with a checkpoint": ["--checkpoint", tmp_path, *source, "--out", out],
        "text without a tokenizer": ["--hf", model, "--text", text, "--out", out],
        "ids outside the vocabulary": ["--hf", model, *source, "--out", out],
        "too few tokens": ["--hf", model, *source, "--seq-len", 64, "--out", out],
        "unknown corpus split": ["--hf", model, "--corpus-split", "test", "--out", out],
        "seq-len past the context": ["--hf", model, *source, "--seq-len", 65, "--out", out],
    }[case]
    code, stdout, err = cli("record", *args)
    assert code == 2 and stdout == "", err
    assert expected.format(ids=ids, model=model) in one_line(err)
    assert not out.exists()


def test_without_transformers_the_line_says_what_to_install(cli, models, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now raises ImportError
    ids = tmp_path / "ids.npy"
    np.save(ids, np.arange(64))
    code, _, err = cli("record", "--hf", models["mixtral"][0], "--token-ids", ids, "--out", tmp_path / "t.npz")
    assert code == 2 and 'pip install "cosmosim[hf]"' in one_line(err)
