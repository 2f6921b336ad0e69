"""Launched by tests/test_distributed.py with torchrun: distributed k-means that checkpoints every iteration
(rank 0 writes) and resumes from the checkpoint on a rerun. argv: result file, checkpoint file."""

import logging
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from speechvq.codebook.distributed import distributed_kmeans
from speechvq.codebook.kmeans_checkpoint import KMeansCheckpointFile

logging.basicConfig(level=logging.INFO)  # the test reads "resumed after" from the log
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
frames = torch.rand(40_000, 16, generator=torch.Generator().manual_seed(0))  # no natural clusters: many iterations
blocks = [round(frames.shape[0] * r / world) for r in range(world + 1)]
checkpoint = KMeansCheckpointFile(Path(sys.argv[2]), key="resume-test", every_s=0)
found = checkpoint.load() if rank == 0 else None
result = distributed_kmeans(
    frames[blocks[rank] : blocks[rank + 1]], 200, seed=3, max_iter=400, tol=0.0, checkpointer=checkpoint
)
if rank == 0:
    resumed_after = len(found.history) if found else 0
    torch.save({"centroids": result.centroids, "iterations": result.num_iterations, "resumed_after": resumed_after},
               sys.argv[1])  # fmt: skip
dist.destroy_process_group()
