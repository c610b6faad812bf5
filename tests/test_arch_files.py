"""Architecture files: the loader's one-line errors, writing and reading back, the user's folder, names,
`--arch FILE` through both engines and a sweep axis, and Hugging Face config.json files read as
architectures, counted against the model transformers builds from them."""

import copy
import json
import tomllib

import pytest

from cosmosim.errors import InputError
from cosmosim.inputs.arch import catalog, catalog_groups, get_arch
from cosmosim.inputs.arch_files import (
    ARCHS_DIR_ENV,
    SHIPPED_DIR,
    arch_from_dict,
    find,
    load_arch_file,
    named_paths,
    notes_of,
    to_toml,
)
from cosmosim.inputs.hf_config import hf_architecture
from cosmosim.inputs.synthetic import synthesize
from cosmosim.inputs.trace import save_trace
from cosmosim.sweep.dataset import read_results

CITE = "a test value, cited for the loader"
GOOD = {
    "name": "tiny-moe", "description": "a small MoE for the tests",
    "n_layers": 4, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "head_dim": 24, "vocab_size": 100,
    "tied_embeddings": False, "ffn_hidden": 32, "n_experts": 8, "top_k": 2, "n_shared_experts": 1,
    "shared_ffn_hidden": 48, "dense_layers": [0], "dense_ffn_hidden": 128,
    "published": {"total_params": 1e5, "active_params": 5e4, "total_rounding": 1e4, "source": "made up"},
}
GOOD["sources"] = {key: CITE for key in GOOD if key not in ("name", "description", "published")}


def damaged(change) -> dict:
    data = copy.deepcopy(GOOD)
    change(data)
    return data


