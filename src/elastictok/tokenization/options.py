"""How to tokenize, apart from the target: one frozen object instead of a dozen parameters."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ElasticTokError
from ..utils.fields import matches

if TYPE_CHECKING:  # the command line reads SEARCHES and the defaults from here before torch is loaded
    from ..models.coder import Sampler

SEARCHES = ("binary", "full", "batched", "regression")
# The target the command line tokenizes to when none is given: 23 dB, the most quality for which the default
# model keeps at most half of its tokens on the bundled clip (45%, mean block PSNR 23.1 dB against 24.4 with
# all; mse:0.019 keeps 53%; python benchmarks/default_target.py).
DEFAULT_TARGET = "mse:0.02"
# The targets a report compares by default: the default target, one either side, and all tokens.
DEFAULT_REPORT_TARGETS = "mse:0.016,mse:0.02,mse:0.03,tokens:all"


@dataclass(frozen=True)
class TokenizeOptions:
    """How to tokenize, everything but the target. ``model.tokenize(x, target, search="full")`` builds one
    from keywords.

    Fields:
        search: how each block's count is found: ``"binary"`` (default; a bisection warm-started from the
            previous block's count), ``"full"`` (every count, exact), ``"batched"`` (``candidates`` counts
            per decoder pass) or ``"regression"`` (one pass: a trained length head predicts the count).
        window: blocks of context kept in the cache: ``"model"`` (the model's ``config.window``, the
            context it was trained on), a number, or None (every earlier block).
        candidates: counts scored per decoder pass by the batched search.
        fps: resample video files to this frame rate first (None: as recorded).
        fit: how a file, PIL image or numpy array of another size is fitted to the model's frames:
            ``"crop"`` (resize to cover, centre crop) or ``"pad"`` (resize to fit inside, pad with black).
            Either is recorded in the tokens, and said in one line; ``detokenize(..., size="source")``
            gives back the source's size.
        length_head: a trained ``LengthHead`` for ``search="regression"`` (None: the model's own).
        progress: a progress bar per input, drawn only when stderr is a terminal (never in logs).
        warm_start: the binary search starts from the previous block's count.
        steps: the sampler of a family whose decoder samples from noise (FlexTok): Euler steps per block.
            With ``guidance`` and ``seed`` (None: the model's config.json), candidates are scored with the
            decode these give and the tokens record them, so ``detokenize`` gives back the frames the scores
            describe. A family without a sampler (ElasticTok) refuses all three.
        guidance: the sampler's classifier-free guidance scale (1: none).
        seed: the seed of each block's starting noise: decoding is deterministic given it.
    """

    search: str = "binary"  # binary | full | batched | regression (see elastictok.tokenization.search)
    window: int | None | str = "model"  # context blocks cached; "model": config.window; None: all
    candidates: int = 4  # counts scored per pass by the batched search
    fps: float | None = None  # resample video files to this rate first
    fit: str = "crop"  # fit frames to the model's resolution: crop | pad
    length_head: Any = None  # a trained LengthHead for search="regression" (None: the model's own)
    progress: bool = True  # a progress bar per input when stderr is a terminal
    warm_start: bool = True  # binary search starts from the previous block's count
    steps: int | None = None  # sampler: Euler steps (None: the model's config.steps)
    guidance: float | None = None  # sampler: classifier-free guidance scale (None: config.guidance)
    seed: int | None = None  # sampler: seed of each block's starting noise (None: config.seed)

    def __post_init__(self) -> None:
        if self.search not in SEARCHES:
            raise ElasticTokError(f"unknown search {self.search!r}; use {', '.join(SEARCHES)}")
        if self.fit not in ("crop", "pad"):
            raise ElasticTokError(f"fit must be 'crop' or 'pad', got {self.fit!r}")
        if not (self.window is None or isinstance(self.window, str) and self.window == "model"
                or matches(self.window, "int")):
            raise ElasticTokError(f"window must be a whole number of blocks, 'model' or None, got {self.window!r}")
        if not matches(self.candidates, "int") or self.candidates < 1:
            raise ElasticTokError(f"candidates must be a whole number >= 1, got {self.candidates!r}")

    @classmethod
    def build(cls, options: "TokenizeOptions | None" = None, **overrides: Any) -> "TokenizeOptions":
        """``options`` (or the defaults) with keyword overrides; unknown keywords are one error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ElasticTokError(f"unknown tokenize options {', '.join(unknown)}; use {', '.join(sorted(known))}")
        return dataclasses.replace(options or cls(), **overrides)

    def resolve_sampler(self, model) -> Sampler | None:
        """The sampler these options ask of ``model``: its config's, with the fields given here set."""
        return model.sampler(steps=self.steps, guidance=self.guidance, seed=self.seed)

    def resolve_window(self, model) -> int | None:
        """``"model"`` means the model's own ``config.window``; numbers and None pass through."""
        window = model.config.window if self.window == "model" else self.window
        if window is not None and window < 1:
            raise ElasticTokError("window must be at least 1 block")
        return window
