"""One-pass length prediction (the paper's "neural regression" search).

A small MLP reads the encoder's features of a block (all tokens kept, conditioned on the cached
earlier blocks) and predicts how many tokens the block needs to meet one fixed target. It costs
one encoder pass plus the final encode+decode at the predicted count, instead of a search; it
does not guarantee the target. Train it with ``elastictok train-length-head``: labels come from a
search over real media.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..errors import ElasticTokError
from ..utils.fileio import atomic_path
from .targets import Target


def block_features(model, patches: Tensor, coder) -> Tensor:
    """(B, 2*width): mean and standard deviation over tokens of the all-kept encoder output."""
    mask = torch.ones(patches.shape[:2], dtype=torch.bool, device=patches.device)
    start = coder.blocks_done * model.config.tokens_per_block
    h, _ = model.encoder_features(patches, mask, coder.enc_cache, start)
    h = h.float()
    coder.passes += 1  # an encoder-only pass
    return torch.cat([h.mean(1), h.std(1)], dim=-1)


class LengthHead(nn.Module):
    def __init__(self, width: int, target: str, config_hash: str, hidden: int = 256):
        super().__init__()
        self.target, self.config_hash = target, config_hash
        self.net = nn.Sequential(nn.LayerNorm(2 * width), nn.Linear(2 * width, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, features: Tensor) -> Tensor:
        """Predicted share of Mmax, in (0, 1)."""
        return torch.sigmoid(self.net(features.float())).squeeze(-1)

    @torch.no_grad()
    def predict(self, model, patches: Tensor, coder, target: Target) -> Tensor:
        if target.threshold is not None and Target.parse(self.target) != target:
            raise ElasticTokError(f"this length head was trained for {self.target}, not {target.name}:{target.threshold}")
        share = self(block_features(model, patches, coder))
        return (share * model.config.tokens_per_block).round().long().cpu()

    def save(self, path: str | os.PathLike) -> None:
        meta = {"target": self.target, "config_hash": self.config_hash, "width": str(self.net[1].in_features // 2),
                "hidden": str(self.net[1].out_features)}
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike, model) -> "LengthHead":
        from safetensors import safe_open
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            head = cls(int(meta["width"]), meta["target"], meta["config_hash"], int(meta["hidden"]))
            head.load_state_dict(load_file(str(path)))
        except Exception as exc:
            raise ElasticTokError(f"{path}: not a readable length head ({str(exc).splitlines()[0][:120]})") from None
        if head.config_hash != model.config.fingerprint():
            raise ElasticTokError(f"{path}: this length head was trained for another model")
        return head.eval()


@dataclass
class HeadReport:
    blocks: int
    train_loss: float
    disagreement: float | None = None  # share of held-out blocks where the prediction != the search
    mean_abs_error: float | None = None  # tokens


def collect(model, inputs: list, target: Target, search: str, **kwargs) -> tuple[Tensor, Tensor]:
    """Features and searched counts of every block of every input."""
    from .tokenizer import tokenize

    sink: list[Tensor] = []
    results = tokenize(model, list(inputs), target, search, feature_sink=sink, **kwargs)
    counts = torch.cat([r.counts for r in results])
    return torch.cat(sink), counts


def train_length_head(model, inputs: list, target: Target, search: str = "binary", steps: int = 2000,
                      eval_inputs: list | None = None, **kwargs) -> tuple[LengthHead, HeadReport]:
    features, counts = collect(model, inputs, target, search, **kwargs)
    m = model.config.tokens_per_block
    head = LengthHead(model.config.width, f"{target.name}:{target.threshold}", model.config.fingerprint())
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3, weight_decay=1e-4)
    labels = counts.float() / m
    for _ in range(steps):
        loss = (head(features) - labels).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    report = HeadReport(blocks=len(labels), train_loss=loss.item())
    head.eval()
    if eval_inputs:
        feats, truth = collect(model, eval_inputs, target, "full", **kwargs)
        with torch.no_grad():
            predicted = (head(feats) * m).round().long().clamp(model.config.min_tokens, m)
        report.disagreement = (predicted != truth).float().mean().item()
        report.mean_abs_error = (predicted - truth).abs().float().mean().item()
    return head, report
