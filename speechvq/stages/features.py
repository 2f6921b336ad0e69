"""The features stage: decode the (shard of the) dataset and store its feature frames in parts, resumably: every
frame (features.store=all), only k-means' training sample (sample), or nothing (none)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import fileio
from ..config import DataConfig, FeatureConfig
from ..data import batches_by_length, check_files
from ..errors import DiskFullError, EmptyDatasetError
from ..featstore import FeatureStore, FeatureWriter
from ..features import build_extractor
from ..features.base import STORE_DTYPES
from ..manifest import list_utterances, listing_root, shard
from ..records import FeatureMatrix, SkippedFile, Utterance
from ..run_folder import FileCounts, RunFolder
from ..sampling import training_sample
from ..streaming import batch_samples, extracted_batches
from .markers import already_done, features_key, mark_done, stage_key

log = logging.getLogger(__name__)


@dataclass
class _Progress:
    """What the loop has done so far (also what a checkpoint records)."""

    processed: list[Utterance] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)  # at the header check and at decoding
    checked_skips: int = 0  # how many of `skipped` the header check found (decode-time ones follow)

    def checkpoint_state(self) -> dict:
        decode_skips = self.skipped[self.checked_skips :]
        return {
            # Files consumed from the good list: stored ones plus those that failed to decode.
            "consumed": len(self.processed) + len(decode_skips),
            "skipped": [[s.utt_id, str(s.path), s.reason] for s in decode_skips],
        }


def extract_features(
    data: DataConfig,
    features: FeatureConfig,
    overwrite: bool,
    folder: RunFolder,
    device: torch.device,
    max_train_frames: int = 0,
    seed: int = 0,
) -> FileCounts | None:
    """The counts of the utterances stored (with store=sample: of the training sample; the quantize stage counts
    the dataset); None with store=none. max_train_frames and seed (codebook.max_train_frames, the run's seed)
    choose the sample."""
    if features.store == "none":
        log.info("features: features.store=none, nothing stored (quantize extracts from the audio)")
        return None
    key = features_key(data, features)
    if features.store == "sample":
        key = stage_key(key, "sample", max_train_frames, seed)
    if already_done(folder, "features", key, overwrite):
        return FileCounts(**FeatureStore(folder.features_dir).index.get("counts", {}))
    listing = list_utterances(data.path)
    utterances = shard(listing, data.num_shards, data.shard_index)
    extractor = build_extractor(features)
    if features.store == "sample":
        chosen = training_sample(listing, extractor.frame_rate_hz, max_train_frames, seed)
        utterances = [utt for utt in utterances if utt.utt_id in chosen]
        log.info("features: storing the training sample, %d of the shard's files", len(utterances))
    good, skipped = check_files(utterances, data.on_error)
    writer = FeatureWriter(
        folder.features_dir,
        extractor.describe(),
        extractor.dim,
        extractor.frame_rate_hz,
        part_bytes=int(data.part_mb * 2**20),
        dtype=STORE_DTYPES[features.store_dtype],
    )
    progress = _resume(writer, key, good, skipped)
    _check_disk(folder.features_dir, extractor, good[progress.checkpoint_state()["consumed"] :], writer.dtype)
    _extract(data, features, extractor, writer, key, good, progress, device)
    counts = FileCounts(len(utterances), len(progress.processed), len(progress.skipped))
    _finish(data, features, folder, writer, listing, progress, counts)
    mark_done(folder, "features", key)
    log.info("features: %d processed, %d skipped of %d found", counts.processed, counts.skipped, counts.found)
    return counts


def _resume(writer: FeatureWriter, key: str, good: list[Utterance], skipped: list[SkippedFile]) -> _Progress:
    state = writer.resume(key) or {"consumed": 0, "skipped": []}
    if state["consumed"]:
        log.info(
            "features: resuming after %d of %d files (%d parts on disk)",
            state["consumed"],
            len(good),
            writer.entries[-1].part + 1 if writer.entries else 0,
        )
    by_id = {u.utt_id: u for u in good}
    progress = _Progress([by_id[entry.utt_id] for entry in writer.entries], list(skipped), len(skipped))
    progress.skipped += [SkippedFile(utt_id, Path(path), reason) for utt_id, path, reason in state["skipped"]]
    return progress


def _check_disk(features_dir: Path, extractor, remaining: list[Utterance], dtype: torch.dtype) -> None:
    """Refuse to start when the frames still to store (from the headers' durations) exceed the free space of the
    features' filesystem, instead of failing when it fills."""
    seconds = sum(u.num_samples / u.sample_rate for u in remaining if u.num_samples and u.sample_rate)
    needed = int(seconds * extractor.frame_rate_hz) * extractor.dim * dtype.itemsize
    free = fileio.free_bytes(features_dir)
    if needed > free:
        detail = (f"the features need about {fileio.size_text(needed)} ({seconds / 3600:.3g} h at "
                  f"{extractor.frame_rate_hz:g} frames/s x {extractor.dim} {str(dtype)[6:]}), the filesystem has "
                  f"{fileio.size_text(free)} free")  # fmt: skip
        raise DiskFullError(features_dir, detail)


def _extract(data, features, extractor, writer, key, good, progress: _Progress, device) -> None:
    consumed = progress.checkpoint_state()["consumed"]
    by_id = {u.utt_id: u for u in good}
    batches = batches_by_length(good[consumed:], batch_samples(data, features))
    loaded = extracted_batches(batches, data, features, extractor, device, progress.skipped)
    with (
        torch.inference_mode(),
        tqdm(total=len(good), initial=consumed, desc="features", unit="utt", disable=None) as bar,
    ):
        for batch, (utt_ids, frames) in zip(batches, loaded):
            for utt_id, utt_frames in zip(utt_ids, frames, strict=True):
                writer.add(FeatureMatrix(utt_id, utt_frames, extractor.frame_rate_hz))
                progress.processed.append(by_id[utt_id])
            bar.update(len(batch))
            writer.checkpoint(key, progress.checkpoint_state())


def _finish(data, features, folder: RunFolder, writer, listing, progress: _Progress, counts: FileCounts) -> None:
    sample = features.store == "sample"  # the dataset's listing and errors are then the quantize stage's
    if not sample:
        folder.write_errors(progress.skipped)
    if counts.found and not counts.processed:
        where = "see the log" if sample else f"see {folder.errors_tsv.name}"
        raise EmptyDatasetError(data.path, f"all {counts.found} files failed ({where})")
    if not counts.found:  # more shards than utterances: an empty shard is valid and merges as nothing
        log.warning("features: shard %d of %d is empty", data.shard_index, data.num_shards)
    if sample:
        writer.close({"counts": counts.to_dict(), "source": str(data.path), "sample": True})
        return
    root = listing_root(listing)
    folder.write_manifest(
        data.split, root, ((u.manifest_name(root), u.num_samples) for u in progress.processed)
    )
    shard_info = {"index": data.shard_index, "num_shards": data.num_shards, "dataset_utterances": len(listing)}
    writer.close({"counts": counts.to_dict(), "source": str(data.path), "shard": shard_info})
