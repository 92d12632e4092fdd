"""A sampling family's decoder (FlexTok's flow) set per call: steps, guidance and seed in the options, on
detokenize and on the command line, recorded in token files; the scores a search records are those of the
decode the user gets; a family without a sampler refuses the settings in one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from hostile import etok_parts, one_line, rebuild_etok

from elastictok import ElasticTokError, detokenize, etok_bytes, parse_etok, read_etok, tokenize, write_etok
from elastictok.models.coder import Sampler
from elastictok.models.flextok import FlexTok, FlexTokConfig
from elastictok.tokenization.scoring import decode_and_score


@pytest.fixture(scope="module")
def flex() -> FlexTok:
    """flextok-micro with perturbed weights (adaLN-zero would otherwise output zeros whatever the tokens)."""
    torch.manual_seed(0)
    model = FlexTok(FlexTokConfig.from_preset("flextok-micro", steps=2, guidance=1.0))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def test_the_scores_a_token_file_records_are_those_of_decoding_it(flex, photo_folder, tmp_path):
    """At 6 guided Euler steps the search scores each candidate with the decode ``detokenize`` gives back, so
    the file's per-block PSNR is the PSNR of decoding the file again (the one-step estimate's is not)."""
    source, sampler = photo_folder / "pan.mp4", {"steps": 6, "guidance": 2.0, "seed": 3}
    reference = tokenize(flex, source, "tokens:4", **sampler)
    target = float(10 * torch.log10(4 / reference.scores).median())  # PSNR on [-1, 1]: half the blocks meet it
    encoded = tokenize(flex, source, f"psnr:{target}", search="full", **sampler)
    assert 1 < len(set(encoded.counts.tolist()))  # the search chose different counts for different blocks
    write_etok(tmp_path / "pan.etok", encoded)
    loaded = read_etok(tmp_path / "pan.etok")
    assert loaded.sampler == Sampler(**sampler)
    decoded = decode_and_score(flex, loaded, source, metrics=("psnr",)).metrics["psnr"]
    torch.testing.assert_close(torch.tensor(decoded), loaded.scores, rtol=0, atol=1e-3)
    one_step = tokenize(flex, source, "tokens:4", steps=1, guidance=2.0, seed=3).scores
    assert (one_step - reference.scores).abs().max() > 1e-3  # the steps change what is scored


def test_the_sampler_is_set_per_call_deterministic_and_recorded(flex, real_video):
    first, again = (tokenize(flex, real_video, "tokens:5", steps=3, seed=7)[0] for _ in range(2))
    assert first.sampler == Sampler(steps=3, guidance=flex.config.guidance, seed=7)
    assert torch.equal(detokenize(flex, first), detokenize(flex, again))  # given a seed, the same frames
    recorded = detokenize(flex, first)
    assert torch.equal(recorded, detokenize(flex, first, steps=3, seed=7))  # the recorded sampler by default
    for change in ({"seed": 8}, {"steps": 5}, {"guidance": 3.0}):
        assert not torch.allclose(detokenize(flex, first, **change), recorded, atol=1e-4), change
    default = tokenize(flex, real_video, "tokens:5")[0]  # no settings: config.json's
    assert default.sampler == Sampler(flex.config.steps, flex.config.guidance, flex.config.seed)
    both = detokenize(flex, [first, default])  # different samplers in one call: each decoded with its own
    assert torch.equal(both[0], recorded) and torch.equal(both[1], detokenize(flex, default))


@pytest.mark.parametrize("settings, message", [
    ({"steps": 0}, "steps must be a whole number in"), ({"guidance": float("nan")}, "guidance must be a number"),
    ({"seed": -1}, "seed must be a whole number"), ({"steps": 2.5}, "steps must be a whole number"),
])
def test_settings_out_of_range_are_refused_in_one_line(flex, real_video, settings, message):
    with pytest.raises(ElasticTokError, match=message) as caught:
        tokenize(flex, real_video, "tokens:2", **settings)
    assert one_line(str(caught.value))


def test_a_family_without_a_sampler_refuses_its_settings_in_one_line(micro, real_video):
    with pytest.raises(ElasticTokError, match="ElasticTok decodes each block in one pass and has no sampler: steps"):
        tokenize(micro, real_video, "tokens:8", steps=4)
    encoded = tokenize(micro, real_video, "tokens:8")[0]
    assert encoded.sampler is None and parse_etok(etok_bytes(encoded)).sampler is None
    with pytest.raises(ElasticTokError, match="no sampler: guidance, seed cannot apply") as caught:
        detokenize(micro, encoded, guidance=2.0, seed=1)
    assert one_line(str(caught.value))


@pytest.mark.parametrize("recorded", ['{"steps": 0, "guidance": 1.0, "seed": 0}', '{"steps": 2}', '[2, 1.0, 0]',
                                      '{"steps": 2, "guidance": 1e999, "seed": 0}'])
def test_a_token_file_whose_sampler_lies_is_refused_in_one_line(flex, real_video, recorded):
    header, tensors = etok_parts(etok_bytes(tokenize(flex, real_video, "tokens:2")[0]))
    header["sampler"] = recorded  # the checksum made to match
    with pytest.raises(ElasticTokError, match="malformed token file: .*sampler") as caught:
        parse_etok(rebuild_etok(header, tensors))
    assert one_line(str(caught.value))


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "elastictok.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_sets_the_sampler_on_encode_and_decode_and_elastictok_refuses_it(flex, micro, photo_folder, tmp_path):
    flex.save_pretrained(tmp_path / "flex")
    micro.save_pretrained(tmp_path / "micro")
    photo = str(photo_folder / "photo1.jpg")
    run = cli("encode", photo, "-o", str(tmp_path / "tok"), "--model", str(tmp_path / "flex"), "--tokens", "4",
              "--steps", "3", "--guidance", "2", "--seed", "5", "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["sampler"] == {"steps": 3, "guidance": 2.0, "seed": 5}
    assert read_etok(tmp_path / "tok" / "photo1.etok").sampler == Sampler(3, 2.0, 5)
    run = cli("decode", str(tmp_path / "tok" / "photo1.etok"), "-o", str(tmp_path / "out.png"), "--model",
              str(tmp_path / "flex"), "--steps", "4")
    assert run.returncode == 0 and (tmp_path / "out.png").is_file(), run.stderr
    run = cli("encode", photo, "-o", str(tmp_path / "refused"), "--model", str(tmp_path / "micro"), "--steps", "3")
    assert run.returncode == 2 and one_line(run.stderr.strip()) and "no sampler" in run.stderr, run.stderr
    assert not (tmp_path / "refused").exists()
