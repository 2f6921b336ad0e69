"""The quantize stage: every frame to its unit, written as fairseq .km streams and JSONL, resumably.

The frames come from the features stage's store (features.store=all) or straight from the audio (sample, none:
decoded, extracted and assigned in one pass, and then this stage also writes the run's manifest and errors.tsv).
Units are written per part into .speechvq/units (a part is done when its .done file exists), then concatenated;
a rerun after a crash keeps the finished parts and decodes only the others."""

from __future__ import annotations

import functools
import json
import logging
import shutil

import torch
from tqdm.auto import tqdm

from .. import fileio, unit_parquet
from ..config import CodebookConfig, DataConfig, FeatureConfig, QuantizeConfig
from ..errors import EmptyDatasetError
from ..featstore import StoredUtterance
from ..heap import release_free_memory
from ..run_folder import FileCounts, RunFolder, UnitsMeta
from ..units import load_unit_model
from .markers import already_done, features_key, mark_done, stage_key
from .sources import FramePart, frame_source

log = logging.getLogger(__name__)

MANIFEST_ROWS, ERROR_ROWS = "manifest.rows", "errors.rows"  # audio sources: each part's share of the two files


def quantize_dataset(
    codebook: CodebookConfig,
    quantize: QuantizeConfig,
    data: DataConfig,
    features: FeatureConfig,
    overwrite: bool,
    folder: RunFolder,
    device: torch.device,
) -> UnitsMeta:
    units_model = load_unit_model(codebook, quantize, folder)
    key = stage_key(features_key(data, features), "quantize", units_model.fingerprint, quantize.dedup,
                    *(["parquet"] if quantize.parquet else []))  # fmt: skip
    if already_done(folder, "quantize", key, overwrite):
        return folder.read_units_meta("quantize")
    source = frame_source(data, features, folder, device, "quantize")
    units_model.check_compatible(source.feature_config, source.dim)
    streams = [path.name for path in folder.streams(data.split, units_model.num_codebooks)]
    names = streams + [folder.units_jsonl.name] + ([folder.units_dedup_jsonl.name] if quantize.dedup else [])
    parts_dir = _parts_dir(folder, key)
    for name in names:  # a killed run's half-written unit file (the parts folder goes whole when done)
        fileio.remove_stale_temps(folder.root, name)
    todo = [number for number in range(source.num_parts) if not _done_file(parts_dir, number).exists()]
    if len(todo) < source.num_parts:
        log.info("quantize: resumed, %d of %d parts were already done", source.num_parts - len(todo), source.num_parts)
    with tqdm(total=len(source.utterances), desc="quantize", unit="utt", disable=None) as bar:
        for part in source.iter_parts(todo):
            units = units_model.assign(part.frames.to(device)).cpu()  # (part_frames, num_codebooks)
            texts = _part_texts(part.entries, units, source.frame_rate_hz, quantize.dedup, units_model.codebook_size)
            for name, lines in zip(names, texts):
                fileio.write_text(parts_dir / f"{part.number:05d}.{name}", "".join(lines))
            if quantize.parquet:
                parquet_part = parts_dir / f"{part.number:05d}.{folder.units_parquet.name}"
                unit_parquet.write_part(parquet_part, part.entries, units, quantize.dedup)
            if source.from_audio:
                _write_listing_part(parts_dir, part)
            done = {"num_utterances": len(part.entries), "num_frames": int(part.frames.shape[0])}
            fileio.write_json(_done_file(parts_dir, part.number), done)
            bar.update(len(part.entries) + len(part.skipped))
            release_free_memory()  # the part's batches are free now: memory stays flat across parts (heap.py)
    for name in names:
        _join_once(folder.root / name, parts_dir, name, source.num_parts, _concatenate)
    if quantize.parquet:
        parquet_meta = unit_parquet.metadata(units_model.fingerprint, units_model.kind, units_model.codebook_size,
                                             units_model.num_codebooks, source.frame_rate_hz, source.feature_config)
        join = lambda out, parts: unit_parquet.join(out, parts, parquet_meta)  # noqa: E731
        name = folder.units_parquet.name
        _join_once(folder.units_parquet, parts_dir, name, source.num_parts, join)
    totals = [json.loads(_done_file(parts_dir, n).read_text()) for n in range(source.num_parts)]
    num_utterances, num_frames = (sum(t[k] for t in totals) for k in ("num_utterances", "num_frames"))
    counts = _finish_listing(folder, data, source, parts_dir, num_utterances) if source.from_audio else source.counts
    folder.write_km_dict(units_model.codebook_size)
    sizes = (num_utterances, num_frames, counts)
    meta = _units_meta(folder, source, units_model, data.split, streams, quantize, sizes)
    folder.write_units_meta(meta)
    mark_done(folder, "quantize", key)
    shutil.rmtree(parts_dir)
    log.info("quantize: %d utterances, %d frames -> %s", meta.num_utterances, meta.num_frames, folder.root / streams[0])
    return meta


def _done_file(parts_dir, number: int):
    return parts_dir / f"{number:05d}.done"


def _join_once(out, parts_dir, name: str, num_parts: int, join) -> None:
    """join(out, the parts of `name` in order), then drop those parts, so the unit files are on disk once, not
    twice, at the end of the stage. A marker written between the two says the join is done: a rerun after a crash
    there neither joins from parts already dropped nor joins again."""
    marker = parts_dir / f"{name}.joined"
    parts = [parts_dir / f"{number:05d}.{name}" for number in range(num_parts)]
    if not marker.exists():
        join(out, parts)
        fileio.write_text(marker, "")
    for part in parts:
        part.unlink(missing_ok=True)


