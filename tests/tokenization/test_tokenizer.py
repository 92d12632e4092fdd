"""Adaptive tokenization: searches, targets, cached context, long videos, token files and round trips."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch

from elastictok import ElasticTok, ElasticTokConfig, ElasticTokError
from elastictok.tokenization.targets import Budget, Threshold, TokenCount
from elastictok.tokenization.tokenfile import read_etok, write_etok
from elastictok.media.blocks import MediaInfo
from elastictok.tokenization.search import bisection, exhaustive, kary
from elastictok.tokenization.tokenizer import Tokenizer


def run_probes(search, passes) -> tuple[int, int]:
    """Drive a search generator with a pass predicate; return (smallest passing probe or hi, number of passes)."""
    best, count, probes = None, 0, next(search, None)
    while probes:
        count += 1
        verdicts = [passes(n) for n in probes]
        best = min([n for n, ok in zip(probes, verdicts) if ok] + ([best] if best else []), default=None)
        try:
            probes = search.send(verdicts)
        except StopIteration:
            break
    return best, count


def test_searches_find_the_smallest_passing_count_on_monotone_curves():
    rng = random.Random(0)
    for _ in range(400):
        lo, hi = rng.randint(1, 20), rng.randint(21, 300)
        answer = rng.randint(lo, hi + 3)  # > hi: nothing passes
        passes = lambda n: n >= answer  # noqa: E731
        expected = answer if answer <= hi else None
        guess = rng.choice([None, lo, hi, rng.randint(lo, hi)])
        for search in (bisection(lo, hi, guess), kary(lo, hi, rng.randint(1, 9)), exhaustive(lo, hi, 16)):
            found, _ = run_probes(search, passes)
            # hi is the fallback and is never required to be probed by bisection/kary
            assert found == expected or (expected is None or expected == hi) and found in (None, hi)


def test_warm_start_costs_few_passes_when_the_answer_is_near_the_guess():
    _, cold = run_probes(bisection(8, 128), lambda n: n >= 60)
    _, warm = run_probes(bisection(8, 128, guess=60), lambda n: n >= 60)
    assert warm == 2 and cold == 7


def test_full_search_is_the_smallest_count_meeting_the_threshold(trained_micro, real_video):
    """Reference check without the cache: each block's loss curve recomputed by plain forward passes."""
    model, c = trained_micro, trained_micro.config
    threshold = 0.0
    errors = model(real_video, c.tokens_per_block).mse.item()
    threshold = errors * 2.0  # a threshold some counts meet and some do not
    # the whole video as context
    encoded = model.tokenize(real_video, f"mse:{threshold}", search="full", window=None)[0]
    from elastictok.metrics.quality import mse_per_block
    chosen: list[int] = []
    for k in range(3):
        curve = []
        for n in range(c.min_tokens, c.tokens_per_block + 1):
            keep = torch.tensor([chosen + [n] + [c.tokens_per_block] * (2 - k)])
            curve.append(mse_per_block(model(real_video, keep).recon, real_video, c.frames_per_block)[0, k].item())
        passing = [n for n, e in zip(range(c.min_tokens, c.tokens_per_block + 1), curve) if e <= threshold]
        chosen.append(passing[0] if passing else c.tokens_per_block)
        assert encoded.scores[k].item() == pytest.approx(curve[chosen[-1] - c.min_tokens], abs=1e-5)
    assert encoded.counts.tolist() == chosen
    assert len(set(chosen)) > 1 or chosen[0] < c.tokens_per_block  # the threshold really selects


