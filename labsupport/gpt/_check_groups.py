"""Exercise (b): building the TP / PP / DP groups with ``dist.new_group``.

The student writes ``fn(rank, world_size, dp, pp, tp) -> {"dp": group, "pp": group, "tp": group}``.
Two stages:

1. **Planned, in this process, for many layouts** (no ranks, instant): ``dist.new_group`` is
   replaced by a recorder that returns a ``PlannedGroup`` holding its ranks. Calling ``fn`` once
   per rank shows which groups each rank creates, in which order, and which it returns -- so the
   check sees the classic mistake (new_group called only for the rank's own groups) without
   having to wait for it to hang.
2. **Real, on 4 ranks**: the same function with real groups, then an all-reduce of the rank ids
   over each returned group proves the groups work.
"""
from __future__ import annotations

import contextlib
from unittest import mock

import torch

from ..checks import CheckFailure, call_student
from .mesh import Layout, group_timeout, mesh_ranks

LAYOUTS = ((1, 2, 2), (2, 2, 2), (2, 1, 4), (4, 2, 1), (1, 4, 1), (3, 2, 2), (2, 3, 2))
REAL_LAYOUTS = ((1, 2, 2), (2, 1, 2))  # on 4 ranks
DIM_WORDS = {"tp": "a TP group holds the t shards of one stage of one replica (same d, s)",
             "pp": "a PP group is one pipeline: one rank of every stage, same d and t",
             "dp": "a DP group holds the replicas of one shard: same s and t, every d"}


class PlannedGroup:
    """What the recording ``new_group`` returns: the ranks it was asked for."""

    def __init__(self, ranks):
        self.ranks = tuple(sorted(int(r) for r in ranks))

    def __repr__(self):
        return f"group{list(self.ranks)}"


@contextlib.contextmanager
def planned_dist(rank: int, world_size: int, calls: list):
    """torch.distributed as seen by ``rank`` of ``world_size``, with new_group recorded."""
    import torch.distributed as dist
    import torch.distributed.distributed_c10d as c10d

    def new_group(ranks=None, *args, **kwargs):
        group = PlannedGroup(range(world_size) if ranks is None else ranks)
        calls.append(group.ranks)
        return group

    patches = [mock.patch.object(mod, "new_group", new_group) for mod in (dist, c10d)]
    patches += [mock.patch.object(mod, "get_rank", lambda group=None: rank) for mod in (dist, c10d)]
    patches += [mock.patch.object(mod, "get_world_size", lambda group=None: world_size)
                for mod in (dist, c10d)]
    patches += [mock.patch.object(dist, "get_process_group_ranks", lambda g: list(g.ranks))]
    with contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        yield


def plan(student_fn, layout, name):
    """Per rank: (new_group calls in order, {dim: ranks of the returned group})."""
    dp, pp, tp = layout
    world = dp * pp * tp
    out = []
    for rank in range(world):
        calls = []
        with planned_dist(rank, world, calls):
            try:
                got = call_student(student_fn, rank, world, dp, pp, tp, name=name)
            except NotImplementedError:
                raise
            except Exception as exc:  # noqa: BLE001 -- the student's error, explained
                raise CheckFailure(
                    f"{name}(rank={rank}, world_size={world}, dp={dp}, pp={pp}, tp={tp}) raised "
                    f"{type(exc).__name__}: {exc}. (This part of the check runs your function "
                    "once per rank in this process, with dist.new_group recorded: build the "
                    "groups with dist.new_group and plain arithmetic.)") from None
        out.append((calls, got))
    return out


def _returned(got, rank, where):
    if not isinstance(got, dict) or set(got) != {"dp", "pp", "tp"}:
        keys = sorted(got) if isinstance(got, dict) else type(got).__name__
        raise CheckFailure(f"{where}: return a dict with keys 'dp', 'pp', 'tp' (this rank's group "
                           f"of each dimension), got {keys}")
    out = {}
    for dim, g in got.items():
        if not isinstance(g, PlannedGroup):
            raise CheckFailure(f"{where}: the '{dim}' entry is {g!r}, not a group made by "
                               "dist.new_group")
        if rank not in g.ranks:
            raise CheckFailure(f"{where}: the '{dim}' group returned is {list(g.ranks)}, which "
                               f"does not contain rank {rank}: return the group this rank is in")
        out[dim] = g.ranks
    return out


