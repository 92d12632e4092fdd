"""One-pass length prediction (the paper's "neural regression" search), as a predicted error curve.

A block's MSE against its token count falls steeply while the first frame's tokens arrive and then
flattens (``docs/results/README.md``), so the count a threshold needs is set by two things: where the
curve levels off and how fast it gets there. The head is told the first exactly (the MSE of the block
decoded with every token) and predicts the second: from the block's encoder features (every token
kept, after the cached earlier blocks) and its pixel statistics, an ensemble of small MLPs predicts
log MSE at a grid of counts (every ``GRID_STRIDE``-th from Mmin, and Mmax) as excess over the
all-token MSE. The search keeps the smallest grid count predicted to meet the target, so one head
serves every ``mse:`` and ``psnr:`` threshold. Cost per block: one decode with every token (for
the all-token MSE) and the final decode, after one encoder pass that also gives the features (a
mask-reading encoder needs one per decode); it does not guarantee the target.
Train one with ``elastictok train-length-head`` (``elastictok.training.length_head``).
"""

from __future__ import annotations

import math
import os

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..errors import ElasticTokError
from ..metrics.quality import block_mse, mse_from_psnr
from ..models.coder import BlockCoder
from ..models.files import check_stored_shapes
from ..utils.fileio import atomic_path, check_input_file
from .targets import Target, Threshold

HEAD_NAME = "length_head.safetensors"  # a model directory's own head, used by --search regression
GRID_STRIDE = 8
# Aim this much below the threshold in log MSE (0.1: 10%), so that prediction errors rarely miss it.
DEFAULT_MARGIN = 0.1
STATISTICS = 5  # block_statistics() columns
MAX_MEMBERS, MAX_HIDDEN = 64, 2**16  # the largest head a file may describe


def safe_log(x: Tensor) -> Tensor:
    """Log of MSEs and energies, floored at 1e-6 so that a perfect block stays finite."""
    return x.clamp_min(1e-6).log()


def count_grid(lo: int, hi: int) -> Tensor:
    """The counts a head predicts MSE at: every GRID_STRIDE-th from ``lo``, and ``hi``."""
    return torch.cat((torch.arange(lo, hi, GRID_STRIDE), torch.tensor([hi])))


def block_statistics(block: Tensor) -> Tensor:
    """(B, 5) pixel statistics of blocks (B, fpb, 3, H, W) in [-1, 1] that track how hard a block is:
    log of the pixel variance, of the mean squared horizontal, vertical and temporal differences, and
    of the energy left after a 4x4 box blur (detail that coarse tokens cannot carry)."""
    x = block.float().mean(2)  # (B, fpb, H, W)
    x = x[..., :x.shape[-2] // 4 * 4, :x.shape[-1] // 4 * 4]  # whole 4x4 cells for the blur
    blurred = nn.functional.avg_pool2d(x, 4).repeat_interleave(4, -1).repeat_interleave(4, -2)
    energies = (
        x.flatten(1).var(1),
        (x[..., 1:] - x[..., :-1]).pow(2).flatten(1).mean(1),
        (x[..., 1:, :] - x[..., :-1, :]).pow(2).flatten(1).mean(1),
        (x[:, 1:] - x[:, :-1]).pow(2).flatten(1).mean(1) if x.shape[1] > 1 else x.new_zeros(x.shape[0]),
        (x - blurred).pow(2).flatten(1).mean(1),
    )
    return safe_log(torch.stack(energies, dim=1))


def head_inputs(coder: BlockCoder, block: Tensor, patches: Tensor, full_mse: Tensor) -> Tensor:
    """(B, 2*width + 6) what a head reads: encoder features, pixel statistics, log all-token MSE."""
    return torch.cat((coder.features(patches), block_statistics(block).to(patches.device),
                      safe_log(full_mse)[:, None].to(patches.device)), dim=1).float()


def threshold_mse(target: Target) -> float:
    """The MSE an ``mse:`` or ``psnr:`` threshold asks for; the head predicts MSE only."""
    if isinstance(target, Threshold) and target.metric == "mse":
        return float(target.value)
    if isinstance(target, Threshold) and target.metric == "psnr":
        return mse_from_psnr(target.value)
    raise ElasticTokError(f"the length head predicts MSE: use an mse: or psnr: threshold, not {target}")


def first_crossing(log_mse: Tensor, counts: Tensor, goal: float) -> Tensor:
    """(B,) the fewest tokens at which curves (B, G) of log MSE at ``counts`` (G,), linear in between,
    reach ``goal`` (rounded up to a whole token); the last count where none does."""
    meets = log_mse <= goal
    last = torch.full((len(log_mse),), len(counts) - 1)
    first = torch.where(meets.any(1), meets.float().argmax(1), last)
    before = (first - 1).clamp_min(0)
    above, below = log_mse.gather(1, before[:, None])[:, 0], log_mse.gather(1, first[:, None])[:, 0]
    share = ((above - goal) / (above - below).clamp_min(1e-9)).clamp(0, 1)  # of the way from `before` to `first`
    counts = counts.float()
    crossing = (counts[before] + share * (counts[first] - counts[before])).ceil()
    return torch.where((first > 0) & meets.any(1), crossing, counts[first]).long()


class LengthHead(nn.Module):
    """An ensemble of ``members`` MLPs: head inputs (B, F) -> predicted log excess MSE (B, G) over the grid."""

    def __init__(self, width: int, counts: list[int], config_hash: str, weights_hash: str = "", hidden: int = 256,
                 members: int = 5, margin: float = DEFAULT_MARGIN):
        super().__init__()
        self.width, self.counts, self.hidden, self.margin = width, [int(c) for c in counts], hidden, margin
        self.config_hash, self.weights_hash = config_hash, weights_hash
        features = 2 * width + STATISTICS + 1
        self.members = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(features), nn.Linear(features, hidden), nn.GELU(),
                          nn.Linear(hidden, len(self.counts))) for _ in range(members))

    def forward(self, inputs: Tensor) -> Tensor:
        """(B, G) predicted log(MSE at each grid count / MSE with every token): the members' mean."""
        return torch.stack([member(inputs.float()) for member in self.members]).mean(0)

    @torch.no_grad()
    def choose(self, inputs: Tensor, full_mse: Tensor, threshold: float) -> Tensor:
        """(B,) the fewest tokens predicted to meet ``threshold`` with ``margin`` to spare (Mmax when even
        every token fails, which is measured, not predicted)."""
        full = safe_log(full_mse.float().cpu())
        log_mse = self(inputs).cpu() + full[:, None]  # (B, G)
        log_mse[:, -1] = full
        return first_crossing(log_mse, torch.tensor(self.counts), math.log(threshold) - self.margin)

    @torch.no_grad()
    def predict(self, coder: BlockCoder, block: Tensor, patches: Tensor, target: Target) -> Tensor:
        """(B,) counts for the blocks (B, fpb, 3, H, W) after the coder's cached ones, for an mse/psnr target."""
        threshold = threshold_mse(target)
        m = coder.model.config.tokens_per_block
        rows = torch.arange(block.shape[0], device=block.device)
        full = coder.trial(patches, torch.full((len(rows),), m, device=block.device), rows)
        full_mse = block_mse(full.recon, block)
        return self.choose(head_inputs(coder, block, patches, full_mse), full_mse, threshold)

    def save(self, path: str | os.PathLike) -> None:
        meta = {"config_hash": self.config_hash, "weights_hash": self.weights_hash, "width": str(self.width),
                "hidden": str(self.hidden), "members": str(len(self.members)),
                "counts": ",".join(map(str, self.counts)), "margin": str(self.margin)}
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike, model) -> "LengthHead":
        """A saved head, checked against ``model`` (the same config and the same weights it was trained on),
        and its header's sizes against the tensors it holds before anything is allocated."""
        path = check_input_file(path, "a length head")
        fields = _header_fields(path)
        _check_fits(path, fields, model)
        with torch.device("meta"):
            expected = cls(**fields).state_dict()
        check_stored_shapes(path, {name: tuple(value.shape) for name, value in expected.items()})
        head = cls(**fields)
        try:
            head.load_state_dict(load_file(str(path)))
        except Exception as exc:
            raise ElasticTokError(f"{path}: not a readable length head ({str(exc).splitlines()[0][:120]})") from None
        if not all(torch.isfinite(p).all() for p in head.parameters()):
            raise ElasticTokError(f"{path}: a damaged length head (weights that are NaN or Inf)")
        return head.eval()


