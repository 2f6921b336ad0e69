"""units.parquet (quantize.parquet=true): one row per utterance, in the order of the .km lines: `id`, `units`
(int32; with several codebooks one list per codebook, as in units.jsonl), `num_frames`, and with quantize.dedup
`units_dedup` and `durations` (frames per deduplicated unit). The file's key-value metadata holds
`codebook_fingerprint` and `speechvq` (JSON: fingerprint, quantizer, codebook size, codebooks, frame rate, feature
config). Written per part while quantizing, then joined row group by row group, so memory stays one part's.
Reads with datasets.load_dataset("parquet", data_files=...), pandas.read_parquet and polars.read_parquet."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from . import fileio
from .errors import ConfigError


def require_pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise ConfigError("quantize.parquet", True, "needs pyarrow: pip install 'speechvq[parquet]'") from None
    return pyarrow


def write_part(path: Path, entries, units: torch.Tensor, dedup: bool) -> None:
    """One part's rows. entries: (utt_id, num_frames, offset) of each utterance in `units` (frames, codebooks)."""
    pa = require_pyarrow()
    import pyarrow.parquet as pq

    single = units.shape[1] == 1
    as_lists = (lambda codes: codes[:, 0].tolist()) if single else (lambda codes: codes.T.tolist())
    ids, unit_lists, frames, kept, durations = [], [], [], [], []
    for entry in entries:
        codes = units[entry.offset : entry.offset + entry.num_frames]
        ids.append(entry.utt_id)
        unit_lists.append(as_lists(codes))
        frames.append(entry.num_frames)
        if dedup:
            values, counts = fileio.deduplicate_rows(codes)
            kept.append(as_lists(values))
            durations.append(counts.tolist())
    codes_type = pa.list_(pa.int32()) if single else pa.list_(pa.list_(pa.int32()))
    columns = {"id": pa.array(ids, pa.string()), "units": pa.array(unit_lists, codes_type),
               "num_frames": pa.array(frames, pa.int32())}  # fmt: skip
    if dedup:
        columns["units_dedup"] = pa.array(kept, codes_type)
        columns["durations"] = pa.array(durations, pa.list_(pa.int32()))
    with fileio.atomic_open(path, "wb") as handle:
        pq.write_table(pa.table(columns), handle, compression="zstd")


def join(out: Path, parts: list[Path], metadata: dict) -> None:
    """The parts' rows in order into `out` (atomically), with metadata in the file's key-value metadata."""
    require_pyarrow()
    import pyarrow.parquet as pq

    schema = pq.read_schema(parts[0])
    schema = schema.with_metadata({"codebook_fingerprint": metadata["codebook_fingerprint"],
                                   "speechvq": json.dumps(metadata, sort_keys=True)})  # fmt: skip
    with fileio.atomic_open(out, "wb") as handle, pq.ParquetWriter(handle, schema, compression="zstd") as writer:
        for part in parts:
            table = pq.read_table(part)
            if table.num_rows:
                writer.write_table(table.cast(schema))


def metadata(fingerprint: str, quantizer: str, codebook_size: int, num_codebooks: int, frame_rate_hz: float,
             feature_config: dict) -> dict:  # fmt: skip
    """What units.parquet's metadata says about its units."""
    return {
        "codebook_fingerprint": fingerprint,
        "quantizer": quantizer,
        "codebook_size": codebook_size,
        "num_codebooks": num_codebooks,
        "frame_rate_hz": frame_rate_hz,
        "feature_config": feature_config,
    }