def judge_plan(planned, layout, name):
    """Raise CheckFailure naming the first problem of one layout's planned groups."""
    dp, pp, tp = layout
    lay = Layout(dp, pp, tp)
    where0 = f"layout dp={dp}, pp={pp}, tp={tp} ({lay.world_size} ranks)"
    calls0 = planned[0][0]
    for rank, (calls, _) in enumerate(planned):
        if calls != calls0:
            k = next((i for i, (a, b) in enumerate(zip(calls, calls0)) if a != b),
                     min(len(calls), len(calls0)))
            mine = list(calls[k]) if k < len(calls) else "nothing"
            theirs = list(calls0[k]) if k < len(calls0) else "nothing"
            raise CheckFailure(
                f"{where0}: rank 0 and rank {rank} called dist.new_group differently: call "
                f"{k + 1} was for {theirs} on rank 0 but for {mine} on rank {rank} (rank 0 made "
                f"{len(calls0)} calls, rank {rank} {len(calls)}). new_group is collective over "
                "the WHOLE world: every rank must call it for every group of every dimension, in "
                "the same order, also for the groups it is not in. Calling it only for the "
                "rank's own groups is the classic hang -- the ranks disagree about which call "
                "made which group, so they wait forever, or get wired into the wrong groups.")
    expected = mesh_ranks(lay.world_size, dp, pp, tp)
    for rank, (_, got) in enumerate(planned):
        where = f"{where0}, rank {rank}"
        groups = _returned(got, rank, where)
        for dim in ("tp", "pp", "dp"):
            want = next(tuple(g) for g in expected[dim] if rank in g)
            have = groups[dim]
            if have == want:
                continue
            if dim == "tp" and len(have) == tp and have != tuple(range(have[0], have[0] + tp)):
                raise CheckFailure(
                    f"{where}: its TP group is {list(have)}; TP peers must be ADJACENT ranks "
                    f"({list(want)}): TP is the innermost dimension, rank = d·pp·tp + s·tp + t, "
                    "because TP communicates inside every layer and belongs inside one node "
                    "(NVLink) on a real cluster")
            size = {"dp": dp, "pp": pp, "tp": tp}[dim]
            sized = f" ({len(have)} ranks, a {dim} group has {dim}={size})" \
                if len(have) != size else ""
            raise CheckFailure(f"{where}: its {dim.upper()} group is {list(have)}{sized}, "
                               f"expected {list(want)}: {DIM_WORDS[dim]}")
    for dim in ("tp", "pp", "dp"):  # every rank in exactly one group per dimension
        made = {tuple(g) for g in expected[dim]}
        missing = [g for g in made if g not in set(planned[0][0])]
        if missing:
            raise CheckFailure(f"{where0}: the {dim.upper()} group {list(missing[0])} was never "
                               "created: every group of every dimension needs its new_group call")
    return len(planned)


def run_real_groups(rank, world_size, student_fn, name, timeout_s):
    """On every rank: the student's groups for REAL_LAYOUTS, each proven by an all-reduce."""
    import torch.distributed as dist

    out = []
    for dp, pp, tp in REAL_LAYOUTS:
        with group_timeout(timeout_s):
            got = call_student(student_fn, rank, world_size, dp, pp, tp, name=name)
        sums = {}
        for dim, group in got.items():
            x = torch.tensor([float(rank)])
            dist.all_reduce(x, group=group)
            sums[dim] = (float(x), tuple(dist.get_process_group_ranks(group)))
        out.append(((dp, pp, tp), sums))
    return out


def judge_real(results, name):
    for rank, per_rank in enumerate(results):
        for layout, sums in per_rank:
            expected = mesh_ranks(4, *layout)
            for dim, (total, ranks) in sums.items():
                want = next(g for g in expected[dim] if rank in g)
                if total != float(sum(want)):
                    raise CheckFailure(
                        f"on 4 real ranks, layout (dp, pp, tp)={layout}, rank {rank}: an "
                        f"all-reduce over its {dim.upper()} group summed the ranks to {total:g}, "
                        f"but its members {want} sum to {sum(want)}: the group is wired to other "
                        "ranks than it claims -- every rank must create every group, in the same "
                        "order")
