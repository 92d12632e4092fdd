"""Seeds derived from names, so that any piece of randomness can be recomputed from its parts alone."""

from __future__ import annotations

import hashlib


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from the repr of ``parts``: the same on every machine and Python version."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little")
