"""What a new user of the Python API sees: whether each block met the target, inputs of any size fitted and
given back, PIL images and numpy arrays, short reprs, progress bars on a terminal only."""

from __future__ import annotations

import io
import json
import logging
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load, save

from elastictok import ElasticTokError, TokenizeOptions, TokenizedVideo, read_etok, write_etok
from elastictok.media.transforms import fit_to_resolution, from_model, to_model, unfit
from elastictok.tokenization.tokenfile import _checksum


def gradient(height: int, width: int) -> np.ndarray:
    """A smooth RGB picture (uint8 (H, W, 3)) that survives resizing down and back up."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([255 * x / width, 255 * y / height, 128 + 0 * x], -1).round().astype(np.uint8)


def test_met_records_each_block_against_the_threshold(micro, caplog):
    video = torch.rand(1, 6, 3, 32, 32) * 2 - 1
    strict, lenient = micro.tokenize(video, "mse:0.0001")[0], micro.tokenize(video, "mse:4")[0]
    assert strict.met.tolist() == [score <= 0.0001 for score in strict.scores.tolist()]
    assert strict.blocks_met == 0 and lenient.blocks_met == lenient.n_blocks == 3
    assert strict.target == "mse:0.0001" and lenient.met_line() == "3 of 3 blocks met mse:4"


def test_an_unreachable_target_is_said_naming_the_best_block(micro, caplog):
    video = torch.rand(1, 4, 3, 32, 32) * 2 - 1
    with caplog.at_level(logging.WARNING, logger="elastictok"):
        encoded = micro.tokenize(video, "psnr:300")[0]
    best = float(encoded.scores.max())
    lines = [r.getMessage() for r in caplog.records if "psnr:300" in r.getMessage()]
    assert len(lines) == 1 and "out of this model's reach" in lines[0] and f"{best:.4g}" in lines[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="elastictok"):
        micro.tokenize(video, "mse:4")
    assert not caplog.records  # every block met it: nothing to say


def test_met_and_fit_travel_in_the_token_file_and_old_files_still_read(micro, tmp_path):
    encoded = micro.tokenize(Image.fromarray(gradient(40, 100)), "mse:0.0001", fit="pad")
    write_etok(tmp_path / "a.etok", encoded)  # the codebook size comes from the tokens
    back = read_etok(tmp_path / "a.etok")
    assert back.met.tolist() == encoded.met.tolist() and back.target == "mse:0.0001"
    assert back.info.size == (40, 100) and back.info.fit == "pad" and back.codebook_size == micro.codebook_size

    tensors = load((tmp_path / "a.etok").read_bytes())
    with open(tmp_path / "a.etok", "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))["__metadata__"]
    old = {k: v for k, v in header.items() if k not in ("met", "target", "fit")}  # a file from before these fields
    old["checksum"] = _checksum(old, tensors)
    (tmp_path / "old.etok").write_bytes(save(tensors, metadata=old))
    read_back = read_etok(tmp_path / "old.etok")
    assert read_back.met is None and read_back.info.fit is None and "not recorded" in repr(read_back)


def test_repr_is_one_short_line(micro):
    encoded = micro.tokenize(torch.rand(1, 40, 3, 32, 32) * 2 - 1, "tokens:8")[0]
    text = repr(encoded)
    assert "\n" not in text and len(text) < 160 and "20 of 20 blocks met tokens:8" in text


def test_write_etok_needs_no_codebook_size(micro, micro_vae, tmp_path):
    for model in (micro, micro_vae):
        encoded = model.tokenize(torch.rand(1, 2, 3, 32, 32) * 2 - 1, "tokens:8")[0]
        write_etok(tmp_path / "t.etok", encoded)
        assert torch.equal(model.detokenize(tmp_path / "t.etok"), model.detokenize(encoded))


def test_pil_images_and_numpy_arrays_are_pixels_fitted_like_files(micro, tmp_path):
    picture = gradient(40, 100)
    Image.fromarray(picture).save(tmp_path / "p.png")
    from_file = micro.tokenize(str(tmp_path / "p.png"), "tokens:16")
    from_pil = micro.tokenize(Image.fromarray(picture), "tokens:16")
    from_array = micro.tokenize(picture, "tokens:16")
    assert torch.equal(from_pil.tokens, from_file.tokens) and torch.equal(from_array.tokens, from_file.tokens)
    assert from_pil.info.is_image and from_pil.info.size == (40, 100)
    clip = micro.tokenize(np.stack([picture] * 3), "tokens:16")  # (T, H, W, 3): a video of 3 frames
    assert clip.n_blocks == 2 and clip.info.frames == 3 and not clip.info.is_image
    with pytest.raises(ElasticTokError, match=r"uint8 pixels .* got float32 \(3, 32, 32\)"):
        micro.tokenize(np.zeros((3, 32, 32), np.float32), "tokens:16")


@pytest.mark.parametrize("shape", [(2, 4, 32, 32, 3), (4, 32, 32, 3)])
def test_a_refused_shape_is_quoted_as_given(micro, shape):
    with pytest.raises(ElasticTokError) as caught:
        micro.tokenize(torch.rand(*shape), "tokens:8")
    assert str(shape) in str(caught.value) and "channels last" in str(caught.value)
    with pytest.raises(ElasticTokError, match=r"\(4, 32, 32, 3\)"):
        micro.tokenize([torch.rand(4, 32, 32, 3)], "tokens:8")


def test_resizing_is_said_and_decoding_can_give_back_the_source_size(micro, caplog):
    picture = gradient(40, 100)
    with caplog.at_level(logging.INFO, logger="elastictok"):
        cropped = micro.tokenize(Image.fromarray(picture), "tokens:32")
        padded = micro.tokenize(Image.fromarray(picture), "tokens:32", fit="pad")
    said = [r.getMessage() for r in caplog.records]
    assert any("100x40 resized and centre-cropped to the model's 32x32" in line for line in said)
    assert any("100x40 resized and padded to the model's 32x32" in line for line in said)
    assert micro.detokenize(padded).shape == (3, 32, 32)
    assert micro.detokenize(padded, size="source").shape == (3, 40, 100)
    back = micro.detokenize(cropped, size="source")
    assert back.shape == (3, 40, 100) and (back[:, :, :25] == -1).all()  # the cropped-off edges are black


@pytest.mark.parametrize("fit", ["crop", "pad"])
def test_unfit_inverts_fit_to_resolution(fit):
    picture = torch.from_numpy(gradient(40, 100))[None]  # (1, H, W, 3)
    fitted = to_model(fit_to_resolution(picture, (32, 32), fit))  # (1, 3, 32, 32)
    back = from_model(unfit(fitted, (40, 100), fit)).int()
    shown = slice(None) if fit == "pad" else slice(30, 70)  # crop: the centre 40x40 is what the model saw
    error = (back[:, :, shown] - picture[:, :, shown].int()).abs().float().mean()
    assert back.shape == picture.shape and error < 4  # of 255: a downscale and back on a smooth picture


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_on_a_terminal_and_stays_out_of_logs(micro, monkeypatch):
    video = torch.rand(1, 4, 3, 32, 32) * 2 - 1
    for stream, shown in ((_Terminal(), True), (io.StringIO(), False)):
        monkeypatch.setattr(sys, "stderr", stream)
        micro.tokenize(video, "tokens:8")
        assert ("tokenize" in stream.getvalue()) == shown
        assert ("\r" in stream.getvalue()) == shown


def test_tokenize_options_document_every_field():
    import dataclasses

    doc = TokenizeOptions.__doc__
    assert all(f"{field.name}:" in doc for field in dataclasses.fields(TokenizeOptions))


def test_block_tokens_are_the_per_block_sequences(micro):
    encoded = micro.tokenize(torch.rand(1, 6, 3, 32, 32) * 2 - 1, "mse:0.05")[0]
    blocks = encoded.block_tokens()
    assert [len(b) for b in blocks] == encoded.counts.tolist()
    assert torch.equal(torch.cat(blocks), encoded.tokens) and isinstance(encoded, TokenizedVideo)
