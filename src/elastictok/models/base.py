"""What a model family provides, written down once.

A family is an ``nn.Module`` that satisfies ``ModelFamily`` below (ElasticTok does). With it, a
family can be

- tokenized: the block coder (``elastictok.tokenization.coder``) calls ``patchify``,
  ``encode_patches``, ``decode_latents``, ``unpatchify``, ``encoder_features``,
  ``latents_from_features``, ``tokens_to_latents``, ``drop_tokens`` and ``encoder_reads_keep``;
  the tokenizer checks inputs with ``as_video`` and reads ``config``. A family whose tokens are
  not a patch prefix brings its own block coder instead (``tokenization.tokenizer.CODERS``:
  FlexTok's, in ``tokenization.flex_coder``);
- trained: the loop (``elastictok.training.loop``) calls ``forward(video, keep)`` for a loss;
- evaluated: through tokenization, plus ``forward`` for fixed-length held-out PSNR;
- saved: ``save_pretrained`` / ``from_pretrained`` (mix in ``elastictok.models.files.PretrainedFiles``),
  with ``config.json`` naming the family so that ``elastictok.models.registry.from_pretrained``
  picks the class.

``model.tokenize`` and ``model.detokenize`` come from ``Tokenizable``: they hand the model to the
tokenization layer, which registers its functions here when ``elastictok`` is imported, so this
layer never imports the one above it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
from typing import Any, Callable, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor

from ..errors import ElasticTokError
from ..layers.transformer import KVCache
from ..utils.fields import field_problems


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


def refuse_unknown_fields(cls: type, names: Any, message: str) -> None:
    """``message: a, b`` for whichever of ``names`` (any hashables, e.g. YAML keys) are not fields of the
    dataclass ``cls``."""
    unknown = sorted(map(str, set(names) - {f.name for f in dataclasses.fields(cls)}))
    if unknown:
        raise ElasticTokError(f"{message}: {', '.join(unknown)}")


class ConfigFile:
    """``to_dict``, ``from_dict`` and ``fingerprint`` for a family's config dataclass.

    ``fields_added_later`` maps each field added after models were first saved to the value every
    earlier model had: at that value a field stays out of the fingerprint, so older token files and
    checkpoints still match the config they were made with.
    """

    fields_added_later: ClassVar[dict[str, Any]] = {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

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


@runtime_checkable
class ModelFamily(Protocol):
    """The interface every model family implements (see the module docstring for who calls what)."""

    family: ClassVar[str]  # the name config.json records, e.g. "elastictok"
    config: FamilyConfig

    @property
    def codebook_size(self) -> int: ...  # discrete codes per token; 0 for continuous latents

    # -- input checks and token layout
    def as_video(self, x: Tensor) -> tuple[Tensor, bool]: ...  # (B, T, 3, H, W) checked, and whether x was images
    def patchify(self, video: Tensor) -> Tensor: ...  # (B, T, 3, H, W) -> (B, N, D)
    def unpatchify(self, patches: Tensor) -> Tensor: ...  # (B, N, D) -> (B, T, 3, H, W)

    # -- token-level core with a KV cache (the block coder)
    def encode_patches(self, patches: Tensor, keep_mask: Tensor, past: KVCache | None = None,
                       start: int | None = None) -> tuple[Any, KVCache]: ...  # latents: .z, .indices, .rows(index)
    def encoder_features(self, patches: Tensor, keep_mask: Tensor, past: KVCache | None = None,
                         start: int | None = None) -> tuple[Tensor, KVCache]: ...
    def latents_from_features(self, h: Tensor, keep_mask: Tensor) -> Any: ...  # encode_patches = features + this
    def decode_latents(self, z: Tensor, past: KVCache | None = None,
                       start: int | None = None) -> tuple[Tensor, KVCache]: ...
    def tokens_to_latents(self, tokens: Tensor) -> Tensor: ...  # stored tokens (n,) or (n, C) -> latents (n, C)
    def drop_tokens(self, latents: Any, keep_mask: Tensor) -> Any: ...  # latents with tokens outside (B, N) zeroed
    @property
    def encoder_reads_keep(self) -> bool: ...  # False: one encoder pass (all kept) serves every count

    # -- training: an output with .loss, .mse, .kl and .recon
    def forward(self, video: Tensor, keep: Tensor | int | None = None) -> Any: ...

    # -- files
    def save_pretrained(self, save_directory: str | os.PathLike, dtype: torch.dtype | None = None) -> None: ...
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any: ...


_TOKENIZATION: dict[str, Callable] = {}


def provide_tokenization(tokenize: Callable, detokenize: Callable) -> None:
    """Called by ``elastictok.tokenization.tokenizer`` at import: the functions behind ``model.tokenize``."""
    _TOKENIZATION.update(tokenize=tokenize, detokenize=detokenize)


def _tokenization(name: str) -> Callable:
    if name not in _TOKENIZATION:  # not loaded yet (a deep import): load the layer above, which registers itself
        importlib.import_module("elastictok.tokenization.tokenizer")
    return _TOKENIZATION[name]


class Tokenizable:
    """``model.tokenize`` and ``model.detokenize`` for any family (mixed into its nn.Module)."""

    def tokenize(self, inputs, target, options=None, **overrides):
        """The fewest tokens per block that meet ``target``; see ``elastictok.tokenization.tokenizer.tokenize``.

        ``inputs``: a batch tensor (B, T, 3, H, W) or (B, 3, H, W) in [-1, 1], a media file path, or a
        list of single inputs. ``target``: ``Threshold``, ``TokenCount``, ``Budget`` or text such as
        ``"mse:0.003"``, ``"psnr:30"``, ``"tokens:64"``, ``"budget:5000"``. ``options``: a
        ``TokenizeOptions``, or its fields as keywords (``search``, ``window``, ``fps``, ...).
        Batched in, batched out: a list or a batch tensor gives a list of ``TokenizedVideo``, a
        single path gives one.
        """
        return _tokenization("tokenize")(self, inputs, target, options, **overrides)

    def detokenize(self, encoded, window: int | None | str = "model"):
        """Decode a ``TokenizedVideo`` or .etok path to (T, 3, H, W), or (3, H, W) for an image; a list
        of them to a list, decoded together (see ``elastictok.tokenization.tokenizer.detokenize``)."""
        return _tokenization("detokenize")(self, encoded, window)

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
