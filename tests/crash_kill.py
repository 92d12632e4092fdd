"""Crash-kill: run a command of the command line as a real process, SIGKILL it at a seeded random point of its
work, run it again (``train`` with ``--resume``) until it ends, and compare what it wrote with what an
uninterrupted run writes: no input lost or repeated, no temporary file left, and no process of the killed run
(worker, resource tracker) left alive once it is gone.

``tests/test_crash_kill.py`` runs one seeded kill per command; ``benchmarks/crash_kill.py`` runs many. POSIX only
(``/proc``, sessions, SIGKILL).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TIMEOUT = 300  # seconds for any one run: a hang is a failure, not a stuck suite
GRACE = 10  # seconds a killed run's processes have to end (DataLoader workers check their parent every 5 s)
LEFTOVERS = (".tmp", ".shard-run.json", ".elastictok.lock")  # name endings no finished run leaves behind


def cli(*args: Any) -> list[str]:
    return [sys.executable, "-m", "elastictok.cli", *map(str, args), "--no-progress"]


@dataclass
class Case:
    """One command to kill: its command line writing into an output folder (``args``), the start of the line it
    prints when done (``done``: a run that printed it has ended for its user, who reruns only a run that did
    not), what a rerun adds (``resume``), when it has begun its work (``ready``; kill points are drawn from
    then to its end: None, from its start), and what of its output must equal an uninterrupted run's
    (``content``). ``critical`` tells the moment a kill does the most harm (a shard half-written, a log line
    past the checkpoint): the short suite kills there."""

    name: str
    args: Callable[[Path], list[str]]
    done: str
    content: Callable[[Path], Any]
    critical: Callable[[Path], bool]
    ready: Callable[[Path], bool] | None = None
    resume: list[str] = field(default_factory=list)


@dataclass
class Trial:
    """One output folder, killed ``kills`` times (at fractions of the work drawn from ``seed``), then finished."""

    case: str
    seed: int
    landed: int = 0  # kills that found the process still running
    problems: list[str] = field(default_factory=list)


# ---- the commands ------------------------------------------------------------------------------------------------
def _tar_members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]


def _folder(out: Path) -> dict[str, Any]:
    """Every file in ``out`` by name: a tar's members, a JSON file's value, other files' bytes."""
    files: dict[str, Any] = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        name = str(path.relative_to(out))
        files[name] = (_tar_members(path) if path.suffix == ".tar"
                       else json.loads(path.read_text()) if path.suffix == ".json" else path.read_bytes())
    return files


def _run_folder(out: Path) -> dict[str, Any]:
    """A training run's results: the final weights, log.csv without its timing column, eval.jsonl."""
    from safetensors.torch import load_file

    weights = load_file(str(out / "model" / "model.safetensors"))
    with (out / "log.csv").open() as f:
        rows = [{k: v for k, v in row.items() if k != "frames_per_s"} for row in csv.DictReader(f)]
    return {"weights": {k: v.numpy().tobytes() for k, v in weights.items()}, "log": rows,
            "eval": (out / "eval.jsonl").read_text()}


def _report(out: Path) -> dict[str, Any]:
    """An eval report: its file names and report.json without timings."""
    report = json.loads((out / "report.json").read_text())
    return {"files": sorted(p.name for p in out.iterdir()), "report": _without_timings(report)}


def _without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if "second" not in k and "time" not in k}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def cases(work: Path, workers: int = 1) -> list[Case]:
    """The commands, on the inputs ``make_inputs`` put in ``work``; tokenize-corpus with ``workers`` processes."""
    media, model = work / "media", work / "micro"
    config = work / "train.yaml"
    config.write_text(yaml.safe_dump({
        "model": "micro", "data": [str(media)], "eval_data": [str(media / "photo0.jpg")], "steps": 10,
        "batch_size": 2, "n_blocks": 2, "warmup_steps": 2, "lr": 3e-3, "eval_every": 2, "checkpoint_every": 3,
        "log_every": 1, "bf16": False, "seed": 1}))
    locked = lambda out: (out / ".elastictok.lock").exists()  # noqa: E731 (DST is held: the work has begun)
    return [
        Case("data shard", lambda out: cli("data", "shard", media, out, "--shard-size", 1, "--clip-frames", 4,
                                           "--short-side", 64), "wrote ", _folder,
             critical=lambda out: len(list(out.glob("shard-*.tar"))) >= 2, ready=locked),
        Case("tokenize-corpus", lambda out: cli("tokenize-corpus", media, out, "--model", model, "--shard-size", 1,
                                                "--workers", workers), "4 inputs", _folder,
             critical=lambda out: (out / "tokens-000000.json").exists() and any(out.glob(".tokens-*.tmp")),
             ready=locked),
        Case("train", lambda out: cli("train", "--config", config, "--out-dir", out), "model written to",
             _run_folder, critical=_evaluated_past_checkpoint, ready=lambda out: (out / "log.csv").exists(),
             resume=["--resume"]),
        Case("eval", lambda out: cli("eval", media / "pan.mp4", "--model", model, "--thresholds", "psnr:20",
                                     "--fractions", "0.5,1", "-o", out),
             "wrote ", _report, critical=lambda out: any(out.glob(".report.*.tmp/*.png"))),
    ]


def _evaluated_past_checkpoint(out: Path) -> bool:
    """eval.jsonl holds step 4's line, which the checkpoint of step 3 is before (checkpoint_every 3)."""
    log = out / "eval.jsonl"
    return log.exists() and '"step": 4,' in log.read_text()


