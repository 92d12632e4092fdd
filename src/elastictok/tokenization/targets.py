"""What adaptive tokenization aims for, one type per kind of target.

- ``Threshold(metric, value)``: per block, the fewest tokens whose reconstruction meets ``value``
  on ``metric`` (a name in ``elastictok.metrics.quality.METRICS`` or a callable).
- ``TokenCount(tokens)``: exactly ``tokens`` per block (no search).
- ``Budget(tokens)``: at most ``tokens`` for the whole input, spent where they buy the most quality.

``parse_target("psnr:30")`` reads the text form (``mse:0.003``, ``psnr:30``, ``ssim:0.95``,
``tokens:64``, ``budget:5000``) the CLI and ``model.tokenize`` accept.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import ClassVar, Union

import torch
from torch import Tensor

from ..errors import ElasticTokError
from ..metrics.quality import METRICS, BlockMetric, psnr_from_mse


# name -> the thresholds that mean something for pixels in [-1, 1]: (lowest, excluded; highest, included)
THRESHOLD_RANGES: dict[str, tuple[float, float]] = {
    "mse": (0.0, math.inf),  # 0 would need a perfect reconstruction; 4 (the largest error) or more passes anything
    "psnr": (0.0, math.inf),
    "ssim": (0.0, 1.0),
}


@dataclass(frozen=True)
class Threshold:
    """Meet ``value`` on ``metric`` in every block; a callable metric needs ``higher_is_better``."""

    metric: str | BlockMetric
    value: float
    higher_is_better: bool | None = None  # None for a named metric: taken from METRICS
    fixed_tokens: ClassVar[None] = None  # every kind of target says: tokens every block keeps (None: searched)
    whole_input: ClassVar[bool] = False  # ... and whether it is decided over the whole input

    def __post_init__(self) -> None:
        if isinstance(self.metric, str):
            if self.metric not in METRICS:
                raise ElasticTokError(f"unknown metric {self.metric!r}; use {', '.join(METRICS)} or a callable")
            object.__setattr__(self, "higher_is_better", METRICS[self.metric][1])
        elif not callable(self.metric):
            raise ElasticTokError(f"a metric is a name or a callable, got {type(self.metric).__name__}")
        elif self.higher_is_better is None:
            raise ElasticTokError("a callable metric needs higher_is_better=True or False")
        self._check_value()

    def _check_value(self) -> None:
        value = self.value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ElasticTokError(f"a {self.name} threshold must be a finite number, got {value!r}")
        if isinstance(self.metric, str) and self.metric in THRESHOLD_RANGES:
            low, high = THRESHOLD_RANGES[self.metric]
            if not low < value <= high:
                limit = f"({low:g}, {high:g}]" if high < math.inf else f"greater than {low:g}"
                raise ElasticTokError(f"a {self.metric} threshold must be {limit}, got {value:g}")

    @property
    def name(self) -> str:
        return self.metric if isinstance(self.metric, str) else getattr(self.metric, "__name__", "custom")

    def __str__(self) -> str:
        return f"{self.name}:{self.value}"

    @property
    def key(self) -> str:
        """How tables, reports and the page name it: ``mse:0.03``."""
        return f"{self.name}:{self.value:g}"

    def label(self, max_tokens: int) -> str:
        """For people: ``MSE ≤ 0.03 (21.2 dB)``, ``PSNR ≥ 30 dB``."""
        if self.metric == "mse":
            return f"MSE ≤ {self.value:g} ({self.psnr_db:.1f} dB)"
        if self.metric == "psnr":
            return f"PSNR ≥ {self.value:g} dB"
        return f"{self.name.upper()} {'≥' if self.higher_is_better else '≤'} {self.value:g}"

    @property
    def psnr_db(self) -> float | None:
        """The PSNR an ``mse`` or ``psnr`` threshold stands for (None for other metrics)."""
        if self.metric == "mse":
            return float(psnr_from_mse(torch.tensor(self.value)))
        return float(self.value) if self.metric == "psnr" else None

    @property
    def scorer(self) -> "Threshold":
        """How blocks are scored for this target."""
        return self

    def check_model(self, config) -> None:
        """Refuse what ``config``'s model cannot do (every model can aim for a threshold)."""

    def score(self, recon: Tensor, original: Tensor) -> Tensor:
        """(B,) scores of blocks (B, fpb, 3, H, W)."""
        metric = METRICS[self.metric][0] if isinstance(self.metric, str) else self.metric
        return metric(recon, original).float()

    def meets(self, scores: Tensor) -> Tensor:
        """(B,) whether each block's score meets the threshold."""
        return scores >= self.value if self.higher_is_better else scores <= self.value


