"""A benchmark's bare `--json` prints one JSON object to stdout and its human table to stderr
(benchmarks/_report.py), run here on the cheapest benchmark at a tiny size. No timing is asserted."""

import json
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
STATISTICS = {"exrep", "delta_uniform", "reuse_distances", "srp_m16", "sch_rho2_m16", "summary"}


def locality_speed(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "benchmarks/locality_speed.py", *args], cwd=REPOSITORY, check=False,
                          capture_output=True, text=True, timeout=120)


def test_locality_speed_json_on_stdout():
    done = locality_speed("--tokens", "1024", "--layers", "2", "--sequence", "256", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["case"] == {"tokens": 1024, "layers": 2, "sequence": 256, "stay": 0.8}
    assert set(report["traces"]) == {"random", "sticky"}
    for trace in report["traces"].values():
        assert set(trace["seconds"]) == STATISTICS
        assert trace["summary"]["n_tokens"] == 1024 and trace["summary"]["n_layers"] == 2
    assert "random routing, 1024 tokens x 2 layers" in done.stderr  # the human table, off stdout


def test_json_path_must_end_in_json(tmp_path):
    """`--json SPEC.toml` would overwrite an input: refused before anything runs."""
    target = tmp_path / "spec.toml"
    done = locality_speed("--json", str(target))
    assert done.returncode == 2 and "must end in .json" in done.stderr
    assert not target.exists()
