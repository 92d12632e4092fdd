"""Convert the original release's checkpoints (JAX/Flax) to elastictok, without JAX or Flax.

The original's streaming checkpointer writes a msgpack stream of ``(key_path, array_bytes)`` pairs,
where ``array_bytes`` is Flax's msgpack encoding of one numpy array (ext type 1 holding
``(shape, dtype_name, raw_bytes)``). With scanned layers, each transformer stack stores its layers
stacked on axis 0 under ``scan_decoder`` (the encoder's too); Dense kernels are (in, out).
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterator

import msgpack
import numpy as np
import torch

from .config import ElasticTokConfig
from ...errors import ElasticTokError
from ...utils.console import progress_bar
from ...utils.fileio import check_input_file, read_small_file
from .model import ElasticTok

_FLAX_NDARRAY_EXT = 1

# Original (Flax) names -> ours; "{stack}" is "encoder" or "decoder".
_TOP_LEVEL = {
    "encoder/in_proj/kernel": "in_proj.weight",
    "encoder/is_kept_embed": "is_kept_embed",
    "encoder/is_masked_embed": "is_masked_embed",
    "encoder/ln_f/kernel": "encoder.ln_f.weight",
    "encoder/pre_quant/kernel": "pre_quant.weight",
    "decoder/post_quant/kernel": "post_quant.weight",
    "decoder/ln_f/kernel": "decoder.ln_f.weight",
    "decoder/out_proj/kernel": "out_proj.weight",
}
_LAYER = {
    "attention/wq/kernel": "attention.wq.weight",
    "attention/wk/kernel": "attention.wk.weight",
    "attention/wv/kernel": "attention.wv.weight",
    "attention/wo/kernel": "attention.wo.weight",
    "attention_norm/kernel": "attention_norm.weight",
    "feed_forward/w1/kernel": "feed_forward.w1.weight",
    "feed_forward/w2/kernel": "feed_forward.w2.weight",
    "feed_forward/w3/kernel": "feed_forward.w3.weight",
    "ffn_norm/kernel": "ffn_norm.weight",
}
_SCANNED = re.compile(r"^(encoder|decoder)/\1_blocks/scan_decoder/(.+)$")
_UNSCANNED = re.compile(r"^(encoder|decoder)/\1_blocks/(\d+)/(.+)$")


def _decode_array(payload: bytes) -> np.ndarray:
    def ext_hook(code: int, data: bytes) -> Any:
        if code != _FLAX_NDARRAY_EXT:
            raise ElasticTokError(f"unsupported msgpack extension type {code} in checkpoint")
        try:
            shape, dtype, buffer = msgpack.unpackb(data, raw=False)
            array = np.frombuffer(buffer, dtype=np.dtype(dtype)).reshape(shape)
        except (TypeError, ValueError) as exc:  # a malformed (shape, dtype, buffer) triple
            raise ElasticTokError(f"malformed array in checkpoint ({exc})") from None
        if not np.issubdtype(array.dtype, np.floating):
            raise ElasticTokError(f"checkpoint array of dtype {array.dtype}, not floating point")
        return array

    value = msgpack.unpackb(payload, ext_hook=ext_hook, raw=False)
    if not isinstance(value, np.ndarray):
        raise ElasticTokError("checkpoint entry is not an array (chunked arrays over 1 GB are not supported)")
    return value


def read_official_params(path: str | os.PathLike, progress: bool = True) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``("encoder/in_proj/kernel", array)`` pairs one at a time from a streaming checkpoint."""
    path = check_input_file(path, "an original checkpoint")
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise ElasticTokError(f"{path}: cannot open ({exc.strerror})") from None
    size = path.stat().st_size
    with handle, progress_bar(total=size, unit="B", unit_scale=True, desc="reading", show=progress) as bar:
        unpacker = msgpack.Unpacker(handle, raw=False, max_buffer_size=2**31 - 1)
        position = 0
        try:
            for item in unpacker:
                if not (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[1], bytes)):
                    raise ElasticTokError(f"{path}: not an original-format streaming checkpoint")
                key, payload = item
                if isinstance(key, (list, tuple)):
                    key = "/".join(str(k) for k in key)
                if not isinstance(key, str):
                    raise ElasticTokError(f"{path}: a tensor named {key!r}, not a path of names")
                if key.startswith("params/"):
                    key = key[len("params/"):]
                try:
                    array = _decode_array(payload)
                except ElasticTokError as exc:
                    raise ElasticTokError(f"{path}: {key}: {exc}") from None
                yield key, array
                new_position = unpacker.tell()
                bar.update(new_position - position)
                position = new_position
        except (msgpack.exceptions.ExtraData, msgpack.exceptions.FormatError, ValueError) as exc:
            if isinstance(exc, ElasticTokError):
                raise
            raise ElasticTokError(f"{path}: corrupt or truncated checkpoint ({exc})") from None
    if position != size:
        raise ElasticTokError(f"{path}: truncated checkpoint (read {position} of {size} bytes)")


