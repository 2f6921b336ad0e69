"""The train stage: k-means on a uniform sample of the stored features (distributed under torchrun)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..codebook import Codebook, kmeans
from ..codebook.codebook import num_streams, stream_slices
from ..codebook.kmeans import KMeansResult
from ..codebook.kmeans_checkpoint import KMeansCheckpointFile
from ..config import CodebookConfig, DataConfig, FeatureConfig
from ..errors import ConfigError
from ..featstore import FeatureStore
from ..manifest import shard
from ..ranks import distributed
from ..run_folder import RunFolder
from ..units import UNIT_KINDS
from .markers import already_done, features_key, mark_done, stage_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainedCodebook:
    fingerprint: str
    inertia: float
    num_iterations: int


def train_codebook(
    codebook: CodebookConfig,
    data: DataConfig,
    features: FeatureConfig,
    seed: int,
    overwrite: bool,
    folder: RunFolder,
    device: torch.device,
    per_rank: bool = False,
) -> TrainedCodebook | None:
    """per_rank: under torchrun, this folder holds one rank's shard of the data."""
    if codebook.path:
        log.info("train: reusing codebook %s, nothing to train", codebook.path)
        return None
    if not UNIT_KINDS.get(codebook.name).trains_codebook:
        log.info("train: codebook=%s uses the trained encoder's own quantizer, nothing to train", codebook.name)
        return None
    c = codebook
    key = stage_key(
        features_key(data, features), "train", c.codebook_size, c.max_iter, c.tol, c.n_init, c.max_train_frames,
        c.precision, seed,
    )  # fmt: skip
    if already_done(folder, "train", key, overwrite):
        return None
    store = FeatureStore(folder.features_dir)
    frames, mean, std, take = _training_frames(store, codebook, seed, per_rank)
    log.info("train: k-means K=%d on %d of %d frames (dim %d) on %s", c.codebook_size, take, store.num_frames,
             store.dim, device)  # fmt: skip
    streams = stream_slices(store.dim, num_streams(store.feature_config))
    files = [KMeansCheckpointFile(folder.kmeans_checkpoint(s), key, c.checkpoint_every_s) for s in range(len(streams))]
    fit = _join([_fit(frames[:, part], codebook, seed, device, per_rank, file) for part, file in zip(streams, files)])
    result = _save(fit, store, mean, std, take, codebook, seed, device, folder)
    for file in files:
        file.remove()
    mark_done(folder, "train", key)
    if distributed():
        torch.distributed.barrier()  # no rank goes on to quantize before rank 0 has written the codebook
    log.info(
        "train: inertia %.6g after %d iterations; codebook %s", fit.inertia, fit.num_iterations, result.fingerprint
    )
    return result


def _fit(frames, codebook: CodebookConfig, seed: int, device, per_rank: bool, checkpoint) -> KMeansResult:
    """One stream's k-means; resumable mid-way through `checkpoint` (under torchrun too: rank 0 writes it)."""
    frames = frames.contiguous()
    if distributed():
        return _train_distributed(frames, codebook, seed, device, per_rank, checkpoint)
    c = codebook
    return kmeans(
        frames.to(device), c.codebook_size, generator=torch.Generator(device=device).manual_seed(seed),
        max_iter=c.max_iter, tol=c.tol, n_init=c.n_init, chunk_size=c.chunk_size, progress=True, precision=c.precision,
        checkpointer=checkpoint,
    )  # fmt: skip


def _join(fits: list[KMeansResult]) -> KMeansResult:
    """The k-means of each stream (multi-layer tokens) side by side, as the codebook stores them."""
    if len(fits) == 1:
        return fits[0]
    return KMeansResult(
        centroids=torch.cat([fit.centroids for fit in fits], dim=1),
        inertia=sum(fit.inertia for fit in fits),
        num_iterations=max(fit.num_iterations for fit in fits),
        converged=all(fit.converged for fit in fits),
    )


def _training_frames(store: FeatureStore, codebook: CodebookConfig, seed: int, per_rank: bool):
    """A uniform sample of at most max_train_frames frames (globally normalized where configured)."""
    size = codebook.codebook_size
    if store.num_frames < size:
        raise ConfigError("codebook.codebook_size", size, f"larger than the {store.num_frames} frames available")
    mean = std = None
    if store.feature_config.get("normalize") == "global":
        mean, std = store.moments()
    cap = codebook.max_train_frames
    if per_rank:  # the cap is for the whole training set; each rank samples its share
        cap = max(1, cap // torch.distributed.get_world_size())
    take = min(store.num_frames, cap)
    indices = torch.randperm(store.num_frames, generator=torch.Generator().manual_seed(seed))[:take].sort().values
    frames = store.gather(indices)
    if mean is not None:
        frames = (frames - mean) / std
    return frames, mean, std, take


def _save(fit: KMeansResult, store, mean, std, take, codebook: CodebookConfig, seed, device, folder) -> TrainedCodebook:
    trained = Codebook(
        centroids=fit.centroids.cpu(),
        feature_config=store.feature_config,
        frame_rate_hz=store.frame_rate_hz,
        feature_mean=mean,
        feature_std=std,
        training={
            "method": "kmeans",
            "num_train_frames": take,
            "num_available_frames": store.num_frames,
            "num_utterances": len(store.utterances),
            "inertia": fit.inertia,
            "num_iterations": fit.num_iterations,
            "converged": fit.converged,
            "n_init": codebook.n_init,
            "seed": seed,
            "device": str(device),
            "source": store.index.get("source"),
        },
    )
    if not distributed() or torch.distributed.get_rank() == 0:
        trained.save(folder.codebook)
    return TrainedCodebook(trained.fingerprint, fit.inertia, fit.num_iterations)


def _train_distributed(frames: torch.Tensor, codebook: CodebookConfig, seed: int, device, per_rank: bool, checkpoint):
    """Under torchrun: rank r clusters its block of the sampled training frames (fairseq's sharding rule),
    all-reducing sums and counts; the codebook equals the single-process one up to float rounding."""
    from ..codebook.distributed import distributed_kmeans

    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if per_rank:
        block = frames  # each rank sampled from its own shard's features
    else:  # one shared feature store: rank r takes its block of the sample
        local = shard(list(range(frames.shape[0])), world, rank)
        block = frames[local[0] : local[-1] + 1] if local else frames[:0]
    log.info("train: distributed k-means, rank %d of %d with %d frames", rank, world, block.shape[0])
    return distributed_kmeans(
        block.to(device),
        codebook.codebook_size,
        seed=seed,
        max_iter=codebook.max_iter,
        tol=codebook.tol,
        chunk_size=codebook.chunk_size,
        checkpointer=checkpoint,
    )
