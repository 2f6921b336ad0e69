"""Launched by tests/test_distributed.py with torchrun: each rank clusters its block of the same frames."""

import sys

import torch
import torch.distributed as dist

from speechvq.codebook.distributed import distributed_kmeans

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
g = torch.Generator().manual_seed(0)
frames = torch.cat([torch.randn(3000, 6, generator=g) + 8 * torch.randn(1, 6, generator=g) for _ in range(12)])
blocks = [round(frames.shape[0] * r / world) for r in range(world + 1)]
local = frames[blocks[rank] : blocks[rank + 1]]
result = distributed_kmeans(local, int(sys.argv[2]), seed=3, max_iter=50)
if rank == 0:
    torch.save(
        {"centroids": result.centroids, "inertia": result.inertia, "iterations": result.num_iterations}, sys.argv[1]
    )
dist.destroy_process_group()
