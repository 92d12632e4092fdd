"""``elastictok eval``'s report folder appears whole or not at all, and an impossible one is refused
before the work (real runs of the micro model on real media)."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time

import pytest

from elastictok.cli.main import main
from elastictok.errors import ElasticTokError
from elastictok.evaluation.measurement import EvalRun, evaluate_models, write_report
from elastictok.evaluation.report import make_report
from elastictok.tokenization.targets import parse_target

FILES = {"report.json", "summary.md", "fig4_share_vs_bits.png", "rate_distortion.png"}


@pytest.fixture
def model_dir(micro, tmp_path) -> str:
    micro.save_pretrained(tmp_path / "micro")
    return str(tmp_path / "micro")


def eval_args(inputs: list, model: str, out) -> list[str]:
    return ["eval", *map(str, inputs), "--model", model, "--baseline", model, "--thresholds", "mse:0.1",
            "--fractions", "0.5,1", "--out", str(out), "--no-progress"]


def run_cli(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "elastictok.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kwargs)


def test_a_whole_report_lands_beside_other_files(model_dir, photo_folder, tmp_path, capsys):
    out = tmp_path / "ev"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(eval_args([photo_folder / "photo0.jpg", photo_folder / "pan.mp4"], model_dir, out)) == 0
    assert set(os.listdir(out)) == FILES | {"tokens_over_time_pan.png", "notes.txt"}  # no temporary left
    assert (out / "notes.txt").read_text() == "mine"
    assert f"wrote {out / 'report.json'}" in capsys.readouterr().out


def test_videos_that_share_a_name_get_a_plot_each(model_dir, photo_folder, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "pan.mp4").write_bytes((photo_folder / "pan.mp4").read_bytes())
    out = tmp_path / "ev"
    assert main(eval_args([tmp_path / "a" / "pan.mp4", tmp_path / "b" / "pan.mp4"], model_dir, out)) == 0
    assert set(os.listdir(out)) == FILES | {"tokens_over_time_a_pan.png", "tokens_over_time_b_pan.png"}


@pytest.mark.parametrize("name", ["rate_distortion.png", "tokens_over_time_pan.png"])
def test_a_folder_in_the_way_is_refused_before_the_work(name, model_dir, photo_folder, tmp_path, capsys):
    out = tmp_path / "ev"
    (out / name).mkdir(parents=True)
    inputs = [photo_folder / "photo0.jpg", photo_folder / "pan.mp4"]
    assert main(eval_args(inputs, model_dir, out)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out / name}: is a directory") and err.count("\n") == 1
    assert os.listdir(out) == [name]
    # before loading a model: a missing one is not even looked at
    assert main(eval_args(inputs, str(tmp_path / "no-such-model"), out)) == 2
    assert f"{out / name}: is a directory" in capsys.readouterr().err


def test_a_file_where_the_folder_should_be_is_refused_before_the_work(photo_folder, tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    out = tmp_path / "taken" / "ev"
    assert main(eval_args([photo_folder / "photo0.jpg"], str(tmp_path / "no-such-model"), out)) == 2
    assert "is a file" in capsys.readouterr().err
    assert (tmp_path / "taken").read_text() == "a file"


def test_write_report_leaves_nothing_when_a_file_cannot_be_written(micro, photo_folder, tmp_path):
    report = evaluate_models(micro, [micro], [str(photo_folder / "photo0.jpg")], [parse_target("mse:0.1")],
                             EvalRun(fractions=(0.5, 1.0), progress=False))
    out = tmp_path / "ev"
    (out / "summary.md").mkdir(parents=True)
    with pytest.raises(ElasticTokError, match="summary.md: is a directory"):
        write_report(dict(report), out)
    assert os.listdir(out) == ["summary.md"]
    (out / "summary.md").rmdir()
    assert {f.name for f in write_report(report, out / "new" / "deeper")} == FILES
    assert set(os.listdir(out / "new" / "deeper")) == FILES


def _small_disk():
    """In the child: files may not grow past 20 kB (the plots are larger), a full disk for the report."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))


def test_a_full_disk_leaves_no_report(model_dir, photo_folder, tmp_path):
    out = tmp_path / "parent" / "ev"
    proc = run_cli(eval_args([photo_folder / "photo0.jpg"], model_dir, out), preexec_fn=_small_disk)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    assert err.strip().splitlines()[-1] == f"error: {out}: cannot write the report (File too large)"
    assert not (tmp_path / "parent").exists()  # the folders made for the report went with it


@pytest.mark.parametrize("signum, existing", [(signal.SIGINT, False), (signal.SIGTERM, True)])
def test_an_interrupt_while_writing_leaves_no_report(signum, existing, model_dir, photo_folder, tmp_path):
    out = tmp_path / "ev"
    if existing:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    proc = run_cli(eval_args([photo_folder / "photo0.jpg", photo_folder / "pan.mp4"], model_dir, out))
    deadline = time.monotonic() + 300
    while not any(out.rglob("report.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signum)  # the first file is written, the plots are not
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted"
    if existing:
        assert os.listdir(out) == ["notes.txt"]
    else:
        assert not out.exists()


def test_ctrl_c_among_the_final_renames_leaves_the_new_report_whole(micro, photo_folder, tmp_path, monkeypatch):
    from elastictok.evaluation import measurement

    report = evaluate_models(micro, [micro], [str(photo_folder / "photo0.jpg")], [parse_target("mse:0.1")],
                             EvalRun(fractions=(0.5, 1.0), progress=False))
    out = tmp_path / "ev"
    write_report(dict(report), out)
    old = {name: (out / name).read_bytes() for name in FILES}
    report["note"] = "the second report"  # so that the new report.json differs from the old one
    replace = os.replace

    def ctrl_c_during_first_rename(src, dst):
        if not ctrl_c_during_first_rename.sent:
            ctrl_c_during_first_rename.sent = True
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, landing among the renames
        replace(src, dst)

    ctrl_c_during_first_rename.sent = False
    monkeypatch.setattr(measurement.os, "replace", ctrl_c_during_first_rename)
    with pytest.raises(KeyboardInterrupt):
        write_report(report, out)
    assert set(os.listdir(out)) == FILES  # all of the new report, no temporary
    assert (out / "report.json").read_bytes() != old["report.json"]


def test_report_refuses_a_folder_before_the_work(micro, photo_folder, tmp_path):
    page = tmp_path / "page.html"
    page.mkdir()
    with pytest.raises(ElasticTokError, match="is a directory; name a file such as .*report.html"):
        make_report(micro, [str(photo_folder / "photo0.jpg")], page, "mse:0.1")
    assert os.listdir(page) == []


def test_report_refuses_its_output_before_loading_a_model(photo_folder, tmp_path, capsys):
    page = tmp_path / "page.html"
    page.mkdir()
    photo = str(photo_folder / "photo0.jpg")
    assert main(["report", photo, "--model", str(tmp_path / "no-such-model"), "-o", str(page)]) == 2
    assert "is a directory; name a file such as" in capsys.readouterr().err
    assert main(["report", photo, "--model", str(tmp_path / "no-such-model"), "-o", str(tmp_path / "page.txt")]) == 2
    assert "name it .html" in capsys.readouterr().err