@pytest.mark.parametrize("bottleneck", ["fsq", "vae"])
def test_a_mask_free_encoder_runs_once_per_block_and_gives_the_plain_forward_tokens(real_video, bottleneck):
    """With ``encoder_mask_conditioning=False`` every candidate count of every stream reuses one encoder
    pass per block; each stream's tokens and scores must still be those of its own plain (uncached)
    encode and forward passes."""
    torch.manual_seed(0)
    model = ElasticTok(ElasticTokConfig.from_preset("micro", encoder_mask_conditioning=False,
                                                    bottleneck=bottleneck)).eval()
    c = model.config
    videos = torch.cat([real_video, real_video.flip(-1)])  # two streams that differ
    threshold = model(videos, c.tokens_per_block).mse.item() * 1.05
    encoded = model.tokenize(videos, f"mse:{threshold}", search="binary", warm_start=False, window=None)
    from elastictok.metrics.quality import mse_per_block
    for row, result in enumerate(encoded):
        assert result.encoder_passes == 3 and result.passes > 3 * 3  # 3 blocks, several decoder passes each
        video, keep = videos[row:row + 1], result.counts[None]
        latents = model.encode(video, keep)
        stored = latents.indices[0] if bottleneck == "fsq" else latents.z[0].float()
        stored = stored.view(3, c.tokens_per_block, *stored.shape[1:])
        expected = torch.cat([stored[k, :n] for k, n in enumerate(result.counts.tolist())])
        torch.testing.assert_close(result.tokens, expected, rtol=0, atol=1e-6)
        errors = mse_per_block(model(video, keep).recon, video, c.frames_per_block)[0]
        assert torch.allclose(result.scores, errors, atol=1e-5)


