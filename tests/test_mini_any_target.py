"""A mini for any target (`cosmosim mini`): the derivation rule on a shipped MoE with shared experts and on
user files with dense layers, GQA and WD experts; the model's shared experts and dense layers; the file's
one-line errors; and a user's TOML -> mini -> train -> record -> `cosmosim run` end to end."""

import json

import pytest
import torch

from cosmosim.errors import InputError
from cosmosim.inputs.arch import get_arch
from cosmosim.inputs.arch_files import to_toml
from cosmosim.inputs.trace import load_trace
from cosmosim.model.config import MINI_CONFIGS, ModelConfig
from cosmosim.model.llama import Decoder
from cosmosim.model.mini import (
    MINI_D_MODEL,
    MINI_FORMAT,
    MINI_VOCAB_SIZE,
    load_mini_file,
    mini_config,
    mini_document,
    scaled_width,
)
from cosmosim.model.moe import MoEFeedForward
from cosmosim.scenario.build import prepare

CITE = "a test value"


def write_arch(path, **shape) -> str:
    data = {"name": path.stem, "description": "a user's design for the tests", "vocab_size": 32000,
            "tied_embeddings": False, **shape}
    data["sources"] = {key: CITE for key in data if key not in ("name", "description")}
    path.write_text(to_toml(data))
    return str(path)


