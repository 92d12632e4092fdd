"""The training run's configuration: one dataclass, read from YAML, every field checked on creation.

A wrong type or an out-of-range value (``steps: -1``, ``batch_size: 0``, ``lr: fast``, a string
where a list of paths belongs) is refused in one line before any work starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ..errors import ElasticTokError
from ..models.base import refuse_unknown_fields
from ..models.registry import CONFIGS, PRESETS, config_from_preset, family_of_preset, model_class_for
from ..utils.fields import field_problems
from ..utils.fileio import read_small_file
from .masks import KEEP_DISTRIBUTIONS, KeepSampler

CHOICES = {"schedule": ("cosine", "constant"), "distributed": ("ddp", "fsdp"), "keep_distribution": KEEP_DISTRIBUTIONS,
           "optimizer": ("adamw", "muon"), "clock": ("wall", "cpu")}
AT_LEAST = {"steps": 1, "batch_size": 1, "grad_accum": 1, "n_blocks": 1, "mask_lengths": 1, "warmup_steps": 0,
            "eval_every": 1, "checkpoint_every": 1, "log_every": 1, "num_workers": 0, "stop_at": 1,
            "weight_decay": 0, "lpips_weight": 0, "grad_clip": 0, "max_minutes": 0}
IN_UNIT = ("image_fraction", "min_lr_ratio", "full_length_first")  # fields in [0, 1]
POSITIVE = ("lr", "fps")  # fields > 0 (where set)


@dataclass
class TrainConfig:
    """One training run: model preset, data, schedule and bookkeeping; every field is checked on creation."""

    model: str = "tiny"  # preset name
    model_overrides: dict[str, Any] = field(default_factory=dict)
    data: list[str] = field(default_factory=list)  # folders or files of images and videos
    eval_data: list[str] = field(default_factory=list)  # held out
    out_dir: str = "runs/tiny"
    steps: int = 1000
    max_minutes: float | None = None  # a time budget: the schedule ends at steps or max_minutes, whichever is first
    clock: str = "wall"  # what max_minutes counts: wall time, or cpu (this process's CPU time, all its threads)
    stop_at: int | None = None  # stop after this step (the schedule still spans `steps`), e.g. to match a run
    batch_size: int = 8  # video clips per micro-batch; image batches hold batch_size * n_blocks images
    grad_accum: int = 1
    n_blocks: int = 1  # context length in blocks for video clips
    image_fraction: float = 0.5  # share of batches made of images
    fps: float | None = None  # resample training videos to this rate (None: as recorded)
    mask: str = "elastic"  # elastic (FlexTok: its nested_dropout) | elastic+full | full | fixed:<fraction>
    mask_lengths: int = 1  # kept lengths decoded per sample and step (one encoder pass when it is unconditioned)
    keep_distribution: str = "uniform"  # elastic counts: uniform (the paper) | long (more long prefixes)
    full_length_first: float = 0.0  # share of the run (steps or minutes) trained at all tokens before the mask
    optimizer: str = "adamw"  # adamw | muon (Muon on the transformer blocks' matrices, AdamW on the rest; one process)
    lr: float = 1e-3  # Muon's too: it scales its updates to AdamW's RMS
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    schedule: str = "cosine"  # cosine | constant (after warmup)
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    bf16: bool = True
    ema_decay: float | None = None
    lpips_weights: str | None = None  # path to LPIPS-VGG weights; the term is off without it
    lpips_weight: float = 0.1
    eval_every: int = 200
    eval_keep_fractions: list[float] = field(default_factory=lambda: [1 / 16, 1 / 4, 1 / 2, 1.0])
    checkpoint_every: int = 200
    log_every: int = 10
    init_from: str | None = None  # progressive training: weights of another run or a model directory
    # A latent input stage trained alone (scripts/train_latent_stage.py: stage.safetensors + stage.json), loaded
    # into a model whose config asks for one of the same shape (FlexTok's input_stage: latent), frozen there.
    stage_from: str | None = None
    seed: int = 0
    distributed: str = "ddp"  # under torchrun: ddp | fsdp (FSDP2 fully_shard)
    sequence_parallel: bool = False  # under torchrun (ddp): every rank holds the batch, a shard of its tokens
    num_workers: int = 0
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.betas, list):  # YAML has no tuples
            self.betas = tuple(self.betas)
        for name in ("data", "eval_data"):  # one path, written without a list
            if isinstance(getattr(self, name), str):
                setattr(self, name, [getattr(self, name)])
        problems = field_problems(self)
        if not problems:
            problems = self._range_problems()
        if problems:
            raise ElasticTokError("invalid training config: " + "; ".join(problems))
        self._check_model_and_mask()

    def _check_model_and_mask(self) -> None:
        """The preset exists, takes the overrides, and can be trained with the mask mode."""
        c = self.model_config()
        family = model_class_for(c)
        if self.mask_lengths != 1 and not family.trains_several_lengths:
            raise ElasticTokError(f"mask_lengths > 1 is not supported by {family.display_name}: it keeps one length "
                                  "per sample")
        KeepSampler(self.mask, c.min_tokens, c.tokens_per_block, self.mask_lengths, self.keep_distribution)

    def _range_problems(self) -> list[str]:
        problems = [f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}"
                    for name, choices in CHOICES.items() if getattr(self, name) not in choices]
        problems += [f"{name} must be at least {low}, got {getattr(self, name)}"
                     for name, low in AT_LEAST.items() if getattr(self, name) is not None and getattr(self, name) < low]
        problems += [f"{name} must lie in [0, 1], got {getattr(self, name)}"
                     for name in IN_UNIT if not 0 <= getattr(self, name) <= 1]
        problems += [f"{name} must be positive, got {getattr(self, name)}"
                     for name in POSITIVE if getattr(self, name) is not None and getattr(self, name) <= 0]
        if not all(0 <= beta < 1 for beta in self.betas):
            problems.append(f"betas must lie in [0, 1), got {self.betas}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            problems.append(f"ema_decay must lie in (0, 1), got {self.ema_decay}")
        if not all(0 < f <= 1 for f in self.eval_keep_fractions):
            problems.append(f"eval_keep_fractions must lie in (0, 1], got {self.eval_keep_fractions}")
        if self.stage_from is not None and self.init_from is not None:
            problems.append("stage_from and init_from cannot both be set: the model in init_from brings its own "
                            "input stage")
        if not self.out_dir.strip():
            problems.append("out_dir must name a folder, got an empty path")
        if not 0 <= self.seed < 2**63:
            problems.append(f"seed must lie in [0, 2^63), got {self.seed}")
        if self.device != "auto":
            try:
                trainable = torch.device(self.device).type in ("cpu", "cuda", "mps")
            except (RuntimeError, ValueError):
                trainable = False
            if not trainable:  # meta, xla ...: torch names them, training here cannot run on them
                problems.append(f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        return problems

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "TrainConfig":
        """The config in a YAML file (a pipe such as ``<(sed ...)`` too), with ``overrides`` (None values ignored)
        on top. An empty field means its default; ``1e-3``, which YAML 1.1 reads as text, is a number (in
        ``model_overrides`` too)."""
        return cls.from_fields(_read_yaml(Path(path)), f"{path}: unknown training config fields", **overrides)

    @classmethod
    def from_fields(cls, fields: dict, unknown_message: str = "unknown training config fields",
                    **overrides: Any) -> "TrainConfig":
        """The config from a mapping of fields as YAML gives them (``elastictok train --data DIR`` without a
        file passes {}), with ``overrides`` (None values ignored) on top."""
        data = {**fields, **{k: v for k, v in overrides.items() if v is not None}}
        refuse_unknown_fields(cls, data, unknown_message)
        kinds = {f.name: f.type for f in dataclasses.fields(cls)}
        data = _read_numbers({k: v for k, v in data.items() if v is not None or "None" in kinds[k]}, cls)
        model = data.get("model", cls.model)
        if isinstance(data.get("model_overrides"), dict) and isinstance(model, str) \
                and model in PRESETS:
            data["model_overrides"] = _read_numbers(data["model_overrides"], CONFIGS[family_of_preset(model)])
        return cls(**data)

    def model_config(self) -> Any:
        """The preset (of any family) with overrides; unless overridden, its inference window is the context
        trained on."""
        try:
            return config_from_preset(self.model, **{"window": max(1, self.n_blocks - 1), **self.model_overrides})
        except TypeError as exc:  # an override of the wrong type
            raise ElasticTokError(f"model_overrides: {exc}") from None


def _read_yaml(path: Path) -> dict:
    """A YAML mapping from ``path``, a regular file of at most 1 MiB (a pipe or /dev/zero cannot hang it)."""
    raw = read_small_file(path, "a training config", pipes=True)
    try:
        data = yaml.safe_load(raw.decode("utf-8")) or {}
    except UnicodeDecodeError:
        raise ElasticTokError(f"{path}: cannot read training config (not UTF-8 text)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ElasticTokError(f"{path}: not valid YAML ({problem}{where})") from None
    if not isinstance(data, dict):
        raise ElasticTokError(f"{path}: a training config is a mapping of fields")
    return data


def _read_numbers(data: dict, config_class: type) -> dict:
    """``data`` with each text such as "1e-3" in a float field of ``config_class`` read as the number it spells
    (YAML 1.1 needs "1.0e-3" to read a number)."""
    kinds = {f.name: f.type for f in dataclasses.fields(config_class)}
    return {k: _number(v) if "float" in kinds.get(k, "") else v for k, v in data.items()}


def _number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value
