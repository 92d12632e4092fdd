"""``save_pretrained`` / ``from_pretrained`` for every family, written once.

A model directory holds ``config.json`` (the config's fields and ``"family"``, which picks the class
in ``elastictok.models.registry``) and ``model.safetensors`` (never a pickle). Each file is written
whole or not at all; a damaged, mismatched or non-finite checkpoint is refused in one line.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..errors import ElasticTokError
from ..utils.fileio import atomic_path, check_input_file, read_small_file
from ..utils.runtime import interrupts_held
from .pretrained import resolve_model_path

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
TRAINING_NAME = "training.json"  # how much training the weights had: steps, minutes, device (see training_record)
UNNAMED_FAMILY = "elastictok"  # what a config.json without "family" holds (saved before families existed)
Model = TypeVar("Model", bound="PretrainedFiles")


def read_config_json(directory: Path) -> tuple[dict[str, Any], str]:
    """A model directory's ``config.json`` as a dict, and the family it names; one line if unreadable."""
    path = directory / CONFIG_NAME
    raw = read_small_file(path, "a model config")
    try:
        data = json.loads(raw.decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError too
        raise ElasticTokError(f"{path}: not a readable config ({exc})") from None
    if not isinstance(data, dict):
        raise ElasticTokError(f"{path}: not a readable config (a JSON object is expected)")
    family = data.get("family", UNNAMED_FAMILY)
    if not isinstance(family, str):
        raise ElasticTokError(f"{path}: \"family\" must be a model family's name, got {family!r}")
    return data, family


def check_stored_shapes(weights: Path, expected: dict[str, tuple[int, ...]]) -> None:
    """The tensor names and shapes in a safetensors file's header (no tensor is read) against ``expected``."""
    try:
        with safe_open(str(weights), "pt") as stored_file:
            stored = {name: tuple(stored_file.get_slice(name).get_shape()) for name in stored_file.keys()}
    except Exception as exc:  # safetensors raises several types for damaged files
        raise ElasticTokError(f"{weights}: not a readable safetensors file ({exc})") from None
    missing, extra = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    wrong = sorted(name for name in set(expected) & set(stored) if expected[name] != stored[name])
    if missing or extra or wrong:
        raise ElasticTokError(f"{weights} does not match its config: missing {missing[:3]}, "
                              f"unexpected {extra[:3]}, wrong shape {wrong[:3]}")


class PretrainedFiles:
    """Mixed into a family's ``nn.Module``, which names its ``family`` and ``config_class``."""

    family: ClassVar[str]
    config_class: ClassVar[type]
    pretrained_dir: Path | None = None  # the directory from_pretrained read: where the model's own files live

    def training_record(self) -> dict[str, Any] | None:
        """What ``training.json`` beside the weights says (``steps``, ``minutes`` summed over processes,
        ``device``: "cpu" or "cuda", an optional ``note``); None for a model without one."""
        path = None if self.pretrained_dir is None else self.pretrained_dir / TRAINING_NAME
        if path is None or not path.is_file():
            return None
        try:
            record = json.loads(read_small_file(path, "a training record").decode("utf-8"))
        except ValueError as exc:
            raise ElasticTokError(f"{path}: not a readable training record ({exc})") from None
        if not isinstance(record, dict):
            raise ElasticTokError(f"{path}: not a readable training record (a JSON object is expected)")
        return record

    def save_pretrained(self, save_directory: str | os.PathLike, dtype: torch.dtype | None = None,
                        training: dict[str, Any] | None = None) -> None:
        """Write ``config.json`` and ``model.safetensors``; ``dtype`` (e.g. ``torch.float16``) stores the
        weights smaller, and loading casts them back. ``training`` (steps, minutes, device) is written as
        ``training.json``, so that comparisons can show how much training each model had."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {name: (value.detach().to(dtype) if dtype and value.is_floating_point() else value.detach())
                 .contiguous().cpu() for name, value in self.state_dict().items()}
        config = {**self.config.to_dict(), "family": self.family}
        # both or neither: a Ctrl-C waits for the pair, so weights never land beside another model's config
        with interrupts_held(), atomic_path(directory / WEIGHTS_NAME) as weights, \
                atomic_path(directory / CONFIG_NAME) as config_file:
            save_file(state, str(weights), metadata={"format": "pt", "elastictok_config": json.dumps(config)})
            config_file.write_text(json.dumps(config, indent=2) + "\n")
        if training is not None:
            with atomic_path(directory / TRAINING_NAME) as record:
                record.write_text(json.dumps(training, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls: type[Model], name_or_path: str | os.PathLike,
                        map_location: str | torch.device = "cpu") -> Model:
        """Load from a ``save_pretrained`` directory or a bundled model's name; never downloads."""
        directory = resolve_model_path(name_or_path)
        config = cls.read_config(directory)
        weights = check_input_file(directory / WEIGHTS_NAME, "a safetensors file")
        with torch.device("meta"):  # shapes only: nothing is allocated until the weights' header agrees
            expected = cls(config).state_dict()
        check_stored_shapes(weights, {name: tuple(value.shape) for name, value in expected.items()})
        try:
            with interrupts_held():
                state = load_file(str(weights), device=str(map_location))
        except Exception as exc:  # safetensors raises several types for damaged files
            raise ElasticTokError(f"{weights}: not a readable safetensors file ({exc})") from None
        wrong = sorted(k for k in expected if expected[k].dtype.is_floating_point != state[k].dtype.is_floating_point
                       or state[k].dtype.is_complex)
        if wrong:
            raise ElasticTokError(f"{weights} does not match its config: wrong kind of number in {wrong[:3]}")
        model = cls(config)
        broken = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if broken:
            raise ElasticTokError(f"{weights}: {len(broken)} weight tensors are not finite (NaN or Inf), "
                                  f"e.g. {broken[0]}; the checkpoint is damaged or training diverged")
        model.load_state_dict(state)
        model.pretrained_dir = directory
        return model.eval()

    @classmethod
    def read_config(cls, directory: Path) -> Any:
        """The config saved in ``directory``'s ``config.json``, checked; one line if it is not this family's."""
        data, family = read_config_json(directory)
        if family != cls.family:
            raise ElasticTokError(f"{directory}: a {family!r} model, not a {cls.__name__} one")
        if "family" not in {f.name for f in dataclasses.fields(cls.config_class)}:
            data.pop("family", None)
        try:
            return cls.config_class.from_dict(data)
        except ElasticTokError as exc:
            raise ElasticTokError(f"{directory / CONFIG_NAME}: {exc}") from None
        except (TypeError, ValueError) as exc:  # a malformed field the config's own checks do not name
            raise ElasticTokError(f"{directory / CONFIG_NAME}: not a readable {cls.__name__} config ({exc})") from None
