import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cosmosim.errors import InputError
from cosmosim.inputs.trace import load_trace
from cosmosim.model.config import ModelConfig
from cosmosim.model.llama import Decoder
from cosmosim.model.record import record
from cosmosim.model.checkpoint import CONFIG_FILE, LOG_FILE, MODEL_FILE, load_checkpoint
from cosmosim.model.train import train

SUMMARIZE_MINIS = Path(__file__).resolve().parent.parent / "scripts" / "summarize_minis.py"
TINY = ModelConfig(n_layers=2, d_model=32, n_heads=2, n_kv_heads=2, seq_len=32, ffn_hidden=64, n_experts=4,
                   top_k=2, bles_lambda=0.5, bles_tau=4.0)
FAST = dict(batch_size=8, lr=1e-2, min_lr=1e-3, warmup_steps=2, eval_every=5, eval_windows=16, threads=1,
            progress=False)


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """train() sets torch's global thread count; give the rest of the suite its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(sample_corpus, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("run") / "tiny"
    threads = torch.get_num_threads()
    train(TINY, corpus_dir=sample_corpus, out_dir=out_dir, steps=20, **FAST)
    torch.set_num_threads(threads)
    return out_dir


def read_log(out_dir, split):
    records = [json.loads(line) for line in (out_dir / LOG_FILE).read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in records if r["split"] == split]


def test_tiny_model_loss_falls(trained):
    losses = [r["loss"] for r in read_log(trained, "train")]
    assert len(losses) == 20
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.5
    val = read_log(trained, "val")
    assert [r["step"] for r in val] == [5, 10, 15, 20]
    assert val[-1]["val_loss"] < val[0]["val_loss"]
    assert all(0 <= r["val_exrep"] <= 1 for r in val)


def test_checkpoint_header_describes_the_run(trained, sample_corpus):
    header = json.loads((trained / CONFIG_FILE).read_text())
    assert header["state"]["step"] == 20 and header["state"]["tokens_seen"] == 20 * 8 * 32
    assert header["model"]["vocab_size"] == 512  # taken from the corpus tokenizer
    assert len(header["corpus"]["manifest_sha256"]) == 64
    assert header["training"]["lr"] == 1e-2


def test_interrupted_run_resumes_to_the_same_result(sample_corpus, tmp_path):
    straight, pieces = tmp_path / "straight", tmp_path / "pieces"
    train(TINY, corpus_dir=sample_corpus, out_dir=straight, steps=6, **FAST)
    for session in range(6):
        # A zero time budget stops every session after one step, with a checkpoint.
        train(TINY, corpus_dir=sample_corpus, out_dir=pieces, steps=6, time_budget_s=0, **FAST)
        if session == 2:  # as if a crash came while logging step 4, before its checkpoint
            with open(pieces / LOG_FILE, "a") as log:
                log.write(json.dumps({"split": "train", "step": 4, "loss": 0.0}) + "\n" + '{"split": "tr')
    assert json.loads((pieces / CONFIG_FILE).read_text())["state"]["step"] == 6
    expected, resumed = load_file(straight / MODEL_FILE), load_file(pieces / MODEL_FILE)
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name
    assert read_log(pieces, "train") == read_log(straight, "train")
    assert read_log(pieces, "val") == read_log(straight, "val")


def test_resume_with_other_arguments_is_refused(trained, sample_corpus, tmp_path):
    copy = shutil.copytree(trained, tmp_path / "copy")
    with pytest.raises(InputError, match="training.lr"):
        train(TINY, corpus_dir=sample_corpus, out_dir=copy, steps=20, **{**FAST, "lr": 3e-3})


def test_unknown_config_name_is_an_input_error(sample_corpus, tmp_path):
    with pytest.raises(InputError, match="wearable-moe-mini"):
        train("wearable-moe", corpus_dir=sample_corpus, out_dir=tmp_path, steps=1, progress=False)


def test_checkpoint_without_weights_is_an_input_error(trained, tmp_path):
    copy = shutil.copytree(trained, tmp_path / "copy")
    (copy / MODEL_FILE).unlink()
    with pytest.raises(InputError, match="model.safetensors"):
        load_checkpoint(copy)


def test_checkpoint_with_mismatching_shapes_is_an_input_error(trained, tmp_path):
    copy = shutil.copytree(trained, tmp_path / "copy")
    header = json.loads((copy / CONFIG_FILE).read_text())
    header["model"]["d_model"] = 64
    (copy / CONFIG_FILE).write_text(json.dumps(header))
    with pytest.raises(InputError, match="expected shape"):
        load_checkpoint(copy)


def test_recorded_trace_is_valid_and_follows_the_model(trained, sample_corpus, tmp_path):
    path = record(trained, tmp_path / "tiny.npz", corpus_dir=sample_corpus, progress=False)
    trace = load_trace(path)  # validates
    assert trace.experts.shape[1:] == (TINY.n_layers, TINY.top_k)
    assert trace.n_tokens % TINY.seq_len == 0
    assert (trace.positions[:: TINY.seq_len] == 0).all()
    assert set(np.unique(trace.domains)) == set(range(len(trace.meta["domain_names"])))
    assert trace.meta["training"]["steps"] == 20 and trace.meta["model"]["n_experts"] == 4
    assert (trace.gates[:, :, 0] >= trace.gates[:, :, 1]).all()

    # The first sequence's routing is what the checkpoint's router chooses for those tokens.
    model = load_checkpoint(trained).model
    with torch.no_grad():
        _, routings = model(torch.from_numpy(trace.tokens[: TINY.seq_len]).long()[None])
    assert (trace.experts[: TINY.seq_len, 1] == routings[1].expert_ids_BTK[0].numpy()).all()


def test_record_a_prefix_and_refuse_more_than_the_split(trained, sample_corpus, tmp_path):
    path = record(trained, tmp_path / "short.npz", corpus_dir=sample_corpus, n_tokens=70, progress=False)
    assert load_trace(path).n_tokens == 64  # whole windows of 32
    with pytest.raises(InputError):
        record(trained, tmp_path / "long.npz", corpus_dir=sample_corpus, n_tokens=10**7, progress=False)


def test_minis_summary_keeps_earlier_runs_and_gives_a_dense_mini_no_exrep(trained, sample_corpus, tmp_path):
    dense = train(dataclasses.replace(TINY, n_experts=1, top_k=1, bles_lambda=0.0), corpus_dir=sample_corpus,
                  out_dir=tmp_path / "dense", steps=5, **FAST)
    out = tmp_path / "minis.json"
    out.write_text(json.dumps({"earlier": {"val_loss": 4.0}}))
    subprocess.run([sys.executable, str(SUMMARIZE_MINIS), str(trained), str(dense), "--out", str(out)], check=True,
                   capture_output=True)
    minis = json.loads(out.read_text())
    assert list(minis) == ["dense", "earlier", "tiny"]
    assert minis["earlier"] == {"val_loss": 4.0}
    assert minis["dense"]["val_exrep"] is None and minis["dense"]["steps"] == 5
    moe_header = json.loads((trained / CONFIG_FILE).read_text())
    assert minis["tiny"]["val_loss"] == moe_header["state"]["val_loss"]
    assert minis["tiny"]["val_exrep"] == read_log(trained, "val")[-1]["val_exrep"]
    assert minis["tiny"]["tokens_seen"] == 20 * 8 * 32


def test_a_dense_checkpoint_written_with_n_experts_0_loads_and_resumes(sample_corpus, tmp_path):
    """Dense minis were trained when dense was n_experts = 0 (with an unused top_k = 2)."""
    config = dataclasses.replace(TINY, n_experts=1, top_k=1, bles_lambda=0.0)
    out_dir = train(config, corpus_dir=sample_corpus, out_dir=tmp_path / "dense", steps=2, **FAST)
    header = json.loads((out_dir / CONFIG_FILE).read_text())
    header["model"].update(n_experts=0, top_k=2)
    (out_dir / CONFIG_FILE).write_text(json.dumps(header))
    loaded = load_checkpoint(out_dir).model.config
    assert (loaded.n_experts, loaded.top_k, loaded.is_moe) == (1, 1, False)
    train(config, corpus_dir=sample_corpus, out_dir=out_dir, steps=2, **FAST)  # the same arguments: resumes, done
    with pytest.raises(InputError, match="model.d_model"):
        train(dataclasses.replace(config, d_model=64), corpus_dir=sample_corpus, out_dir=out_dir, steps=2, **FAST)


# ------------------------------------------------------------------ the locality study's knobs


def test_router_lr_scale_slows_only_the_routers(sample_corpus, tmp_path):
    torch.manual_seed(0)  # what train() does before building the model: the same initial weights
    initial = Decoder(dataclasses.replace(TINY, vocab_size=512)).state_dict()
    moved = {}
    for scale in (1.0, 1e-6):
        out_dir = train(TINY, corpus_dir=sample_corpus, out_dir=tmp_path / f"s{scale}", steps=3, router_lr_scale=scale, **FAST)
        weights = load_file(out_dir / MODEL_FILE)
        moved[scale] = {name: (weights[name] - initial[name]).abs().max().item() for name in weights}
    routers = [name for name in initial if ".router." in name]
    assert routers and all(moved[1.0][name] > 1e-3 for name in routers)
    # Adam moves a weight by about lr per step (a few times that at most): 3 steps at lr <= 1e-2, scaled by 1e-6.
    assert all(moved[1e-6][name] < 10 * 3 * 1e-2 * 1e-6 for name in routers)
    assert all(moved[1e-6][name] > 1e-3 for name in initial if name.endswith("w_up.weight"))


def test_wd_lr_scale_slows_only_the_wd_factors(sample_corpus, tmp_path):
    wd = dataclasses.replace(TINY, wd_rank=8)
    torch.manual_seed(0)
    initial = Decoder(dataclasses.replace(wd, vocab_size=512)).state_dict()
    out_dir = train(wd, corpus_dir=sample_corpus, out_dir=tmp_path / "wd", steps=3, wd_lr_scale=1e-6, **FAST)
    weights = load_file(out_dir / MODEL_FILE)
    moved = {name: (weights[name] - initial[name]).abs().max().item() for name in weights}
    factors = [name for name in initial if name.endswith((".left", ".right"))]
    assert factors and all(moved[name] < 10 * 3 * 1e-2 * 1e-6 for name in factors)
    assert all(moved[name] > 1e-3 for name in initial if ".router." in name or name.endswith("attention.wq.weight"))


def test_a_checkpoint_older_than_a_training_argument_resumes_at_its_default(sample_corpus, tmp_path):
    out_dir = train(TINY, corpus_dir=sample_corpus, out_dir=tmp_path / "old", steps=3, **FAST)
    header = json.loads((out_dir / CONFIG_FILE).read_text())
    del header["training"]["wd_lr_scale"]  # as written before the argument existed
    (out_dir / CONFIG_FILE).write_text(json.dumps(header))
    train(TINY, corpus_dir=sample_corpus, out_dir=out_dir, steps=3, **FAST)  # the same run: accepted
    with pytest.raises(InputError, match="training.wd_lr_scale: the checkpoint has 1.0, this run asks 0.5"):
        train(TINY, corpus_dir=sample_corpus, out_dir=out_dir, steps=3, wd_lr_scale=0.5, **FAST)


def test_train_flags_reach_the_config_and_refuse_bad_values_in_one_line(cli, sample_corpus, tmp_path):
    common = ("train", "--config", "wearable-moe-mini", "--corpus", sample_corpus, "--steps", 1, "--batch-size", 2,
              "--eval-every", 1, "--threads", 1)
    code, _, err = cli(*common, "--out", tmp_path / "run", "--load-balance-level", "batch", "--load-balance-weight",
                       0.001, "--z-loss-weight", 0, "--router-lr-scale", 0.5, "--wd-lr-scale", 2)
    assert code == 0, err
    header = json.loads((tmp_path / "run" / CONFIG_FILE).read_text())
    assert (header["model"]["load_balance_level"], header["model"]["load_balance_weight"]) == ("batch", 0.001)
    assert (header["model"]["z_loss_weight"], header["training"]["router_lr_scale"]) == (0, 0.5)
    assert header["training"]["wd_lr_scale"] == 2
    bad = [(("--load-balance-level", "global"), "load_balance_level"), (("--z-loss-weight", -1), "z_loss_weight"),
           (("--router-lr-scale", 0), "router_lr_scale"), (("--wd-lr-scale", -1), "wd_lr_scale"), (("--device", "tpu"), "--device")]
    if not torch.cuda.is_available():
        bad.append((("--device", "cuda"), "no CUDA device"))
    for flags, named in bad:
        code, _, err = cli(*common, "--out", tmp_path / "bad", *flags)
        assert code == 2 and named in err and len(err.strip().splitlines()) == 1, (flags, err)
        assert not (tmp_path / "bad" / MODEL_FILE).exists()
