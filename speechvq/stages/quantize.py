"""The quantize stage: every stored frame to its unit, written as fairseq .km streams and JSONL, resumably.

Units are written per feature part into .speechvq/units (a part is done when its .done file exists), then
concatenated; a rerun after a crash keeps the finished parts."""

from __future__ import annotations

import json
import logging
import shutil

import torch
from tqdm.auto import tqdm

from .. import fileio
from ..config import CodebookConfig, DataConfig, FeatureConfig, QuantizeConfig
from ..featstore import FeatureStore, StoredUtterance
from ..run_folder import FileCounts, RunFolder, ShardInfo, UnitsMeta
from ..units import load_unit_model
from .markers import already_done, features_key, mark_done, stage_key

log = logging.getLogger(__name__)


def quantize_dataset(
    codebook: CodebookConfig,
    quantize: QuantizeConfig,
    data: DataConfig,
    features: FeatureConfig,
    overwrite: bool,
    folder: RunFolder,
    device: torch.device,
) -> UnitsMeta:
    store = FeatureStore(folder.features_dir)
    units_model = load_unit_model(codebook, quantize, folder)
    units_model.check_compatible(store.feature_config, store.dim)
    key = stage_key(features_key(data, features), "quantize", units_model.fingerprint, quantize.dedup)
    if already_done(folder, "quantize", key, overwrite):
        return folder.read_units_meta("quantize")
    streams = [path.name for path in folder.streams(data.split, units_model.num_codebooks)]
    names = streams + [folder.units_jsonl.name] + ([folder.units_dedup_jsonl.name] if quantize.dedup else [])
    parts_dir = _parts_dir(folder, key)
    for name in names:  # a killed run's half-written unit file (the parts folder goes whole when done)
        fileio.remove_stale_temps(folder.root, name)
    done = 0
    with tqdm(total=len(store.utterances), desc="quantize", unit="utt", disable=None) as bar:
        for number, (entries, frames) in enumerate(store.iter_parts()):
            if (parts_dir / f"{number:05d}.done").exists():
                done += 1
            else:
                units = units_model.assign(frames.to(device)).cpu()  # (part_frames, num_codebooks)
                texts = _part_texts(entries, units, store.frame_rate_hz, quantize.dedup, units_model.codebook_size)
                for name, lines in zip(names, texts):
                    fileio.write_text(parts_dir / f"{number:05d}.{name}", "".join(lines))
                fileio.write_text(parts_dir / f"{number:05d}.done", "")
            bar.update(len(entries))
    if done:
        log.info("quantize: resumed, %d of %d parts were already done", done, store.index["num_parts"])
    for name in names:
        with fileio.atomic_open(folder.root / name) as handle:
            for number in range(store.index["num_parts"]):
                handle.write((parts_dir / f"{number:05d}.{name}").read_text())
    folder.write_km_dict(units_model.codebook_size)
    meta = _units_meta(folder, store, units_model, data.split, streams, quantize.dedup)
    folder.write_units_meta(meta)
    mark_done(folder, "quantize", key)
    shutil.rmtree(parts_dir)
    log.info("quantize: %d utterances, %d frames -> %s", meta.num_utterances, meta.num_frames, folder.root / streams[0])
    return meta


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


def _units_meta(folder: RunFolder, store: FeatureStore, units_model, split: str, streams, dedup: bool) -> UnitsMeta:
    contents = {
        name: f"fairseq labels (codebook {g}), one line per line of {split}.tsv" for g, name in enumerate(streams)
    }
    contents[folder.units_jsonl.name] = "id, units, num_frames, frame_rate_hz" + (
        "; units is one list per codebook, unit_offsets each codebook's offset in a joint vocabulary"
        if len(streams) > 1
        else ""
    )
    if dedup:
        contents[folder.units_dedup_jsonl.name] = (
            "id, run-length deduplicated units (all codebooks together), durations in frames"
        )
    shard = store.index.get("shard", {})
    return UnitsMeta(
        codebook_fingerprint=units_model.fingerprint,
        quantizer=units_model.kind,
        codebook_size=units_model.codebook_size,
        num_codebooks=units_model.num_codebooks,
        feature_config=store.feature_config,
        frame_rate_hz=store.frame_rate_hz,
        num_utterances=len(store.utterances),
        num_frames=store.num_frames,
        counts=FileCounts(**store.index.get("counts", {})),
        shard=ShardInfo(**shard),
        split=split,
        files=folder.unit_files(contents),
    )
