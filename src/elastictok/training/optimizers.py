"""The optimiser of a run: AdamW (the default), or Muon on the transformer blocks' weight matrices with AdamW
on the rest.

Muon (``torch.optim.Muon``) orthogonalises each 2-D update with a Newton-Schulz iteration; it is meant for
hidden weight matrices, not for embeddings, the patch and output projections, convolutions, norms or
biases, which stay with AdamW. Its ``match_rms_adamw`` scaling (Moonshot, "Muon is Scalable for LLM
Training") gives each matrix update the RMS of an AdamW update, so Muon takes the run's ``lr`` and
``weight_decay`` as they are, and the schedule drives both optimisers alike.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..models.base import ModelFamily
from .config import TrainConfig


def hidden_matrices(model: ModelFamily) -> list[torch.nn.Parameter]:
    """The 2-D weights inside the family's transformer blocks (its ``fsdp_units``), in the model's parameter
    order: attention and MLP projections, and the blocks' adaptive-norm modulation where a family has it."""
    inside = {id(p) for module in model.modules() if isinstance(module, model.fsdp_units) for p in module.parameters()}
    return [p for p in model.parameters() if id(p) in inside and p.dim() == 2]


def build_optimizer(model: ModelFamily, cfg: TrainConfig) -> torch.optim.Optimizer:
    """``cfg.optimizer``: ``adamw`` on every trained weight, or ``muon`` on the hidden matrices with AdamW on the
    rest. AdamW decays weight matrices only (not norms, biases or the kept/masked embeddings). Frozen weights
    (an input stage trained alone, loaded by ``stage_from``) are left out."""
    trained = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return adamw(trained, cfg)
    hidden = [p for p in hidden_matrices(model) if p.requires_grad]
    chosen = {id(p) for p in hidden}
    muon = torch.optim.Muon(hidden, lr=cfg.lr, weight_decay=cfg.weight_decay, adjust_lr_fn="match_rms_adamw")
    return MuonWithAdamW(adamw([p for p in trained if id(p) not in chosen], cfg), muon)


def adamw(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with ``cfg``'s learning rate and betas, decaying the weight matrices (and convolution kernels) only."""
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon and AdamW behind one optimiser: its parameter groups are theirs (AdamW's first, as in an AdamW-only
    run), so an LR scheduler sets both, and its state is theirs, so ``state_dict`` and ``load_state_dict``
    save and restore both, in torch's own format."""

    def __init__(self, adamw: torch.optim.AdamW, muon: torch.optim.Muon):
        self.parts = (adamw, muon)
        super().__init__(adamw.param_groups + muon.param_groups, defaults={})
        self._share()

    def _share(self) -> None:
        """Point each part at its share of this optimiser's groups and at its state, both of which
        ``load_state_dict`` replaces."""
        adamw, muon = self.parts
        split = len(adamw.param_groups)
        adamw.param_groups, muon.param_groups = self.param_groups[:split], self.param_groups[split:]
        adamw.state = muon.state = self.state  # keyed by parameter, and the parts hold different ones

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One step of each part; ``closure`` (the loss, recomputed) is called once, before both."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for part in self.parts:
            part.step()
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._share()