def make_inputs(work: Path) -> None:
    """Real photos and a real-content video (a pan across a photo) in ``work/media``, the micro preset in
    ``work/micro``."""
    import numpy as np
    import skimage.data
    import torch
    from PIL import Image

    from elastictok import ElasticTok, ElasticTokConfig
    from elastictok.media.io import write_video

    media = work / "media"
    media.mkdir(parents=True)
    for i, photo in enumerate([skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]):
        Image.fromarray(np.ascontiguousarray(photo[:256, :256])).save(media / f"photo{i}.jpg", quality=90)
    pan = torch.from_numpy(skimage.data.astronaut())
    write_video(media / "pan.mp4", torch.stack([pan[100:228, 4 * t:4 * t + 128] for t in range(16)]), fps=16)
    torch.manual_seed(0)
    ElasticTok(ElasticTokConfig.from_preset("micro")).save_pretrained(work / "micro")


# ---- running and killing -----------------------------------------------------------------------------------------
def interrupt(run: subprocess.Popen, how: str) -> tuple[str, float]:
    """Stop ``run`` as a terminal's Ctrl-C does (``how`` "ctrl-c": SIGINT to its whole process group, workers
    included) or as a killed job's SIGTERM does (the run alone); its stderr and the seconds it took to end."""
    if how == "ctrl-c":
        os.killpg(run.pid, signal.SIGINT)
    else:
        run.send_signal(signal.SIGTERM)
    interrupted = time.monotonic()
    _, stderr = run.communicate(timeout=60)
    return stderr, time.monotonic() - interrupted


def session(sid: int) -> list[int]:
    """The live processes of session ``sid`` (each run starts its own), zombies left out."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, _, process_session = stat.read_text().rsplit(")", 1)[1].split()[:4]
        except (OSError, ValueError):
            continue
        if int(process_session) == sid and state != "Z":
            members.append(int(stat.parent.name))
    return members


def reference(case: Case, out: Path) -> float:
    """Run ``case`` uninterrupted into ``out``; returns the seconds of its work (from ``ready`` to its end)."""
    process = subprocess.Popen(case.args(out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    began, deadline = time.monotonic(), time.monotonic() + TIMEOUT
    while process.poll() is None and case.ready is not None and not case.ready(out) and time.monotonic() < deadline:
        time.sleep(0.005)
    began = time.monotonic() if case.ready is not None else began
    _, stderr = process.communicate(timeout=TIMEOUT)
    if process.returncode != 0:
        raise RuntimeError(f"{case.name}: the uninterrupted run failed: {stderr}")
    return time.monotonic() - began


@dataclass
class Kill:
    landed: bool  # the process was still running
    done: bool  # it had printed its done line (the kill came as it was exiting)
    problems: list[str]


def kill_during(case: Case, out: Path, args: list[str], delay: float, log: Path, critical: bool = False) -> Kill:
    """Start ``args`` (its output to ``log``), SIGKILL it (the process alone, as the OOM killer or ``kill -9``
    would) ``delay`` seconds into its work (``critical``: after its critical moment), and wait for the processes
    it started to end."""
    with log.open("w") as output:
        process = subprocess.Popen(args, env=ENV, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    moment = case.critical if critical else case.ready
    deadline = time.monotonic() + TIMEOUT
    while process.poll() is None and moment is not None and not moment(out) and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(delay)
    landed = process.poll() is None
    if landed:
        process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + GRACE
    while session(process.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = session(process.pid)
    for pid in survivors:  # the suite leaves nothing running either way
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    problems = [f"{len(survivors)} processes of the killed run still alive after {GRACE} s"] if survivors else []
    done = any(line.startswith(case.done) for line in log.read_text(errors="replace").splitlines())
    return Kill(landed, done, problems)


def trial(case: Case, out: Path, expected: Any, window: float, seed: int, kills: int = 1,
          critical: float = 0.0) -> Trial:
    """Kill ``case`` up to ``kills`` times at seeded points: with odds ``critical`` just after its critical
    moment (within 20 ms), else anywhere in its ``window`` of work; rerun it to its end, and list every way its
    output differs from ``expected``."""
    rng, result = random.Random(f"{case.name}:{seed}"), Trial(case.name, seed)
    for k in range(kills):
        args = case.args(out) + (case.resume if k else [])
        at_critical = rng.random() < critical
        delay = rng.uniform(0, 0.02) if at_critical else rng.uniform(0, window)
        kill = kill_during(case, out, args, delay, out.parent / f"{out.name}.log", at_critical)
        result.landed += kill.landed
        result.problems += kill.problems
        if kill.done:  # it ended for its user: nothing to rerun
            break
    if not kill.done:
        final = subprocess.run(case.args(out) + case.resume, env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
        if final.returncode != 0 or "Traceback" in final.stderr:
            result.problems.append(f"the rerun failed ({final.returncode}): {final.stderr.strip()[-500:]}")
            return result
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.name.endswith(LEFTOVERS))
    if left:
        result.problems.append(f"left behind: {', '.join(left)}")
    content = case.content(out)
    if content != expected:
        result.problems.append(f"output differs from an uninterrupted run's: {_difference(expected, content)}")
    return result


def _difference(expected: Any, got: Any) -> str:
    """Where two outputs first differ, in a few words."""
    if isinstance(expected, dict) and isinstance(got, dict):
        if expected.keys() != got.keys():
            return f"missing {sorted(expected.keys() - got.keys())}, extra {sorted(got.keys() - expected.keys())}"
        key = next(k for k in expected if expected[k] != got[k])
        return f"{key}: {_difference(expected[key], got[key])}"
    if isinstance(expected, list) and isinstance(got, list) and len(expected) != len(got):
        return f"{len(expected)} items expected, {len(got)} found"
    return f"{str(expected)[:120]} != {str(got)[:120]}"
