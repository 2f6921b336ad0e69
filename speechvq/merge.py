"""The merge stage: shard runs back into one set of unit files, refusing to mix codebooks or shardings."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from . import io
from .artifacts import ERRORS_FILE, UNITS_META_FILE, RunResult, unit_files_record
from .config import RunConfig
from .errors import ConfigError, MissingArtifactError

log = logging.getLogger(__name__)


def merge_shards(config: RunConfig, result: RunResult, device: torch.device) -> None:
    """Concatenate the unit files of shard runs (subfolders of merge.inputs) in shard order, after checking
    that every shard is there exactly once and that all came from the same codebook and features."""
    if not config.merge.inputs:
        raise ConfigError("merge.inputs", None, "name the folder whose subfolders are the shard runs")
    folder = Path(config.merge.inputs)
    metas = sorted(
        ((json.loads(p.read_text()), p.parent) for p in folder.glob(f"*/{UNITS_META_FILE}")),
        key=lambda item: item[0]["shard"]["index"],
    )
    if not metas:
        raise MissingArtifactError(folder / "*" / UNITS_META_FILE, "merge")
    first = metas[0][0]
    num_shards = first["shard"]["num_shards"]
    indices = [m["shard"]["index"] for m, _ in metas]
    if indices != list(range(num_shards)):
        raise ConfigError(
            "merge.inputs", str(folder), f"expected shards 0..{num_shards - 1} once each, found {indices}"
        )
    for meta, run in metas:
        for key in ("codebook_fingerprint", "feature_config", "num_codebooks", "split"):
            if meta[key] != first[key]:
                raise ConfigError("merge.inputs", str(run), f"{key} differs from shard 0's; refusing to mix units")
        if (
            meta["shard"]["num_shards"] != num_shards
            or meta["shard"]["dataset_utterances"] != first["shard"]["dataset_utterances"]
        ):
            raise ConfigError("merge.inputs", str(run), "shards come from different shardings or datasets")
    found = sum(m["counts"]["found"] for m, _ in metas)
    if found != first["shard"]["dataset_utterances"]:
        raise ConfigError(
            "merge.inputs",
            str(folder),
            f"shards list {found} utterances, the dataset has {first['shard']['dataset_utterances']}",
        )
    split, out = first["split"], result.run_dir
    tsv_lines = [(run / f"{split}.tsv").read_text().splitlines() for _, run in metas]
    if len({lines[0] for lines in tsv_lines}) != 1:
        raise ConfigError("merge.inputs", str(folder), "shard manifests have different root folders")
    io.write_text(
        out / f"{split}.tsv", "\n".join([tsv_lines[0][0]] + [x for lines in tsv_lines for x in lines[1:]]) + "\n"
    )
    names = [name for name in first["files"] if all((run / name).exists() for _, run in metas)]
    for name in names:
        parts = [run / name for _, run in metas]
        with io.atomic_open(out / name) as handle:
            for part in parts:
                handle.write(part.read_text())
    errors = [line for _, run in metas for line in (run / ERRORS_FILE).read_text().splitlines()[1:]]
    io.write_text(out / ERRORS_FILE, "utt_id\tpath\treason\n" + "".join(f"{line}\n" for line in errors))
    io.write_km_dict(out / "dict.km.txt", first["codebook_size"])
    counts = {k: sum(m["counts"][k] for m, _ in metas) for k in ("found", "processed", "skipped")}
    io.write_json(
        out / UNITS_META_FILE,
        {
            **first,
            "counts": counts,
            "num_utterances": counts["processed"],
            "num_frames": sum(m["num_frames"] for m, _ in metas),
            "files": unit_files_record(out, {name: first["files"][name]["contents"] for name in names}),
            "shard": {
                "index": 0,
                "num_shards": 1,
                "dataset_utterances": first["shard"]["dataset_utterances"],
                "merged_from": [str(run) for _, run in metas],
            },
        },
    )
    result.counts = counts
    log.info("merge: %d shards, %d utterances -> %s", num_shards, counts["processed"], out)
