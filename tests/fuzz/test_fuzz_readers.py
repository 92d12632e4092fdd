"""Property-based fuzzing of every reader a user may hand a file or text to: token files (edited, with the
checksum recomputed so that the lie reaches the reader's own checks), config.json, training YAML, length
heads and target strings. Each must give a result or one ``ElasticTokError`` line, never another exception.

A short derandomized run is part of the suite; ``benchmarks/fuzz_readers.py`` runs the same properties
long (``ELASTICTOK_FUZZ_EXAMPLES=N``) and prints how many cases each reader was given.
"""

from __future__ import annotations

import functools
import json
import math
import tempfile
from pathlib import Path

import torch
import yaml
from hypothesis import given
from hypothesis import strategies as st
from hostile import TRIED, etok_parts, fuzz, rebuild_etok, refused_or
from safetensors.torch import load_file, save_file

from elastictok import ElasticTok, ElasticTokConfig, etok_bytes, from_pretrained, parse_etok, parse_target
from elastictok.models.flextok.config import FlexTokConfig
from elastictok.models.flextok.model import FlexTok
from elastictok.tokenization.length_head import LengthHead, count_grid
from elastictok.training.config import TrainConfig


# ---- what the readers are handed, made once --------------------------------------------------------------
@functools.cache
def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="elastictok-fuzz-"))


@functools.cache
def models() -> dict[str, ElasticTok]:
    torch.manual_seed(0)
    fsq = ElasticTok(ElasticTokConfig.from_preset("micro")).eval()
    vae = ElasticTok(ElasticTokConfig.from_preset("micro", bottleneck="vae", name="micro-vae")).eval()
    return {"fsq": fsq, "vae": vae}


@functools.cache
def token_files() -> dict[str, bytes]:
    torch.manual_seed(1)
    video = torch.rand(1, 6, 3, 32, 32) * 2 - 1
    return {name: etok_bytes(model.tokenize(video, "tokens:8")[0]) for name, model in models().items()}


@functools.cache
def saved_models() -> dict[str, Path]:
    folders = {"elastictok": workdir() / "elastictok", "flextok": workdir() / "flextok"}
    models()["fsq"].save_pretrained(folders["elastictok"])
    FlexTok(FlexTokConfig.from_preset("flextok-micro")).eval().save_pretrained(folders["flextok"])
    return folders


@functools.cache
def saved_head() -> Path:
    model, path = models()["fsq"], workdir() / "head.safetensors"
    c = model.config
    LengthHead(c.width, count_grid(c.min_tokens, c.tokens_per_block).tolist(), c.fingerprint(),
               model.weights_digest(), hidden=8, members=2).save(path)
    return path


# ---- strategies ---------------------------------------------------------------------------------------------
EDGE_NUMBERS = ["", "0", "1", "-1", "2", "8", "32", "nan", "inf", "-inf", "1e400", "2147483648", "9223372036854775808",
                str(10**30), " 8", "8 ", "0x10", "1_0", "٣", "1.5", "true", "null", "[]", "[8, 8, 8]", "{}"]
header_values = st.one_of(st.sampled_from(EDGE_NUMBERS), st.text(max_size=24), st.integers(-2**70, 2**70).map(str),
                          st.floats().map(repr), st.lists(st.integers(-3, 40), max_size=5).map(json.dumps))
DTYPES = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16, torch.bfloat16,
          torch.float32, torch.float64]


@st.composite
def any_tensor(draw) -> torch.Tensor:
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.lists(st.integers(0, 5), max_size=3))  # [] is a 0-d tensor
    n = math.prod(shape)
    if dtype == torch.bool:
        values = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    elif dtype.is_floating_point:
        values = draw(st.lists(st.floats(width=16 if dtype == torch.float16 else 32), min_size=n, max_size=n))
    else:
        info = torch.iinfo(dtype)
        values = draw(st.lists(st.one_of(st.integers(-2, 40), st.integers(info.min, info.max)), min_size=n, max_size=n))
    return torch.tensor(values, dtype=dtype).reshape(shape)


@st.composite
def edited_token_file(draw) -> tuple[str, bytes]:
    """A real token file with 1 to 4 edits to its header fields and tensors, its checksum made to match."""
    kind = draw(st.sampled_from(sorted(token_files())))
    header, tensors = etok_parts(token_files()[kind])
    for _ in range(draw(st.integers(1, 4))):
        edit = draw(st.sampled_from(["set", "set", "drop", "tensor", "tensor", "drop tensor", "sync counts"]))
        if edit == "set":
            header[draw(st.one_of(st.sampled_from(sorted(header)), st.text(max_size=8)))] = draw(header_values)
        elif edit == "drop" and header:
            header.pop(draw(st.sampled_from(sorted(header))))
        elif edit == "tensor":
            tensors[draw(st.sampled_from(["counts", "scores", "tokens", "extra"]))] = draw(any_tensor())
        elif edit == "drop tensor" and len(tensors) > 1:
            tensors.pop(draw(st.sampled_from(sorted(tensors))))
        elif edit == "sync counts" and "counts" in tensors:  # so that edited counts get past the header's copy
            header["counts"] = json.dumps(tensors["counts"].tolist())
    return kind, rebuild_etok(header, tensors)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.integers(-2, 70) | st.floats()
    | st.text(max_size=12) | st.sampled_from([0, 1, 2, 8, 32, 2**16, 2**31, 2**63, 10**30]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8)


