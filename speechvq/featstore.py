"""On-disk features between stages: safetensors parts of concatenated frames plus an index.json
written last, so a folder without index.json is visibly unfinished. Writing buffers at most two parts (one
being filled, one being written in the background) and reading streams one part at a time, so memory is bounded
by the part size (16 MB), not the dataset."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as save_safetensors_bytes

from .errors import MissingArtifactError
from .fileio import remove_stale_temps, write_bytes, write_json
from .heap import release_free_memory
from .records import FeatureMatrix

INDEX_FILE = "index.json"
PROGRESS_FILE = "progress.json"


@dataclass(frozen=True)
class StoredUtterance:
    utt_id: str
    num_frames: int
    part: int  # which part file holds its frames
    offset: int  # first row in that part


class FeatureWriter:
    """Buffers frames and writes them as parts. `checkpoint` (called between batches) hands a full part to a
    writer thread, which writes it and then records it, with the caller's state, as safely on disk; so an
    interrupted features stage resumes from its last written part, while the next batches are computed."""

    def __init__(
        self,
        folder: Path,
        feature_config: dict,
        dim: int,
        frame_rate_hz: float,
        part_bytes: int = 16 << 20,
        dtype: torch.dtype = torch.float32,  # what the parts hold (float16: features.store_dtype)
    ):
        self.folder = folder
        self.feature_config, self.dim, self.frame_rate_hz = feature_config, dim, frame_rate_hz
        self.dtype = dtype
        self.part_frames = max(1, part_bytes // (dtype.itemsize * dim))
        self.entries: list[StoredUtterance] = []
        self._pending: list[torch.Tensor] = []
        self._pending_frames = 0
        self._part = 0
        self._part_start = 0  # first entry of the part being filled
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="feature-parts")
        self._writing: Future | None = None  # the part in flight: at most one
        folder.mkdir(parents=True, exist_ok=True)
        (folder / INDEX_FILE).unlink(missing_ok=True)  # the old index must not vouch for new parts
        remove_stale_temps(folder)  # a killed run's half-written part; every file here is this writer's

    def add(self, features: FeatureMatrix) -> None:
        self.entries.append(StoredUtterance(features.utt_id, features.num_frames, self._part, self._pending_frames))
        # Kept as given, not copied: the features stage adds every utterance of a batch, so a view keeps nothing
        # alive beyond its own part, and a copy of frames that arrive in shared memory from a worker costs a pass.
        self._pending.append(features.frames.detach().to("cpu", torch.float32))
        self._pending_frames += features.num_frames

    def checkpoint(self, key: str, state: dict) -> None:
        """If a part is full, hand it to the writer thread, which writes it and then records (atomically) the
        entries on disk and the caller's state; the part before it is waited for first."""
        if self._pending_frames < self.part_frames:
            return
        write_part = self._take_part()
        progress = {"key": key, "parts": self._part, "state": state}
        self.wait()  # the previous part first: progress.json must never count a part that is not on disk

        def write() -> None:
            write_part()
            write_json(self.folder / PROGRESS_FILE, progress)

        self._writing = self._writer.submit(write)

    def wait(self) -> None:
        """Block until the part in flight is on disk; raises its writing error here, in the caller."""
        if self._writing is not None:
            writing, self._writing = self._writing, None
            writing.result()

    def resume(self, key: str) -> dict | None:
        """Restore from the last checkpoint made with the same key; returns the caller's state, or None."""
        path = self.folder / PROGRESS_FILE
        if not path.exists():
            return None
        progress = json.loads(path.read_text())
        if progress["key"] != key:
            return None
        # Each part names its own utterances in its header, so progress.json stays small however long the run.
        self.entries = []
        for part in range(progress["parts"]):
            with safe_open(str(self._part_path(part)), framework="pt") as handle:
                self.entries += [StoredUtterance(*row) for row in json.loads(handle.metadata()["utterances"])]
        self._part = progress["parts"]
        self._part_start = len(self.entries)
        return progress["state"]

    def _part_path(self, part: int) -> Path:
        return self.folder / f"part-{part:05d}.safetensors"

    def _take_part(self):
        """Close the part being filled; returns the function that writes it."""
        pending, path = self._pending, self._part_path(self._part)
        rows = [[e.utt_id, e.num_frames, e.part, e.offset] for e in self.entries[self._part_start :]]
        self._pending, self._pending_frames = [], 0
        self._part += 1
        self._part_start = len(self.entries)

        def write() -> None:
            frames = (torch.cat(pending) if pending else torch.zeros(0, self.dim)).to(self.dtype)
            metadata = {"utterances": json.dumps(rows)}
            write_bytes(path, save_safetensors_bytes({"frames": frames}, metadata=metadata))
            del frames, pending[:]
            release_free_memory()  # this part's batches are free now: keep RSS flat across parts (heap.py)

        return write

    def close(self, extra: dict) -> None:
        self.wait()
        self._writer.shutdown()
        if self._pending or self._part == 0:
            self._take_part()()
        write_json(
            self.folder / INDEX_FILE,
            {
                "feature_config": self.feature_config,
                "dim": self.dim,
                "frame_rate_hz": self.frame_rate_hz,
                "num_parts": self._part,
                "num_frames": sum(e.num_frames for e in self.entries),
                "utterances": [[e.utt_id, e.num_frames, e.part, e.offset] for e in self.entries],
                **extra,
            },
        )
        (self.folder / PROGRESS_FILE).unlink(missing_ok=True)


