"""features.store: all (every frame on disk), sample (only k-means' training sample; quantize and evaluate take
their frames from the audio) and none (quantize from the audio with a given codebook). Whatever is stored, the
same codebook gives the same units, manifest, error list and metrics; sample stores no more than the sample."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import speechlike

from speechvq import pipeline
from speechvq.config import CodebookConfig, DataConfig, EvaluateConfig, FeatureConfig, RunConfig
from speechvq.errors import ConfigError
from speechvq.stages import quantize as quantize_stage

UNIT_FILES = ("train.km", "units.jsonl", "units_dedup.jsonl", "train.tsv", "errors.tsv", "dict.km.txt")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """40 files of 0.4-2.4 s at two rates; u007 decodes to NaN (fails at decoding), u023 is empty (fails at the
    header check)."""
    root = tmp_path_factory.mktemp("store") / "corpus"
    rng = np.random.default_rng(3)
    for index in range(40):
        sub = root / ("a" if index % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        rate = 8000 if index % 5 == 0 else 16000
        samples = speechlike(float(rng.uniform(0.4, 2.4)), rate, index)
        if index == 7:
            samples[50] = np.nan
        soundfile.write(sub / f"u{index:03d}.wav", samples, rate, subtype="FLOAT")
    (root / "a" / "u023.wav").write_bytes(b"")
    return root


def config(corpus, store="all", workers=0, **codebook) -> RunConfig:
    return RunConfig(
        data=DataConfig(path=str(corpus), alignments=None, num_workers=workers, on_error="skip", batch_seconds=3,
                        part_mb=0.02),  # fmt: skip
        features=FeatureConfig(store=store),
        codebook=CodebookConfig(**{"codebook_size": 12, "n_init": 1, "max_iter": 15, **codebook}),
        evaluate=EvaluateConfig(plot=False, resynthesize=0),
        device="cpu",
        stages=["features", "train", "quantize", "evaluate"],
    )


@pytest.fixture(scope="module")
def stored_all(corpus, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("all") / "run"
    pipeline.run(config(corpus), run)
    return run


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_all_stores_every_frame_and_lists_both_failures(stored_all):
    """The reference the other modes are held to: several parts, both kinds of failure listed."""
    index = json.loads((stored_all / "features/index.json").read_text())
    assert index["num_parts"] > 3
    errors = (stored_all / "errors.tsv").read_text()
    assert "a/u023" in errors and "a/u007" in errors
    assert metrics(stored_all)["counts"] == {"found": 40, "processed": 38, "skipped": 2}


@pytest.mark.parametrize("workers", [0, 2])
def test_none_with_the_same_codebook_gives_identical_outputs(corpus, stored_all, tmp_path, workers):
    """store=none quantizes from the audio in one pass (extracted in the decoding workers with workers=2): every
    unit file, the manifest and errors.tsv byte-identical to store=all's, the metrics equal, and no features."""
    cfg = config(corpus, "none", workers)
    cfg.codebook.path = str(stored_all)
    result = pipeline.run(cfg, tmp_path / "none")
    for name in UNIT_FILES:
        assert (tmp_path / "none" / name).read_bytes() == (stored_all / name).read_bytes(), name
    assert metrics(tmp_path / "none") == metrics(stored_all)
    assert result.counts == {"found": 40, "processed": 38, "skipped": 2}
    assert not (tmp_path / "none" / "features").exists()


def test_sample_covering_the_corpus_gives_the_codebook_and_units_of_all(corpus, stored_all, tmp_path):
    """With max_train_frames above the corpus, the sample is every file: the same frames in the same order, so
    the same codebook, and the units (from the audio) equal store=all's."""
    pipeline.run(config(corpus, "sample"), tmp_path / "sample")
    for name in (*UNIT_FILES, "codebook.safetensors"):
        assert (tmp_path / "sample" / name).read_bytes() == (stored_all / name).read_bytes(), name
    assert metrics(tmp_path / "sample") == metrics(stored_all)


def stored_ids(run: Path) -> list[str]:
    return [row[0] for row in json.loads((run / "features/index.json").read_text())["utterances"]]


def test_sample_stores_at_most_max_train_frames_whatever_the_sharding(corpus, tmp_path):
    """A 1,000-frame sample of a ~5,500-frame corpus: at most 1,000 frames stored, within one file of it; the same
    files for the same seed, other files for another seed; and 3 shards store between them exactly the files the
    unsharded run stores (the sample is drawn before sharding)."""
    def features_only(name, seed=0, **data):
        cfg = config(corpus, "sample", max_train_frames=1000)
        cfg.seed, cfg.stages = seed, ["features"]
        cfg.data.num_shards, cfg.data.shard_index = data.get("num_shards", 1), data.get("shard_index", 0)
        pipeline.run(cfg, tmp_path / name)
        return json.loads((tmp_path / name / "features/index.json").read_text())

    whole = features_only("whole")
    assert 1000 - 250 < whole["num_frames"] <= 1000  # the longest file has 240 frames
    again = features_only("again")
    features_only("other", seed=1)
    assert stored_ids(tmp_path / "again") == stored_ids(tmp_path / "whole")
    assert set(stored_ids(tmp_path / "other")) != set(stored_ids(tmp_path / "whole"))
    assert again["num_frames"] == whole["num_frames"]
    shards = [features_only(f"shard{r}", num_shards=3, shard_index=r) for r in range(3)]
    assert [i for r in range(3) for i in stored_ids(tmp_path / f"shard{r}")] == stored_ids(tmp_path / "whole")
    assert sum(s["num_frames"] for s in shards) == whole["num_frames"]


