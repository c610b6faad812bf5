"""Outputs that lose nothing: paths that would clobber an input or each other are refused, and a
results folder has one writer at a time (a killed writer leaves it free)."""

import os
import signal
import subprocess
import sys
import time

import pytest

from cosmosim.errors import InputError
from cosmosim.files import atomic_write_text, check_outputs, check_outside, exclusive_folder


def test_an_output_that_is_an_input_or_another_output_is_refused(tmp_path):
    trace = tmp_path / "t.npz"
    trace.write_bytes(b"data")
    with pytest.raises(InputError, match=r"--json .*t\.npz: is the --trace input"):
        check_outputs({"--json": trace}, {"--trace": trace})
    with pytest.raises(InputError, match="--timeline .*: is also --json"):
        check_outputs({"--json": tmp_path / "a.json", "--timeline": tmp_path / "." / "a.json"})
    os.symlink(trace, tmp_path / "link.npz")
    with pytest.raises(InputError, match="is the --trace input"):
        check_outputs({"--json": tmp_path / "link.npz"}, {"--trace": trace})
    check_outputs({"--json": tmp_path / "a.json", "--timeline": tmp_path / "b.json"}, {"--trace": trace, "--arch": None})
    assert trace.read_bytes() == b"data"


@pytest.mark.parametrize("path", ["", "."])
def test_a_folder_or_an_empty_path_is_named_as_typed(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="is a folder, not a file path"):
        check_outputs({"--json": path})
    with pytest.raises(InputError, match="is a folder, not a file path") as caught:
        atomic_write_text(path, "x")
    assert ".tmp" not in str(caught.value)


def test_an_output_inside_a_results_folder_is_refused(tmp_path):
    with pytest.raises(InputError, match="is inside"):
        check_outside(tmp_path / "results" / "report.html", tmp_path / "results", "--out")
    check_outside(tmp_path / "report.html", tmp_path / "results", "--out")


def test_a_folder_has_one_writer_and_a_killed_one_leaves_it_free(tmp_path):
    folder = tmp_path / "results"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from cosmosim.files import exclusive_folder\n"
        f"with exclusive_folder({str(folder)!r}, '--out'):\n    print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InputError, match="another cosmosim process is writing to it"):
            with exclusive_folder(folder, "--out"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    deadline = time.monotonic() + 5
    while True:  # the kernel drops a dead process's lock at once; allow the reaping a moment
        try:
            with exclusive_folder(folder, "--out"):
                break
        except InputError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert list(folder.iterdir()) == []  # the lock leaves no file behind


def test_a_second_sweep_on_the_same_folder_is_refused_while_the_first_runs(tmp_path):
    from cosmosim.inputs.synthetic import sticky_trace
    from cosmosim.inputs.trace import save_trace
    from cosmosim.sweep.execute import run_sweep
    from cosmosim.sweep.spec import spec_from_dict

    save_trace(sticky_trace(n_tokens=1024, n_layers=19, seq_len=128), tmp_path / "t.npz")
    spec = spec_from_dict({"engine": "analytic", "axes": {"profile": ["wearable"], "trace": ["t.npz"],
                                                          "arch": ["wearable-moe"], "cache_experts": [40, 80]}},
                          base_dir=tmp_path)
    out = tmp_path / "results"
    with exclusive_folder(out, "--out"):  # what a first sweep holds while it runs
        with pytest.raises(InputError, match="another cosmosim process is writing to it"):
            run_sweep(spec, out, progress=False)
        assert list(out.iterdir()) == []
    assert run_sweep(spec, out, progress=False).n_computed == 2
