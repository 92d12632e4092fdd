"""`elastictok report`: the numbers in the page, its self-containment, its errors, and the page itself
in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by Selenium).

The browser tests skip, saying why, where no Chromium can be started (``make test`` installs it
with apt-get when run as root). The bundled default model on the first 24 frames of the bundled
clip keeps them fast (6 blocks of 4 frames for the current model). Token counts, block sizes and
display sizes are read from the model's config, so another bundled model passes too.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

from elastictok import ElasticTok
from elastictok.cli.main import main
from elastictok.evaluation.measurement import EvalRun, evaluate_models, score_blocks, summary_table
from elastictok.evaluation.report import build_report, parse_targets, write_report_html
from elastictok.media.io import VideoReader, write_image, write_video
from elastictok.media.transforms import display_scale, fit_to_resolution, from_model
from elastictok.models.pretrained import DEFAULT_MODEL, sample_video
from elastictok.tokenization.targets import Threshold, TokenCount

FRAMES = 24
TARGETS = "mse:0.03,tokens:16,tokens:all"
BASELINE = Path(__file__).resolve().parents[2] / "baselines" / "default-fixed-0.5"


@pytest.fixture(scope="module")
def model() -> ElasticTok:
    return ElasticTok.from_pretrained(DEFAULT_MODEL).eval()  # what the CLI uses without --model


@pytest.fixture(scope="module")
def max_tokens(model) -> int:
    return model.config.tokens_per_block


@pytest.fixture(scope="module")
def blocks(model) -> int:
    """Blocks of the 24-frame clip (the last one padded if the block length does not divide 24)."""
    return -(-FRAMES // model.config.frames_per_block)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """The first 24 frames of the bundled street clip (real video, 10 fps)."""
    path = tmp_path_factory.mktemp("clip") / "street24.mp4"
    write_video(path, VideoReader(sample_video()).read_all()[:FRAMES], fps=10)
    return path


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A still from the clip, at its own 128x128."""
    path = tmp_path_factory.mktemp("photo") / "still.png"
    write_image(path, VideoReader(sample_video()).read_all()[40])
    return path


