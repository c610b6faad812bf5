"""Write traces/minis.json: how each mini model was trained and how well it ended.

    python scripts/summarize_minis.py runs/* [--out traces/minis.json] [--curves]

One entry per run folder (written by `cosmosim train`): config, parameter counts, steps, tokens seen,
training time, final train/validation loss (nats/token) and the validation ExRep of its last
evaluation (none for a dense mini); with --curves also every evaluation (step, tokens seen, validation
loss, ExRep and load-balance loss), the locality study's record (docs/models.md). Entries already in --out whose run folder is not given are
kept: runs trained in an earlier session (on another machine) stay summarised. The README's
model table is generated from this file and the traces.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cosmosim.files import atomic_write_json, read_json
from cosmosim.model.config import ModelConfig
from cosmosim.model.checkpoint import CONFIG_FILE, LOG_FILE, read_header


def summarize(run_dir: Path, curves: bool = False) -> dict:
    header = read_header(run_dir)
    config = ModelConfig.from_dict(header["model"], source=str(run_dir / CONFIG_FILE))
    state = header["state"]
    evaluations = [json.loads(line) for line in (run_dir / LOG_FILE).read_text().splitlines() if '"val"' in line]
    last_eval = evaluations[-1] if evaluations else {}
    return {
        "config_name": header["config_name"],
        "target_arch": header["target_arch"],
        "total_params": config.num_params(),
        "active_params": config.num_active_params(),
        "n_layers": config.n_layers, "d_model": config.d_model, "wd_rank": config.wd_rank,
        "bles_lambda": config.bles_lambda, "bles_tau": config.bles_tau,
        "steps": state["step"], "steps_planned": header["training"]["steps"],
        "tokens_seen": state["tokens_seen"], "train_time_s": round(state["train_time_s"], 1),
        "train_loss": state["train_loss"], "val_loss": state["val_loss"],
        # A dense model has no router: its logged ExRep of 0 would read as perfect locality.
        "val_exrep": last_eval.get("val_exrep") if config.is_moe else None,
        "seed": header["training"]["seed"], "commit": header["commit"],
        "load_balance_weight": config.load_balance_weight, "load_balance_level": config.load_balance_level,
        "z_loss_weight": config.z_loss_weight,
        **({"evaluations": [{key: round(e[key], 4) if isinstance(e[key], float) else e[key]
                             for key in ("step", "tokens_seen", "val_loss", "val_exrep", "val_load_balance") if key in e}
                            for e in evaluations]} if curves else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("traces/minis.json"))
    parser.add_argument("--curves", action="store_true", help="also every evaluation of each run")
    args = parser.parse_args()
    new = {run.name: summarize(run, args.curves) for run in sorted(args.runs) if (run / CONFIG_FILE).is_file()}
    kept = read_json(args.out, hint="delete it to start afresh") if args.out.is_file() else {}
    minis = dict(sorted({**kept, **new}.items()))
    atomic_write_json(args.out, minis)
    print(f"wrote {args.out} ({len(new)} runs summarised, {len(minis) - len(new)} kept from before)")


if __name__ == "__main__":
    main()
