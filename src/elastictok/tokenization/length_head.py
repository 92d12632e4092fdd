"""One-pass length prediction (the paper's "neural regression" search).

A small MLP reads the encoder's features of a block (all tokens kept, conditioned on the cached
earlier blocks) and predicts how many tokens the block needs to meet one fixed target. It costs
one encoder pass plus the final encode+decode at the predicted count, instead of a search; it
does not guarantee the target. Train it with ``elastictok train-length-head``: labels come from a
search over real media (``elastictok.training.length_head``).
"""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..errors import ElasticTokError
from ..utils.fileio import atomic_path
from .coder import BlockCoder
from .targets import Target, Threshold, parse_target


class LengthHead(nn.Module):
    """A small MLP from a block's encoder features to the share of Mmax it needs for ``target`` (text, e.g. mse:0.003)."""

    def __init__(self, width: int, target: str, config_hash: str, hidden: int = 256, weights_hash: str = ""):
        super().__init__()
        self.target, self.config_hash, self.weights_hash = target, config_hash, weights_hash
        self.net = nn.Sequential(nn.LayerNorm(2 * width), nn.Linear(2 * width, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, features: Tensor) -> Tensor:
        """Predicted share of Mmax, in (0, 1)."""
        return torch.sigmoid(self.net(features.float())).squeeze(-1)

    @torch.no_grad()
    def predict(self, model, patches: Tensor, coder: BlockCoder, target: Target) -> Tensor:
        """(B,) predicted counts for the block's ``patches`` (B, M, D), after the coder's cached blocks."""
        if isinstance(target, Threshold) and parse_target(self.target) != target:
            raise ElasticTokError(f"this length head was trained for {self.target}, not {target}")
        share = self(coder.features(patches))
        return (share * model.config.tokens_per_block).round().long().cpu()

    def save(self, path: str | os.PathLike) -> None:
        meta = {"target": self.target, "config_hash": self.config_hash, "weights_hash": self.weights_hash,
                "width": str(self.net[1].in_features // 2), "hidden": str(self.net[1].out_features)}
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike, model) -> "LengthHead":
        from safetensors import safe_open
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            head = cls(int(meta["width"]), meta["target"], meta["config_hash"], int(meta["hidden"]),
                       meta.get("weights_hash", ""))
            head.load_state_dict(load_file(str(path)))
        except Exception as exc:
            raise ElasticTokError(f"{path}: not a readable length head ({str(exc).splitlines()[0][:120]})") from None
        if head.config_hash != model.config.fingerprint():
            raise ElasticTokError(f"{path}: this length head was trained for another model")
        if head.weights_hash and head.weights_hash != model.weights_digest():
            raise ElasticTokError(f"{path}: this length head was trained for other weights of this model")
        return head.eval()