class FeatureStore:
    def __init__(self, folder: Path):
        index_path = folder / INDEX_FILE
        if not index_path.exists():
            raise MissingArtifactError(index_path, "features")
        self.folder = folder
        self.index = json.loads(index_path.read_text())
        self.feature_config: dict = self.index["feature_config"]
        self.dim: int = self.index["dim"]
        self.frame_rate_hz: float = self.index["frame_rate_hz"]
        self.num_frames: int = self.index["num_frames"]
        self.utterances = [StoredUtterance(*row) for row in self.index["utterances"]]

    def load_part(self, part: int) -> torch.Tensor:
        with safe_open(str(self.folder / f"part-{part:05d}.safetensors"), framework="pt") as handle:
            return handle.get_tensor("frames").to(torch.float32)  # float16 parts (features.store_dtype) widened

    def iter_parts(self) -> Iterator[tuple[list[StoredUtterance], torch.Tensor]]:
        """(utterances of the part, their frames concatenated (part_frames, dim)), in dataset order."""
        by_part: dict[int, list[StoredUtterance]] = {}
        for entry in self.utterances:
            by_part.setdefault(entry.part, []).append(entry)
        for part in range(self.index["num_parts"]):
            yield by_part.get(part, []), self.load_part(part)

    def iter_utterances(self) -> Iterator[FeatureMatrix]:
        for entries, frames in self.iter_parts():
            for entry in entries:
                yield FeatureMatrix(
                    entry.utt_id, frames[entry.offset : entry.offset + entry.num_frames], self.frame_rate_hz
                )

    def gather(self, frame_indices: torch.Tensor) -> torch.Tensor:
        """Rows at sorted global frame indices (num,) -> (num, dim), reading one part at a time."""
        out = torch.empty(frame_indices.numel(), self.dim)
        start = filled = 0
        for _, frames in self.iter_parts():
            stop = start + frames.shape[0]
            upto = int(torch.searchsorted(frame_indices, stop))
            out[filled:upto] = frames[frame_indices[filled:upto] - start]
            filled, start = upto, stop
        return out

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-dimension mean and standard deviation over all stored frames (float64 sums)."""
        total = torch.zeros(self.dim, dtype=torch.float64)
        total_sq = torch.zeros(self.dim, dtype=torch.float64)
        for _, frames in self.iter_parts():
            total += frames.to(torch.float64).sum(dim=0)
            total_sq += frames.to(torch.float64).square().sum(dim=0)
        mean = total / max(self.num_frames, 1)
        std = (total_sq / max(self.num_frames, 1) - mean.square()).clamp(min=0).sqrt()
        return mean.float(), std.clamp(min=1e-5).float()
