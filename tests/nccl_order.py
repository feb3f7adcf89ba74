"""NCCL's ordering rule, checked without NCCL: does a recorded sequence of calls deadlock?

On NCCL every operation of one communicator runs on that communicator's stream, in the order the
rank posted it; tags are ignored. Since ``init_process_group(device_id=...)`` (the launcher's
eager init) single sends and receives use the group's own communicator too, so they queue
behind and in front of the group's collectives (torch's "eager init P2P serialization"). A send
completes only when the peer's matching receive runs (messages beyond NCCL's buffers: the worst
case, and the one a larger batch reaches). A host sync (``dist.barrier``, a blocking send/recv,
``torch.cuda.synchronize``) holds the host until everything the rank posted has run.

``RecordingDist`` stands in for ``torch.distributed`` while one rank's code runs (never
blocking); ``deadlock(records)`` then plays all ranks' records by those rules and returns None
or a description of where they got stuck.
"""
from __future__ import annotations


class _Work:
    def wait(self):  # NCCL: the caller's stream waits, the host does not
        return True


class RecordingDist:
    """``dist`` for rank ``rank``: appends ("post", group, op, peer) / ("sync",) to ``log``."""

    def __init__(self, rank, log):
        self.rank, self.log = rank, log

    def _post(self, group, op, peer=None):
        self.log.append(("post", "default" if group is None else group, op, peer))
        return _Work()

    def sync(self, *args, **kwargs):
        self.log.append(("sync",))

    def barrier(self, group=None, **kwargs):
        self._post(group, "barrier")
        self.sync()

    def all_reduce(self, tensor, op=None, group=None, async_op=False):
        work = self._post(group, "all_reduce")
        if not async_op:
            self.sync()
        return work

    def isend(self, tensor, dst, group=None, tag=0):
        return self._post(group, "send", dst)

    def irecv(self, tensor, src, group=None, tag=0):
        return self._post(group, "recv", src)

    def send(self, tensor, dst, group=None, tag=0):
        self._post(group, "send", dst)
        self.sync()

    def recv(self, tensor, src, group=None, tag=0):
        self._post(group, "recv", src)
        self.sync()


def deadlock(records):
    """Play every rank's record (``records[r]``: what rank r did, in order) under NCCL's rule.

    Returns None when every posted operation completes, else a line saying what each stuck
    communicator queue starts with.
    """
    ranks = range(len(records))
    pos = [0] * len(records)
    queues = {}  # (rank, group) -> [op, ...] posted, not yet run
    members = {}  # group -> ranks that post on it (the default group: every rank)
    for r in ranks:
        for item in records[r]:
            if item[0] == "post":
                members.setdefault(item[1], set()).add(r)
    members["default"] = set(ranks)

    def pending(r):
        return any(q for (rr, _), q in queues.items() if rr == r)

    progress = True
    while progress:
        progress = False
        for r in ranks:  # each host runs until it must wait for its device
            while pos[r] < len(records[r]):
                item = records[r][pos[r]]
                if item[0] == "sync":
                    if pending(r):
                        break
                else:
                    _, group, op, peer = item
                    queues.setdefault((r, group), []).append((op, peer))
                pos[r] += 1
                progress = True
        heads = {key: q[0] for key, q in queues.items() if q}
        for (r, group), (op, peer) in heads.items():
            if op == "send" and heads.get((peer, group)) == ("recv", r):
                queues[(r, group)].pop(0)
                queues[(peer, group)].pop(0)
                progress = True
                break
            if op not in ("send", "recv"):
                keys = [(rr, group) for rr in members[group]]
                if all(queues.get(k) and queues[k][0][0] == op for k in keys):
                    for k in keys:
                        queues[k].pop(0)
                    progress = True
                    break
    stuck = {key: q[0] for key, q in queues.items() if q}
    unfinished = [r for r in ranks if pos[r] < len(records[r])]
    if not stuck and not unfinished:
        return None
    return "; ".join(f"rank {r} on {g} waits in {op}" + (f" with rank {p}" if p is not None else "")
                     for (r, g), (op, p) in sorted(stuck.items(), key=str))
