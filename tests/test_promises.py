"""The README's promises that no other test held to the letter: how audio is mixed and resampled, and what a rerun of
a finished run does (skips every stage, rewrites nothing)."""

from __future__ import annotations

import logging

import numpy as np
import soundfile
import torch
import torchaudio
from conftest import speechlike

from speechvq import pipeline
from speechvq.audio import load_waveform
from speechvq.config import CodebookConfig, DataConfig, EvaluateConfig, RobustnessConfig, RunConfig


def test_channels_are_averaged_and_the_audio_resampled_with_torchaudio(tmp_path):
    """'Audio is mixed to mono and resampled to features.sample_rate': the mean of the channels (not the first one),
    through torchaudio's windowed-sinc resampler at its defaults; a file already at the rate is left as decoded."""
    left, right = speechlike(0.5, 8000, 1), speechlike(0.5, 8000, 2)
    soundfile.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 8000, subtype="FLOAT")
    mono = torch.from_numpy((left + right) / 2)
    expected = torchaudio.functional.resample(mono, 8000, 16000)
    torch.testing.assert_close(load_waveform(tmp_path / "stereo.wav", 16000), expected, atol=1e-6, rtol=0)
    assert load_waveform(tmp_path / "stereo.wav", 8000).numpy().tobytes() == mono.numpy().tobytes()


def test_a_rerun_skips_every_finished_stage_and_rewrites_nothing(tmp_path, caplog):
    """'Run it again and the finished stages are skipped': the same command on the same folder logs each stage as
    done and leaves every output file as it was (same bytes, same modification time)."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for index in range(4):
        soundfile.write(corpus / f"u{index}.wav", speechlike(0.8 + 0.2 * index, 16000, index), 16000)
    config = RunConfig(
        data=DataConfig(path=str(corpus), alignments=None, num_workers=0),
        codebook=CodebookConfig(codebook_size=6, n_init=1, max_iter=10),
        evaluate=EvaluateConfig(plot=False, robustness=RobustnessConfig(num_files=0)),
        stages=["features", "train", "quantize", "evaluate"],
        device="cpu",
    )
    pipeline.run(config, tmp_path / "run")
    files = sorted(p for p in (tmp_path / "run").rglob("*") if p.is_file())
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}
    caplog.set_level(logging.INFO, logger="speechvq")
    pipeline.run(config, tmp_path / "run")
    for stage in ("features", "train", "quantize"):
        assert f"{stage}: already done" in caplog.text, stage
    changed = [str(p.relative_to(tmp_path)) for p in files if (p.read_bytes(), p.stat().st_mtime_ns) != before[p]]
    rewritten = [name for name in changed if not name.endswith(("metrics.json", "report.html"))]
    assert rewritten == [] and sorted(p for p in (tmp_path / "run").rglob("*") if p.is_file()) == files
