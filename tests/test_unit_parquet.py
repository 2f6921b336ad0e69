"""units.parquet (quantize.parquet=true): the rows are units.jsonl's and units_dedup.jsonl's, in order, the codebook
fingerprint is in the file's metadata, and datasets, pandas and polars all read it; shards merge into the single
run's file; a crash mid-quantize resumes to the same file; without pyarrow the setting is refused up front."""

import json
import sys

import pyarrow.parquet as pq
import pytest
import torch

from speechvq import pipeline, unit_parquet
from speechvq.config import CodebookConfig, DataConfig, MergeConfig, QuantizeConfig, RunConfig
from speechvq.errors import ConfigError
from speechvq.featstore import StoredUtterance


def config(path, **data) -> RunConfig:
    return RunConfig(
        data=DataConfig(path=str(path), alignments=None, num_workers=0, part_mb=0.002, batch_seconds=0.5, **data),
        codebook=CodebookConfig(codebook_size=8, n_init=1, max_iter=20),
        quantize=QuantizeConfig(parquet=True),
        device="cpu",
        stages=["features", "train", "quantize"],
    )


def jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def single(dataset, tmp_path):
    pipeline.run(config(dataset), tmp_path / "single")
    return tmp_path / "single"


def test_rows_equal_the_jsonl_and_the_metadata_names_the_codebook(single):
    table = pq.read_table(single / "units.parquet")
    units, dedup = jsonl(single / "units.jsonl"), jsonl(single / "units_dedup.jsonl")
    assert table.column("id").to_pylist() == [r["id"] for r in units]
    assert table.column("units").to_pylist() == [r["units"] for r in units]
    assert table.column("num_frames").to_pylist() == [r["num_frames"] for r in units]
    assert table.column("units_dedup").to_pylist() == [r["units"] for r in dedup]
    assert table.column("durations").to_pylist() == [r["durations"] for r in dedup]
    meta = json.loads((single / "units.meta.json").read_text())
    assert table.schema.metadata[b"codebook_fingerprint"].decode() == meta["codebook_fingerprint"]
    described = json.loads(table.schema.metadata[b"speechvq"])
    assert described["frame_rate_hz"] == 100.0 and described["codebook_size"] == 8
    assert fileio_sha(single / "units.parquet") == meta["files"]["units.parquet"]["sha256"]


def fileio_sha(path):
    from speechvq.fileio import sha256_file

    return sha256_file(path)


def test_datasets_pandas_and_polars_read_it(single):
    import datasets
    import pandas
    import polars

    expected = [r["units"] for r in jsonl(single / "units.jsonl")]
    loaded = datasets.load_dataset("parquet", data_files=str(single / "units.parquet"), split="train")
    assert loaded["units"] == expected
    assert pandas.read_parquet(single / "units.parquet")["units"].map(list).tolist() == expected
    assert polars.read_parquet(single / "units.parquet")["units"].to_list() == expected


def test_several_codebooks_give_one_list_per_codebook(tmp_path):
    units = torch.tensor([[1, 5], [1, 5], [2, 5], [2, 6]])
    entries = [StoredUtterance("a", 3, 0, 0), StoredUtterance("b", 1, 0, 3)]
    unit_parquet.write_part(tmp_path / "p.parquet", entries, units, dedup=True)
    rows = pq.read_table(tmp_path / "p.parquet").to_pylist()
    assert rows[0]["units"] == [[1, 1, 2], [5, 5, 5]] and rows[1]["units"] == [[2], [6]]
    assert rows[0]["units_dedup"] == [[1, 2], [5, 5]] and rows[0]["durations"] == [2, 1]


def test_shards_merge_into_the_single_runs_file(dataset, tmp_path, single):
    for index in range(3):
        cfg = config(dataset, num_shards=3, shard_index=index)
        cfg.codebook.path, cfg.stages = str(single), ["features", "quantize"]
        pipeline.run(cfg, tmp_path / "shards" / str(index))
    merge = RunConfig(merge=MergeConfig(inputs=str(tmp_path / "shards")), stages=["merge"], device="cpu")
    pipeline.run(merge, tmp_path / "merged")
    merged, whole = pq.read_table(tmp_path / "merged" / "units.parquet"), pq.read_table(single / "units.parquet")
    assert merged.equals(whole) and merged.schema.metadata == whole.schema.metadata


class Interrupted(Exception):
    pass


def test_a_crash_mid_quantize_resumes_to_the_same_file(dataset, tmp_path, single, monkeypatch):
    index = json.loads((single / "features/index.json").read_text())
    assert index["num_parts"] >= 3
    original = unit_parquet.write_part

    def crash_at_part_two(path, *args):
        original(path, *args)
        if path.name.startswith("00002."):
            raise Interrupted

    monkeypatch.setattr(unit_parquet, "write_part", crash_at_part_two)
    with pytest.raises(Interrupted):
        pipeline.run(config(dataset), tmp_path / "run")
    monkeypatch.setattr(unit_parquet, "write_part", original)
    pipeline.run(config(dataset), tmp_path / "run")
    assert pq.read_table(tmp_path / "run" / "units.parquet").equals(pq.read_table(single / "units.parquet"))


def test_without_pyarrow_it_is_refused_before_work(dataset, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    with pytest.raises(ConfigError, match=r"quantize.parquet.*speechvq\[parquet\]"):
        pipeline.run(config(dataset), tmp_path / "run")
    assert not (tmp_path / "run").exists()