def test_sample_then_units_of_the_whole_corpus(corpus, tmp_path):
    """A small sample trains the codebook; quantize still gives units for every file, equal to what store=all
    makes with that codebook."""
    result = pipeline.run(config(corpus, "sample", max_train_frames=1500), tmp_path / "sample")
    codebook = json.loads((tmp_path / "sample" / "codebook.json").read_text())
    assert codebook["training"]["num_available_frames"] <= 1500
    assert result.counts == {"found": 40, "processed": 38, "skipped": 2}
    cfg = config(corpus)
    cfg.codebook.path = str(tmp_path / "sample")
    pipeline.run(cfg, tmp_path / "all")
    for name in UNIT_FILES:
        assert (tmp_path / "sample" / name).read_bytes() == (tmp_path / "all" / name).read_bytes(), name
    assert metrics(tmp_path / "sample") == metrics(tmp_path / "all")


class Interrupted(Exception):
    pass


def test_streaming_quantize_resumes_without_decoding_the_done_parts(corpus, stored_all, tmp_path, monkeypatch):
    """A crash after some parts are committed: the rerun decodes only the parts not done and the outputs equal an
    uninterrupted run's."""
    cfg = config(corpus, "none")
    cfg.codebook.path, cfg.stages = str(stored_all), ["features", "quantize"]
    original, todos = quantize_stage._write_listing_part, []

    def crash_on_the_fourth(parts_dir, part):
        original(parts_dir, part)
        if part.number == 3:
            raise Interrupted

    monkeypatch.setattr(quantize_stage, "_write_listing_part", crash_on_the_fourth)
    with pytest.raises(Interrupted):
        pipeline.run(cfg, tmp_path / "run")
    monkeypatch.setattr(quantize_stage, "_write_listing_part", original)
    sources = quantize_stage.frame_source

    def recording(*args):
        source = sources(*args)
        iter_parts = source.iter_parts
        source.iter_parts = lambda todo: (todos.append(list(todo)), iter_parts(todo))[1]
        return source

    monkeypatch.setattr(quantize_stage, "frame_source", recording)
    pipeline.run(cfg, tmp_path / "run")
    assert todos and todos[0][0] == 3 and 0 not in todos[0]  # parts 0-2 were done; 3 was not committed
    for name in UNIT_FILES:
        assert (tmp_path / "run" / name).read_bytes() == (stored_all / name).read_bytes(), name


def test_float16_store_is_rounded_alike_from_the_audio(corpus, tmp_path):
    """store_dtype=float16 with store=none rounds the frames from the audio as the store would: the units and the
    metrics (distortions of the frames themselves) equal those of a float16 store=all run with the same codebook."""
    half = config(corpus)
    half.features.store_dtype = "float16"
    pipeline.run(half, tmp_path / "all16")
    none = config(corpus, "none")
    none.features.store_dtype, none.stages = "float16", ["features", "quantize", "evaluate"]
    none.codebook.path = str(tmp_path / "all16")
    pipeline.run(none, tmp_path / "none16")
    for name in UNIT_FILES:
        assert (tmp_path / "none16" / name).read_bytes() == (tmp_path / "all16" / name).read_bytes(), name
    # labels rarely change with the rounding (K=12 here): the distortion of the frames shows it was done alike
    assert metrics(tmp_path / "none16") == metrics(tmp_path / "all16")


def test_none_without_a_codebook_is_refused_before_work(corpus, tmp_path):
    with pytest.raises(ConfigError, match="features.store"):
        pipeline.run(config(corpus, "none"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_crash_between_the_final_joins_resumes_to_the_same_files(corpus, stored_all, tmp_path, monkeypatch):
    """Each unit file's parts are dropped once it is joined (so the files are on disk once, not twice): a crash
    after the first join must neither join again from parts already dropped nor lose that file."""
    cfg = config(corpus, "none")
    cfg.codebook.path, cfg.stages = str(stored_all), ["features", "quantize"]
    original, calls = quantize_stage._concatenate, []

    def crash_on_the_second_join(out, parts, head=""):
        calls.append(out.name)
        if len(calls) == 2:
            raise Interrupted
        original(out, parts, head)

    monkeypatch.setattr(quantize_stage, "_concatenate", crash_on_the_second_join)
    with pytest.raises(Interrupted):
        pipeline.run(cfg, tmp_path / "run")
    assert not list((tmp_path / "run" / ".speechvq" / "units").glob(f"*.{calls[0]}"))  # its parts were dropped
    monkeypatch.setattr(quantize_stage, "_concatenate", original)
    pipeline.run(cfg, tmp_path / "run")
    for name in UNIT_FILES:
        assert (tmp_path / "run" / name).read_bytes() == (stored_all / name).read_bytes(), name
