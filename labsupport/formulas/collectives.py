"""Bytes a collective moves: the ring model, and what gloo's implementation really moves.

Three numbers describe one collective on a group of t ranks, for an N-byte tensor:

* **handed**: what each rank passes in -- what ``count_collectives`` records. All-reduce,
  reduce-scatter and broadcast: the whole N-byte tensor; all-gather: the rank's N/t shard;
  send: the N-byte message.
* **ring**: bytes each rank sends in the bandwidth-optimal ring algorithm (NCCL's for large
  messages): all-gather and reduce-scatter ``(t-1)/t * N``, all-reduce = reduce-scatter +
  all-gather ``2(t-1)/t * N`` (almost 2N for large t, not t*N).
* **host total**: bytes on the wire summed over the t ranks, as one host's loopback counter
  sees them under gloo. Measured on this course's machine (torch 2.13, gloo, 8 MiB tensors,
  COURSE_DESIGN §4): all-reduce 2.0N at 2 ranks and 6.0N at 4, i.e. ``2(t-1) N`` (= t x the ring
  figure); all-gather ``(t-1) N``; broadcast ``(t-1) N``; send N. gloo's reduce-scatter moves
  **all-reduce traffic**, ``2(t-1) N`` -- twice the ring formula (it all-reduces, then keeps a
  shard). TCP/IP framing adds well under 1 % for messages of 1 MiB or more.
"""
from __future__ import annotations

OPS = ("all_reduce", "all_gather", "reduce_scatter", "broadcast", "send")


def _check(n_bytes, world_size) -> None:
    if n_bytes < 0:
        raise ValueError(f"n_bytes must be >= 0, got {n_bytes}")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a whole number >= 1, got {world_size!r}")


def all_gather_bytes(n_bytes: float, world_size: int) -> float:
    """Bytes each rank receives (and sends) to all-gather a result of ``n_bytes`` total:
    it already holds its own 1/t, so it receives the other (t-1)/t·N."""
    _check(n_bytes, world_size)
    return (world_size - 1) / world_size * n_bytes


def reduce_scatter_bytes(n_bytes: float, world_size: int) -> float:
    """Bytes each rank sends (and receives) in a ring reduce-scatter of an N-byte tensor: (t-1)/t·N."""
    _check(n_bytes, world_size)
    return (world_size - 1) / world_size * n_bytes


def ring_all_reduce_bytes(n_bytes: float, world_size: int) -> float:
    """Bytes each rank sends (and receives) in a ring all-reduce of an N-byte tensor:
    a reduce-scatter then an all-gather, 2(t-1)/t·N -- almost 2N for large t, not t·N."""
    _check(n_bytes, world_size)
    return 2 * (world_size - 1) / world_size * n_bytes


def ring_bytes(op: str, n_bytes: float, world_size: int) -> float:
    """Bytes one rank sends for ``op`` on an N-byte tensor (the full tensor, not a shard) in the
    ring model. Broadcast: a pipelined ring, (t-1)/t·N per rank on average; send: N."""
    _check(n_bytes, world_size)
    if op == "all_reduce":
        return ring_all_reduce_bytes(n_bytes, world_size)
    if op in ("all_gather", "reduce_scatter", "broadcast"):
        return (world_size - 1) / world_size * n_bytes
    if op == "send":
        return float(n_bytes)
    raise ValueError(f"unknown collective {op!r}: use one of {', '.join(OPS)}")


def gloo_host_bytes(op: str, n_bytes: float, world_size: int) -> float:
    """Bytes gloo puts on one host's loopback for ``op`` on an N-byte tensor, all t ranks together.

    Measured (module docstring): all-reduce and reduce-scatter ``2(t-1) N``, all-gather and
    broadcast ``(t-1) N``, send ``N``. N is the full tensor (all-gather: the gathered result).
    """
    _check(n_bytes, world_size)
    if op in ("all_reduce", "reduce_scatter"):
        return 2 * (world_size - 1) * n_bytes
    if op in ("all_gather", "broadcast"):
        return (world_size - 1) * n_bytes
    if op == "send":
        return float(n_bytes)
    raise ValueError(f"unknown collective {op!r}: use one of {', '.join(OPS)}")


def handed_bytes(op: str, n_bytes: float, world_size: int) -> float:
    """Bytes one rank hands to ``op`` for an N-byte (full) tensor: N/t for all-gather (its
    shard), N for the others -- what ``labsupport.tensor_parallel.count_collectives`` records."""
    _check(n_bytes, world_size)
    if op == "all_gather":
        return n_bytes / world_size
    if op in OPS:
        return float(n_bytes)
    raise ValueError(f"unknown collective {op!r}: use one of {', '.join(OPS)}")
