"""Resume bookkeeping. Each stage that finishes writes .speechvq/<stage>.json with a key of everything its outputs
depend on. Run again with the same config, a finished stage is skipped; with a different one, the run stops rather
than overwrite (unless output.overwrite=true). Unfinished stages resume from their own checkpoints."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from .. import fileio
from ..config import DataConfig, FeatureConfig
from ..errors import ConfigError
from ..run_folder import RunFolder

log = logging.getLogger(__name__)


def stage_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def features_key(data: DataConfig, features: FeatureConfig) -> str:
    """What the stored features depend on (and so everything computed from them)."""
    source = {
        "path": str(Path(data.path).expanduser().resolve()) if data.path else None,
        "split": data.split,
        "on_error": data.on_error,
        "num_shards": data.num_shards,
        "shard_index": data.shard_index,
    }
    if features.store != "all":  # keys of store=all runs stay what they were before the setting existed
        source["store"] = str(features.store)
    return stage_key("features", source, features.to_dict())


def already_done(folder: RunFolder, stage: str, key: str, overwrite: bool) -> bool:
    marker = folder.marker(stage)
    if not marker.exists():
        return False
    if json.loads(marker.read_text())["key"] == key:
        log.info("%s: already done in %s with this configuration; skipping", stage, folder.root)
        return True
    if overwrite:
        marker.unlink()
        return False
    raise ConfigError(
        "output.overwrite",
        False,
        f"{folder.root} holds '{stage}' outputs made with a different "
        "configuration; use a new run folder (hydra.run.dir=...) or output.overwrite=true",
    )


def mark_done(folder: RunFolder, stage: str, key: str) -> None:
    fileio.write_json(folder.marker(stage), {"key": key})
