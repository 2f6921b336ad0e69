"""heap.release_free_memory: freed heap pages go back to the OS, and the features writer asks for it per part."""

import sys

import numpy as np
import pytest
import torch

from speechvq import featstore, heap
from speechvq.featstore import FeatureStore, FeatureWriter
from speechvq.records import FeatureMatrix


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux") or heap._malloc_trim() is None, reason="needs glibc")
def test_free_heap_memory_goes_back_to_the_os():
    # 200 MB of 64 KiB blocks (below glibc's mmap threshold: they live in the heap), touched so they are resident;
    # one more block allocated last keeps the heap's top in use, so free() alone cannot shrink it.
    blocks = [np.ones(16 << 10, dtype=np.float32) for _ in range(3200)]
    pin = np.ones(16 << 10, dtype=np.float32)
    del blocks
    before = _rss_mb()
    assert heap.release_free_memory()
    after = _rss_mb()
    assert before - after > 100, (before, after)
    assert pin.sum() == 16 << 10


def test_the_features_writer_releases_free_memory_once_per_part(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(featstore, "release_free_memory", lambda: calls.append(1))
    writer = FeatureWriter(tmp_path, {"name": "test"}, 3, 100.0, part_bytes=10 * 4 * 3)  # 10 frames a part
    for index in range(7):
        writer.add(FeatureMatrix(f"u{index}", torch.full((4, 3), float(index)), 100.0))
        writer.checkpoint("key", {"consumed": index + 1})  # a part is written once 10 frames are waiting
    writer.close({})
    store = FeatureStore(tmp_path)
    assert len(calls) == store.index["num_parts"] > 2
    frames = {m.utt_id: m.frames for m in store.iter_utterances()}  # the parts were written before their release
    assert [float(frames[f"u{index}"][0, 0]) for index in range(7)] == list(map(float, range(7)))
