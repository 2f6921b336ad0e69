"""Segments (start, duration) of longer files as utterances, from a JSONL manifest: the units are byte-identical
to those of the same audio cut into files; a segment past the end of its file is named, or skipped and listed."""

import json

import numpy as np
import pytest
import soundfile
from conftest import speechlike

from speechvq import pipeline
from speechvq.config import CodebookConfig, DataConfig, EvaluateConfig, FeatureConfig, RunConfig
from speechvq.errors import AudioDecodeError, ManifestError
from speechvq.manifest import read_jsonl_manifest

# (file, start_s, duration_s) of each segment, in listing order; "long1" is at 8 kHz
SEGMENTS = [("long0", 0.0, 1.2), ("long0", 1.5, 0.9), ("long0", 2.5, 1.4), ("long1", 0.25, 1.0), ("long1", 1.5, 2.0)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two 4 s recordings, a JSONL manifest of their segments, and the same segments cut into files (named so
    that the folder lists them in the manifest's order)."""
    root = tmp_path_factory.mktemp("segments")
    (root / "long").mkdir()
    (root / "cut").mkdir()
    rates = {"long0": 16000, "long1": 8000}
    for seed, (name, rate) in enumerate(rates.items()):
        soundfile.write(root / "long" / f"{name}.wav", speechlike(4.0, rate, seed), rate, subtype="FLOAT")
    records = []
    for number, (name, start, duration) in enumerate(SEGMENTS):
        samples, rate = soundfile.read(root / "long" / f"{name}.wav", dtype="float32")
        first = round(start * rate)
        piece = samples[first : first + round(duration * rate)]
        soundfile.write(root / "cut" / f"seg{number}.wav", piece, rate, subtype="FLOAT")
        records.append({"id": f"seg{number}", "path": f"long/{name}.wav", "start": start, "duration": duration})
    (root / "segments.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def config(path, store="all", on_error="raise") -> RunConfig:
    return RunConfig(
        data=DataConfig(path=str(path), alignments=None, num_workers=0, on_error=on_error),
        features=FeatureConfig(store=store),
        codebook=CodebookConfig(codebook_size=6, n_init=1, max_iter=20),
        evaluate=EvaluateConfig(plot=False, resynthesize=1),
        device="cpu",
        stages=["features", "train", "quantize", "evaluate"],
    )


@pytest.mark.parametrize("store", ["all", "sample"])
def test_segments_give_the_units_of_the_cut_files(corpus, tmp_path, store):
    pipeline.run(config(corpus / "cut"), tmp_path / "cut")
    pipeline.run(config(corpus / "segments.jsonl", store), tmp_path / "segments")
    for name in ("train.km", "units.jsonl", "units_dedup.jsonl"):
        assert (tmp_path / "segments" / name).read_bytes() == (tmp_path / "cut" / name).read_bytes(), name
    fingerprints = [
        json.loads((tmp_path / run / "codebook.json").read_text())["fingerprint"] for run in ("cut", "segments")
    ]
    assert fingerprints[0] == fingerprints[1]  # the same centroids (the metadata names another source)
    cut, segments = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("cut", "segments"))
    assert segments["reconstruction"] == cut["reconstruction"]  # evaluate decoded the segments, not whole files
    # the manifest names the recording and the segment's length (a fairseq .tsv cannot hold a segment's start)
    rows = (tmp_path / "segments" / "train.tsv").read_text().splitlines()[1:]
    assert rows[1] == "long0.wav\t14400" and rows[3] == "long1.wav\t8000"


def test_a_segment_past_the_end_of_its_file_is_named_or_listed(corpus, tmp_path):
    records = (corpus / "segments.jsonl").read_text().splitlines()
    records.append(json.dumps({"id": "late", "path": "long/long1.wav", "start": 3.5, "duration": 1.0}))
    (tmp_path / "late.jsonl").write_text("\n".join(records) + "\n")
    for name in ("long0.wav", "long1.wav"):
        (tmp_path / "long").mkdir(exist_ok=True)
        (tmp_path / "long" / name).write_bytes((corpus / "long" / name).read_bytes())
    with pytest.raises(AudioDecodeError, match=r"long1.wav.*segment 3.5 s \+ 1 s ends past the end"):
        pipeline.run(config(tmp_path / "late.jsonl"), tmp_path / "raise")
    result = pipeline.run(config(tmp_path / "late.jsonl", on_error="skip"), tmp_path / "skip")
    assert result.counts == {"found": 6, "processed": 5, "skipped": 1}
    assert "late\t" in (tmp_path / "skip" / "errors.tsv").read_text()


def test_bad_segment_fields_are_manifest_errors_and_ids_default_to_file_and_start(tmp_path):
    (tmp_path / "ok.jsonl").write_text('{"path": "a/talk.wav", "start": 12.34, "duration": 2}\n')
    assert read_jsonl_manifest(tmp_path / "ok.jsonl")[0].utt_id == "a/talk-0012340"
    for bad in ('{"path": "x.wav", "start": -1, "duration": 2}', '{"path": "x.wav", "duration": 0}',
                '{"path": "x.wav", "start": "1", "duration": 2}'):  # fmt: skip
        (tmp_path / "bad.jsonl").write_text(bad + "\n")
        with pytest.raises(ManifestError, match=r"bad.jsonl:1: a segment needs start >= 0 and duration > 0"):
            read_jsonl_manifest(tmp_path / "bad.jsonl")


def test_a_whole_file_decodes_as_before(corpus):
    from speechvq.audio import load_waveform

    samples, _ = soundfile.read(corpus / "long" / "long0.wav", dtype="float32")
    np.testing.assert_array_equal(load_waveform(corpus / "long" / "long0.wav", 16000).numpy(), samples)
    part = load_waveform(corpus / "long" / "long0.wav", 16000, (1.5, 0.9)).numpy()
    np.testing.assert_array_equal(part, samples[24000:38400])
