"""What adaptive tokenization aims for: a per-block quality threshold, a fixed count, or a total budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from einops import rearrange
from torch import Tensor

from ..errors import ElasticTokError
from ..metrics.quality import mse_per_block, psnr_from_mse

# (recon, original) -> (B,) score per block; both are (B, frames_per_block, 3, H, W) in [-1, 1].
BlockMetric = Callable[[Tensor, Tensor], Tensor]


def block_mse(recon: Tensor, original: Tensor) -> Tensor:
    return mse_per_block(recon, original, recon.shape[1])[:, 0]


def block_psnr(recon: Tensor, original: Tensor) -> Tensor:
    return psnr_from_mse(block_mse(recon, original))


def block_ssim(recon: Tensor, original: Tensor) -> Tensor:
    """Mean SSIM over the frames of each block (Gaussian window 11, sigma 1.5), via torchmetrics."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    frames = recon.shape[1]
    a = rearrange(recon.float().clamp(-1, 1), "b t c h w -> (b t) c h w")
    b = rearrange(original.float(), "b t c h w -> (b t) c h w")
    kernel = min(11, a.shape[-1] - (1 - a.shape[-1] % 2), a.shape[-2] - (1 - a.shape[-2] % 2))
    per_frame = ssim(a, b, data_range=2.0, reduction="none", kernel_size=kernel)
    return per_frame.view(-1, frames).mean(1)


METRICS: dict[str, tuple[BlockMetric, bool]] = {  # name -> (metric, higher is better)
    "mse": (block_mse, False),
    "psnr": (block_psnr, True),
    "ssim": (block_ssim, True),
}


@dataclass(frozen=True)
class Target:
    """One of: ``threshold`` on ``metric``; ``tokens`` per block; a total ``budget`` for the video."""

    metric: str | BlockMetric = "mse"
    threshold: float | None = None
    higher_is_better: bool | None = None  # required for a callable metric
    tokens: int | None = None
    budget: int | None = None

    def __post_init__(self) -> None:
        chosen = [self.threshold is not None, self.tokens is not None, self.budget is not None]
        if sum(chosen) != 1:
            raise ElasticTokError("give exactly one of a threshold, a number of tokens per block, or a budget")
        if isinstance(self.metric, str) and self.metric not in METRICS:
            raise ElasticTokError(f"unknown metric {self.metric!r}; use mse, psnr, ssim or a callable")
        if callable(self.metric) and self.threshold is not None and self.higher_is_better is None:
            raise ElasticTokError("a callable metric needs higher_is_better=True or False")
        if self.tokens is not None and self.tokens < 1 or self.budget is not None and self.budget < 1:
            raise ElasticTokError("token counts and budgets must be positive")

    @classmethod
    def parse(cls, text: str) -> "Target":
        """``mse:0.003``, ``psnr:30``, ``ssim:0.95``, ``tokens:64`` or ``budget:5000``."""
        name, sep, value = text.partition(":")
        try:
            number = (int if name in ("tokens", "budget") else float)(value)
        except ValueError:
            number = None
        if not sep or number is None:
            raise ElasticTokError(f"bad target {text!r}: expected mse:0.003, psnr:30, ssim:0.95, tokens:N or budget:N")
        if name in ("tokens", "budget"):
            return cls(**{name: number})
        return cls(metric=name, threshold=number)

    @property
    def name(self) -> str:
        return self.metric if isinstance(self.metric, str) else getattr(self.metric, "__name__", "custom")

    def score(self, recon: Tensor, original: Tensor) -> Tensor:
        metric = METRICS[self.metric][0] if isinstance(self.metric, str) else self.metric
        return metric(recon, original).float()

    def meets(self, scores: Tensor) -> Tensor:
        higher = METRICS[self.metric][1] if isinstance(self.metric, str) else self.higher_is_better
        return scores >= self.threshold if higher else scores <= self.threshold