@pytest.fixture(scope="module")
def page(clip, photo, tmp_path_factory) -> Path:
    """The report of a video and an image, written by the command line as a user would."""
    out = tmp_path_factory.mktemp("report") / "report.html"
    result = subprocess.run([sys.executable, "-m", "elastictok.cli", "report", str(clip), str(photo), "-o", str(out),
                             "--thresholds", TARGETS, "--no-progress"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    return out


def embedded(path: Path) -> dict:
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', path.read_text(), re.S)
    return json.loads(match.group(1))


def decode_data_uri(uri: str) -> np.ndarray:
    header, payload = uri.split(",", 1)
    with av.open(io.BytesIO(base64.b64decode(payload))) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def psnr_u8(a: np.ndarray, b: np.ndarray) -> float:
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()
    return float(10 * np.log10(255.0 ** 2 / mse))


def fitted_original(clip: Path, model) -> np.ndarray:
    return fit_to_resolution(VideoReader(clip).read_all(), model.config.resolution).numpy()


# ---- the data in the page -----------------------------------------------------------------------
def test_numbers_are_those_of_tokenize_and_eval_scoring(page, clip, model, max_tokens, blocks):
    data = embedded(page)
    entry = data["inputs"][0]
    assert (entry["frames"], entry["blocks"], entry["fps"]) == (FRAMES, blocks, 10)
    for spec in TARGETS.split(","):
        target = parse_targets(spec, max_tokens)[0]
        encoded = model.tokenize(str(clip), target)
        scores = score_blocks(model, encoded, str(clip))  # what elastictok eval measures per block
        setting = entry["settings"][f"{spec.replace('all', str(max_tokens))}|elastic"]
        assert setting["counts"] == encoded.counts.tolist()
        np.testing.assert_allclose(setting["psnr"], scores.metrics["psnr"], atol=1e-3)
        np.testing.assert_allclose(setting["ssim"], scores.metrics["ssim"], atol=1e-4)
        assert setting["psnr_mean"] == pytest.approx(scores.metrics["psnr"].mean(), abs=1e-3)
        if isinstance(target, Threshold):
            assert setting["meets"] == [bool(m <= target.value) for m in scores.metrics["mse"]]
        else:
            assert setting["meets"] is None
    full = entry["settings"][f"tokens:{max_tokens}|elastic"]
    assert entry["settings"]["tokens:16|elastic"]["psnr_mean"] < full["psnr_mean"]
    assert set(full["counts"]) == {max_tokens}


def test_an_image_is_one_block_shown_as_png(page, photo, model):
    entry = embedded(page)["inputs"][1]
    assert entry["is_image"] and entry["blocks"] == 1 and entry["original"].startswith("data:image/png;base64,")
    encoded = model.tokenize(str(photo), "mse:0.03")
    setting = entry["settings"]["mse:0.03|elastic"]
    assert setting["counts"] == encoded.counts.tolist()
    assert setting["psnr"][0] == pytest.approx(score_blocks(model, encoded, str(photo)).metrics["psnr"][0], abs=1e-3)


def test_embedded_videos_are_the_frames_enlarged(page, clip, model):
    entry = embedded(page)["inputs"][0]
    original = decode_data_uri(entry["original"])
    recon = decode_data_uri(entry["settings"]["tokens:16|elastic"]["media"])
    (h, w), k = model.config.resolution, display_scale(model.config.resolution)
    assert k * min(h, w) >= 256
    assert original.shape == recon.shape == (FRAMES, k * h, k * w, 3)  # e.g. 64x64 shown 4x, nearest
    truth = fitted_original(clip, model).repeat(k, 1).repeat(k, 2)
    expected = from_model(model.detokenize(model.tokenize(str(clip), TokenCount(16)))).numpy()
    expected = expected.repeat(k, 1).repeat(k, 2)
    assert psnr_u8(original, truth) > 35 and psnr_u8(recon, expected) > 35  # the codec adds little
    assert psnr_u8(recon, truth) < 30  # and the reconstruction is not the original


def test_page_needs_nothing_outside_itself(page):
    text = page.read_text()
    assert all(link.startswith(("data:", "#")) for link in re.findall(r'(?:src|href)="([^"]*)"', text))
    urls = {url.rstrip("\\") for url in re.findall(r"https?://[^\s\"')]+", text)}  # JSON escapes a closing quote
    assert urls <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}, urls  # namespace names, not fetched
    for needle in ("<link rel=\"stylesheet\"", "@import", "fetch(", "XMLHttpRequest", "<iframe"):
        assert needle not in text


@pytest.fixture(scope="module")
def eval_report(clip, model, tmp_path_factory) -> tuple[dict, dict, Path]:
    """A report with a fixed-length baseline, and elastictok eval's own measurement of the same."""
    if not BASELINE.is_dir():
        pytest.skip(f"no baseline model at {BASELINE}")
    baseline = ElasticTok.from_pretrained(BASELINE).eval()
    b, c = baseline.config, model.config
    if (b.tokens_per_block, tuple(b.resolution), b.frames_per_block) != (c.tokens_per_block, tuple(c.resolution),
                                                                         c.frames_per_block):
        pytest.skip(f"the baseline at {BASELINE} has another token grid than the bundled default model")
    thresholds, fractions = [Threshold("mse", 0.03)], [0.25, 1.0]
    report = build_report(model, [str(clip)], thresholds, [baseline], ["fixed-0.5"], fractions=fractions)
    expected = evaluate_models(model, [baseline], [str(clip)], thresholds,
                               EvalRun(fractions=tuple(fractions), progress=False), baseline_names=["fixed-0.5"])
    expected.pop("_encodings")
    path = write_report_html(report, tmp_path_factory.mktemp("eval") / "eval.html")
    return report, expected, path


def test_eval_section_matches_elastictok_eval(eval_report, blocks):
    report, expected, _ = eval_report
    assert report["eval"]["report"]["thresholds"] == expected["thresholds"]  # the H.264 anchor's too
    lines = summary_table(expected).split("\n\n")[1].splitlines()
    assert report["eval"]["summary"]["tables"][0]["rows"][0] == [c.strip() for c in lines[-1].strip("|").split("|")]
    settings = report["inputs"][0]["settings"]
    mean = round(float(np.mean(settings["mse:0.03|elastic"]["counts"])))
    assert settings["mse:0.03|b0"]["counts"] == [mean] * blocks  # the baseline at the model's bits (same grid)
    row = expected["thresholds"]["mse:0.03"]  # the player's numbers are eval's numbers for this input
    assert settings["mse:0.03|elastic"]["psnr_mean"] == pytest.approx(row["elastic_psnr"], rel=1e-6)
    assert settings["mse:0.03|elastic"]["token_share"] == pytest.approx(row["elastic_tokens_fraction"])


def test_eval_and_report_agree_to_the_last_digit(trained_micro, photo_folder):
    """No baseline needed: the page's eval section and its player measure through eval's one path, so each
    number is eval's own, digit for digit."""
    clip, thresholds = str(photo_folder / "pan.mp4"), [Threshold("mse", 0.05), Threshold("psnr", 15)]
    page = build_report(trained_micro, [clip], thresholds, fractions=[0.5, 1.0])
    expected = evaluate_models(trained_micro, [], [clip], thresholds, EvalRun(fractions=(0.5, 1.0), progress=False))
    encodings = expected.pop("_encodings")
    assert page["eval"]["report"] == expected  # the H.264 anchor included: its bits are the same every run
    for target in thresholds:
        setting, row = page["inputs"][0]["settings"][f"{target.key}|elastic"], expected["thresholds"][target.key]
        assert setting["counts"] == encodings[target.key][0].counts.tolist()
        assert setting["psnr_mean"] == row["elastic_psnr"] and setting["ssim_mean"] == row["elastic_ssim"]
        assert setting["mse_mean"] == row["elastic_mse"]
    assert set(page["eval"]["report"]["anchors"]) == {"H.264", "JPEG"}  # every report has the codec anchors
    assert len(page["eval"]["figures"]) == 2 and all(f.startswith("<svg") for f in page["eval"]["figures"])


# ---- errors -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--thresholds", "mse:abc"], "bad target"),
    (["--thresholds", "tokens:99999"], "more than this model's {max_tokens} tokens"),
    (["--thresholds", "mse:0.03,mse:0.03"], "twice"),
    (["--fractions", "0.5,x"], "--fractions"),
    (["-o", "{tmp}/report.txt"], "name it .html"),
    (["{tmp}/missing.mp4"], "no such file"),
])
def test_bad_arguments_are_one_line_errors(args, message, clip, max_tokens, tmp_path, capsys):
    args = [a.format(tmp=tmp_path) for a in args]
    message = message.format(max_tokens=max_tokens)
    inputs = [a for a in args if a.endswith(".mp4")] or [str(clip)]
    rest = [a for a in args if not a.endswith(".mp4")]
    output = [] if "-o" in rest else ["-o", str(tmp_path / "report.html")]
    assert main(["report", *inputs, *output, *rest, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a partial file


# ---- in a real browser --------------------------------------------------------------------------------
def chromium_paths() -> tuple[str, str] | None:
    browser = os.environ.get("ELASTICTOK_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("ELASTICTOK_CHROMEDRIVER") or shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (a dev extra) drives the browser tests")
    from selenium.webdriver.chrome.service import Service

    paths = chromium_paths()
    if paths is None:
        pytest.skip("no headless Chromium: install Debian's chromium and chromium-driver (make test does so with "
                    "apt-get when run as root), or set ELASTICTOK_CHROMIUM and ELASTICTOK_CHROMEDRIVER")
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium fetch a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--mute-audio",
                "--autoplay-policy=no-user-gesture-required", "--window-size=1280,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(options=options, service=Service(paths[1]))
    except Exception as exc:  # noqa: BLE001 - any failure to start means: no usable browser here
        pytest.skip(f"headless Chromium would not start: {str(exc).splitlines()[0]}")
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def wait_for(driver, script: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {script}")


def problems(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]


def open_page(driver, path: Path) -> None:
    driver.get(path.resolve().as_uri())
    wait_for(driver, "return window.elastictokReport && window.elastictokReport.ready")


P = "window.elastictokReport.players[0]"


def test_page_loads_without_errors_or_network(browser, page, blocks):
    open_page(browser, page)
    assert problems(browser) == []
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(name.startswith("data:") for name in resources), resources
    video, image = browser.find_elements("css selector", "section.input")
    assert len(video.find_elements("css selector", "button.target")) == 3
    assert len(video.find_elements("css selector", "table.blocks tbody tr")) == blocks
    assert len(image.find_elements("css selector", "table.blocks tbody tr")) == 1
    assert image.find_elements("css selector", "img.media") and not image.find_elements("css selector", "svg.plot")
    before = image.find_element("css selector", "figure.recon img").get_attribute("src")
    image.find_element("css selector", 'button.target[data-key="tokens:16"]').click()
    assert image.find_element("css selector", "figure.recon img").get_attribute("src") != before


def test_both_videos_play_within_a_frame_of_each_other(browser, page):
    open_page(browser, page)
    browser.find_element("css selector", "button.play").click()  # a user's click: pause the autoplay
    wait_for(browser, f"return {P}.original.paused")
    browser.find_element("css selector", "button.play").click()  # and play again
    wait_for(browser, f"return !{P}.original.paused && {P}.original.currentTime > 0.3")
    samples = []
    for _ in range(12):
        samples.append(browser.execute_script(
            f"return [{P}.original.currentTime, {P}.recon.currentTime, {P}.recon.paused, {P}.original.paused]"))
        time.sleep(0.12)
    fps = 10
    for original, recon, recon_paused, original_paused in samples:
        assert not recon_paused and not original_paused
        assert abs(original - recon) <= 1 / fps + 1e-6, samples
    advanced = sum(b[1] > a[1] for a, b in zip(samples, samples[1:]))
    assert advanced >= 6, samples  # the reconstruction really plays (looping may reset it once)
    assert problems(browser) == []


FRAME_PIXELS = """
const [scale, done] = [arguments[0], arguments[arguments.length - 1]];
const p = window.elastictokReport.players[0];
function grab(video) {  // the painted frame, one pixel per model pixel (the centre of each enlarged cell)
  const c = document.createElement('canvas'); c.width = video.videoWidth; c.height = video.videoHeight;
  const g = c.getContext('2d'); g.drawImage(video, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data, out = [];
  for (let y = scale >> 1; y < c.height; y += scale)
    for (let x = scale >> 1; x < c.width; x += scale) {
      const i = 4 * (y * c.width + x); out.push(d[i], d[i + 1], d[i + 2]);
    }
  return out;
}
done([grab(p.original), grab(p.recon), Math.floor(p.original.currentTime * 10), Math.floor(p.recon.currentTime * 10)]);
"""


def painted(browser, model) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The page's original and reconstruction as painted now, at the model's resolution, and their frames."""
    h, w = model.config.resolution
    original, recon, frame, recon_frame = browser.execute_async_script(FRAME_PIXELS, display_scale((h, w)))
    as_image = lambda pixels: np.asarray(pixels, dtype=np.uint8).reshape(h, w, 3)  # noqa: E731
    return as_image(original), as_image(recon), frame, recon_frame


def settled(driver) -> None:
    wait_for(driver, f"const o = {P}.original, r = {P}.recon; return o.paused && r.paused && !o.seeking && "
                     "!r.seeking && o.readyState >= 2 && r.readyState >= 2 && "
                     "Math.abs(o.currentTime - r.currentTime) < 1e-3")


def test_the_control_changes_the_reconstruction_and_the_numbers(browser, page, clip, model, max_tokens):
    open_page(browser, page)
    browser.find_element("css selector", "button.play").click()
    settled(browser)
    truth = fitted_original(clip, model)
    settings = {tokens: from_model(model.detokenize(model.tokenize(str(clip), TokenCount(tokens)))).numpy()
                for tokens in (16, max_tokens)}
    quality = {}
    for tokens, recon in settings.items():
        browser.find_element("css selector", f'button.target[data-key="tokens:{tokens}"]').click()
        settled(browser)
        original, shown, frame, recon_frame = painted(browser, model)
        assert frame == recon_frame
        # the painted frames are the clip's and this setting's own (at currentTime's frame, or a neighbour where
        # a loaded browser has not yet painted the seek), up to the page's video codec (> 35 dB elsewhere) ...
        near = range(max(0, frame - 1), min(FRAMES, frame + 2))
        assert max(psnr_u8(original, truth[f]) for f in near) > 30
        match = max(near, key=lambda f: psnr_u8(shown, recon[f]))
        assert psnr_u8(shown, recon[match]) > 30
        # ... and not the other setting's
        for other_tokens, other in settings.items():
            if other_tokens != tokens:
                assert psnr_u8(shown, recon[match]) > psnr_u8(shown, other[match]) + 3
        quality[tokens] = psnr_u8(shown, truth[match])
        scores = score_blocks(model, model.tokenize(str(clip), TokenCount(tokens)), str(clip))
        stats = {k: browser.find_element("css selector", f'[data-stat="{k}"]').text for k in ("mean_tokens", "psnr")}
        assert float(stats["mean_tokens"]) == tokens
        assert float(stats["psnr"].split()[0]) == pytest.approx(scores.metrics["psnr"].mean(), abs=0.006)
    assert quality[max_tokens] > quality[16] + 1
    assert problems(browser) == []


def test_a_click_on_the_plot_seeks_both_videos(browser, page, model):
    open_page(browser, page)
    browser.find_element("css selector", "button.play").click()
    settled(browser)
    from selenium.webdriver.common.action_chains import ActionChains

    hit = browser.find_element("css selector", "svg.tokens-plot rect.hit")
    for fraction in (0.8, 0.1, 0.55):
        width = hit.rect["width"]
        ActionChains(browser).move_to_element_with_offset(hit, round((fraction - 0.5) * width), 0).click().perform()
        settled(browser)
        original, recon = browser.execute_script(f"return [{P}.original.currentTime, {P}.recon.currentTime]")
        frame = int(fraction * FRAMES)
        assert abs(original * 10 - (frame + 0.5)) <= 1 and abs(recon - original) < 1e-3
        current = browser.find_elements("css selector", "table.blocks tbody tr.current")
        fpb = model.config.frames_per_block
        assert [row.get_attribute("data-block") for row in current] == [str(int(original * 10) // fpb)]
    assert problems(browser) == []


def test_eval_section_draws_its_plots(browser, eval_report):
    open_page(browser, eval_report[2])
    assert len(browser.find_elements("css selector", "section.eval svg.plot")) == 2  # Fig. 4, rate-distortion
    assert len(browser.find_elements("css selector", "section.eval table.summary tbody tr")) == 1 + 2  # + models
    assert len(browser.find_elements("css selector", "button.model")) == 2  # ElasticTok, the baseline
    browser.find_element("css selector", 'button.model[data-key="b0"]').click()
    wait_for(browser, "return document.querySelector('[data-stat=mean_tokens]').textContent.endsWith('.0')")
    assert problems(browser) == []
