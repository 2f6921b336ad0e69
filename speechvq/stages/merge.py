"""The merge stage: shard runs back into one set of unit files, refusing to mix codebooks or shardings."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from .. import fileio, unit_parquet
from ..config import MergeConfig
from ..errors import ConfigError, MissingArtifactError
from ..run_folder import FileCounts, RunFolder, ShardInfo, UnitsMeta

log = logging.getLogger(__name__)


def merge_shards(merge: MergeConfig, folder: RunFolder) -> FileCounts:
    """Concatenate the unit files of shard runs (subfolders of merge.inputs) in shard order, after checking
    that every shard is there exactly once and that all came from the same codebook, features and dataset."""
    if not merge.inputs:
        raise ConfigError("merge.inputs", None, "name the folder whose subfolders are the shard runs")
    shards = _read_shards(Path(merge.inputs))
    first = shards[0][0]
    _check_shards(Path(merge.inputs), shards)
    runs = [run for _, run in shards]
    manifests = [run.read_manifest(first.split, "merge") for run in runs]
    if len({root for root, _ in manifests}) != 1:
        raise ConfigError("merge.inputs", merge.inputs, "shard manifests have different root folders")
    folder.write_manifest(first.split, manifests[0][0], [row for _, rows in manifests for row in rows])
    names = [name for name in first.files if all((run.root / name).exists() for run in runs)]
    for name in names:
        if name == folder.units_parquet.name:
            described = unit_parquet.metadata(first.codebook_fingerprint, first.quantizer, first.codebook_size,
                                              first.num_codebooks, first.frame_rate_hz, first.feature_config)
            unit_parquet.join(folder.root / name, [run.root / name for run in runs], described)
            continue
        with fileio.atomic_open(folder.root / name) as handle:
            for run in runs:
                handle.write((run.root / name).read_text())
    folder.write_errors([skip for run in runs for skip in run.read_errors()])
    folder.write_km_dict(first.codebook_size)
    counts = FileCounts(*(sum(getattr(m.counts, k) for m, _ in shards) for k in ("found", "processed", "skipped")))
    merged = dataclasses.replace(
        first,
        counts=counts,
        num_utterances=counts.processed,
        num_frames=sum(m.num_frames for m, _ in shards),
        shard=ShardInfo(0, 1, first.shard.dataset_utterances, tuple(str(run.root) for run in runs)),
        files=folder.unit_files({name: first.files[name].contents for name in names}),
    )
    folder.write_units_meta(merged)
    log.info("merge: %d shards, %d utterances -> %s", len(shards), counts.processed, folder.root)
    return counts


def _read_shards(inputs: Path) -> list[tuple[UnitsMeta, RunFolder]]:
    runs = [RunFolder(path.parent) for path in inputs.glob(f"*/{RunFolder(inputs).units_meta_file.name}")]
    if not runs:
        raise MissingArtifactError(RunFolder(inputs / "*").units_meta_file, "merge")
    return sorted(((run.read_units_meta("merge"), run) for run in runs), key=lambda item: item[0].shard.index)


def _check_shards(inputs: Path, shards: list[tuple[UnitsMeta, RunFolder]]) -> None:
    first = shards[0][0]
    num_shards = first.shard.num_shards
    indices = [meta.shard.index for meta, _ in shards]
    if indices != list(range(num_shards)):
        raise ConfigError(
            "merge.inputs", str(inputs), f"expected shards 0..{num_shards - 1} once each, found {indices}"
        )
    for meta, run in shards:
        for key in ("codebook_fingerprint", "feature_config", "num_codebooks", "split"):
            if getattr(meta, key) != getattr(first, key):
                raise ConfigError("merge.inputs", str(run.root), f"{key} differs from shard 0's; refusing to mix units")
        if meta.shard.num_shards != num_shards or meta.shard.dataset_utterances != first.shard.dataset_utterances:
            raise ConfigError("merge.inputs", str(run.root), "shards come from different shardings or datasets")
    found = sum(meta.counts.found for meta, _ in shards)
    if found != first.shard.dataset_utterances:
        raise ConfigError(
            "merge.inputs",
            str(inputs),
            f"shards list {found} utterances, the dataset has {first.shard.dataset_utterances}",
        )