def _header_fields(path) -> dict:
    """``LengthHead``'s arguments as its file's header states them."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        return dict(width=int(meta["width"]), counts=[int(c) for c in meta["counts"].split(",")],
                    config_hash=meta["config_hash"], weights_hash=meta.get("weights_hash", ""),
                    hidden=int(meta["hidden"]), members=int(meta["members"]), margin=float(meta["margin"]))
    except Exception as exc:
        raise ElasticTokError(f"{path}: not a readable length head ({str(exc).splitlines()[0][:120]})") from None


def _check_fits(path, fields: dict, model) -> None:
    """A head's header against ``model``, and its sizes against ``MAX_MEMBERS`` and ``MAX_HIDDEN``."""
    c = model.config
    if fields["config_hash"] != c.fingerprint() or fields["width"] != c.width:
        raise ElasticTokError(f"{path}: this length head was trained for another model")
    if fields["weights_hash"] and fields["weights_hash"] != model.weights_digest():
        raise ElasticTokError(f"{path}: this length head was trained for other weights of this model")
    counts = fields["counts"]
    counts_fit = counts == sorted(set(counts)) and counts[-1] == c.tokens_per_block and counts[0] >= c.min_tokens
    if not counts_fit or not 0 <= fields["margin"] < 10:
        raise ElasticTokError(f"{path}: a damaged length head (counts {counts[:3]}..{counts[-1:]}, "
                              f"margin {fields['margin']}; counts must rise from >= {c.min_tokens} to "
                              f"{c.tokens_per_block} and the margin lie in [0, 10))")
    if not (1 <= fields["members"] <= MAX_MEMBERS and 1 <= fields["hidden"] <= MAX_HIDDEN):
        raise ElasticTokError(f"{path}: a damaged length head ({fields['members']} members of width "
                              f"{fields['hidden']}; at most {MAX_MEMBERS} of {MAX_HIDDEN})")


def default_length_head(model) -> LengthHead:
    """The model's own head, ``length_head.safetensors`` in the directory it was loaded from."""
    path = None if model.pretrained_dir is None else model.pretrained_dir / HEAD_NAME
    if path is None or not path.is_file():
        raise ElasticTokError(f"search='regression' needs a trained length head: model {model.config.name!r} has "
                              f"no {HEAD_NAME} of its own; pass length_head= (elastictok train-length-head makes one)")
    return LengthHead.load(path, model)
