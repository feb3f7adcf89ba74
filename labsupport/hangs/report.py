"""Where each rank is, and why they wait: the text of a hang report.

Input: one :class:`RankView` per rank -- what became of it (waiting inside a call, running,
returned, raised, died), its Python stack (from faulthandler or its traceback) and the calls it
issued (``record.read_calls``). Output: one-line diagnoses where the pattern is
clear (:func:`diagnose`) and a per-rank account (:func:`describe_ranks`).

The diagnoses compare the ranks' records, never guess: collectives are matched by their number
on their group (every member of a group must call the same collectives in the same order), and
point-to-point calls by who waits on whom.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .stacks import describe, short, source_line, user_frames

__all__ = ["RankView", "diagnose", "describe_ranks", "call_text", "group_text"]

P2P = ("send", "recv")
# Collectives whose contributions must agree in shape on every rank.
_SAME_SHAPE = ("all_reduce", "broadcast", "all_gather", "reduce", "reduce_scatter")


@dataclass
class RankView:
    """What the parent knows about one rank when the launch stops."""
    rank: int
    state: str                  # waiting | running | starting | returned | raised | died
    frames: list = field(default_factory=list)   # stacks.Frame, outermost first
    calls: list = field(default_factory=list)
    groups: dict = field(default_factory=dict)
    waited_s: float | None = None
    error: str = ""             # "KeyError: 'x'", "signal SIGABRT"
    notes: list = field(default_factory=list)    # what its output says (e.g. torch's warnings)
    stuck: bool = False         # ended by a timeout (the group's, NCCL's watchdog) while waiting

    def waits(self):
        """Waiting in its last call (or was, until NCCL's watchdog aborted it)."""
        return self.state == "waiting" or self.stuck

    def user_frames(self):
        return user_frames(self.frames)

    def where(self):
        """The innermost frame of the user's code (or the innermost frame), or None."""
        frames = self.user_frames() or self.frames
        return frames[-1] if frames else None

    def current(self):
        """The call this rank is inside (waiting, or raised/died in), or None.

        A waiting rank waits in its last call -- at that call's line, or, for an asynchronous
        call (``isend``, ``async_op=True``, a functional collective), where it waits for it.
        """
        if not self.calls or self.state not in ("waiting", "raised", "died"):
            return None
        last, here = self.calls[-1], self.where()
        if self.waits() or (here is not None and (here.file, here.line) == (last.file, last.line)):
            return last
        return None

    def collectives_on(self, group):
        return [c for c in self.calls if c.group == group and c.op not in P2P]


def group_text(name, groups):
    """"the default group (ranks 0, 1)", "group 'tp' (ranks 0, 1)", "group (ranks 2, 3)"."""
    desc, ranks = groups.get(name, ("", []))
    members = f"ranks {', '.join(map(str, ranks))}" if ranks else "unknown ranks"
    if desc == "default_pg":
        return f"the default group ({members})"
    if desc and desc != "undefined":
        return f"group '{desc}' ({members})"
    return f"group ({members})"


def _ranks(ranks):
    ranks = sorted(ranks)
    if len(ranks) == 1:
        return f"rank {ranks[0]}"
    return f"ranks {', '.join(map(str, ranks[:-1]))} and {ranks[-1]}"


def _at(call):
    return short(call.file, call.line)


def _fate(view, group, groups, subject="it"):
    """Why ``view``'s rank is not in a collective of ``group``: its state, in a few words."""
    before = view.collectives_on(group)
    last = f"after {before[-1].label()} at {_at(before[-1])}" if before else \
        "before any collective on that group"
    here = view.where()
    if view.state == "returned":
        notes = "".join(f"; {n}" for n in view.notes)
        return f"{subject} returned, {last}{notes}"
    if view.state == "raised":
        at = f" at {short(here.file, here.line)}" if here else ""
        return f"{subject} raised {view.error}{at}"
    if view.state == "died":
        return f"{subject} died ({view.error})"
    if view.state == "starting":
        return f"{subject} had not started yet"
    current = view.current()
    if view.waits() and current is not None:
        where = f" on {group_text(current.group, groups)}" if current.group != group else ""
        return f"{subject} waits in {current.label()}{where} at {_at(current)}"
    if here is not None:
        return f"{subject} is running {short(here.file, here.line)}, outside any collective"
    return f"{subject} is elsewhere"


def diagnose(views):
    """One-line diagnoses where the records show the pattern; [] when none is clear."""
    groups = {}
    for v in views:
        groups.update(v.groups)
    return _mismatches(views, groups) + _p2p(views) + _missing(views, groups)


def _mismatches(views, groups):
    """Collective #k of a group called with a different op, dtype or shape on some rank."""
    found = []
    by_key = {}
    for v in views:
        for c in v.calls:
            if c.op not in P2P:
                by_key.setdefault((c.group, c.seq), []).append((v.rank, c))
    for (group, seq), entries in sorted(by_key.items(), key=lambda kv: kv[1][0][1].index):
        ops = {c.op for _, c in entries}
        dtypes = {c.dtype for _, c in entries}
        shapes = {c.shapes for _, c in entries}
        if len(ops) > 1:
            what = "different collectives"
        elif len(dtypes) > 1:
            what = "different dtypes"
        elif len(shapes) > 1 and next(iter(ops)) in _SAME_SHAPE:
            what = "different shapes"
        else:
            continue
        calls = "; ".join(f"rank {r}: {c.op} {c.tensor()} at {_at(c)}" for r, c in entries)
        found.append(f"call #{seq} on {group_text(group, groups)} is made with {what} on "
                     f"different ranks ({calls}): every rank of a group must make the same "
                     "collective calls, in the same order, with tensors of the same shape and "
                     "dtype")
        break  # the first disagreement explains what follows it
    return found


def _p2p(views):
    """Ranks waiting in send/recv on each other in a cycle, or on a peer that never answers."""
    waits = {}
    for v in views:
        c = v.current()
        if v.waits() and c is not None and c.op in P2P and c.peer is not None:
            waits[v.rank] = c
    found, seen = [], set()
    for start in sorted(waits):
        path, rank = [], start
        while rank in waits and rank not in path:
            path.append(rank)
            rank = waits[rank].peer
        if rank in path and rank not in seen:
            cycle = path[path.index(rank):]
            seen.update(cycle)
            kinds = {waits[r].op for r in cycle}
            if len(cycle) == 2:
                a, b = cycle
                if kinds == {"recv"}:
                    found.append(f"ranks {a} and {b} both wait in recv from each other: a "
                                 "send/recv ordering deadlock (each waits for a message the "
                                 "other would only send afterwards)")
                elif kinds == {"send"}:
                    found.append(f"ranks {a} and {b} both wait in send to each other: a "
                                 "send/recv ordering deadlock (a blocking send waits for the "
                                 "matching recv, which each posts only afterwards)")
                else:
                    found.append(f"ranks {a} and {b} wait on each other in send/recv "
                                 f"({waits[a].label()}; {waits[b].label()}) and neither "
                                 "completes: check that sizes and tags match")
            else:
                ring = " → ".join(map(str, cycle + [cycle[0]]))
                kind = " and ".join(sorted(kinds))
                found.append(f"ranks {ring} each wait in {kind} on the next: a send/recv "
                             "ordering deadlock around the ring (if every rank sends before "
                             "it receives, no receive is ever posted)")
    by_rank = {v.rank: v for v in views}
    for rank, c in sorted(waits.items()):
        if rank in seen:
            continue
        peer = by_rank.get(c.peer)
        if peer is None:
            continue
        pc = peer.current()
        if peer.waits() and pc is not None and pc.op in P2P and pc.peer == rank:
            continue  # a matched pair that has not completed yet: nothing to say
        verb = "sends to" if c.op == "recv" else "receives from"
        found.append(f"rank {rank} waits in {c.label()}, but rank {c.peer} never {verb} it: "
                     f"{_fate(peer, c.group, {}, subject=f'rank {c.peer}')}")
    return found


def _missing(views, groups):
    """A collective some members of a group wait in that the others never entered."""
    waiting = {}
    for v in views:
        c = v.current()
        if v.waits() and c is not None and c.op not in P2P:
            waiting.setdefault((c.group, c.seq, c.op), []).append(v.rank)
    found = []
    by_rank = {v.rank: v for v in views}
    keys = list(waiting)
    for group, seq, op in keys:
        inside = waiting[(group, seq, op)]
        members = groups.get(group, ("", []))[1]
        absent = {}
        for m in members:
            if m in inside or m not in by_rank:
                continue
            entered = [c for c in by_rank[m].collectives_on(group) if c.seq == seq]
            if entered:
                continue  # it entered that call (a mismatch is reported above)
            other = by_rank[m].current()
            if (by_rank[m].waits() and other is not None and other.op == op
                    and other.group != group):
                continue  # the same op on another group: the wrong-group line below says it
            absent.setdefault(m, _fate(by_rank[m], group, groups))
        where = "" if groups.get(group, ("",))[0] == "default_pg" else \
            f" on {group_text(group, groups)}"
        by_fate = {}
        for m, fate in absent.items():  # ranks with the same story share one line
            by_fate.setdefault(fate, []).append(m)
        for fate, ranks in by_fate.items():
            subject = _ranks(ranks)
            if len(ranks) > 1:
                fate = "they" + fate[2:]
            found.append(f"{subject} never entered {op} #{seq}{where} that {_ranks(inside)} "
                         f"{'waits' if len(inside) == 1 else 'wait'} in ({fate})")
    # The same collective on two groups whose waiting ranks belong to both: they could have met,
    # but each group is its own communicator -- the wrong-group bug.
    for i, (g1, s1, op1) in enumerate(keys):
        for g2, s2, op2 in keys[i + 1:]:
            w1, w2 = waiting[(g1, s1, op1)], waiting[(g2, s2, op2)]
            m1, m2 = groups.get(g1, ("", []))[1], groups.get(g2, ("", []))[1]
            if op1 == op2 and g1 != g2 and set(w1) <= set(m2) and set(w2) <= set(m1):
                found.append(
                    f"the ranks wait in {op1} on different groups ({_ranks(w1)} on "
                    f"{group_text(g1, groups)}; {_ranks(w2)} on {group_text(g2, groups)}): each "
                    "group is a communicator of its own, so these calls never meet -- a "
                    "collective on the wrong group")
    return found


def describe_ranks(views, max_frames=4):
    """Per rank: its state, the call it is in (op, group, tensor, number), its trimmed stack and
    the collectives it entered."""
    groups = {}
    for v in views:
        groups.update(v.groups)
    lines = []
    for v in views:
        c = v.current()
        in_call = f" in {call_text(c, groups)}" if c is not None else ""
        if v.state == "waiting":
            waited = f" {v.waited_s:.1f} s" if v.waited_s is not None else ""
            head = f"waiting{waited}" + (in_call or " inside a communication call")
        elif v.state == "returned":
            head = "returned"
        elif v.state == "raised":
            head = f"raised {_short_error(v.error)}{in_call}"
        elif v.state == "died":
            head = f"died ({v.error}){in_call}"
        elif v.state == "running":
            head = "running, outside any collective"
        else:
            head = "had not started its function"
        lines.append(f"rank {v.rank}: {head}")
        if v.state not in ("returned", "starting"):
            frames = v.user_frames() or v.frames[-1:]
            if not v.user_frames() and frames and frames[-1].func == "wait_for":
                lines.append("    its function returned; it waits for its GPU to finish the "
                             "NCCL calls queued on it")
                frames = []
            for f in frames[-max_frames:]:
                lines.append(f"    {describe(f.file, f.line, f.func)}")
                text = source_line(f.file, f.line)
                if text:
                    lines.append(f"        {text}")
            here = v.where()
            if c is not None and here is not None and (here.file, here.line) != (c.file, c.line):
                lines.append(f"    ({c.label()} was issued at {_at(c)}; it waits for it here)")
        lines.append(f"    {_entered(v, groups)}")
    return lines


def call_text(call, groups):
    """"all_reduce #2 on the default group (ranks 0, 1), float32 (4,)"."""
    via = f" (dist.{call.api})" if call.api and call.api != call.op else ""
    tensor = f", {call.tensor()}" if call.tensor() else ""
    return f"{call.label()}{via} on {group_text(call.group, groups)}{tensor}"


def _short_error(error, limit=160):
    return error if len(error) <= limit else error[:limit - 3] + "..."


def _entered(view, groups):
    """"collectives entered: 2 on the default group (last: all_reduce #2)"."""
    last = {}
    for c in view.calls:
        if c.op not in P2P:
            last[c.group] = c
    p2p = sum(1 for c in view.calls if c.op in P2P)
    parts = [f"{c.seq} on {group_text(g, groups).split(' (')[0]} (last: {c.label()})"
             for g, c in last.items()]
    text = "collectives entered: " + (", ".join(parts) if parts else "none")
    return text + (f"; send/recv calls: {p2p}" if p2p else "")