def test_a_mask_free_encoder_gives_the_length_head_its_features_from_the_same_pass(real_video):
    """The regression search's features (mean and spread of the all-kept encoder output) come from the
    one encoder pass every candidate count shares, and equal a plain encoder pass of their own."""
    from elastictok.models.elastictok.coder import ElasticTokCoder

    torch.manual_seed(0)
    model = ElasticTok(ElasticTokConfig.from_preset("micro", encoder_mask_conditioning=False)).eval()
    m = model.config.tokens_per_block
    patches = model.patchify(real_video[:, :model.config.frames_per_block])
    coder = ElasticTokCoder(model, 1, window=None)
    with torch.no_grad():
        coder.trial(patches, torch.tensor([m // 2, m]), torch.zeros(2, dtype=torch.long))
        features = coder.features(patches)
        h, _ = model.encoder_features(patches, torch.ones(1, m, dtype=torch.bool))
    assert coder.encoder_passes == 1
    torch.testing.assert_close(features, torch.cat([h.mean(1), h.std(1)], dim=-1))


@pytest.mark.parametrize("search", ["binary", "batched"])
def test_fast_searches_meet_the_target(trained_micro, real_video, search):
    model = trained_micro
    for factor in (1.1, 1.3, 2.0):
        threshold = model(real_video).mse.item() * factor
        fast = model.tokenize(real_video, f"mse:{threshold}", search=search)[0]
        full = model.tokenize(real_video, f"mse:{threshold}", search="full")[0]
        assert ((fast.scores <= threshold) | (fast.counts == model.config.tokens_per_block)).all()
        assert (fast.counts >= full.counts).all()  # never below the true minimum
        assert fast.evaluations < full.evaluations


def test_targets_tokens_psnr_ssim_callable_and_budget(trained_micro, real_video):
    model, c = trained_micro, trained_micro.config
    fixed = model.tokenize(real_video, "tokens:5")[0]
    assert fixed.counts.tolist() == [5, 5, 5] and fixed.passes == 3
    psnr = model.tokenize(real_video, "psnr:10")[0]
    assert ((psnr.scores >= 10) | (psnr.counts == c.tokens_per_block)).all()
    ssim = model.tokenize(real_video, "ssim:0.2")[0]
    assert ((ssim.scores >= 0.2) | (ssim.counts == c.tokens_per_block)).all()
    brightness = lambda recon, original: recon.float().mean(dim=(1, 2, 3, 4))  # noqa: E731
    custom = model.tokenize(real_video, Threshold(brightness, -2.0, higher_is_better=True))[0]
    assert custom.counts.tolist() == [c.min_tokens] * 3  # everything passes: the fewest tokens
    budgets = (3 * c.min_tokens + 6, 3 * c.tokens_per_block - 3)
    small, large = (model.tokenize(real_video, Budget(b))[0] for b in budgets)
    assert small.counts.sum() <= 3 * c.min_tokens + 6 and large.counts.sum() <= 3 * c.tokens_per_block - 3
    assert large.counts.sum() > small.counts.sum()
    with pytest.raises(ElasticTokError, match="below the minimum"):
        model.tokenize(real_video, Budget(3))
    with pytest.raises(ElasticTokError, match="bad target"):
        model.tokenize(real_video, "mse")
    with pytest.raises(ElasticTokError, match="unknown search"):
        model.tokenize(real_video, "mse:0.1", search="linear")


def test_cache_window_bounds_memory_on_hundreds_of_blocks(micro):
    c = micro.config
    def blocks():  # a generator: the video never exists whole
        generator = torch.Generator().manual_seed(0)
        for _ in range(300):
            yield torch.rand(1, c.frames_per_block, 3, *c.resolution, generator=generator) * 2 - 1

    caches = []
    tokenizer = Tokenizer(micro, Threshold("mse", 0.3), window=4,
                          on_block=lambda k, recon, coder: caches.append(coder.cached_tokens))
    info = MediaInfo("stream", 24.0, c.resolution, 600)
    encoded = tokenizer.run(blocks(), [info], total=300)[0]
    assert encoded.n_blocks == 300 and len(caches) == 300
    assert max(caches) == 4 * c.tokens_per_block and caches[-1] == 4 * c.tokens_per_block


def test_default_window_is_the_models_own(trained_micro, real_video):
    model = ElasticTok(ElasticTokConfig.from_dict({**trained_micro.config.to_dict(), "window": 1})).eval()
    model.load_state_dict(trained_micro.state_dict())
    by_default, explicit = model.tokenize(real_video, "mse:0.2")[0], model.tokenize(real_video, "mse:0.2", window=1)[0]
    assert torch.equal(by_default.counts, explicit.counts) and torch.equal(by_default.tokens, explicit.tokens)
    torch.testing.assert_close(model.detokenize(by_default), model.detokenize(explicit, window=1), rtol=0, atol=0)
    with pytest.raises(ElasticTokError, match="window"):
        ElasticTokConfig.from_preset("micro", window=0)


def test_window_covering_the_video_changes_nothing(trained_micro, real_video):
    model = trained_micro
    threshold = model(real_video).mse.item() * 2.0
    a = model.tokenize(real_video, f"mse:{threshold}", window=None)[0]
    b = model.tokenize(real_video, f"mse:{threshold}", window=3)[0]
    c = model.tokenize(real_video, f"mse:{threshold}", window=1)[0]
    assert a.counts.tolist() == b.counts.tolist() and torch.equal(a.tokens, b.tokens)
    assert c.counts[0] == a.counts[0]  # the first block never sees context


def test_batches_lengths_images_and_padding(trained_micro, real_video):
    model, c = trained_micro, trained_micro.config
    short = real_video[0, :2]  # one block
    odd = real_video[0, :5]  # 2.5 blocks: padded, then trimmed on decode
    image = real_video[0, 0]
    results = model.tokenize([short, odd, image], "mse:0.2")
    assert [r.n_blocks for r in results] == [1, 3, 1]
    assert results[2].info.is_image and results[1].info.frames == 5
    assert model.detokenize(results[1]).shape == (5, 3, *c.resolution)
    assert model.detokenize(results[2]).shape == (3, *c.resolution)
    alone = model.tokenize(odd[None, :4], "mse:0.2")[0]
    assert alone.counts.tolist() == results[1].counts[:2].tolist()
    batch = model.tokenize(torch.cat([real_video, real_video.flip(-1)]), "mse:0.2")
    assert len(batch) == 2
    assert batch[0].counts.tolist() == model.tokenize(real_video, "mse:0.2")[0].counts.tolist()


def test_detokenize_matches_the_search_reconstruction(trained_micro, real_video):
    model = trained_micro
    encoded = model.tokenize(real_video, "mse:0.2", window=None)[0]  # the whole video as context, as forward
    video = model.detokenize(encoded, window=None)
    direct = model(real_video, encoded.counts[None]).recon[0]
    torch.testing.assert_close(video, direct, atol=1e-5, rtol=0)


def test_token_file_round_trip_and_model_check(trained_micro, micro, real_video, tmp_path):
    model = trained_micro
    encoded = model.tokenize(real_video, "mse:0.2")[0]
    write_etok(tmp_path / "a.etok", encoded, model.quantizer.codebook_size)
    back = read_etok(tmp_path / "a.etok")
    assert torch.equal(back.counts, encoded.counts) and torch.equal(back.tokens, encoded.tokens)
    torch.testing.assert_close(back.scores, encoded.scores)
    assert back.info == encoded.info and back.config_hash == model.config.fingerprint()
    torch.testing.assert_close(model.detokenize(tmp_path / "a.etok"), model.detokenize(encoded))
    other = type(micro)(micro.config.__class__.from_preset("micro", width=64, name="other"))
    with pytest.raises(ElasticTokError, match="made by model"):
        other.detokenize(back)
    retrained = type(model)(model.config)  # the same config, other weights: its tokens mean something else
    assert retrained.config.fingerprint() == back.config_hash
    with pytest.raises(ElasticTokError, match="other weights"):
        retrained.detokenize(back)
    retrained.load_state_dict(model.state_dict())
    torch.testing.assert_close(retrained.detokenize(back), model.detokenize(encoded))
    with torch.no_grad():  # an in-place update, as an optimizer step makes: the remembered digest is stale
        next(retrained.parameters()).add_(0.01)
    with pytest.raises(ElasticTokError, match="other weights"):
        retrained.detokenize(back)
    model.save_pretrained(tmp_path / "shipped", dtype=torch.float16)  # how a model ships: its tokens still decode
    shipped = type(model).from_pretrained(tmp_path / "shipped")
    assert shipped.weights_digest() == model.weights_digest()
    torch.testing.assert_close(shipped.detokenize(back), model.detokenize(encoded), atol=2e-2, rtol=0)


def test_token_file_holds_codebooks_beyond_int32(real_video, tmp_path):
    torch.manual_seed(0)
    model = ElasticTok(ElasticTokConfig.from_preset("micro", fsq_levels=(8,) * 16, name="wide")).eval()
    encoded = model.tokenize(real_video, "tokens:9")[0]
    assert model.quantizer.codebook_size == 2**48 and int(encoded.tokens.max()) > 2**31
    write_etok(tmp_path / "w.etok", encoded, model.quantizer.codebook_size)
    back = read_etok(tmp_path / "w.etok")
    assert torch.equal(back.tokens, encoded.tokens)
    torch.testing.assert_close(model.detokenize(back), model.detokenize(encoded))


def test_vae_tokens_round_trip(micro_vae, real_video, tmp_path):
    encoded = micro_vae.tokenize(real_video, "tokens:7")[0]
    assert encoded.tokens.shape == (21, micro_vae.config.latent_dim) and encoded.tokens.is_floating_point()
    write_etok(tmp_path / "v.etok", encoded, 0)
    torch.testing.assert_close(micro_vae.detokenize(tmp_path / "v.etok"), micro_vae.detokenize(encoded))


def test_token_file_reader_survives_fuzzing(trained_micro, real_video, tmp_path):
    encoded = trained_micro.tokenize(real_video, "mse:0.2")[0]
    write_etok(tmp_path / "good.etok", encoded, trained_micro.quantizer.codebook_size)
    good = (tmp_path / "good.etok").read_bytes()
    rng = random.Random(0)
    damaged = [good[:n] for n in range(0, len(good), max(1, len(good) // 60))]
    for _ in range(300):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        damaged.append(bytes(data))
    damaged += [b"", b"\xff" * 8 + b"{}", (10**12).to_bytes(8, "little") + b"{",
                b"\x10\x00\x00\x00\x00\x00\x00\x00[1,2]   "]
    target = tmp_path / "bad.etok"
    accepted = 0
    for data in damaged:
        target.write_bytes(data)
        try:
            read_etok(target)
            accepted += 1  # a flip inside token data can leave a valid file; it was still fully validated
        except ElasticTokError as exc:
            assert "\n" not in str(exc)
    assert accepted < len(damaged) // 2


def test_regression_head_trains_predicts_and_round_trips(trained_micro, real_video, photo_folder, tmp_path):
    from elastictok.tokenization.length_head import LengthHead
    from elastictok.training.length_head import train_length_head

    model, c = trained_micro, trained_micro.config
    threshold = model(real_video).mse.item() * 1.3
    target = Threshold("mse", threshold)
    inputs = [real_video[0], real_video[0].flip(-1), str(photo_folder / "pan.mp4")]
    head, report = train_length_head(model, inputs, target, steps=300, eval_inputs=[real_video[0]])
    assert report.blocks == 3 + 3 + 12 and 0 <= report.off <= 1 and 0 <= report.fails <= 1
    head.save(tmp_path / "head.safetensors")
    loaded = LengthHead.load(tmp_path / "head.safetensors", model)
    result = model.tokenize(real_video, target, search="regression", length_head=loaded)[0]
    # per block (this encoder reads the mask): the features, an encode+decode with every token, the final one
    assert result.passes == 2 * 3 and result.encoder_passes == 3 * 3 and result.evaluations == 2 * 3
    assert ((result.counts >= c.min_tokens) & (result.counts <= c.tokens_per_block)).all()
    # one head serves every mse and psnr threshold: the same MSE asked as PSNR gives the same counts
    as_psnr = model.tokenize(real_video, Threshold("psnr", 10 * math.log10(4 / threshold)), search="regression",
                             length_head=loaded)[0]
    assert torch.equal(as_psnr.counts, result.counts)
    # what the all-token reconstruction cannot meet keeps every token; what anything meets keeps the fewest
    hopeless = model.tokenize(real_video, "mse:1e-9", search="regression", length_head=loaded)[0]
    assert (hopeless.counts == c.tokens_per_block).all()
    easy = model.tokenize(real_video, "mse:4", search="regression", length_head=loaded)[0]
    assert (easy.counts == c.min_tokens).all()
    with pytest.raises(ElasticTokError, match="predicts MSE"):
        model.tokenize(real_video, "ssim:0.5", search="regression", length_head=loaded)
    with pytest.raises(ElasticTokError, match="needs a trained length head"):
        model.tokenize(real_video, target, search="regression")
    other = type(model)(c.__class__.from_preset("micro", width=64, name="other"))
    with pytest.raises(ElasticTokError, match="another model"):
        LengthHead.load(tmp_path / "head.safetensors", other)
    with pytest.raises(ElasticTokError, match="other weights"):
        LengthHead.load(tmp_path / "head.safetensors", type(model)(c))


def test_recorded_error_curves_are_what_tokenizing_at_that_count_gives(trained_micro, real_video):
    from elastictok.training.length_head import collect_curves

    model = trained_micro
    curves = collect_curves(model, [real_video[0]], Threshold("mse", 0.05))
    assert curves.mse.shape == (3, len(curves.counts)) and curves.counts[-1] == model.config.tokens_per_block
    for j in (0, len(curves.counts) // 2, len(curves.counts) - 1):  # block 0 has no context to differ
        fixed = model.tokenize(real_video[:1], TokenCount(int(curves.counts[j])))[0]
        assert fixed.scores[0] == pytest.approx(curves.mse[0, j].item(), rel=1e-4, abs=1e-6)
    searched = curves.searched(0.05)
    for i, count in enumerate(searched.tolist()):  # the smallest grid count that meets, else every token
        meets = curves.mse[i] <= 0.05
        assert count == (int(curves.counts[meets][0]) if meets.any() else model.config.tokens_per_block)


def test_public_api_batched_in_batched_out(micro, real_video, photo_folder):
    import elastictok
    from elastictok import Budget, Threshold, TokenCount, TokenizedVideo, TokenizeOptions, parse_target

    assert parse_target("psnr:30") == Threshold("psnr", 30.0) and parse_target("tokens:4") == TokenCount(4)
    assert parse_target("budget:9") == Budget(9) and str(Threshold("mse", 0.5)) == "mse:0.5"
    photo = str(photo_folder / "photo0.jpg")
    one = micro.tokenize(photo, "tokens:5")
    assert isinstance(one, TokenizedVideo)
    both = micro.tokenize([photo, real_video[0]], TokenCount(5), TokenizeOptions(search="full"))
    assert isinstance(both, list) and len(both) == 2 and both[0].counts.tolist() == one.counts.tolist()
    assert len(micro.tokenize(real_video, "tokens:5")) == 1  # a batch tensor gives a list
    assert elastictok.tokenize(micro, photo, "tokens:5").counts.tolist() == one.counts.tolist()
    videos = micro.detokenize(both)
    assert isinstance(videos, list)
    torch.testing.assert_close(videos[0], micro.detokenize(one), rtol=0, atol=1e-6)
    torch.testing.assert_close(videos[1], micro.detokenize(both[1]), rtol=0, atol=1e-5)
    with pytest.raises(ElasticTokError, match="unknown tokenize options serch"):
        micro.tokenize(photo, "tokens:5", serch="full")
    with pytest.raises(ElasticTokError, match="a target is Threshold"):
        micro.tokenize(photo, 0.5)


def test_older_token_files_still_read(micro, real_video, tmp_path):
    """Files written before the checksum (version 1) and before the weights digest (version 2) decode;
    a damaged file is refused."""
    import json

    from safetensors.torch import load, save

    from elastictok.tokenization.tokenfile import _checksum, etok_bytes, parse_etok

    encoded = micro.tokenize(real_video[:1, :4], "tokens:4")[0]
    data = etok_bytes(encoded, micro.codebook_size)
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])["__metadata__"]
    assert header["version"] == "3" and len(header["checksum"]) == 64
    assert header["weights_hash"] == micro.weights_digest() != type(micro)(micro.config).weights_digest()
    v2 = {k: v for k, v in header.items() if k not in ("checksum", "weights_hash")} | {"version": "2"}
    v2["checksum"] = _checksum(v2, load(data))
    v1 = {k: v for k, v in v2.items() if k != "checksum"} | {"version": "1"}
    for old in (v1, v2):
        back = parse_etok(save(load(data), metadata=old))
        assert back.counts.tolist() == encoded.counts.tolist() and torch.equal(back.tokens, encoded.tokens)
        assert back.weights_hash == ""
        torch.testing.assert_close(micro.detokenize(back), micro.detokenize(encoded))
    damaged = dict(header, source="elsewhere.mp4")
    with pytest.raises(ElasticTokError, match="checksum"):
        parse_etok(save(load(data), metadata=damaged))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_pixels_of_any_float_type_tokenize_as_float32(micro, dtype):
    video = torch.rand(1, 4, 3, *micro.config.resolution) * 2 - 1
    exact = micro.tokenize(video, "tokens:8")[0]
    other = micro.tokenize(video.to(dtype), "tokens:8")[0]
    assert torch.equal(exact.counts, other.counts) and exact.tokens.shape == other.tokens.shape
    if dtype == torch.float64:  # float32 holds these pixels exactly
        assert torch.equal(exact.tokens, other.tokens)


@pytest.mark.parametrize("damage", [
    lambda e: dataclasses.replace(e, counts=e.counts + 1),  # more tokens counted than held
    lambda e: dataclasses.replace(e, counts=e.counts[None]),
    lambda e: dataclasses.replace(e, tokens=e.tokens[:0]),
    lambda e: dataclasses.replace(e, tokens=e.tokens.float()),
    lambda e: dataclasses.replace(e, scores=None),
    lambda e: None,
    lambda e: 5,
])
def test_tokens_that_do_not_hold_together_are_refused_in_one_line(micro, tmp_path, damage):
    encoded = damage(micro.tokenize(torch.zeros(1, 4, 3, *micro.config.resolution), "tokens:8")[0])
    uses = (lambda: micro.detokenize(encoded), lambda: write_etok(tmp_path / "x.etok", encoded, micro.codebook_size))
    for use in uses:
        with pytest.raises(ElasticTokError) as error:
            use()
        assert "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("codebook_size", ["x", -5, True, 0])
def test_a_token_file_is_written_only_if_it_reads_back(micro, tmp_path, codebook_size):
    encoded = micro.tokenize(torch.zeros(1, 4, 3, *micro.config.resolution), "tokens:8")[0]
    with pytest.raises(ElasticTokError, match="codebook_size"):
        write_etok(tmp_path / "x.etok", encoded, codebook_size)
    write_etok(tmp_path / "x.etok", encoded, micro.codebook_size)
    assert torch.equal(read_etok(tmp_path / "x.etok").tokens, encoded.tokens)
