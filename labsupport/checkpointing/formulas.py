"""Memory formulas of Lab 05, in bytes. fp32 = 4 bytes per element unless told otherwise.

Units: ``x`` is the bytes of one block input ``[T, d]``; ``a`` the bytes one block saves for
backward when it is *not* checkpointed (its input included).
"""
from __future__ import annotations

import math

# Korthikanti et al.'s formula and the Lab 05 block's terms live in the torch-free
# labsupport.formulas.activations (shared with the planner); re-exported here.
from ..formulas.activations import (  # noqa: F401  (re-exported)
    korthikanti_bytes, transformer_block_bytes, transformer_block_terms)


def predict_mlp_saved_bytes(tokens: int, d: int, h: int, checkpoint_middle: bool,
                            bytes_per_element: int = 4) -> int:
    """Bytes autograd saves in :class:`SeedMLP`'s forward (new storages: x excluded).

    Plain: a1, a2, a3 (each [T, h], saved by a ReLU and the next Linear, stored once) = 3 T h.
    Middle checkpointed: its input a1 is kept, its output a3 is saved by the last Linear, only
    the inner a2 is dropped = 2 T h. ``d`` does not matter: x existed before, the output
    [T, d] is saved by nobody.
    """
    n = 2 if checkpoint_middle else 3
    return n * tokens * h * bytes_per_element


def segment_memory(layers: int, segments: int, x: float, a: float, g: float = 0.0) -> dict[str, float]:
    """Memory model of ``layers`` blocks in ``segments`` checkpointed segments (bytes above start).

    Args:
        x: bytes of one block input [T, d]; a: bytes one un-checkpointed block saves;
        g: bytes of one block's parameter gradients (0 to ignore them).
    after_forward: the segment inputs (the first is the model input, not new) + the output
        = ``segments * x``.
    backward_peak: while segment j (1-based, cut by :func:`split_evenly`, longer ones first) is
        recomputed, the inputs of segments 1..j (j·x, the output counted in place of the
        first), its recomputed activations (len_j · a) and the parameter gradients of every
        block after it are alive: max over j. Gradient temporaries (a few x) are left out.
        With g = 0 and equal segments this is k·x + (L/k)·a, smallest at k = sqrt(L·a/x):
        that is sqrt(L) only when a block saves about as much as its input (a = x).
    """
    from .models import split_evenly

    segs = split_evenly(layers, segments)
    peak = max((j + 1) * x + len(seg) * a + (layers - seg.stop) * g for j, seg in enumerate(segs))
    return {"after_forward": segments * x, "backward_peak": peak}


def best_segments(layers: int, x: float, a: float, g: float = 0.0) -> tuple[int, float]:
    """(best integer segment count by :func:`segment_memory`, continuous optimum sqrt(L a / x)).
    Ties go to the fewer segments (less recompute bookkeeping, same memory)."""
    best = min(range(1, layers + 1),
               key=lambda k: (segment_memory(layers, k, x, a, g)["backward_peak"], k))
    return best, math.sqrt(layers * a / x)
