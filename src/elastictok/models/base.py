"""What a model family provides, written down once: ``ModelFamily``.

Every layer above ``models/`` sees a model only through ``ModelFamily``:

- tokenized: the tokenization layer checks inputs with ``as_video``, cuts blocks with ``patchify``,
  reads ``config`` (``FamilyConfig``) and ``codebook_size``, and hands the rest to the family's own
  block coder (``coder_class``, a ``models.coder.BlockCoder``), which alone knows the family's internals,
  decoding with ``sampler()`` where the family declares ``has_sampler``;
- trained: the loop calls ``forward(video, keep)`` for a loss, draws kept counts with the trainer's
  mask or the family's ``keep_sampler``, and reads ``fsdp_units``, ``supports_sequence_parallel`` and
  ``trains_several_lengths``;
- evaluated: through tokenization, plus ``forward`` for fixed-length held-out PSNR; named ``display_name``;
- saved: ``save_pretrained`` / ``from_pretrained`` (``models.files.PretrainedFiles``), with ``config.json``
  naming the family so that ``elastictok.models.registry.from_pretrained`` picks the class.

``model.tokenize`` and ``model.detokenize`` are sugar for ``elastictok.tokenization.tokenizer``'s
functions, imported when first called: the one import from a higher layer, at run time only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ..errors import ElasticTokError
from ..utils.fields import field_problems, whole_number_problem, with_suggestion
from .coder import MAX_SAMPLER_STEPS, SAMPLER_FIELDS, BlockCoder, Sampler
from .files import PretrainedFiles


@runtime_checkable
class FamilyConfig(Protocol):
    """The config fields the shared machinery reads (a family's config may hold many more)."""

    name: str
    resolution: tuple[int, int]  # (H, W) of every frame
    frames_per_block: int
    patch_size: tuple[int, int, int]  # (Tp, Hp, Wp)
    min_tokens: int  # Mmin
    window: int | None  # context blocks the tokenizer caches by default

    @property
    def tokens_per_block(self) -> int: ...  # Mmax

    @property
    def latent_dim(self) -> int: ...  # channels of one latent token

    def fingerprint(self) -> str: ...  # hash of the numerics; token files record it

    def to_dict(self) -> dict[str, Any]: ...


def check_counts(keep: Tensor | int, batch: int, n_blocks: int, bounds: tuple[str, int, int],
                 device: torch.device) -> Tensor:
    """Kept tokens per block as a long tensor (B, n_blocks) on ``device``, from an int or an integer tensor,
    each count within ``bounds`` (its name for messages, low, high); anything else is refused in one line."""
    name, low, high = bounds
    if isinstance(keep, int):
        keep = torch.full((batch, n_blocks), keep, dtype=torch.long, device=device)
    if not isinstance(keep, Tensor) or keep.is_floating_point() or keep.is_complex():
        raise ElasticTokError("keep must be an int or an integer tensor (B, n_blocks)")
    if keep.shape != (batch, n_blocks):
        raise ElasticTokError(f"keep must have shape (B, n_blocks) = ({batch}, {n_blocks}), got {tuple(keep.shape)}")
    if keep.numel() and (keep.min() < low or keep.max() > high):
        raise ElasticTokError(f"keep counts must lie in {name} = [{low}, {high}], "
                              f"got [{int(keep.min())}, {int(keep.max())}]")
    return keep.to(device=device, dtype=torch.long)


def tokens_at_share(config: FamilyConfig, share: float) -> int:
    """The token count nearest ``share`` of Mmax, within [Mmin, Mmax]."""
    return min(config.tokens_per_block, max(config.min_tokens, round(share * config.tokens_per_block)))


def refuse_unknown_fields(cls: type, names: Any, message: str) -> None:
    """``message: a, b`` for whichever of ``names`` (any hashables, e.g. YAML keys) are not fields of the
    dataclass ``cls``."""
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(map(str, set(names) - set(known)))
    if unknown:
        raise ElasticTokError(f"{message}: {', '.join(with_suggestion(name, known) for name in unknown)}")


# The sizes a config may ask for, (smallest, largest), checked before any layer is built: a config.json is
# user input, and an edited size would otherwise overflow torch's integers or ask for terabytes.
SIZE_LIMITS: dict[str, tuple[int, int]] = {
    "frames_per_block": (1, 1024), "width": (1, 2**16), "num_heads": (1, 2**16), "mlp_width": (1, 2**18),
    "encoder_depth": (0, 1024), "decoder_depth": (0, 1024), "head_channels": (1, 2**16),
    "stem_channels": (1, 2**16), "vae_latent_dim": (1, 2**16), "registers": (1, 2**16), "steps": (1, MAX_SAMPLER_STEPS),
    "stage_channels": (1, 2**10), "stage_width": (1, 2**12)}
MAX_TOKENS_PER_BLOCK = 2**20  # Mmax (and FlexTok's patches per block): a block is attended to whole


class ConfigFile:
    """``to_dict``, ``from_dict`` and ``fingerprint`` for a family's config dataclass.

    ``fields_added_later`` maps each field added after models were first saved to the value every
    earlier model had: at that value a field stays out of the fingerprint, so older token files and
    checkpoints still match the config they were made with.
    """

    fields_added_later: ClassVar[dict[str, Any]] = {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def size_problems(self) -> list[str]:
        """One phrase per size field (those in ``SIZE_LIMITS``) that is not a whole number within its limits."""
        names = {f.name for f in dataclasses.fields(self)} & set(SIZE_LIMITS)
        checks = (whole_number_problem(name, getattr(self, name), *SIZE_LIMITS[name]) for name in sorted(names))
        return [problem for problem in checks if problem]

    def check_field_types(self) -> None:
        """Every field holds the kind its annotation names (numbers finite; JSON's lists are taken as the
        tuples they stand for); one line naming each field that does not (a config.json is user input)."""
        for f in dataclasses.fields(self):
            if f.type.startswith("tuple[") and isinstance(getattr(self, f.name), list):
                setattr(self, f.name, tuple(getattr(self, f.name)))
        problems = field_problems(self, skip_choices=True)  # choices: each config's validate, with the rest
        if problems:
            raise ElasticTokError(f"invalid {type(self).__name__}: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        """The config saved as ``data``; unknown fields are refused in one line, not ignored, and a
        field added later that ``data`` lacks takes the value the models saved before it had."""
        cls.refuse_unknown(data)
        try:
            return cls(**{**cls.fields_added_later, **data})
        except TypeError as exc:  # a field of the wrong type, e.g. a string where a number belongs
            raise ElasticTokError(f"invalid {cls.__name__}: {exc}") from None

    @classmethod
    def refuse_unknown(cls, names: Any) -> None:
        """One line naming whichever of ``names`` are not fields of this config."""
        refuse_unknown_fields(cls, names, f"unknown {cls.__name__} fields")

    def fingerprint(self) -> str:
        """Short hash of every field that changes the model's numerics (not its name)."""
        data = self.to_dict()
        data.pop("name")
        for key, default in self.fields_added_later.items():
            if data[key] == default:
                data.pop(key)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


class ModelFamily(PretrainedFiles, ABC):
    """The interface every model family implements in full, and all the layers above ``models/`` see.

    A family is an ``nn.Module`` subclass of this (``class FlexTok(ModelFamily, nn.Module)``). What
    differs between families is declared here as class attributes, so no caller asks which family a
    model is: its block coder, the module types FSDP shards one by one, whether ``forward`` runs
    sequence-parallel or takes several kept lengths per sample, its keep sampler and its name.
    """

    family: ClassVar[str]  # the name config.json records, e.g. "elastictok"
    display_name: ClassVar[str]  # how tables, plots and reports name it, e.g. "ElasticTok"
    config_class: ClassVar[type]  # its config dataclass (a FamilyConfig)
    coder_class: ClassVar[type[BlockCoder]]  # tokenizes and decodes it block by block
    fsdp_units: ClassVar[tuple[type[nn.Module], ...]]  # module types FSDP2 shards one by one
    supports_sequence_parallel: ClassVar[bool] = False  # forward() can split a sequence over ranks
    trains_several_lengths: ClassVar[bool] = False  # forward() takes keep (L, B, n_blocks): mask_lengths > 1
    # Its decoder samples each block from noise: steps, guidance and seed may be set per call (``sampler``),
    # and its config holds their defaults as the fields ``steps``, ``guidance`` and ``seed``.
    has_sampler: ClassVar[bool] = False
    sequence_group: Any = None  # the process group forward() splits sequences over (None: whole sequences)
    config: FamilyConfig

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        missing = [name for name in ("family", "display_name", "config_class", "coder_class", "fsdp_units")
                   if name not in dir(cls)]
        if missing:
            raise TypeError(f"model family {cls.__name__} does not declare {', '.join(missing)}")

    @property
    @abstractmethod
    def codebook_size(self) -> int:
        """Discrete codes per token; 0 for continuous latents."""

    @abstractmethod
    def as_video(self, x: Tensor) -> tuple[Tensor, bool]:
        """(B, T, 3, H, W) checked (one-line errors), and whether ``x`` was an image batch (B, 3, H, W)."""

    @abstractmethod
    def patchify(self, video: Tensor) -> Tensor:
        """(B, T, 3, H, W) -> (B, N, D): what the block coder takes per block."""

    @abstractmethod
    def unpatchify(self, patches: Tensor) -> Tensor:
        """(B, N, D) -> (B, T, 3, H, W)."""

    @abstractmethod
    def tokens_to_latents(self, tokens: Tensor) -> Tensor:
        """Stored tokens (n,) code indices or (n, C) latents -> latents (n, C)."""

    @abstractmethod
    def forward(self, video: Tensor, keep: Tensor | int | None = None) -> Any:
        """Training: an output with ``.loss``, ``.mse``, ``.kl`` and ``.recon`` for ``keep`` tokens per block."""

    def keep_sampler(self, mask: str) -> Callable[..., Tensor] | None:
        """The family's own draw of kept counts for the trainer's mask mode ``mask``,
        ``(batch, n_blocks, generator) -> (B, n_blocks)``; None where the trainer's mask serves."""
        return None

    def sampler(self, recorded: Sampler | None = None, **given: int | float | None) -> Sampler | None:
        """The sampler to decode with: the ``given`` settings (``steps``, ``guidance``, ``seed``; None: not
        given) over ``recorded`` (a token file's) over the config's defaults. A family without a sampler
        returns None, and refuses any setting in one line."""
        unknown = sorted(set(given) - set(SAMPLER_FIELDS))
        if unknown:
            raise ElasticTokError(f"unknown sampler settings {', '.join(unknown)}; use {', '.join(SAMPLER_FIELDS)}")
        given = {name: value for name, value in given.items() if value is not None}
        if not self.has_sampler:
            if given or recorded is not None:
                what = ", ".join(given) if given else "the sampler these tokens record"
                raise ElasticTokError(f"{self.display_name} decodes each block in one pass and has no sampler: "
                                      f"{what} cannot apply")
            return None
        c = self.config
        return dataclasses.replace(recorded or Sampler(c.steps, c.guidance, c.seed), **given)

    def load_input_stage(self, folder: str | os.PathLike) -> None:
        """Load weights of an input stage trained alone (the trainer's ``stage_from``); a family without
        one refuses in one line."""
        raise ElasticTokError(f"stage_from {folder}: {self.display_name} has no input stage to load")

    def check_sequence_split(self, tokens: int, size: int) -> None:
        """Refuse a sequence of ``tokens`` that ``forward`` cannot split over ``size`` ranks."""
        raise ElasticTokError(f"sequence_parallel is not supported by {self.display_name}")

    def tokenize(self, inputs, target, options=None, **overrides):
        """The fewest tokens per block that meet ``target``; see ``elastictok.tokenization.tokenizer.tokenize``.

        ``inputs``: a batch tensor (B, T, 3, H, W) or (B, 3, H, W) in [-1, 1], a media file path, or a
        list of single inputs. ``target``: ``Threshold``, ``TokenCount``, ``Budget`` or text such as
        ``"mse:0.003"``, ``"psnr:30"``, ``"tokens:64"``, ``"budget:5000"``. ``options``: a
        ``TokenizeOptions``, or its fields as keywords (``search``, ``window``, ``fps``, ...).
        Batched in, batched out: a list or a batch tensor gives a list of ``TokenizedVideo``, a
        single path gives one.
        """
        from ..tokenization.tokenizer import tokenize  # the one upward import: user sugar (docs/architecture.md)
        return tokenize(self, inputs, target, options, **overrides)

    def detokenize(self, encoded, window: int | None | str = "model", size: str = "model", *,
                   steps: int | None = None, guidance: float | None = None, seed: int | None = None):
        """Decode a ``TokenizedVideo`` or .etok path to (T, 3, H, W), or (3, H, W) for an image; a list
        of them to a list, decoded together (see ``elastictok.tokenization.tokenizer.detokenize``).
        ``size="source"`` gives each back at its source's size instead of the model's; ``steps``,
        ``guidance``, ``seed`` override the sampler the tokens record (families with a sampler only)."""
        from ..tokenization.tokenizer import detokenize
        return detokenize(self, encoded, window, size, steps=steps, guidance=guidance, seed=seed)

    def _apply(self, *args: Any, **kwargs: Any) -> Any:  # .to(), .half(), .cuda() ...: the weights may change
        self.__dict__.pop("_weights_digest", None)
        return super()._apply(*args, **kwargs)

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        self.__dict__.pop("_weights_digest", None)
        return super().load_state_dict(*args, **kwargs)

    def weights_digest(self) -> str:
        """SHA-256 (16 hex digits) of the weights rounded to float16, so that a token file names the weights
        that made it: a float32 run and its float16 shipped copy, bf16 autocast and any device agree.

        Remembered until a weight changes (in-place updates bump a tensor's version counter, loading or
        moving, casting or loading the model forgets it), so tokenizing or decoding many files hashes once.
        Writes through ``tensor.data`` (and ``torch.nn.utils.vector_to_parameters``) bypass the counter:
        after one, ``del model._weights_digest``."""
        state = self.state_dict()
        version = tuple((tensor.data_ptr(), tensor._version) for tensor in state.values())
        remembered = getattr(self, "_weights_digest", None)
        if remembered is not None and remembered[0] == version:
            return remembered[1]
        digest = hashlib.sha256()
        for name, tensor in sorted(state.items()):
            values = tensor.detach().cpu()
            values = (values.half() if values.is_floating_point() else values).reshape(-1).contiguous()
            digest.update(f"{name}:{values.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(values.view(torch.uint8).numpy().tobytes())
        self._weights_digest = (version, digest.hexdigest()[:16])
        return self._weights_digest[1]
