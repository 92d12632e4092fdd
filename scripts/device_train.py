"""Train the default preset, its fixed-length baselines and a half-width model together on one lent GPU.

    python scripts/device_train.py --minutes 5 --out $OUT [--runs elastic full ...] [--device cuda]

Made for a device call (docs/training.md, "On a lent GPU"): the model is small, so one process leaves
an H200 mostly idle and the runs share it in parallel, each with its own CPU threads. A lease is short
and a step's cost unknown in advance, so the script first times 30 steps of every run together
(calibration), then gives all runs the same number of steps, the most that fit ``--minutes`` at the
slowest run's pace, on one cosine: equal data, steps and compute, as a fair comparison of recipes needs.
What comes back (a device call returns at most 8 files of 16 MiB): each run's weights in float16 as
``OUT/NAME.safetensors`` and one ``OUT/runs.tar.gz`` with every run's config.json, train_config.yaml,
log.csv and eval.jsonl. Expects ``scripts/pack_for_device.py``'s corpus under ``.device/corpus``.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
import yaml

from elastictok.models.registry import from_pretrained

ROOT = Path(__file__).parents[1]
CORPUS = ROOT / ".device/corpus"
HELD_OUT = ["Megamind", "tree", "vtest_tail", "kivy_cityCC0", "mecavideo_balle-jbart"]
COMMON = {  # the default preset's recipe (configs/default.yaml) at a GPU's batch size
    "model": "default", "n_blocks": 2, "image_fraction": 0.3, "batch_size": 64, "lr": 2.0e-3,
    "warmup_steps": 200, "schedule": "cosine", "bf16": True, "eval_keep_fractions": [0.0625, 0.25, 0.5, 1.0],
    "log_every": 10, "progress": False, "num_workers": 2,
}
RUNS = {  # name: what differs (docs/results/README.md: the four of v2, v4 continued, half width)
    "elastic": {"mask": "elastic+full", "mask_lengths": 2},
    "full": {"mask": "full"},
    "fixed-0.5": {"mask": "fixed:0.5"},
    "fixed-0.25": {"mask": "fixed:0.25"},
    "continued": {"mask": "elastic+full", "mask_lengths": 2, "lr": 5.0e-4, "warmup_steps": 50,
                  "init_from": str(ROOT / "src/elastictok/weights/default")},
    "narrow": {"mask": "elastic+full", "mask_lengths": 2,  # the second size of the size curve
               "model_overrides": {"width": 128, "num_heads": 2, "mlp_width": 256}},
}
CALIBRATION_STEPS = (10, 30)  # time the steps between these two
STARTUP_SECONDS = 60  # loading the corpus, the first evaluation and saving, per phase


def write_config(folder: Path, name: str, device: str, **fields) -> Path:
    config = {**COMMON, **RUNS[name], "device": device, "out_dir": str(folder / name),
              "data": [str(CORPUS / "train")],
              "eval_data": [str(next(CORPUS.glob(f"heldout/{stem}.*"))) for stem in HELD_OUT], **fields}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def launch(configs: list[Path], threads: int, log_folder: Path) -> list[subprocess.Popen]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return [subprocess.Popen([sys.executable, "-m", "elastictok.cli", "train", "--config", str(c)], env=env,
                             stdout=open(log_folder / f"{c.stem}.out", "w"), stderr=subprocess.STDOUT)
            for c in configs]


def logged_step(run_dir: Path) -> int:
    try:
        rows = list(csv.DictReader(open(run_dir / "log.csv")))
    except FileNotFoundError:
        return 0
    return int(rows[-1]["step"]) if rows else 0


def wait_all(processes: list[subprocess.Popen], names: list[str], log_folder: Path) -> None:
    for process, name in zip(processes, names):
        if process.wait():
            sys.exit(f"run {name} failed; its output:\n{(log_folder / f'{name}.out').read_text()[-3000:]}")


def calibrate(names: list[str], folder: Path, device: str, threads: int) -> float:
    """Seconds per step of the slowest run while all of them train together."""
    first, last = CALIBRATION_STEPS
    configs = [write_config(folder, n, device, steps=10_000, stop_at=last, log_every=first // 2,
                            eval_every=10**6, checkpoint_every=10**6) for n in names]
    processes = launch(configs, threads, folder)
    seen: dict[tuple[str, int], float] = {}
    running = True
    while running:
        running = any(p.poll() is None for p in processes)  # then one more look at the logs: none is missed
        for name in names:
            step = logged_step(folder / name)
            for mark in (first, last):
                if step >= mark:
                    seen.setdefault((name, mark), time.monotonic())
        time.sleep(0.2)
    wait_all(processes, names, folder)
    return max((seen[(n, last)] - seen[(n, first)]) / (last - first) for n in names)


def pack(names: list[str], folder: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / "runs.tar.gz", "w:gz") as tar:
        for name in names:
            run = folder / name
            for member in ["model/config.json", "train_config.yaml", "log.csv", "eval.jsonl"]:
                if (run / member).exists():
                    tar.add(run / member, arcname=f"{name}/{member}")
            tar.add(folder / f"{name}.out", arcname=f"{name}/stdout.txt")
            with tempfile.TemporaryDirectory() as tmp:  # config.json travels in the tarball
                from_pretrained(run / "model").save_pretrained(tmp, dtype=torch.float16)
                shutil.move(Path(tmp) / "model.safetensors", out / f"{name}.safetensors")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="training time of the main phase")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // (2 * len(RUNS))),
                        help="CPU threads per run (each also has its loader workers)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/device-runs"))
    parser.add_argument("--batch-size", type=int, default=COMMON["batch_size"])
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                        help="bf16 autocast (--no-bf16 for a CPU without native bf16)")
    args = parser.parse_args()
    COMMON.update(batch_size=args.batch_size, bf16=args.bf16)

    started = time.monotonic()
    shutil.rmtree(args.work, ignore_errors=True)  # an earlier call's logs would fake the calibration
    seconds_per_step = calibrate(args.runs, args.work / "calibration", args.device, args.threads)
    steps = int((60 * args.minutes - STARTUP_SECONDS) / seconds_per_step)
    print(f"calibration: {seconds_per_step * 1000:.0f} ms per step with {len(args.runs)} runs together "
          f"({time.monotonic() - started:.0f} s); training {steps} steps each", flush=True)
    folder = args.work / "main"
    configs = [write_config(folder, n, args.device, steps=steps, eval_every=max(1, steps // 4),
                            checkpoint_every=steps, max_minutes=args.minutes + 1) for n in args.runs]
    wait_all(launch(configs, args.threads, folder), args.runs, folder)
    pack(args.runs, folder, args.out)
    for name in args.runs:
        print(f"{name}: {(folder / name / 'eval.jsonl').read_text().strip().splitlines()[-1]}")
    print(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