# A user's MoE: a dense first layer, GQA 4:1, a shared expert; d 256, so the mini halves every width.
USER = dict(n_layers=3, d_model=256, n_heads=8, n_kv_heads=2, ffn_hidden=512, n_experts=4, top_k=2,
            n_shared_experts=1, shared_ffn_hidden=256, dense_layers=[0], dense_ffn_hidden=1024)


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """`cosmosim train` sets torch's global thread count; give the rest of the suite its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ the rule


def test_qwen15_moe_keeps_depth_experts_top_k_and_shared_experts_and_scales_widths():
    target = get_arch("qwen1.5-moe-a2.7b")
    config = mini_config(target)
    scale = MINI_D_MODEL / target.d_model  # 128 / 2048
    assert (config.n_layers, config.n_experts, config.top_k) == (24, 60, 4)
    assert (config.d_model, config.n_heads, config.n_kv_heads) == (128, 4, 4)  # head size 32; MHA stays MHA
    assert config.ffn_hidden == 88 == round(1408 * scale / 8) * 8
    assert (config.n_shared_experts, config.shared_ffn_hidden) == (1, 352)  # 5632 / 16
    assert config.dense_layers == () and config.wd_rank is None
    assert config.vocab_size == MINI_VOCAB_SIZE == 8192
    # The arch's counter counts the mini as the model builds it.
    assert config.arch.n_shared_experts == 1 and config.arch.moe_layers == tuple(range(24))


def test_the_vocabulary_is_the_committed_tokenizers():
    tokenizer = json.loads(open("traces/tokenizer.json", encoding="utf-8").read())
    assert len(tokenizer["model"]["vocab"]) == MINI_VOCAB_SIZE


def test_a_target_with_dense_layers_gqa_and_wd_experts(tmp_path):
    path = write_arch(tmp_path / "my-wd.toml", n_layers=6, d_model=512, n_heads=16, n_kv_heads=4, ffn_hidden=1536,
                      n_experts=16, top_k=2, wd_rank=256, dense_layers=[0, 1], dense_ffn_hidden=4096)
    config = mini_config(get_arch(path))
    assert (config.n_layers, config.n_experts, config.top_k, config.dense_layers) == (6, 16, 2, (0, 1))
    assert (config.d_model, config.ffn_hidden, config.dense_ffn_hidden) == (128, 384, 1024)  # all x 1/4
    assert config.wd_rank == 64  # d_model / 2, as the target's 256 of 512
    assert (config.n_heads, config.n_kv_heads) == (4, 1)  # 4 query heads per KV head, as the target's 16:4
    assert config.n_shared_experts == 0 and config.arch.moe_layers == (2, 3, 4, 5)


@pytest.mark.parametrize("name, kv_heads", [("granite-3.0-1b-a400m", 2), ("mixtral-8x7b", 1), ("olmoe-1b-7b", 4),
                                            ("qwen2-57b-a14b", 1)])
def test_gqa_ratio_where_four_heads_can_hold_it(name, kv_heads):
    """16:8 keeps its 2:1; 32:8 its 4:1; MHA stays MHA; 28:4 (7:1) is capped at 4:1 (one KV head)."""
    assert mini_config(get_arch(name)).n_kv_heads == kv_heads


def test_a_target_no_wider_than_the_mini_keeps_its_widths(tmp_path):
    path = write_arch(tmp_path / "narrow.toml", n_layers=2, d_model=64, n_heads=4, n_kv_heads=4, ffn_hidden=100,
                      n_experts=4, top_k=1)
    config = mini_config(get_arch(path))
    assert (config.d_model, config.ffn_hidden, config.n_heads) == (64, 100, 2)  # head size 32


def test_widths_round_to_multiples_of_8_and_the_wearable_moe_lands_near_its_named_mini():
    assert [scaled_width(width, 0.5) for width in (1000, 1008, 10, 1)] == [504, 504, 8, 8]  # half up, >= 8
    config, named = mini_config(get_arch("wearable-moe")), MINI_CONFIGS["wearable-moe-mini"]
    assert config.ffn_hidden == 376 and abs(config.num_params() / named.num_params() - 1) < 0.03
    assert (config.n_layers, config.d_model, config.n_experts, config.top_k) == (19, 128, 8, 2)


def test_a_dense_target_gives_a_dense_mini():
    config = mini_config(get_arch("wearable-dense-fa"))
    assert (config.n_experts, config.top_k, config.is_moe) == (1, 1, False)


# ------------------------------------------------------------------ the model's shared experts and dense layers


def test_shared_experts_and_dense_layers_build_as_counted():
    config = ModelConfig(n_layers=3, d_model=32, n_heads=2, n_kv_heads=1, seq_len=16, ffn_hidden=48, n_experts=4,
                         top_k=2, n_shared_experts=2, shared_ffn_hidden=24, dense_layers=(0,), dense_ffn_hidden=96)
    model = Decoder(config)
    assert sum(p.numel() for p in model.parameters()) == config.num_params()
    assert model.layers[0].ffn.w_gate.weight.shape == (96, 32)  # the dense layer's SwiGLU
    assert model.layers[1].ffn.shared.w_gate.weight.shape == (48, 32)  # 2 shared experts of 24, side by side
    logits, routings = model(torch.randint(0, 100, (2, 16)))
    assert logits.shape == (2, 16, config.vocab_size) and len(routings) == 2  # MoE layers 1 and 2 only


def test_the_shared_experts_add_to_the_routed_ones():
    config = ModelConfig(n_layers=1, d_model=32, n_heads=2, n_kv_heads=2, ffn_hidden=48, n_experts=4, top_k=2,
                         n_shared_experts=1, shared_ffn_hidden=40)
    torch.manual_seed(0)
    ffn = MoEFeedForward(config, 0.02, 0.02)
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        out, _ = ffn(x)
        shared = ffn.shared(x)
        ffn.shared = None
        routed, _ = ffn(x)
    assert torch.allclose(out, routed + shared)


def test_a_config_json_round_trips_dense_layers():
    config = ModelConfig(n_layers=3, d_model=32, n_heads=2, n_kv_heads=2, ffn_hidden=48, n_experts=4, top_k=2,
                         dense_layers=(2,))
    again = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.dense_layers == (2,)


# ------------------------------------------------------------------ the file and the command's errors


def test_the_command_writes_the_file_and_it_loads(cli, tmp_path):
    out = tmp_path / "qwen-mini.json"
    code, stdout, _ = cli("mini", "qwen1.5-moe-a2.7b", "--out", out)
    assert code == 0 and "qwen1.5-moe-a2.7b-mini" in stdout
    data = json.loads(out.read_text())
    assert data["format"] == MINI_FORMAT and data["target_arch"] == "qwen1.5-moe-a2.7b"
    assert data["target"]["d_model"] == 2048 and "multiple of 8" in data["rule"]
    mini = load_mini_file(out)
    assert mini.config == mini_config(get_arch("qwen1.5-moe-a2.7b")) and mini.name == "qwen1.5-moe-a2.7b-mini"
    assert data["params"]["total"] == mini.config.num_params()


def test_a_user_file_has_no_target_arch_name(tmp_path):
    path = write_arch(tmp_path / "mine.toml", **USER)
    assert mini_document(get_arch(path), path, None)["target_arch"] is None


@pytest.mark.parametrize("args, message", [
    (["nope", "--out", "{tmp}/m.json"], "unknown architecture 'nope'"),
    (["qwen1.5-moe-a2.7b", "--out", "{tmp}/m.txt"], "expected a .json file"),
    (["{tmp}/config.json", "--out", "{tmp}/config.json"], "is the TARGET input"),
    (["{tmp}/missing.toml", "--out", "{tmp}/m.json"], "missing.toml"),
])
def test_bad_input_is_one_line_and_exit_2(cli, tmp_path, args, message):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mixtral"}))
    code, _, err = cli("mini", *[arg.format(tmp=tmp_path) for arg in args])
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"format": "other"}), "format"),
    (json.dumps({"format": MINI_FORMAT, "name": "x", "model": {}, "extra": 1}), "extra: unknown key"),
    (json.dumps({"format": MINI_FORMAT, "name": "x", "model": {"n_layers": 2}}), "missing 3 required"),
    (json.dumps({"format": MINI_FORMAT, "name": "x", "model": {"n_layers": 2, "d_model": 32, "n_heads": 2,
                                                               "n_kv_heads": 2, "bogus": 1}}), "bogus"),
    (json.dumps({"format": MINI_FORMAT, "name": "x", "model": {"n_layers": 2, "d_model": 32, "n_heads": 2,
                 "n_kv_heads": 2, "n_experts": 4, "top_k": 2, "dense_layers": [0, 1]}}), "no layer has experts"),
])
def test_a_bad_mini_file_is_an_input_error(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        load_mini_file(path)


def test_train_refuses_a_bad_mini_file_in_one_line(cli, tmp_path, sample_corpus):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"format": "other"}))
    code, _, err = cli("train", "--config", path, "--corpus", sample_corpus, "--out", tmp_path / "run", "--steps", 1)
    assert code == 2 and "format" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------ end to end


def test_user_toml_to_mini_to_trace_to_simulation(cli, tmp_path, sample_corpus):
    arch_path = write_arch(tmp_path / "my-moe.toml", **USER)
    mini_path, run, trace_path = tmp_path / "my-moe-mini.json", tmp_path / "run", tmp_path / "my-moe.npz"
    assert cli("mini", arch_path, "--out", mini_path)[0] == 0
    config = load_mini_file(mini_path).config
    assert (config.d_model, config.n_heads, config.n_kv_heads, config.ffn_hidden) == (128, 4, 1, 256)
    assert (config.shared_ffn_hidden, config.dense_layers, config.dense_ffn_hidden) == (128, (0,), 512)

    common = ("--config", mini_path, "--corpus", sample_corpus, "--out", run, "--batch-size", 4, "--eval-every", 2,
              "--threads", 1)
    code, stdout, err = cli("train", *common, "--steps", 3)
    assert code == 0, err
    code, _, err = cli("train", *common, "--steps", 3)  # resumes (nothing left): the saved config reads back equal
    assert code == 0, err
    header = json.loads((run / "config.json").read_text())
    assert header["state"]["step"] == 3 and header["config_name"] == "my-moe-mini"
    assert header["target_arch"] is None and header["mini"]["target"]["name"] == "my-moe"
    assert header["model"]["dense_layers"] == [0] and header["model"]["vocab_size"] == 512  # the corpus'

    code, _, err = cli("record", "--checkpoint", run, "--out", trace_path, "--corpus", sample_corpus, "--tokens", 512)
    assert code == 0, err
    trace = load_trace(trace_path)
    assert trace.experts.shape[1:] == (2, 2)  # the two MoE layers, top-2
    model = trace.meta["model"]
    assert (model["n_layers"], model["moe_layers"], model["n_model_layers"]) == (2, [1, 2], 3)
    assert (model["n_shared_experts"], model["shared_ffn_hidden"]) == (1, 128)
    assert trace.meta["mini"]["target"]["name"] == "my-moe"

    out_json = tmp_path / "result.json"
    code, stdout, err = cli("run", "--profile", "wearable", "--trace", trace_path, "--arch", arch_path,
                            "--tokens", 200, "--json", out_json, "--quiet")
    assert code == 0, err
    scenario = prepare("wearable", trace_path, arch_path)
    assert not [w for w in scenario.warnings if w.startswith("layers:")]  # trace layer i is MoE layer i
    result = json.loads(out_json.read_text())
    assert result["tokens_per_s"] > 0 and 0 <= result["hit_rate"] <= 1
