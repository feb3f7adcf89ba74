"""The reference answer of Lab 00's exercise: all-gather built from point-to-point messages."""
from __future__ import annotations

import torch
import torch.distributed as dist


def ring_all_gather(tensor, rank, world_size):
    """All-gather around a ring: ``world_size - 1`` steps, each rank passing one piece right.

    At step s rank r sends piece (r - s) to rank r+1 and receives piece (r - s - 1) from rank
    r-1, so after p-1 steps every rank holds every piece. The send is posted with ``isend``
    before the blocking ``recv``: if every rank called a blocking ``send`` first, each would
    wait for a receive its neighbour never reaches (gloo), a deadlock.

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
        request = dist.isend(pieces[send_index], dst=right)   # non-blocking: no deadlock
        dist.recv(pieces[recv_index], src=left)
        request.wait()
    return pieces