class _Count:
    """What a token count and a budget share: blocks are scored by MSE, and every block counts as met."""

    psnr_db: ClassVar[None] = None  # no quality asked for

    @property
    def key(self) -> str:
        return str(self)

    @property
    def scorer(self) -> Threshold:
        return MSE_SCORE

    def meets(self, scores: Tensor) -> Tensor:
        return torch.ones_like(scores, dtype=torch.bool)


def _whole_tokens(value) -> int:
    """A positive whole number of tokens; fractions, text and booleans are refused, not rounded."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ElasticTokError(f"token counts and budgets must be whole numbers, got {value!r}")
    if value < 1:
        raise ElasticTokError("token counts and budgets must be positive")
    return int(value)


@dataclass(frozen=True)
class TokenCount(_Count):
    """Exactly ``tokens`` per block (outside the model's [Mmin, Mmax] the tokenizer refuses it)."""

    tokens: int
    whole_input: ClassVar[bool] = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "tokens", _whole_tokens(self.tokens))

    def __str__(self) -> str:
        return f"tokens:{self.tokens}"

    @property
    def fixed_tokens(self) -> int:
        return self.tokens

    def label(self, max_tokens: int) -> str:
        return f"all {self.tokens} tokens" if self.tokens == max_tokens else f"{self.tokens} tokens"

    def check_model(self, config) -> None:
        """A count outside the model's [Mmin, Mmax] is an error, not a silent clamp."""
        if not config.min_tokens <= self.tokens <= config.tokens_per_block:
            raise ElasticTokError(f"tokens:{self.tokens} is outside this model's range [Mmin, Mmax] = "
                                  f"[{config.min_tokens}, {config.tokens_per_block}]")


@dataclass(frozen=True)
class Budget(_Count):
    """At most ``tokens`` over the whole input."""

    tokens: int
    fixed_tokens: ClassVar[None] = None
    whole_input: ClassVar[bool] = True  # tokenize() spends it over the whole input, not block by block

    def __post_init__(self) -> None:
        object.__setattr__(self, "tokens", _whole_tokens(self.tokens))

    def __str__(self) -> str:
        return f"budget:{self.tokens}"

    def label(self, max_tokens: int) -> str:
        return f"budget {self.tokens}"

    def check_model(self, config) -> None:
        pass


Target = Union[Threshold, TokenCount, Budget]
MSE_SCORE = Threshold("mse", 4.0)  # how blocks are scored when the target is not a threshold


def parse_target(text: str) -> Target:
    """``mse:0.003``, ``psnr:30``, ``ssim:0.95``, ``tokens:64`` or ``budget:5000``."""
    if not isinstance(text, str):
        raise ElasticTokError(f"a target is text such as 'psnr:30' or 'tokens:64', got {type(text).__name__}")
    name, sep, value = text.partition(":")
    try:
        number = (int if name in ("tokens", "budget") else float)(value)
    except ValueError:
        number = None
    if not sep or number is None:
        raise ElasticTokError(f"bad target {text!r}: expected mse:0.003, psnr:30, ssim:0.95, tokens:N or budget:N")
    if name == "tokens":
        return TokenCount(number)
    if name == "budget":
        return Budget(number)
    return Threshold(name, number)


def as_target(target: Target | str) -> Target:
    """A target object from a target or its text form."""
    if isinstance(target, str):
        return parse_target(target)
    if not isinstance(target, (Threshold, TokenCount, Budget)):
        raise ElasticTokError(f"a target is Threshold, TokenCount, Budget or text such as 'mse:0.003', "
                              f"got {type(target).__name__}")
    return target
