"""Token files and token objects that lie, and what tokenizing and writing them must guarantee."""

from __future__ import annotations

import dataclasses
import weakref

import pytest
import torch
from hostile import etok_parts, one_line, rebuild_etok

from elastictok import ElasticTokError, etok_bytes, parse_etok, read_etok, write_etok
from elastictok.media.blocks import MediaInfo
from elastictok.media.io import write_video
from elastictok.models.coder import Trial
from elastictok.tokenization.files import encode_files, output_names
from elastictok.tokenization.tokenizer import Tokenizer


@pytest.fixture
def encoded(micro, real_video):
    return micro.tokenize(real_video, "tokens:8")[0]


@pytest.mark.parametrize("name", ["counts", "scores", "tokens"])
def test_a_zero_dimensional_tensor_that_passes_the_checksum_is_refused(micro, encoded, name):
    header, tensors = etok_parts(etok_bytes(encoded, micro.codebook_size))
    tensors[name] = tensors[name][0].clone()  # 0-d, with the header and checksum made to match
    with pytest.raises(ElasticTokError, match="malformed token file") as caught:
        parse_etok(rebuild_etok(header, tensors))
    assert one_line(str(caught.value))


def test_vae_latents_of_another_width_are_refused_before_decoding(micro_vae, real_video):
    encoded = micro_vae.tokenize(real_video, "tokens:8")[0]
    header, tensors = etok_parts(etok_bytes(encoded))
    tensors["tokens"] = tensors["tokens"][:, :3].clone()  # 3 channels; the model's latents have 8
    narrow = parse_etok(rebuild_etok(header, tensors))  # a file alone does not know the model's width
    with pytest.raises(ElasticTokError, match=r"latents of shape \(3,\).*\(8,\)"):
        micro_vae.detokenize(narrow)


@pytest.mark.parametrize("edit", [
    {"counts": [8, 8, 8]}, {"counts": "float"}, {"info": None}, {"tokens": [1, 2, 3]}, {"scores": None},
    {"max_tokens": "32"}, {"config_hash": None},
], ids=lambda edit: next(iter(edit)) + "=" + repr(next(iter(edit.values())))[:10])
def test_an_edited_tokenized_video_is_refused_in_one_line(micro, encoded, edit):
    if edit.get("counts") == "float":
        edit = {"counts": encoded.counts.float()}
    edited = dataclasses.replace(encoded, **edit)
    with pytest.raises(ElasticTokError, match="do not hold together") as caught:
        micro.detokenize(edited)
    assert one_line(str(caught.value))


@pytest.mark.parametrize("edit", [{"metric": 5}, {"family": None}, {"model_name": "micro\udc80"},
                                  {"weights_hash": b"abc"}])
def test_write_etok_refuses_fields_of_the_wrong_kind_and_writes_nothing(micro, encoded, edit, tmp_path):
    with pytest.raises(ElasticTokError, match="do not hold together"):
        write_etok(tmp_path / "x.etok", dataclasses.replace(encoded, **edit), micro.codebook_size)
    assert list(tmp_path.iterdir()) == []


def test_identical_tokens_give_identical_bytes(micro, encoded):
    blobs = {etok_bytes(encoded, micro.codebook_size) for _ in range(8)}
    assert len(blobs) == 1
    again = parse_etok(blobs.pop())
    assert torch.equal(again.tokens, encoded.tokens) and torch.equal(again.counts, encoded.counts)


def test_a_blocks_tokens_do_not_keep_its_trial_alive(micro, monkeypatch):
    """Each block's kept tokens are copied out of the trial: a view would hold the trial's whole index row
    (every candidate's tokens) until the input ends, memory growing with every block."""
    trials: list[weakref.ref] = []
    kept_tokens = Trial.kept_tokens

    def watched(self, row, n):  # calls through; only notes which trial the tokens came from
        trials.append(weakref.ref(self.indices))
        return kept_tokens(self, row, n)

    monkeypatch.setattr(Trial, "kept_tokens", watched)
    alive_at_each_block = []
    torch.manual_seed(0)
    blocks = (torch.rand(1, 2, 3, 32, 32) * 2 - 1 for _ in range(6))
    Tokenizer(micro, "psnr:20", on_block=lambda *_: alive_at_each_block.append(
        sum(ref() is not None for ref in trials[:-1]))).run(blocks, [MediaInfo("<t>", None, (32, 32), 12)])
    assert alive_at_each_block == [0] * 6


def test_encode_output_names_never_collide_with_a_suffixed_name(micro, tmp_path):
    frames = torch.zeros(2, 32, 32, 3, dtype=torch.uint8)
    inputs = [tmp_path / "x.mp4", tmp_path / "d" / "x.mp4", tmp_path / "x.mp4-1.mp4"]
    for i, path in enumerate(inputs):
        path.parent.mkdir(exist_ok=True)
        write_video(path, frames + 60 * i, fps=24)
    names = output_names([str(p) for p in inputs])
    assert len(set(names)) == 3
    summaries = encode_files(micro, [str(p) for p in inputs], tmp_path / "out", "tokens:8")
    written = {s["output"] for s in summaries}
    assert len(written) == 3 and sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(names)
    for summary, source in zip(summaries, inputs):  # each file holds its own input's tokens
        assert read_etok(summary["output"]).info.source == str(source)