def _ours(key: str, array: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Map one original tensor to our state-dict entries (kernels transposed to (out, in))."""
    def as_weight(a: np.ndarray) -> np.ndarray:
        if a.ndim == 2 and a.shape[0] == 1 and key.endswith("_embed"):
            return a[0]
        return a.T if a.ndim == 2 else a

    if key in _TOP_LEVEL:
        return [(_TOP_LEVEL[key], as_weight(array))]
    if match := _SCANNED.match(key):
        stack, sub = match.groups()
        if sub in _LAYER:
            return [(f"{stack}.blocks.{i}.{_LAYER[sub]}", as_weight(layer)) for i, layer in enumerate(array)]
    if match := _UNSCANNED.match(key):
        stack, index, sub = match.groups()
        if sub in _LAYER:
            return [(f"{stack}.blocks.{index}.{_LAYER[sub]}", as_weight(array))]
    raise ElasticTokError(f"unexpected tensor {key!r} {array.shape} in the original checkpoint")


def load_official_state_dict(path: str | os.PathLike, progress: bool = True) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for key, array in read_official_params(path, progress):
        for name, value in _ours(key, array):
            state[name] = torch.from_numpy(np.array(value, dtype=np.float32))
    return state


def convert_official(path: str | os.PathLike, config: ElasticTokConfig, progress: bool = True) -> ElasticTok:
    """Build an ElasticTok holding the original checkpoint's weights; every tensor must be accounted for."""
    model = ElasticTok(config)
    state = load_official_state_dict(path, progress)
    expected = model.state_dict()
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise ElasticTokError(f"checkpoint does not fit config {config.name!r}: missing {missing[:4]}, "
                              f"left over {extra[:4]}")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in expected
             if state[k].shape != expected[k].shape]
    if wrong:
        raise ElasticTokError(f"checkpoint does not fit config {config.name!r}: shapes differ for {wrong[:3]}")
    model.load_state_dict(state)
    return model.eval()


def config_from_official(official: dict[str, Any], resolution: int | tuple[int, int],
                         name: str = "official") -> ElasticTokConfig:
    """Translate the original's config fields (hidden_size, max_toks, ...) into an ElasticTokConfig."""
    if official.get("num_encoder_layers") is None:
        raise ElasticTokError("not an original ElasticTok config: no num_encoder_layers")
    try:
        config, max_toks = _translate(official, resolution, name), official["max_toks"]
    except KeyError as exc:
        raise ElasticTokError(f"not an original ElasticTok config: no {exc.args[0]}") from None
    except (TypeError, ValueError) as exc:  # a field of the wrong kind, e.g. theta "abc"
        raise ElasticTokError(f"not an original ElasticTok config: {exc}") from None
    if config.tokens_per_block != max_toks:
        raise ElasticTokError(f"config gives {config.tokens_per_block} tokens per block, "
                              f"the original says {max_toks!r}")
    return config


def _translate(official: dict[str, Any], resolution: Any, name: str) -> ElasticTokConfig:
    res = (resolution, resolution) if isinstance(resolution, int) else tuple(int(r) for r in resolution)
    return ElasticTokConfig(
        name=name, resolution=res, frames_per_block=official["frames_per_block"],
        patch_size=tuple(official["patch_size"]), width=official["hidden_size"],
        encoder_depth=official["num_encoder_layers"], decoder_depth=official["num_decoder_layers"],
        num_heads=official["num_attention_heads"], mlp_width=official["intermediate_size"],
        rope_theta=float(official["theta"]), norm_eps=official["rms_norm_eps"],
        init_std=official.get("initializer_range", 0.02), bottleneck=official["bottleneck_type"],
        fsq_levels=tuple(official.get("fsq_quant_levels", (8, 8, 8, 5, 5, 5))),
        vae_latent_dim=official.get("vae_bottleneck_dim", 8), min_tokens=official["min_toks"],
    )


def config_from_official_file(path: str | os.PathLike, name: str = "official") -> ElasticTokConfig:
    """An ElasticTokConfig from the original release's JSON config (its ``elastic_config`` and ``resolution``)."""
    import json

    try:
        data = json.loads(read_small_file(path, "an official config").decode("utf-8"))
    except ValueError as exc:
        raise ElasticTokError(f"{path}: not a readable JSON config ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("elastic_config", data), dict):
        raise ElasticTokError(f"{path}: not an official config (expected a JSON object of fields)")
    official = data.get("elastic_config", data)
    resolution = data.get("resolution") or official.get("resolution")
    if resolution is None:
        raise ElasticTokError(f"{path}: says no resolution")
    return config_from_official(official, resolution, name=name)
