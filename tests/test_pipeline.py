import json

import pytest
import soundfile
import torch

from speechvq import load, pipeline
from speechvq.config import CodebookConfig, DataConfig, FeatureConfig, RunConfig
from speechvq.errors import CodebookMismatchError, MissingArtifactError


def make_config(path, **overrides) -> RunConfig:
    config = RunConfig(
        data=DataConfig(path=str(path), alignments=None, num_workers=0),
        codebook=CodebookConfig(codebook_size=8, n_init=1, max_iter=20),
        device="cpu",
    )
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def kaldi_frames(path, rate=16000):
    info = soundfile.info(str(path))
    num_samples = round(info.frames * rate / info.samplerate)  # torchaudio's resampler output length
    return 1 + (num_samples - 400) // 160


def test_end_to_end_outputs(dataset, tmp_path):
    run_dir = tmp_path / "run"
    result = pipeline.run(make_config(dataset), run_dir)
    tsv = (run_dir / "train.tsv").read_text().splitlines()
    km = (run_dir / "train.km").read_text().splitlines()
    assert len(km) == len(tsv) - 1 == 6  # one line per manifest utterance
    root = tsv[0]
    for line, units in zip(tsv[1:], km):
        rel, num_samples = line.split("\t")
        path = f"{root}/{rel}"
        assert int(num_samples) == soundfile.info(path).frames
        values = [int(u) for u in units.split()]
        assert len(values) == kaldi_frames(path)  # 100 Hz frames of the 16 kHz audio
        assert all(0 <= v < 8 for v in values)
    assert (run_dir / "dict.km.txt").read_text().splitlines() == [f"{u} 1" for u in range(8)]
    records = [json.loads(x) for x in (run_dir / "units.jsonl").read_text().splitlines()]
    assert [r["units"] for r in records] == [[int(u) for u in line.split()] for line in km]
    assert all(r["num_frames"] == len(r["units"]) and r["frame_rate_hz"] == 100.0 for r in records)
    dedup = [json.loads(x) for x in (run_dir / "units_dedup.jsonl").read_text().splitlines()]
    for full, short in zip(records, dedup):
        expanded = [u for u, d in zip(short["units"], short["durations"]) for _ in range(d)]
        assert expanded == full["units"]
        assert all(a != b for a, b in zip(short["units"], short["units"][1:]))
    meta = json.loads((run_dir / "units.meta.json").read_text())
    codebook_meta = json.loads((run_dir / "codebook.json").read_text())
    assert meta["codebook_fingerprint"] == codebook_meta["fingerprint"] == result.metrics["codebook_fingerprint"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["num_frames"] == sum(len(r["units"]) for r in records)
    assert 0 < metrics["relative_mse"] < 1 and metrics["codebook_size"] == 8
    assert (run_dir / "codebook_usage.png").read_bytes()[:4] == b"\x89PNG"
    assert codebook_meta["training"]["num_train_frames"] == metrics["num_frames"]
    assert not list(run_dir.rglob("*.tmp"))  # nothing half-written left behind


def test_same_seed_same_units_and_stage_subsets(dataset, tmp_path):
    pipeline.run(make_config(dataset), tmp_path / "one")
    pipeline.run(make_config(dataset, stages=["features", "train"]), tmp_path / "two")
    pipeline.run(make_config(dataset, stages=["quantize", "evaluate"]), tmp_path / "two")
    for name in ("train.km", "codebook.safetensors", "units.jsonl"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_reuse_codebook_on_another_dataset(dataset, tmp_path):
    pipeline.run(make_config(dataset), tmp_path / "train")
    config = make_config(dataset, stages=["features", "train", "quantize", "evaluate"])
    config.codebook.path = str(tmp_path / "train")
    pipeline.run(config, tmp_path / "apply")
    assert not (tmp_path / "apply" / "codebook.safetensors").exists()
    assert (tmp_path / "apply" / "train.km").read_text() == (tmp_path / "train" / "train.km").read_text()


def test_feature_mismatch_with_reused_codebook_is_refused(dataset, tmp_path):
    pipeline.run(make_config(dataset), tmp_path / "train")
    config = make_config(
        dataset, features=FeatureConfig(name="fbank", num_mel_bins=39, deltas=False), stages=["features", "quantize"]
    )
    config.codebook.path = str(tmp_path / "train")
    with pytest.raises(CodebookMismatchError, match="feature config"):
        pipeline.run(config, tmp_path / "apply")


def test_stage_without_its_inputs_says_what_is_missing(dataset, tmp_path):
    with pytest.raises(MissingArtifactError, match="index.json"):
        pipeline.run(make_config(dataset, stages=["train"]), tmp_path / "empty")


def test_global_normalization_is_stored_and_applied(dataset, tmp_path):
    config = make_config(dataset, features=FeatureConfig(normalize="global"))
    pipeline.run(config, tmp_path / "run")
    encoder = load(tmp_path / "run")
    assert encoder.codebook.feature_mean is not None
    audio, rate = soundfile.read(str(dataset / "b/utt0.wav"), dtype="float32")
    line = (tmp_path / "run" / "train.km").read_text().splitlines()[3]  # b/utt0 is 4th in sorted order
    assert encoder.encode(audio, rate).tolist() == [int(u) for u in line.split()]
    feats = encoder.features(audio, rate)
    assert feats.shape[1] == 39 and abs(float(feats.mean())) < 1.0


def test_encoder_matches_pipeline_units_and_works_in_dataloader_workers(dataset, tmp_path):
    pipeline.run(make_config(dataset), tmp_path / "run")
    encoder = load(tmp_path / "run")
    tsv = (tmp_path / "run" / "train.tsv").read_text().splitlines()
    km = (tmp_path / "run" / "train.km").read_text().splitlines()
    paths = [f"{tsv[0]}/{line.split(chr(9))[0]}" for line in tsv[1:]]

    class Tokenize(torch.utils.data.Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, i):
            audio, rate = soundfile.read(paths[i], dtype="float32")
            return encoder.encode(torch.from_numpy(audio), rate)

    loader = torch.utils.data.DataLoader(Tokenize(), batch_size=None, num_workers=2)
    for units, line in zip(loader, km):
        assert units.tolist() == [int(u) for u in line.split()]