def _concatenate(out, parts, head: str = "") -> None:
    with fileio.atomic_open(out) as handle:
        handle.write(head)
        for part in parts:
            with open(part, encoding="utf-8") as source:
                shutil.copyfileobj(source, handle, 1 << 20)


def _write_listing_part(parts_dir, part: FramePart) -> None:
    fileio.write_text(parts_dir / f"{part.number:05d}.{MANIFEST_ROWS}", fileio.fairseq_tsv_rows(part.manifest_rows))
    fileio.write_text(parts_dir / f"{part.number:05d}.{ERROR_ROWS}", RunFolder.error_rows(part.skipped))


def _finish_listing(folder: RunFolder, data: DataConfig, source, parts_dir, num_utterances: int) -> FileCounts:
    """With frames from the audio, the run's <split>.tsv and errors.tsv are this stage's: the parts' rows."""
    manifest = functools.partial(_concatenate, head=f"{source.root}\n")
    _join_once(folder.manifest(data.split), parts_dir, MANIFEST_ROWS, source.num_parts, manifest)
    header = folder.ERRORS_HEADER + folder.error_rows(source.header_skips)
    _join_once(folder.errors_tsv, parts_dir, ERROR_ROWS, source.num_parts, functools.partial(_concatenate, head=header))
    counts = FileCounts(source.num_found, num_utterances, source.num_found - num_utterances)
    if counts.found and not counts.processed:
        raise EmptyDatasetError(data.path, f"all {counts.found} files failed (see {folder.errors_tsv.name})")
    return counts


def _parts_dir(folder: RunFolder, key: str):
    """The folder of per-part outputs, emptied when an earlier attempt used another key."""
    parts_dir = folder.unit_parts_dir
    key_file = parts_dir / "key.json"
    if parts_dir.exists() and (not key_file.exists() or json.loads(key_file.read_text())["key"] != key):
        shutil.rmtree(parts_dir)
    parts_dir.mkdir(parents=True, exist_ok=True)
    fileio.write_json(key_file, {"key": key})
    return parts_dir


def _part_texts(entries: list[StoredUtterance], units: torch.Tensor, frame_rate_hz, dedup: bool, codebook_size: int):
    """The lines of each unit file for one part's utterances: one .km stream per codebook, the JSONL units and,
    with dedup, the deduplicated JSONL units (the order of the caller's `names`). With several codebooks the JSONL
    also gives each codebook's offset in one joint vocabulary (unit + offset), for models that want one.

    The JSON lines are what json.dumps(record, separators=(",", ":")) writes, assembled from each code's text made
    once: str() per frame, for the .km line and again inside json.dumps, was most of the quantize stage's time."""
    num_codebooks = units.shape[1]
    names = [str(code) for code in range(codebook_size)]
    tail = f',"frame_rate_hz":{json.dumps(frame_rate_hz)}'  # what follows num_frames in every record
    if num_codebooks > 1:
        tail += f',"unit_offsets":{_ints([stream * codebook_size for stream in range(num_codebooks)])}'
    streams: list[list[str]] = [[] for _ in range(num_codebooks)]
    records, dedup_records = [], []
    for entry in entries:
        utt_units = units[entry.offset : entry.offset + entry.num_frames]
        tokens = [[names[code] for code in stream] for stream in utt_units.T.tolist()]
        for stream, stream_tokens in enumerate(tokens):
            streams[stream].append(" ".join(stream_tokens) + "\n")
        utt_id = json.dumps(entry.utt_id)
        records.append(f'{{"id":{utt_id},"units":{_units_json(tokens)},"num_frames":{entry.num_frames}{tail}}}\n')
        if dedup:
            values, durations = fileio.deduplicate_rows(utt_units)
            kept = [[names[code] for code in stream] for stream in values.T.tolist()]
            dedup_records.append(
                f'{{"id":{utt_id},"units":{_units_json(kept)},"durations":{_ints(durations.tolist())}}}\n'
            )
    return streams + [records] + ([dedup_records] if dedup else [])


def _units_json(tokens: list[list[str]]) -> str:
    """One codebook: its list; several: the list of their lists."""
    if len(tokens) == 1:
        return "[" + ",".join(tokens[0]) + "]"
    return "[" + ",".join("[" + ",".join(stream) + "]" for stream in tokens) + "]"


def _ints(values: list[int]) -> str:
    return "[" + ",".join(map(str, values)) + "]"


def _units_meta(folder: RunFolder, source, units_model, split: str, streams, quantize: QuantizeConfig,
                sizes) -> UnitsMeta:  # fmt: skip
    """The unit files' description; sizes: (num_utterances, num_frames, FileCounts)."""
    contents = {
        name: f"fairseq labels (codebook {g}), one line per line of {split}.tsv" for g, name in enumerate(streams)
    }
    contents[folder.units_jsonl.name] = "id, units, num_frames, frame_rate_hz" + (
        "; units is one list per codebook, unit_offsets each codebook's offset in a joint vocabulary"
        if len(streams) > 1
        else ""
    )
    if quantize.dedup:
        contents[folder.units_dedup_jsonl.name] = (
            "id, run-length deduplicated units (all codebooks together), durations in frames"
        )
    if quantize.parquet:
        contents[folder.units_parquet.name] = (
            "id, units, num_frames"
            + (", units_dedup, durations" if quantize.dedup else "")
            + "; codebook in the metadata"
        )
    return UnitsMeta(
        codebook_fingerprint=units_model.fingerprint,
        quantizer=units_model.kind,
        codebook_size=units_model.codebook_size,
        num_codebooks=units_model.num_codebooks,
        feature_config=source.feature_config,
        frame_rate_hz=source.frame_rate_hz,
        num_utterances=sizes[0],
        num_frames=sizes[1],
        counts=sizes[2],
        shard=source.shard,
        split=split,
        files=folder.unit_files(contents),
    )
