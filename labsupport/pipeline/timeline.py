"""Results of a pipeline run: Events on a Timeline, with bubble and memory summaries.

Built by the simulator, but nothing here depends on it: a Timeline can also be made from
measured events (e.g. ``time.perf_counter_ns`` recorded on each rank) and then plotted
or summarised the same way.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    """One executed pass: row ``stage``, model ``chunk``, ``kind`` F/B/W, times in cost units."""

    stage: int
    chunk: int
    kind: str
    microbatch: int
    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


class Timeline:
    """Result of a simulation (or of a measured run, see ``from_records``).

    Attributes:
        events: list of Event, sorted by start time then stage.
        stages, microbatches, chunks: the pipeline's shape.
        makespan: time from 0 until the last pass ends.
        schedule: schedule name, or 'custom' for a user-supplied action list.
    """

    def __init__(self, events, stages, microbatches, chunks, schedule="custom"):
        self.events = sorted(events, key=lambda e: (e.start, e.stage))
        self.stages, self.microbatches, self.chunks = stages, microbatches, chunks
        self.schedule = schedule
        self.makespan = max((e.end for e in self.events), default=0.0)

    @classmethod
    def from_records(cls, records, stages=None, schedule="measured") -> "Timeline":
        """Build a Timeline from measured passes, e.g. gathered from every rank.

        Args:
            records: iterable of Event, or dicts with keys stage, kind, microbatch, start,
                end and optionally chunk. Times in any unit (seconds, ns); they are shifted
                so the earliest start is 0.
            stages: number of stages; default: highest stage seen + 1.
            schedule: label used in titles.
        """
        events = [r if isinstance(r, Event) else Event(
            int(r["stage"]), int(r.get("chunk", 0)), str(r["kind"]), int(r["microbatch"]),
            float(r["start"]), float(r["end"])) for r in records]
        if not events:
            raise ValueError("no records: run at least one pass before building a Timeline")
        t0 = min(e.start for e in events)
        events = [Event(e.stage, e.chunk, e.kind, e.microbatch, e.start - t0, e.end - t0)
                  for e in events]
        return cls(events, stages if stages is not None else 1 + max(e.stage for e in events),
                   1 + max(e.microbatch for e in events), 1 + max(e.chunk for e in events),
                   schedule=schedule)

    def stage_events(self, stage: int) -> list[Event]:
        """Events of one stage in execution order."""
        return [e for e in self.events if e.stage == stage]

    def busy_time(self) -> list[float]:
        """Per stage: total time spent computing."""
        busy = [0.0] * self.stages
        for e in self.events:
            busy[e.stage] += e.duration
        return busy

    def idle_time(self) -> list[float]:
        """Per stage: makespan minus busy time (the stage's share of the bubble)."""
        return [self.makespan - b for b in self.busy_time()]

    def bubble_fraction(self) -> float:
        """Idle share of the total stage-time: sum(idle) / (stages * makespan), in [0, 1)."""
        if self.makespan == 0:
            return 0.0
        return sum(self.idle_time()) / (self.stages * self.makespan)

    def peak_activations(self, free_after: str | None = None) -> list[int]:
        """Per stage: the largest number of micro-batch activations held at once.

        An activation is counted from the end of its F until the end of the pass that frees
        it: B, or W when the schedule splits the backward (W still needs the stage input).
        With interleaving each unit is one chunk's activations (1/v of the rank's layers).

        Args:
            free_after: 'B' or 'W' to choose the freeing pass; default W if any W ran, else B.
        """
        if free_after is None:
            free_after = "W" if any(e.kind == "W" for e in self.events) else "B"
        peaks = []
        for s in range(self.stages):
            alive = peak = 0
            for e in self.stage_events(s):  # a stage runs one pass at a time: order suffices
                alive += (e.kind == "F") - (e.kind == free_after)
                peak = max(peak, alive)
            peaks.append(peak)
        return peaks

    def __repr__(self) -> str:
        return (
            f"Timeline({self.schedule}, stages={self.stages}, microbatches={self.microbatches}, "
            f"chunks={self.chunks}, makespan={self.makespan:g}, "
            f"bubble={self.bubble_fraction():.3f})"
        )
