"""How to tokenize, apart from the target: one frozen object instead of a dozen parameters."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import ElasticTokError

SEARCHES = ("binary", "full", "batched", "regression")


@dataclass(frozen=True)
class TokenizeOptions:
    """Everything but the target. ``model.tokenize(x, target, search="full")`` builds one from keywords."""

    search: str = "binary"  # binary | full | batched | regression (see elastictok.tokenization.search)
    window: int | None | str = "model"  # context blocks cached; "model": config.window; None: all
    candidates: int = 4  # counts scored per pass by the batched search
    fps: float | None = None  # resample video files to this rate first
    fit: str = "crop"  # fit frames to the model's resolution: crop | pad
    length_head: Any = None  # a trained LengthHead, for search="regression"
    progress: bool = False  # a progress bar per input
    warm_start: bool = True  # binary search starts from the previous block's count

    def __post_init__(self) -> None:
        if self.search not in SEARCHES:
            raise ElasticTokError(f"unknown search {self.search!r}; use {', '.join(SEARCHES)}")
        if self.search == "regression" and self.length_head is None:
            raise ElasticTokError("search='regression' needs a trained length head (elastictok train-length-head)")
        if self.fit not in ("crop", "pad"):
            raise ElasticTokError(f"fit must be 'crop' or 'pad', got {self.fit!r}")
        if self.candidates < 1:
            raise ElasticTokError("candidates must be at least 1")

    @classmethod
    def build(cls, options: "TokenizeOptions | None" = None, **overrides: Any) -> "TokenizeOptions":
        """``options`` (or the defaults) with keyword overrides; unknown keywords are one error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ElasticTokError(f"unknown tokenize options {', '.join(unknown)}; use {', '.join(sorted(known))}")
        return dataclasses.replace(options or cls(), **overrides)

    def resolve_window(self, model) -> int | None:
        """``"model"`` means the model's own ``config.window``; numbers and None pass through."""
        window = model.config.window if self.window == "model" else self.window
        if window is not None and window < 1:
            raise ElasticTokError("window must be at least 1 block")
        return window
