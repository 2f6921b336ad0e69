"""report.html rendered by a real browser: headless Chromium (Debian package, installed by
scripts/install_chromium.sh when missing) loads the page, and every section, image and audio player is there."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from conftest import REPO

from speechvq import pipeline
from speechvq.config import CodebookConfig, DataConfig, EvaluateConfig, RobustnessConfig, RunConfig

SECTIONS = ("summary", "usage", "phones", "abx", "robustness", "training", "listening")


def chromium() -> str:
    if shutil.which("chromium") is None:
        done = subprocess.run([str(REPO / "scripts" / "install_chromium.sh")], capture_output=True, text=True)
        if done.returncode != 0 or shutil.which("chromium") is None:
            pytest.skip(f"headless Chromium could not be installed: {done.stderr.strip()[-500:]}")
    return shutil.which("chromium")


def render(browser: str, page, *extra: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=5000"]
    command = [browser, *flags, *extra, f"file://{page}"]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_report_renders_in_chromium_with_every_section_image_and_player(dataset, tmp_path):
    run_dir = tmp_path / "run"
    config = RunConfig(data=DataConfig(path=str(dataset), alignments=None, num_workers=0),
                       codebook=CodebookConfig(codebook_size=8, n_init=1, max_iter=10),
                       evaluate=EvaluateConfig(resynthesize=2, robustness=RobustnessConfig(num_files=3)),
                       stages=["features", "train", "quantize"], device="cpu")  # fmt: skip
    pipeline.run(config, run_dir)
    records = [json.loads(line) for line in (run_dir / "units.jsonl").read_text().splitlines()]
    labels = {r["id"]: " ".join(f"p{(t // 6) % 5}" for t in range(r["num_frames"])) for r in records}
    (tmp_path / "align.tsv").write_text("".join(f"{utt}\t{line}\n" for utt, line in labels.items()))
    (tmp_path / "speakers.tsv").write_text("".join(f"{r['id']}\t{r['id'].split('/')[0]}\n" for r in records))
    config.data.alignments, config.data.speakers = str(tmp_path / "align.tsv"), str(tmp_path / "speakers.tsv")
    config.stages = ["evaluate"]
    result = pipeline.run(config, run_dir)
    assert result.report == run_dir / "report.html"
    page = result.report.read_text()
    assert "http://" not in page and "https://" not in page and "<script src" not in page  # self-contained
    images, players = page.count("<img "), page.count("<audio ")
    assert images == 2 and players == 4  # usage + phones; 2 files x (original, from units)

    browser = chromium()
    done = render(browser, result.report, "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    for section in SECTIONS:
        assert f'<section id="{section}">' in dom, section
    assert re.search(r'data-images-loaded="(\d+)"', dom).group(1) == str(images)
    assert re.search(r'data-audio-loaded="(\d+)"', dom).group(1) == str(players)
    assert "ABX" in dom and "noise_10db" in dom and "within speaker" in dom
    shot = tmp_path / "report.png"
    done = render(browser, result.report, "--window-size=1000,1800", f"--screenshot={shot}")
    assert done.returncode == 0 and shot.stat().st_size > 10_000
