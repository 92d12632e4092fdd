"""Crash-kill, long: SIGKILL data shard, tokenize-corpus (with one worker and with two), train and eval at many
seeded random points (one to three kills per trial, a third of them just after the moment a kill does the most
harm), run each again to its end (train with --resume) and compare with an uninterrupted run: nothing lost or
repeated, no temporary left, no process of a killed run left alive. Prints how many cases it tried and every
failure; exit status 1 if any. The cases are those of ``tests/crash_kill.py`` (the suite kills each once).

    python benchmarks/crash_kill.py --trials 10      # about 15 minutes on two cores
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10, help="trials per command (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("-k", default="", help="only the commands whose name holds this text")
    args = parser.parse_args()
    sys.path.insert(0, str(TESTS))
    from crash_kill import cases, make_inputs, reference, trial

    work = Path(tempfile.mkdtemp(prefix="crash-kill-"))
    try:
        make_inputs(work)
        chosen = [(c.name, c) for c in cases(work)]
        chosen += [(f"{c.name} --workers 2", c) for c in cases(work, workers=2) if c.name == "tokenize-corpus"]
        tried = landed = failed = 0
        for number, (label, case) in enumerate((label, c) for label, c in chosen if args.k in label):
            started = time.perf_counter()
            window = reference(case, work / f"reference-{number}")
            expected = case.content(work / f"reference-{number}")
            for seed in range(args.seed, args.seed + args.trials):
                kills = random.Random(f"kills:{seed}").randint(1, 3)
                result = trial(case, work / f"trial-{number}-{seed}", expected, window, seed, kills=kills,
                               critical=1 / 3)
                tried, landed, failed = tried + 1, landed + result.landed, failed + bool(result.problems)
                for problem in result.problems:
                    print(f"FAIL {label} seed {seed}: {problem}", flush=True)
                shutil.rmtree(work / f"trial-{number}-{seed}", ignore_errors=True)
            print(f"{label}: {args.trials} trials in {time.perf_counter() - started:.0f} s (work window "
                  f"{window:.1f} s)", flush=True)
        print(f"{tried} cases tried, {landed} kills landed on a running process, {failed} failed")
        return int(failed > 0)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
