"""Search strategies: which token counts to try for one block, given which earlier tries passed.

Each is a pure generator (``Probes``): it yields a list of candidate counts and is sent back a list
of booleans (did each meet the target). It never sees a model, so a new strategy is a small
generator added here and named in ``elastictok.tokenization.options.SEARCHES``.

- ``exhaustive``: every count in [Mmin, Mmax]; exact, the reference (no monotonicity assumed).
- ``bisection``: warm-started from the previous block's count (a galloping search); the same
  decision as plain bisection whenever quality rises with the count.
- ``kary``: a K-ary search scoring ``k`` counts per forward pass.

Whatever the search, the tokenizer keeps the smallest count it saw meet the target (Mmax when none did).
"""

from __future__ import annotations

from typing import Generator

Probes = Generator[list[int], list[bool], None]



def bisection(lo: int, hi: int, guess: int | None = None) -> Probes:
    """Smallest passing count in [lo, hi], assuming hi passes (it is the fallback) and monotone quality.

    With ``guess``, first probe there and gallop away from it with doubling steps, so a block
    that needs about what the previous one needed costs about two passes.
    """
    if guess is not None and lo <= guess < hi:
        if (yield [guess])[0]:
            hi, step = guess, 1
            while hi - step >= lo:
                if (yield [hi - step])[0]:
                    hi, step = hi - step, step * 2
                else:
                    lo = hi - step + 1
                    break
        else:
            lo, step = guess + 1, 1
            while lo + step - 1 < hi:
                probe = lo + step - 1
                if (yield [probe])[0]:
                    hi = probe
                    break
                lo, step = probe + 1, step * 2
    while lo < hi:
        mid = (lo + hi) // 2
        if (yield [mid])[0]:
            hi = mid
        else:
            lo = mid + 1


def kary(lo: int, hi: int, k: int) -> Probes:
    """Like bisection, but k evenly spaced counts per pass: the interval shrinks k+1 times per pass."""
    while lo < hi:
        span = hi - lo  # candidates lie in [lo, hi - 1]
        picks = sorted({lo + (span * (i + 1)) // (k + 1) for i in range(k)} | ({lo} if span <= k else set()))
        picks = [p for p in picks if lo <= p < hi] or [lo]
        passed = yield picks
        first_pass = next((p for p, ok in zip(picks, passed) if ok), None)
        failed_below = [p for p, ok in zip(picks, passed) if not ok and (first_pass is None or p < first_pass)]
        if first_pass is not None:
            hi = first_pass
        if failed_below:
            lo = max(failed_below) + 1


def exhaustive(lo: int, hi: int, chunk: int) -> Probes:
    """Every count in [lo, hi], ``chunk`` per pass."""
    for start in range(lo, hi + 1, chunk):
        yield list(range(start, min(hi, start + chunk - 1) + 1))



def make_search(search: str, lo: int, hi: int, candidates: int, guess: int | None) -> Probes:
    """The named strategy over [lo, hi]: ``full``, ``batched`` or ``binary`` (warm-started at ``guess``)."""
    if search == "full":
        return exhaustive(lo, hi, candidates * 8)
    if search == "batched":
        return kary(lo, hi, candidates)
    return bisection(lo, hi, guess)
