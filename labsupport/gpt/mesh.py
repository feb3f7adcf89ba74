"""The device mesh: which global rank holds which data-parallel replica, stage and shard.

Ranks are laid out as a (dp, pp, tp) grid with TP innermost, torchtitan's order:

    rank = d · (pp·tp) + s · tp + t        (d: replica, s: pipeline stage, t: TP shard)

so TP peers are adjacent ranks -- on a real cluster, GPUs of one node, joined by NVLink: TP
communicates inside every layer, forward and backward, the most often of the three.

Three ways to get the groups, all giving the same members:
- ``mesh_ranks``: the arithmetic alone (no process group), e.g. for a picture or a check;
- ``build_groups``: ``dist.new_group`` for every group of every dimension, on every rank, in
  the same order (new_group is collective: its groups are numbered by call order);
- ``build_mesh``: ``torch.distributed.device_mesh.init_device_mesh``, the API torchtitan uses
  (measured here on gloo/CPU: 2-D and 3-D meshes work, size-1 dimensions too).
"""
from __future__ import annotations

import contextlib
import datetime
from dataclasses import dataclass

DIMS = ("dp", "pp", "tp")


@dataclass(frozen=True)
class Layout:
    """A (dp, pp, tp) layout of ``dp·pp·tp`` ranks.

    ``sequence_parallel``: Megatron's sequence parallelism (Korthikanti et al. 2022) over the TP
    group -- the LayerNorms and residual adds work on this rank's s/t tokens (see
    ``gpt.parallel``); needs tp >= 2. The mesh is the same.
    """

    dp: int = 1
    pp: int = 1
    tp: int = 1
    sequence_parallel: bool = False

    def __post_init__(self):
        for dim in DIMS:
            value = getattr(self, dim)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{dim} must be a whole number >= 1, got {value!r}")
        if not isinstance(self.sequence_parallel, bool):
            raise ValueError(f"sequence_parallel must be True or False, got "
                             f"{self.sequence_parallel!r}")
        if self.sequence_parallel and self.tp == 1:
            raise ValueError("sequence parallelism shards activations over the TP group: it "
                             "needs tp >= 2; set sequence_parallel=False or raise tp")

    @property
    def world_size(self) -> int:
        return self.dp * self.pp * self.tp

    def coords(self, rank: int) -> tuple:
        """(d, s, t) of a global rank."""
        return rank // (self.pp * self.tp), (rank // self.tp) % self.pp, rank % self.tp

    def rank(self, d: int, s: int, t: int) -> int:
        return (d * self.pp + s) * self.tp + t

    def __str__(self) -> str:
        sp = "+SP" if self.sequence_parallel else ""
        return f"dp={self.dp}×pp={self.pp}×tp={self.tp}{sp}"


def mesh_ranks(world_size: int, dp: int, pp: int, tp: int) -> dict:
    """The groups of each dimension as lists of global ranks, in a fixed order.

    ``{"dp": [[0, 4], ...], "pp": [[0, 2], ...], "tp": [[0, 1], ...]}`` for 8 ranks at (2, 2, 2):
    a TP group varies t with (d, s) fixed, a PP group (one pipeline) varies s, a DP group varies d.
    """
    lay = Layout(dp, pp, tp)
    if lay.world_size != world_size:
        raise ValueError(f"world size {world_size} ≠ dp·pp·tp = {dp}·{pp}·{tp} = "
                         f"{lay.world_size}: launch {lay.world_size} ranks, or change the layout")
    r = lay.rank
    return {
        "dp": [[r(d, s, t) for d in range(dp)] for s in range(pp) for t in range(tp)],
        "pp": [[r(d, s, t) for s in range(pp)] for d in range(dp) for t in range(tp)],
        "tp": [[r(d, s, t) for t in range(tp)] for d in range(dp) for s in range(pp)],
    }


