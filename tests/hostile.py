"""Hostile inputs the tests hand the library: token files rebuilt with their checksum recomputed (so that a
lie gets past the damage check and must be caught by the reader's own checks), and one-line error checks."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter

import torch
from hypothesis import HealthCheck, settings
from safetensors.torch import load, save


def etok_parts(blob: bytes) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """A token file's header fields and tensors."""
    length = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8:8 + length])["__metadata__"], load(blob)


def checksum(header: dict[str, str], tensors: dict[str, torch.Tensor]) -> str:
    """The token file checksum as its format states it: SHA-256 of the other header fields as sorted JSON,
    then of each tensor's name, dtype, shape and bytes (written here from the format, not the reader)."""
    digest = hashlib.sha256(json.dumps({k: v for k, v in header.items() if k != "checksum"}, sort_keys=True).encode())
    for name in ("counts", "scores", "tokens"):
        tensor = tensors[name]
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        same_bytes = tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor  # numpy has no bf16
        digest.update(same_bytes.contiguous().numpy().tobytes())
    return digest.hexdigest()


def rebuild_etok(header: dict[str, str], tensors: dict[str, torch.Tensor]) -> bytes:
    """Token file bytes from edited fields and tensors, with a checksum that matches them."""
    header = {**header}
    if set(tensors) >= {"counts", "scores", "tokens"}:
        header["checksum"] = checksum(header, tensors)
    return save({k: v.contiguous() for k, v in tensors.items()}, metadata=header)


def one_line(message: str) -> bool:
    return "\n" not in message and "Traceback" not in message


LONG_EXAMPLES = int(os.environ.get("ELASTICTOK_FUZZ_EXAMPLES", "0"))  # 0: the suite's short fixed-seed run
TRIED: Counter = Counter()  # cases given to each reader (benchmarks/fuzz_readers.py prints them)


def fuzz(examples: int):
    """Hypothesis settings: ``examples`` derandomized cases in the suite, ``LONG_EXAMPLES`` random ones when set."""
    return settings(max_examples=LONG_EXAMPLES or examples, derandomize=not LONG_EXAMPLES, deadline=None,
                    database=None, suppress_health_check=list(HealthCheck))


def refused_or(call, *args, **kwargs):
    """``call(...)``, or None when it refuses in one ElasticTokError line (any other exception fails the test)."""
    from elastictok import ElasticTokError

    try:
        return call(*args, **kwargs)
    except ElasticTokError as exc:
        assert one_line(str(exc)), repr(str(exc))
        return None