def drop(*path):
    def change(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
        if len(path) == 1 and "sources" in data:  # a shape key goes with its citation
            data["sources"].pop(path[0], None)
    return change


def put(key, value, table=None):
    def change(data):
        (data[table] if table else data)[key] = value
    return change


# ------------------------------------------------------------------------------ the loader


@pytest.mark.parametrize("change, expected", [
    (put("frobs", 1), "frobs is not a known key (expected keys: name, description, n_layers"),
    (put("d_model", "big"), "d_model must be an integer, got 'big'"),
    (put("d_model", 64.0), "d_model must be an integer, got 64.0"),
    (put("n_layers", True), "n_layers must be an integer, got True"),
    (put("tied_embeddings", "no"), "tied_embeddings must be true or false, got 'no'"),
    (put("dense_layers", [True]), "dense_layers must be an array of layer indices, got [True]"),
    (drop("n_kv_heads"), "n_kv_heads is missing (required keys: name, description, n_layers"),
    (drop("sources"), "sources is missing"),
    (drop("sources", "d_model"), "sources.d_model is missing: every key given needs a citation"),
    (put("wd_rank", CITE, "sources"), "sources.wd_rank cites a key the file does not give"),
    (put("d_model", " ", "sources"), "sources.d_model must be a non-empty string, got ' '"),
    (put("name", ""), "name must be a non-empty string"),
    (put("n_experts", 1), "n_experts must be 0 (a dense model) or >= 2 routed experts, got 1"),
    (drop("top_k"), "top_k is missing: a MoE (n_experts = 8) routes each token to top_k"),
    (put("top_k", 9), "architecture 'tiny-moe': top_k must be <= n_experts (8), got 9"),
    (put("n_kv_heads", 3), "architecture 'tiny-moe': n_kv_heads must divide n_heads (4), got 3"),
    (put("dense_layers", [4]), r"architecture 'tiny-moe': dense_layers must be distinct indices in [0, 4), got [4]"),
    (put("d_model", -64), "architecture 'tiny-moe': d_model must be a positive integer, got -64"),
    (put("n_shared_experts", 0), "shared_ffn_hidden is given but n_shared_experts names no shared experts"),
    (put("total_params", -1, "published"), "published.total_params must be a number > 0, got -1"),
    (put("when", 2024, "published"), "published.when is not a known key"),
    (drop("published", "source"), "published.source is missing"),
    (put("published", 5), "published must be a table, got 5"),
])
def test_every_bad_value_is_one_line_naming_file_and_key(change, expected):
    with pytest.raises(InputError) as caught:
        arch_from_dict(damaged(change), source="my.toml")
    message = str(caught.value)
    assert message.startswith("my.toml: ") and expected in message and "\n" not in message


def test_a_dense_file_says_n_experts_0_and_counts_as_the_internal_dense_convention():
    data = {key: value for key, value in GOOD.items() if key not in ("top_k", "n_shared_experts", "shared_ffn_hidden",
                                                                    "dense_layers", "dense_ffn_hidden", "published")}
    data = {**data, "n_experts": 0, "sources": {key: CITE for key in data["sources"] if key in data}}
    dense = arch_from_dict(data, source="dense.toml").arch
    assert not dense.is_moe and (dense.n_experts, dense.top_k) == (1, 1)
    with pytest.raises(InputError, match="top_k must be 0 or absent for a dense model"):
        arch_from_dict({**data, "top_k": 2, "sources": {**data["sources"], "top_k": CITE}}, source="dense.toml")


def test_a_good_file_loads_with_every_key_and_the_published_tolerance(tmp_path):
    path = tmp_path / "tiny-moe.toml"
    path.write_text(to_toml(GOOD))
    file = load_arch_file(path)
    arch = file.arch
    assert (arch.head_dim, arch.n_shared_experts, arch.shared_ffn_hidden, arch.dense_layers) == (24, 1, 48, (0,))
    assert (arch.paper_total_params, arch.paper_active_params) == (1e5, 5e4)
    assert file.published.tolerance("total") == 5e3  # its rounding (1e4 / 2) is coarser than 1%
    assert file.published.tolerance("active") == 500  # no rounding given: 1%
    assert file.path == path.resolve() and len(file.sha256) == 64


@pytest.mark.parametrize("text, expected", [
    ("name = ", "not a valid UTF-8 TOML file"),
    (None, "architecture file does not exist"),
])
def test_an_unreadable_file_is_one_line(tmp_path, text, expected):
    path = tmp_path / "broken.toml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(InputError, match=expected):
        get_arch(path)


@pytest.mark.parametrize("name", sorted(path.stem for path in SHIPPED_DIR.glob("*.toml")))
def test_every_shipped_file_round_trips_through_to_toml(name, tmp_path):
    file = find(name)
    path = tmp_path / f"{name}.toml"
    path.write_text(to_toml(file.data))
    again = load_arch_file(path)
    assert again.arch == file.arch and again.published == file.published and again.sources == file.sources
    assert tomllib.loads(path.read_text()) == tomllib.loads((SHIPPED_DIR / f"{name}.toml").read_text())


# ------------------------------------------------------------------------------ names and folders


def write_arch(folder, name, **changes):
    data = {**copy.deepcopy(GOOD), "name": name, **changes}
    path = folder / f"{name}.toml"
    path.write_text(to_toml(data))
    return path


def test_a_users_folder_adds_names_listed_after_the_shipped_ones(cli, tmp_path, monkeypatch):
    write_arch(tmp_path, "my-moe")
    monkeypatch.setenv(ARCHS_DIR_ENV, str(tmp_path))
    assert catalog_groups()["my-moe"] == "user" and list(catalog())[-1] == "my-moe"
    assert get_arch("my-moe").head_dim == 24
    code, out, _ = cli("arch")
    assert code == 0 and "my-moe" in out and "user" in out
    code, out, _ = cli("arch", "--json")
    rows = {row["name"]: row for row in json.loads(out)}
    assert rows["my-moe"]["group"] == "user" and rows["mixtral-8x7b"]["group"] == "published"


def test_a_user_file_may_not_take_a_shipped_name(cli, tmp_path, monkeypatch):
    write_arch(tmp_path, "mixtral-8x7b")
    monkeypatch.setenv(ARCHS_DIR_ENV, str(tmp_path))
    with pytest.raises(InputError, match="'mixtral-8x7b' is a shipped architecture's name"):
        named_paths()
    code, _, err = cli("arch")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "give yours another name" in err


def test_a_folder_file_is_named_by_its_file_name_and_the_folder_must_exist(tmp_path, monkeypatch):
    (tmp_path / "other.toml").write_text(to_toml({**GOOD, "name": "not-other"}))
    monkeypatch.setenv(ARCHS_DIR_ENV, str(tmp_path))
    with pytest.raises(InputError, match="name 'not-other' must be the file's name 'other'"):
        get_arch("other")
    monkeypatch.setenv(ARCHS_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(InputError, match=f"{ARCHS_DIR_ENV}=.*missing: not a folder"):
        get_arch("phone-moe")


def test_a_file_by_path_may_reuse_a_name_only_with_the_same_numbers(tmp_path):
    copy_of_shipped = tmp_path / "copy.toml"
    copy_of_shipped.write_text((SHIPPED_DIR / "phone-moe.toml").read_text())
    assert get_arch(copy_of_shipped) == get_arch("phone-moe")
    changed = tmp_path / "changed.toml"
    changed.write_text((SHIPPED_DIR / "phone-moe.toml").read_text().replace("top_k = 2", "top_k = 3"))
    with pytest.raises(InputError, match="name 'phone-moe' is that of `cosmosim arch phone-moe`, whose numbers differ"):
        get_arch(changed)


def test_unknown_names_list_the_known_ones_and_say_a_path_works():
    with pytest.raises(InputError, match="unknown architecture 'phone-mega': expected one of .*qwen3-30b-a3b.*or a path"):
        get_arch("phone-mega")


def test_cosmosim_arch_name_shows_every_key_its_source_and_the_published_counts(cli):
    code, out, _ = cli("arch", "qwen3-30b-a3b", "--json")
    details = json.loads(out)
    assert code == 0 and details["keys"]["head_dim"] == 128 and "head_dim 128" in details["sources"]["head_dim"]
    assert details["counts"]["total_params"] == get_arch("qwen3-30b-a3b").total_params()
    assert details["published"]["total"]["within_tolerance"] is True
    assert details["published"]["active"]["within_tolerance"] is False  # the file and the release test say why
    code, out, _ = cli("arch", "qwen1.5-moe-a2.7b")
    assert code == 0 and "shared_ffn_hidden" in out and "5632" in out and "within" in out
    code, _, err = cli("arch", "missing.toml")
    assert code == 2 and "missing.toml: architecture file does not exist" in err


# ------------------------------------------------------------------------------ runs and sweeps


def fitting_trace(path, arch):
    trace = synthesize(n_layers=arch.n_moe_layers, n_experts=arch.n_experts, top_k=arch.top_k, exrep_target=0.3,
                       n_tokens=1024, seq_len=256, seed=0)
    return save_trace(trace, path)


@pytest.mark.parametrize("name, cache", [("qwen1.5-moe-a2.7b", []), ("qwen3-30b-a3b", ["--cache-experts", 1200])],
                         ids=["shared experts", "GQA, head_dim 128 on d 2048"])
def test_run_with_an_architecture_file_on_both_engines(cli, tmp_path, name, cache):
    arch_file = tmp_path / f"{name}.toml"
    arch_file.write_text((SHIPPED_DIR / f"{name}.toml").read_text())
    trace = fitting_trace(tmp_path / "trace.npz", get_arch(arch_file))
    results = {}
    for engine in ("des", "analytic"):
        out = tmp_path / f"{engine}.json"
        code, _, err = cli("run", "--profile", "phone", "--arch", arch_file, "--trace", trace, "--engine", engine,
                           "--tokens", 400, *cache, "--json", out, "-q")
        assert code == 0, err
        results[engine] = json.loads(out.read_text())
    des, analytic = results["des"], results["analytic"]
    assert des["inputs"]["arch"] == name
    assert des["accesses"] == analytic["accesses"] and des["accesses"]["hit"] > 0
    assert analytic["tpot_ms"]["mean"] == pytest.approx(des["tpot_ms"]["mean"], rel=0.03)


def sweep_files(tmp_path):
    (tmp_path / "archs").mkdir()
    arch_path = write_arch(tmp_path / "archs", "sweep-moe", dense_layers=None, dense_ffn_hidden=None,
                           sources={key: CITE for key in GOOD["sources"] if key not in ("dense_layers",
                                                                                        "dense_ffn_hidden")})
    fitting_trace(tmp_path / "trace.npz", get_arch(arch_path))  # top-2 of 8: wearable-moe's routing too
    return tmp_path / "spec.toml"


@pytest.mark.parametrize("engine", ["des", "analytic"])
def test_a_sweep_arch_axis_takes_a_path_relative_to_the_spec(cli, tmp_path, engine):
    spec = sweep_files(tmp_path)
    spec.write_text(f'engine = "{engine}"\n[axes]\nprofile = ["phone"]\narch = ["archs/sweep-moe.toml", '
                    '"wearable-moe"]\ntrace = ["trace.npz"]\ncache_experts = [8, 16]\ntokens = [200]\n')
    code, _, err = cli("sweep", spec, "--out", tmp_path / "results", "-q")
    assert code == 0, err
    rows = read_results(tmp_path / "results")
    assert rows["error"].isna().all(), rows["error"].tolist()
    assert sorted(rows["arch"]) == ["sweep-moe", "sweep-moe", "wearable-moe", "wearable-moe"]
    assert rows["engine"].eq(engine).all()


@pytest.mark.parametrize("arch_axis, expected", [
    ('["archs/nope.toml"]', "spec.toml: axes.arch: 'archs/nope.toml': "),
    ('["archs/sweep-moe.toml", "archs/../archs/sweep-moe.toml"]', "are both named 'sweep-moe'"),
    ('["phone-huge"]', "axes.arch: 'phone-huge': expected one of phone-dense-fa"),
])
def test_a_bad_arch_axis_value_names_the_spec_and_the_value(cli, tmp_path, arch_axis, expected):
    spec = sweep_files(tmp_path)
    spec.write_text(f'[axes]\nprofile = ["phone"]\narch = {arch_axis}\ntrace = ["trace.npz"]\n')
    code, _, err = cli("sweep", spec, "--out", tmp_path / "results", "-q")
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------ Hugging Face config.json

COMMON = {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4,
          "num_key_value_heads": 2, "num_experts_per_tok": 2, "max_position_embeddings": 64}
# family -> (config class, its arguments, what the mapping must report: head_dim, shared (count, width), dense layers)
HF_FAMILIES = {
    "mixtral": ("MixtralConfig", dict(intermediate_size=48, num_local_experts=4), (8, (0, None), ())),
    "olmoe": ("OlmoeConfig", dict(intermediate_size=48, num_experts=8), (8, (0, None), ())),
    "qwen2_moe": ("Qwen2MoeConfig", dict(intermediate_size=64, moe_intermediate_size=24, num_experts=6,
                                         shared_expert_intermediate_size=40, mlp_only_layers=[1]), (8, (1, 40), (1,))),
    "qwen3_moe": ("Qwen3MoeConfig", dict(intermediate_size=64, moe_intermediate_size=24, num_experts=8, head_dim=12,
                                         decoder_sparse_step=2), (12, (0, None), (0, 2))),
    "granitemoe": ("GraniteMoeConfig", dict(intermediate_size=24, num_local_experts=4, tie_word_embeddings=True),
                   (8, (0, None), ())),
    "phimoe": ("PhimoeConfig", dict(intermediate_size=24, num_local_experts=4, attention_bias=True, lm_head_bias=True),
               (8, (0, None), ())),
    "deepseek_v3": ("DeepseekV3Config", dict(intermediate_size=64, moe_intermediate_size=16, n_routed_experts=8,
                                             n_shared_experts=1, first_k_dense_replace=1, q_lora_rank=16,
                                             kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8,
                                             n_group=1, topk_group=1), (None, (1, 16), (0,))),
    "deepseek_v2": ("DeepseekV2Config", dict(intermediate_size=64, moe_intermediate_size=16, n_routed_experts=8,
                                             n_shared_experts=2, first_k_dense_replace=2, q_lora_rank=None,
                                             kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8),
                    (None, (2, 16), (0, 1))),
}


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


@pytest.mark.parametrize("family", HF_FAMILIES)
def test_a_config_json_reads_as_the_model_transformers_builds_from_it(transformers, tmp_path, family, cli):
    """The independent check: the parameters of the model instantiated from the config (on the meta device)
    are ours plus exactly what the notes say the counter leaves out."""
    torch = pytest.importorskip("torch")
    class_name, arguments, (head_dim, shared, dense_layers) = HF_FAMILIES[family]
    config = getattr(transformers, class_name)(**COMMON, **arguments)
    folder = tmp_path / f"tiny-{family}"
    config.save_pretrained(folder)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    theirs = sum(parameter.numel() for parameter in model.parameters())

    raw = json.loads((folder / "config.json").read_text())
    mapping = hf_architecture(raw, name=folder.name, source="config.json")
    arch = get_arch(folder / "config.json")
    assert arch.name == folder.name and arch.total_params() + mapping.uncounted_params == theirs
    assert (arch.n_shared_experts, arch.shared_ffn_hidden if shared[0] else None) == shared
    assert arch.dense_layers == dense_layers and arch.n_moe_layers == 4 - len(dense_layers)
    if head_dim is not None:  # DeepSeek's latent attention is fitted, and says so
        assert (arch.n_heads, arch.n_kv_heads, arch.head_dim) == (4, 2, head_dim)
    else:
        assert arch.n_kv_heads == 1 and arch.kv_bytes_per_token() == 2 * 4 * (16 + 4)  # the latent, as MLA caches it
        assert any("latent attention" in note for note in mapping.notes)
    exact = family in ("mixtral", "granitemoe")
    assert (mapping.uncounted_params == 0) is exact and (not mapping.notes) is exact
    assert notes_of(arch) == mapping.notes
    code, out, _ = cli("arch", folder / "config.json", "--json")
    assert code == 0 and json.loads(out)["notes"] == list(mapping.notes)


def test_the_mapped_dict_is_an_architecture_file_and_a_missing_key_takes_transformers_default(tmp_path):
    raw = {"model_type": "mixtral", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 8,
           "vocab_size": 100, "intermediate_size": 96, "num_local_experts": 4, "num_experts_per_tok": 2}
    mapping = hf_architecture(raw, name="mix", source="mix.json")
    assert mapping.data["n_kv_heads"] == 8 and mapping.data["tied_embeddings"] is False
    assert any("num_key_value_heads is not in the config: 8, transformers' default for mixtral" in note
               for note in mapping.notes)
    path = tmp_path / "mix.toml"
    path.write_text(to_toml(mapping.data))
    assert get_arch(path).n_kv_heads == 8 and "Approximations" in load_arch_file(path).description


@pytest.mark.parametrize("change, expected", [
    ({"hidden_size": "64"}, "hidden_size must be an integer >= 0, got '64'"),
    ({"num_experts_per_tok": None}, "num_experts_per_tok must be an integer >= 0, got None"),
    ({"tie_word_embeddings": "yes"}, "tie_word_embeddings must be true or false"),
    ({"vocab_size": 0}, "vocab_size must be > 0, got 0"),
])
def test_a_bad_config_json_is_one_line(tmp_path, change, expected):
    raw = {"model_type": "olmoe", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 8,
           "vocab_size": 100, "intermediate_size": 96, "num_experts": 4, "num_experts_per_tok": 2, **change}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(InputError) as caught:
        get_arch(path)
    assert str(caught.value).startswith(f"{path}: {expected}")
    assert "\n" not in str(caught.value)
    raw.pop("hidden_size")
    path.write_text(json.dumps(raw))
    with pytest.raises(InputError, match="hidden_size is missing"):
        get_arch(path)


def test_a_run_on_a_config_json_warns_what_the_mapping_approximated(tmp_path):
    from cosmosim.inputs.synthetic import synthesize
    from cosmosim.runner import run

    raw = {"model_type": "mixtral", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 8,
           "vocab_size": 100, "intermediate_size": 96, "num_local_experts": 4, "num_experts_per_tok": 2}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    trace = synthesize(exrep_target=0.3, n_layers=2, n_experts=4, top_k=2, n_tokens=512, seq_len=64)
    result = run("phone", trace, str(path), None, "analytic")
    assert any(warning.startswith("arch: num_key_value_heads is not in the config") for warning in result["warnings"])