def build_groups(rank: int, world_size: int, dp: int, pp: int, tp: int) -> dict:
    """This rank's process group of each dimension, made with ``dist.new_group``.

    Every rank calls ``new_group`` for EVERY group of every dimension, in the same order -- also
    for the groups it is not in (it gets a non-member handle back). Calling it only for one's own
    groups makes the ranks disagree on which call is which group: they hang, or worse, get wired
    into the wrong groups.

    Returns:
        {"dp": group, "pp": group, "tp": group}, each the group holding ``rank``.
    """
    import torch.distributed as dist

    mine = {}
    for dim, groups in mesh_ranks(world_size, dp, pp, tp).items():
        for ranks in groups:
            group = dist.new_group(ranks)
            if rank in ranks:
                mine[dim] = group
    return mine


def build_mesh(layout: Layout, device_type: str | None = None):
    """``init_device_mesh(device_type, (dp, pp, tp), mesh_dim_names=("dp", "pp", "tp"))``.

    device_type: "cuda" on NCCL ranks, "cpu" on gloo (default: from ``rank_device()``).
    """
    from torch.distributed.device_mesh import init_device_mesh

    from ..devices import rank_device

    device_type = device_type or rank_device().type
    return init_device_mesh(device_type, (layout.dp, layout.pp, layout.tp), mesh_dim_names=DIMS)


@contextlib.contextmanager
def group_timeout(seconds: float | None):
    """Give the process groups created inside the block a ``seconds`` timeout.

    ``new_group`` (and ``init_device_mesh``) default to torch's 30-minute timeout, not the default
    group's: a mistake in group creation would then hang for half an hour. torch reads the
    default from ``distributed_c10d.default_pg_timeout`` at each call; set it for the block.
    """
    import torch.distributed.distributed_c10d as c10d

    if seconds is None:
        yield
        return
    saved = c10d.default_pg_timeout
    c10d.default_pg_timeout = datetime.timedelta(seconds=seconds)
    try:
        yield
    finally:
        c10d.default_pg_timeout = saved


def plot_mesh(layout: Layout, stage_layers=None, vocab_size=None, n_head=None, ax=None):
    """The mesh as a picture: one panel per data-parallel replica, stages as rows, TP shards as
    columns; each cell names its global rank, its stage's layers and its shard.

    Args:
        stage_layers: per stage, a short text of the layers it holds (e.g. "emb, blocks 0–1").
        vocab_size, n_head: to print each shard's vocabulary rows and heads.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    dp, pp, tp = layout.dp, layout.pp, layout.tp
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.9 * tp * dp + 0.6 * (dp - 1) + 1.0, 1.25 * pp + 0.8))
    colors = plt.get_cmap("Pastel1")
    gap = 0.6
    for d in range(dp):
        x0 = d * (tp + gap)
        ax.text(x0 + tp / 2, pp + 0.15, f"replica d={d}" if dp > 1 else "", ha="center",
                fontsize=9, weight="bold")
        for s in range(pp):
            for t in range(tp):
                y = pp - 1 - s
                ax.add_patch(FancyBboxPatch((x0 + t + 0.05, y + 0.06), 0.9, 0.86,
                                            boxstyle="round,pad=0.02", fc=colors(s % 9),
                                            ec="black", lw=0.8))
                lines = [f"rank {layout.rank(d, s, t)}", f"stage {s}, shard {t}"]
                if stage_layers is not None:
                    lines.append(stage_layers[s])
                if n_head is not None:
                    k = n_head // tp
                    lines.append(f"heads {t * k}–{(t + 1) * k - 1}")
                if vocab_size is not None:
                    k = vocab_size // tp
                    lines.append(f"vocab {t * k}–{(t + 1) * k - 1}")
                ax.text(x0 + t + 0.5, y + 0.5, "\n".join(lines), ha="center", va="center",
                        fontsize=7)
    ax.set_xlim(-0.1, dp * tp + (dp - 1) * gap + 0.1)
    ax.set_ylim(-0.1, pp + 0.45)
    ax.axis("off")
    ax.set_title(f"mesh {layout} = {layout.world_size} ranks: TP peers side by side (adjacent "
                 "ranks), a pipeline runs down a column", fontsize=9)
    if fig is not None:
        fig.tight_layout()
    return ax
