"""The reference answer of Lab 00's exercise: all-gather built from point-to-point messages."""
from __future__ import annotations

import torch
import torch.distributed as dist


def ring_all_gather(tensor, rank, world_size):
    """All-gather around a ring: ``world_size - 1`` steps, each rank passing one piece right.

    At step s rank r sends piece (r - s) to rank r+1 and receives piece (r - s - 1) from rank
    r-1, so after p-1 steps every rank holds every piece. Each step's send and receive are
    posted together with ``batch_isend_irecv``, which is right on both back-ends: on gloo a
    blocking ``send`` waits for the matching receive, so a ring of send-then-recv deadlocks;
    on NCCL an ``isend`` then a ``recv`` with the same peer (at 2 ranks the left and right
    neighbours are one rank) queue one after the other on one stream and deadlock once the
    message outgrows NCCL's buffers, while a batch is one grouped NCCL call in which both
    progress together.

    Args:
        tensor: this rank's piece, any shape.
        rank, world_size: this process's rank and the number of ranks.
    Returns:
        list of ``world_size`` tensors shaped like ``tensor``; item i is rank i's piece.
    """
    pieces = [torch.empty_like(tensor) for _ in range(world_size)]
    pieces[rank] = tensor.clone()
    right, left = (rank + 1) % world_size, (rank - 1) % world_size
    for step in range(world_size - 1):
        send_index = (rank - step) % world_size
        recv_index = (rank - step - 1) % world_size
        step_ops = [dist.P2POp(dist.isend, pieces[send_index], right),
                    dist.P2POp(dist.irecv, pieces[recv_index], left)]
        for request in dist.batch_isend_irecv(step_ops):
            request.wait()
    return pieces
