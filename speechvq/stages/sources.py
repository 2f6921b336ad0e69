"""Where the quantize and evaluate stages get their frames: the parts the features stage stored
(features.store=all), or the audio itself, decoded and extracted as they go (sample, none), so a corpus of any
size is quantized without its frames ever touching the disk. Both give the same frames, in the same order."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import DataConfig, FeatureConfig
from ..data import check_files
from ..errors import ConfigError
from ..featstore import FeatureStore, StoredUtterance
from ..features import build_extractor
from ..manifest import list_utterances, listing_root, shard
from ..records import FeatureMatrix, SkippedFile, Utterance
from ..run_folder import FileCounts, RunFolder, ShardInfo
from ..streaming import iter_audio_parts, iter_utterance_frames, plan_parts


@dataclass(frozen=True)
class FramePart:
    """One resumable unit of the quantize stage's work."""

    number: int
    entries: list[StoredUtterance]  # each utterance's frames: rows offset .. offset + num_frames of `frames`
    frames: torch.Tensor  # (num_frames, dim) float32
    manifest_rows: list[tuple[str, int]]  # audio sources: (path relative to the manifest root, num_samples)
    skipped: list[SkippedFile]  # audio sources: files that failed to decode


class StoredFrames:
    """The features stage's parts (features.store=all)."""

    from_audio = False

    def __init__(self, folder: RunFolder):
        self.store = FeatureStore(folder.features_dir)
        self.feature_config, self.dim = self.store.feature_config, self.store.dim
        self.frame_rate_hz = self.store.frame_rate_hz
        self.utterances = self.store.utterances
        self.num_parts = self.store.index["num_parts"]
        self.counts = FileCounts(**self.store.index.get("counts", {}))
        self.shard = ShardInfo(**self.store.index.get("shard", {}))

    def iter_parts(self, todo: list[int]) -> Iterator[FramePart]:
        entries = {number: [] for number in todo}
        for entry in self.utterances:
            if entry.part in entries:
                entries[entry.part].append(entry)
        for number in todo:
            yield FramePart(number, entries[number], self.store.load_part(number), [], [])

    def iter_utterances(self) -> Iterator[FeatureMatrix]:
        return self.store.iter_utterances()


class AudioFrames:
    """Frames extracted from the audio of the (shard of the) dataset as they are asked for (store=sample|none)."""

    from_audio = True

    def __init__(self, data: DataConfig, features: FeatureConfig, device: torch.device, utterances, listing):
        self.data, self.features, self.device = data, features, device
        self.extractor = build_extractor(features)
        self.feature_config, self.dim = self.extractor.describe(), self.extractor.dim
        self.frame_rate_hz = self.extractor.frame_rate_hz
        self.utterances: list[Utterance] = utterances
        self.root = listing_root(listing)
        self.shard = ShardInfo(data.shard_index, data.num_shards, len(listing))
        # what the quantize stage walks (for_quantize fills them in): the resumable parts and the listing's failures
        self.parts: list[list[Utterance]] = []
        self.num_parts, self.num_found = 0, len(utterances)
        self.header_skips: list[SkippedFile] = []

    @classmethod
    def for_quantize(cls, data: DataConfig, features: FeatureConfig, device: torch.device) -> AudioFrames:
        """The shard's files, header-checked (those that fail are raised or listed in header_skips)."""
        listing = list_utterances(data.path)
        found = shard(listing, data.num_shards, data.shard_index)
        good, skipped = check_files(found, data.on_error)
        source = cls(data, features, device, good, listing)
        source.num_found, source.header_skips = len(found), skipped
        part_bytes = int(data.part_mb * 2**20)
        source.parts = plan_parts(good, source.frame_rate_hz, source.dim, part_bytes)
        source.num_parts = len(source.parts)
        return source

    @classmethod
    def for_evaluate(cls, data: DataConfig, features: FeatureConfig, folder: RunFolder, device) -> AudioFrames:
        """The utterances the quantize stage made units of."""
        listing = list_utterances(data.path)
        return cls(data, features, device, processed_utterances(data, folder, listing), listing)

    def iter_parts(self, todo: list[int]) -> Iterator[FramePart]:
        for part in iter_audio_parts(self.parts, todo, self.data, self.features, self.extractor, self.device):
            entries, offset = [], 0
            for utt, num_frames in part.processed:
                entries.append(StoredUtterance(utt.utt_id, num_frames, part.number, offset))
                offset += num_frames
            rows = [(utt.manifest_name(self.root), utt.num_samples) for utt, _ in part.processed]
            yield FramePart(part.number, entries, part.frames, rows, part.skipped)

    def iter_utterances(self) -> Iterator[FeatureMatrix]:
        return iter_utterance_frames(self.utterances, self.data, self.features, self.extractor, self.device)


def processed_utterances(data: DataConfig, folder: RunFolder, listing: list[Utterance] | None = None, ids=None):
    """The utterances of the run's units, in their order, segments and all: the (shard of the) listing of
    data.path less the files errors.tsv lists, checked against the run's manifest. (A fairseq manifest names files,
    not segments, so it alone cannot say which audio a unit sequence came from.) Without data.path (evaluate alone
    on a run folder), the manifest's files, named by `ids` where given."""
    root, rows = folder.read_manifest(data.split)
    if not data.path:
        names = ids or [rel for rel, _ in rows]
        return [_from_manifest(name, root, rel, num) for name, (rel, num) in zip(names, rows, strict=True)]
    listing = listing or list_utterances(data.path)
    failed = {skip.utt_id for skip in folder.read_errors()} if folder.errors_tsv.exists() else set()
    kept = [utt for utt in shard(listing, data.num_shards, data.shard_index) if utt.utt_id not in failed]
    if [rel for rel, _ in rows] != [utt.manifest_name(root) for utt in kept]:
        raise ConfigError("data.path", data.path, f"does not list the files of {folder.manifest(data.split)}")
    return [dataclasses.replace(utt, num_samples=num_samples) for utt, (_, num_samples) in zip(kept, rows)]


def _from_manifest(utt_id: str, root: Path, name: str, num_samples: int) -> Utterance:
    """A <split>.tsv row back to its utterance: a file, or container:member where the file is not there."""
    path, member = root / name, None
    if not path.exists() and ":" in name:
        container, member = name.rsplit(":", 1)
        path = root / container
    return Utterance(utt_id, path, num_samples, member=member)


def frame_source(data: DataConfig, features: FeatureConfig, folder: RunFolder, device, for_stage: str):
    """The stored frames, or the audio's where features.store keeps not all of them."""
    if features.store == "all":
        return StoredFrames(folder)
    if for_stage == "quantize":
        return AudioFrames.for_quantize(data, features, device)
    return AudioFrames.for_evaluate(data, features, folder, device)
