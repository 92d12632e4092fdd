"""The proxy ladder: train every row of a ladder file for the same wall-clock budget, one after another.

    python benchmarks/proxy_ladder.py                          # every row of configs/ablation/ladder.yaml
    python benchmarks/proxy_ladder.py --rows elastic full      # some rows
    python benchmarks/proxy_ladder.py --seed 1 --rows elastic  # a second seed (its own run folder)
    python benchmarks/proxy_ladder.py --table                  # the results so far, as markdown

A row is the ladder's ``base`` training config with the row's fields on top. Each run trains for
``max_minutes`` of wall time (the learning-rate schedule follows the clock, so every row finishes
its cosine) and ends with training's held-out evaluation at the config's keep fractions. Results
are appended to ``OUT/results.jsonl``; a row whose result is there already is skipped, so an
interrupted ladder continues where it stopped (a row resumes from its last checkpoint). The file
is read again before each row, so rows can be added or reordered while a ladder runs. Run one ladder at a time: two training processes on
the same cores slow each other far more than they share.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from pathlib import Path

import torch
import yaml

from elastictok.training.config import TrainConfig
from elastictok.training.loop import train


def row_config(ladder: dict, name: str, seed: int, out: Path, minutes: float | None) -> TrainConfig:
    fields = {**ladder["base"], "seed": seed, **ladder["rows"][name]}  # a row may name its own seed
    fields["out_dir"] = str(out / (name if fields["seed"] == 0 else f"{name}-seed{fields['seed']}"))
    if minutes is not None:
        fields["max_minutes"] = minutes
    return TrainConfig(**fields)


def run_row(cfg: TrainConfig, name: str) -> dict:
    out_dir = Path(cfg.out_dir)
    resume = (out_dir / "checkpoints" / "last.pt").exists() and not (out_dir / "model").exists()
    if not resume and out_dir.exists():
        shutil.rmtree(out_dir)  # a row that never checkpointed: start it again
    started = time.monotonic()
    train(cfg, resume=resume)
    with (out_dir / "log.csv").open() as f:
        last = list(csv.DictReader(f))[-1]
    evaluation = [json.loads(line) for line in (out_dir / "eval.jsonl").read_text().splitlines()][-1]
    model = cfg.model_config()
    return {"row": name, "seed": cfg.seed, "steps": evaluation["step"], "minutes": cfg.max_minutes,
            "wall_minutes": round((time.monotonic() - started) / 60, 2), "frames_per_s": float(last["frames_per_s"]),
            "tokens_per_block": model.tokens_per_block, "psnr": evaluation["psnr"]}


def print_table(results: list[dict], fractions: list[float]) -> None:
    header = ["row", "seed", "steps", "frames/s", *(f"PSNR at {f:g} of the tokens" for f in fractions)]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for r in results:
        cells = [f"{r['psnr'].get(str(f), float('nan')):.2f}" for f in fractions]
        print(f"| {r['row']} | {r['seed']} | {r['steps']} | {r['frames_per_s']:.1f} | " + " | ".join(cells) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ladder", default="configs/ablation/ladder.yaml")
    parser.add_argument("--rows", nargs="+", help="rows to run (default: all, in the file's order)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, help="override the base's max_minutes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--out", default="runs/ladder")
    parser.add_argument("--table", action="store_true", help="print the results so far and exit")
    args = parser.parse_args()
    ladder = yaml.safe_load(Path(args.ladder).read_text())
    out = Path(args.out)
    results_path = out / "results.jsonl"
    results = [json.loads(line) for line in results_path.read_text().splitlines()] if results_path.exists() else []
    if args.table:
        print_table(results, ladder["base"]["eval_keep_fractions"])
        return 0
    unknown = set(args.rows or []) - set(ladder["rows"])
    if unknown:
        parser.error(f"unknown rows: {', '.join(sorted(unknown))}")
    torch.set_num_threads(args.threads)
    out.mkdir(parents=True, exist_ok=True)
    done = {(r["row"], r["seed"]) for r in results}
    while True:  # the ladder file is read again before each row: rows may be added or reordered meanwhile
        ladder = yaml.safe_load(Path(args.ladder).read_text())
        pending = [name for name in args.rows or ladder["rows"]
                   if (name, ladder["rows"][name].get("seed", args.seed)) not in done]
        if not pending:
            return 0
        name = pending[0]
        result = run_row(row_config(ladder, name, args.seed, out, args.minutes), name)
        print(json.dumps(result), flush=True)
        with results_path.open("a") as f:
            f.write(json.dumps(result) + "\n")
        done.add((name, result["seed"]))


if __name__ == "__main__":
    sys.exit(main())
