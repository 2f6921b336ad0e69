"""features.store_dtype=float16: half the feature disk, and the same units from the CLI and the API, because both
assign the frames rounded to float16."""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile
import torch

from speechvq import load, pipeline
from speechvq.config import CodebookConfig, DataConfig, FeatureConfig, RunConfig
from speechvq.errors import CodebookMismatchError
from speechvq.featstore import FeatureStore


def config_for(dataset, store_dtype: str, **codebook) -> RunConfig:
    return RunConfig(
        data=DataConfig(path=str(dataset), alignments=None, num_workers=0),
        features=FeatureConfig(store_dtype=store_dtype),
        codebook=CodebookConfig(codebook_size=8, n_init=1, max_iter=10, **codebook),
        stages=["features", "train", "quantize"] if not codebook else ["features", "quantize"],
        device="cpu",
    )


def stored(run_dir: Path) -> dict[str, torch.Tensor]:
    return {m.utt_id: m.frames for m in FeatureStore(run_dir / "features").iter_utterances()}


def test_float16_store_halves_the_disk_and_the_api_assigns_the_stored_frames(dataset, tmp_path):
    pipeline.run(config_for(dataset, "float32"), tmp_path / "f32")
    pipeline.run(config_for(dataset, "float16"), tmp_path / "f16")
    sizes = {
        name: sum(p.stat().st_size for p in (tmp_path / name / "features").glob("part-*")) for name in ("f32", "f16")
    }
    assert 0.45 < sizes["f16"] / sizes["f32"] < 0.55, sizes
    full, half = stored(tmp_path / "f32"), stored(tmp_path / "f16")
    assert all(torch.equal(half[utt], full[utt].half().float()) for utt in full)  # the float32 frames, rounded
    assert any(not torch.equal(half[utt], full[utt]) for utt in full)
    encoder = load(tmp_path / "f16")
    root, *rows = (tmp_path / "f16" / "train.tsv").read_text().splitlines()
    units = (tmp_path / "f16" / "train.km").read_text().splitlines()
    for row, line in zip(rows, units):
        audio, rate = soundfile.read(Path(root) / row.split("\t")[0], dtype="float32")
        utt_id = row.split("\t")[0].rsplit(".", 1)[0]
        assert torch.equal(encoder.features(audio, rate), half[utt_id]), utt_id  # the API rounds as the store does
        assert encoder.encode(audio, rate).tolist() == [int(u) for u in line.split()], utt_id


def test_a_codebook_of_float32_frames_is_refused_on_float16_frames(dataset, tmp_path):
    pipeline.run(config_for(dataset, "float32"), tmp_path / "f32")
    with pytest.raises(CodebookMismatchError, match="store_dtype"):
        pipeline.run(config_for(dataset, "float16", path=str(tmp_path / "f32")), tmp_path / "f16")
