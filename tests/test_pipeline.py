import hashlib
import json
import math
from collections import Counter
from pathlib import Path

import pytest
import soundfile
import torch
from conftest import write_dataset

from speechvq import load, pipeline
from speechvq.audio import load_waveform
from speechvq.config import CodebookConfig, DataConfig, FeatureConfig, RunConfig
from speechvq.errors import AlignmentError, CodebookMismatchError, MissingArtifactError
from speechvq.features import build_extractor
from speechvq.stages.evaluate import _PhoneCounts


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
    # units.meta.json names the codebook and the SHA-256 of every unit file it describes (.km has no room for it).
    assert set(meta["files"]) == {"train.km", "units.jsonl", "units_dedup.jsonl"}
    for name, record in meta["files"].items():
        assert record["sha256"] == hashlib.sha256((run_dir / name).read_bytes()).hexdigest(), name
    assert not list(run_dir.rglob("*.tmp"))  # nothing half-written left behind


def test_same_seed_same_units_and_stage_subsets(dataset, tmp_path):
    pipeline.run(make_config(dataset), tmp_path / "one")
    pipeline.run(make_config(dataset, stages=["features", "train"]), tmp_path / "two")
    pipeline.run(make_config(dataset, stages=["quantize", "evaluate"]), tmp_path / "two")
    for name in ("train.km", "codebook.safetensors", "units.jsonl"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_reuse_codebook_on_another_dataset(dataset, tmp_path):
    pipeline.run(make_config(dataset), tmp_path / "train")
    other = tmp_path / "other"
    write_dataset(other, rates=(8000, 16000, 16000, 48000), durations=(1.7, 0.45, 2.2, 0.9))
    config = make_config(other, stages=["features", "train", "quantize", "evaluate"])
    config.codebook.path = str(tmp_path / "train")
    pipeline.run(config, tmp_path / "apply")
    assert not (tmp_path / "apply" / "codebook.safetensors").exists()  # applied, not retrained
    codebook = json.loads((tmp_path / "train" / "codebook.json").read_text())
    meta = json.loads((tmp_path / "apply" / "units.meta.json").read_text())
    assert meta["codebook_fingerprint"] == codebook["fingerprint"] and meta["num_utterances"] == 4
    # Each unit is the float64 nearest codeword of that file's own features.
    centroids = load(tmp_path / "train").codebook.centroids.double()
    extractor = build_extractor(FeatureConfig())
    tsv = (tmp_path / "apply" / "train.tsv").read_text().splitlines()
    km = (tmp_path / "apply" / "train.km").read_text().splitlines()
    assert len(km) == len(tsv) - 1 == 4
    for line, units in zip(tsv[1:], km):
        frames = extractor(load_waveform(Path(tsv[0]) / line.split("\t")[0], 16000)).double()
        expected = torch.cdist(frames, centroids).argmin(1).tolist()
        assert [int(u) for u in units.split()] == expected


def test_evaluate_with_alignments_end_to_end(dataset, tmp_path):
    run_dir = tmp_path / "run"
    pipeline.run(make_config(dataset, stages=["features", "train", "quantize"]), run_dir)
    records = [json.loads(x) for x in (run_dir / "units.jsonl").read_text().splitlines()]
    # Labels that depend on the unit and on time, so units predict phones only in part (both purities < 1 and
    # different from each other); one utterance is left unaligned.
    labels = {r["id"]: [f"p{(u * 7 + t // 15) % 5}" for t, u in enumerate(r["units"])] for r in records[:-1]}
    tsv = tmp_path / "align.tsv"
    tsv.write_text("".join(f"{k}\t{' '.join(v)}\n" for k, v in labels.items()))
    config = make_config(dataset, stages=["evaluate"])
    config.data.alignments = str(tsv)
    pipeline.run(config, run_dir)
    got = json.loads((run_dir / "metrics.json").read_text())["alignment"]
    aligned = records[:-1]
    expected = _hand_scores(aligned, labels)
    assert got["num_utterances"] == len(records) - 1 and got["num_frames"] == expected["num_frames"]
    for key in ("pnmi", "phone_purity", "cluster_purity"):
        assert got[key] == pytest.approx(expected[key], rel=1e-9)
    assert abs(expected["phone_purity"] - expected["cluster_purity"]) > 0.02
    # The ids come from two folders (a/, b/): each gets its own scores, over its own utterances only.
    assert set(got["groups"]) == {"a", "b"}
    for group in ("a", "b"):
        subset = [r for r in aligned if r["id"].startswith(group + "/")]
        mine = _hand_scores(subset, labels)
        assert got["groups"][group]["num_frames"] == mine["num_frames"]
        for key in ("pnmi", "phone_purity", "cluster_purity"):
            assert got["groups"][group][key] == pytest.approx(mine[key], rel=1e-9)
    assert got["groups"]["a"]["pnmi"] != pytest.approx(got["pnmi"])
    # Labels that do not cover the units (beyond the tolerance) are refused, naming the utterance.
    first = records[0]
    tsv.write_text(f"{first['id']}\t{' '.join(labels[first['id']][:-5])}\n")
    with pytest.raises(AlignmentError, match=first["id"]):
        pipeline.run(config, run_dir)


def _paired(counts: _PhoneCounts) -> tuple[list[str], list[int]]:
    names = sorted(counts.phones, key=counts.phones.get)
    phone_ids, units = counts.pairs[0]
    return [names[i] for i in phone_ids.tolist()], units.tolist()


def test_units_coarser_than_labels_are_scored_on_every_label_frame_as_fairseq_does():
    """50 Hz units against 100 Hz phones: fairseq's measure_teacher_quality.py (--upsample 2) repeats each unit
    over its two label frames and trims to the shorter sequence, so every label frame counts once (not every other
    one). Labels coarser than units: each unit frame with the label at its time."""
    units = torch.tensor([3, 1, 4, 1, 5])
    labels = [f"p{i}" for i in range(11)]  # one label frame past the units: trimmed, as fairseq's min_len does
    finer_labels = _PhoneCounts(ratio=2.0, tolerance_frames=1)
    finer_labels.add("u", units, labels)
    assert _paired(finer_labels) == (labels[:10], [3, 3, 1, 1, 4, 4, 1, 1, 5, 5])
    coarser_labels = _PhoneCounts(ratio=0.5, tolerance_frames=1)
    coarser_labels.add("u", units, ["a", "b", "c"])
    assert _paired(coarser_labels) == (["a", "a", "b", "b", "c"], [3, 1, 4, 1, 5])
    same_rate = _PhoneCounts(ratio=1.0, tolerance_frames=1)
    same_rate.add("u", units, labels[:5])
    assert _paired(same_rate) == (labels[:5], units.tolist())
    with pytest.raises(AlignmentError, match="a/u7: 5 labels cover 2 unit frames, but there are 5"):
        finer_labels.add("a/u7", units, labels[:5])


def _hand_scores(records: list[dict], labels: dict[str, list[str]]) -> dict:
    """PNMI and both purities written out from their definitions, over (phone, unit) frame pairs."""
    joint = Counter((p, u) for r in records for p, u in zip(labels[r["id"]], r["units"]))
    n = sum(joint.values())
    phones, units = Counter(), Counter()
    for (p, u), c in joint.items():
        phones[p] += c
        units[u] += c
    mi = sum(c / n * math.log(c * n / (phones[p] * units[u])) for (p, u), c in joint.items())
    h = -sum(c / n * math.log(c / n) for c in phones.values())
    return {
        "num_frames": n,
        "pnmi": mi / h,
        "phone_purity": sum(max(c for (p, u2), c in joint.items() if u2 == u) for u in units) / n,
        "cluster_purity": sum(max(c for (p2, u), c in joint.items() if p2 == p) for p in phones) / n,
    }


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