def field_edits(fields: list[str]) -> st.SearchStrategy[dict]:
    """Edits of a config's fields (and made-up ones); None as an edit drops the field."""
    return st.dictionaries(st.one_of(st.sampled_from(fields), st.text(max_size=8)),
                           st.one_of(json_values, st.none().map(lambda _: "<drop>")), min_size=1, max_size=4)


def apply_edits(data: dict, edits: dict) -> dict:
    data = {**data, **edits}
    return {k: v for k, v in data.items() if v != "<drop>"}


# ---- the properties ---------------------------------------------------------------------------------------
@fuzz(200)
@given(edited_token_file())
def test_token_files_that_lie_are_read_or_refused(case):
    """Whatever the reader accepts also decodes, or is refused by the model in one line."""
    kind, blob = case
    TRIED["token files"] += 1
    encoded = refused_or(parse_etok, blob)
    if encoded is not None:
        decoded = refused_or(models()[kind].detokenize, encoded)
        assert decoded is None or torch.isfinite(decoded).all()


@fuzz(40)
@given(st.binary(max_size=200), st.integers(0, 2**64 - 1))
def test_token_files_of_any_bytes_are_refused(raw, header_length):
    TRIED["token files"] += 1
    assert refused_or(parse_etok, raw) is None
    assert refused_or(parse_etok, header_length.to_bytes(8, "little") + raw) is None


@fuzz(60)
@given(st.sampled_from(["elastictok", "flextok"]), st.data())
def test_edited_config_json_loads_or_is_refused(family, data):
    """A config.json that loads gives a model that tokenizes, or refuses to, in one line."""
    TRIED["config.json"] += 1
    folder = saved_models()[family]
    base = json.loads((folder / "config.json.orig").read_text()) if (folder / "config.json.orig").exists() else None
    if base is None:
        base = json.loads((folder / "config.json").read_text())
        (folder / "config.json.orig").write_text(json.dumps(base))
    config = apply_edits(base, data.draw(field_edits(sorted(base))))
    (folder / "config.json").write_text(json.dumps(config))
    model = refused_or(from_pretrained, folder)
    if model is not None:
        c = model.config
        video = torch.zeros(1, c.frames_per_block, 3, *c.resolution)
        refused_or(model.tokenize, video, f"tokens:{c.min_tokens}")


@fuzz(20)
@given(st.binary(max_size=300))
def test_config_json_of_any_bytes_is_refused(raw):
    TRIED["config.json"] += 1
    folder = workdir() / "raw-config"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_bytes(raw)
    save_file({}, folder / "model.safetensors")
    assert refused_or(from_pretrained, folder) is None


TRAIN_FIELDS = sorted(f for f in TrainConfig.__dataclass_fields__)


@fuzz(150)
@given(st.one_of(field_edits(TRAIN_FIELDS).map(lambda edits: yaml.safe_dump(apply_edits({}, edits))),
                 st.text(max_size=200), st.dictionaries(st.sampled_from(["model", "model_overrides"]), json_values)
                 .map(yaml.safe_dump)))
def test_training_yaml_reads_or_is_refused(text):
    TRIED["training YAML"] += 1
    path = workdir() / "train.yaml"
    path.write_text(text, encoding="utf-8")
    refused_or(TrainConfig.from_yaml, path)


HEAD_FIELDS = ["width", "hidden", "members", "counts", "margin", "config_hash", "weights_hash"]


@fuzz(80)
@given(st.dictionaries(st.one_of(st.sampled_from(HEAD_FIELDS), st.text(max_size=6)),
                       st.one_of(header_values, st.none()), max_size=3),
       st.dictionaries(st.text(max_size=30), any_tensor(), max_size=2), st.booleans())
def test_edited_length_heads_load_or_are_refused(meta_edits, tensor_edits, keep_weights):
    from safetensors import safe_open
    TRIED["length heads"] += 1
    with safe_open(str(saved_head()), "pt") as f:
        meta = f.metadata()
    meta = {k: v for k, v in {**meta, **meta_edits}.items() if v is not None}
    state = {**(load_file(saved_head()) if keep_weights else {}), **tensor_edits}
    if keep_weights and tensor_edits:  # put an edited tensor under a real weight's name too
        state[sorted(load_file(saved_head()))[0]] = next(iter(tensor_edits.values())).clone()
    path = workdir() / "edited-head.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path, metadata=meta)
    refused_or(LengthHead.load, path, models()["fsq"])


TARGET_NAMES = ["mse", "psnr", "ssim", "tokens", "budget", "lpips", "", "MSE", "tokens "]


@fuzz(400)
@given(st.one_of(st.text(max_size=40),
                 st.tuples(st.sampled_from(TARGET_NAMES), st.sampled_from([":", "", "::", ": "]),
                           st.one_of(st.sampled_from(EDGE_NUMBERS), st.floats().map(repr),
                                     st.integers(-2**80, 2**80).map(str), st.text(max_size=8))).map("".join)))
def test_target_strings_parse_or_are_refused(text):
    """A target that parses reads back the same from its own text form."""
    TRIED["target strings"] += 1
    target = refused_or(parse_target, text)
    if target is not None:
        assert parse_target(str(target)) == target
