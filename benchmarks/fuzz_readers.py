"""Fuzz every reader a user may hand a file or text to, long: the properties of ``tests/fuzz`` (token files with
the checksum recomputed, config.json, training YAML, length heads, target strings, library misuse) with N random
cases each instead of the suite's short fixed-seed run. Prints the cases each reader was given and every failure.

    python benchmarks/fuzz_readers.py --examples 1000      # about 90 s on one core (4000: about 5 minutes)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000, help="random cases per property (default 1000)")
    parser.add_argument("-k", default="", help="run only the properties whose name holds this text")
    args = parser.parse_args()
    os.environ["ELASTICTOK_FUZZ_EXAMPLES"] = str(args.examples)  # read when the property modules load
    sys.path[:0] = [str(TESTS), str(TESTS / "fuzz")]
    import test_fuzz_misuse
    import test_fuzz_readers
    from hostile import TRIED

    failures = 0
    for module in (test_fuzz_readers, test_fuzz_misuse):
        for name in sorted(n for n in dir(module) if n.startswith("test_") and args.k in n):
            prop = getattr(module, name)
            if not hasattr(prop, "hypothesis"):
                continue  # a listed case, not a property
            started = time.perf_counter()
            try:
                prop()
                verdict = "ok"
            except Exception:  # a property failed: hypothesis has shrunk it to the smallest case
                failures += 1
                verdict = "FAILED\n" + traceback.format_exc(limit=-3)
            print(f"{name}: {time.perf_counter() - started:.0f} s, {verdict}", flush=True)
    print("\ncases per reader:")
    for reader, count in sorted(TRIED.items()):
        print(f"  {reader:16s} {count:7d}")
    print(f"{failures} properties failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
