"""What media the library accepts: frame rates and picture sizes. Free of torch and PyAV, so that the command
line checks its arguments before the library loads."""

from __future__ import annotations

from ..errors import ElasticTokError

MIN_FPS, MAX_FPS = 0.001, 1000.0  # frame rates accepted (a writer stores them as fractions over <= 1001)
FPS_RANGE = f"[{MIN_FPS:g}, {MAX_FPS:g}]"
MAX_SIDE = 65535  # the largest image or frame side accepted (JPEG's limit)
MAX_PIXELS = 100_000_000  # larger images are refused before they are decoded (decompression bombs)


def is_valid_fps(fps: object) -> bool:
    """A frame rate is a number in FPS_RANGE (NaN and infinities are not)."""
    return isinstance(fps, (int, float)) and MIN_FPS <= fps <= MAX_FPS


def check_fps(fps: float | None, what: str = "fps") -> None:
    if fps is not None and not is_valid_fps(fps):
        raise ElasticTokError(f"{what} must be a number in {FPS_RANGE}, got {fps!r}")
