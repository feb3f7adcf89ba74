"""Lab 03's bubble table: measured, simulated from measured compute (and communication), formula.

    rows = bubble_rows(results, send=cost.send_ms(activation_bytes))
    print(format_bubble_rows(rows))

Each row compares one measured run (a ``PipelineResult``) with

* ``simulated``: the schedule simulated with the run's median F/B(/W) cost per stage and
  ``send=0`` -- the formula's world plus unequal stages;
* ``simulated_send``: the same with the measured hand-off cost ``send`` on every message
  between ranks -- the simulator with measured compute *and* communication;
* ``replay``: each stage's passes in the order and with the durations this very run measured,
  plus ``send`` (``simulate.replay``): what is left between it and the measurement is waiting
  that neither compute nor the modelled send explains (a rank woken late, other processes);
* ``formula``: ``(p-1)/(v·m+p-1)``.
"""
from __future__ import annotations

from .formulas import bubble_formula
from .run import measured_stage_costs
from .simulate import replay, simulate


def bubble_rows(results, send=0.0) -> list[dict]:
    """One dict per run: schedule, m, chunks, measured, simulated, simulated_send, replay,
    formula, makespan (ms)."""
    rows = []
    for r in results:
        t, p, m, v = r.timeline, r.timeline.stages, r.microbatches, r.chunks
        costs = measured_stage_costs(t)
        if "backward_input" in costs:  # B and W given: the simulator needs no total
            costs = {k: c for k, c in costs.items() if k != "backward"}
        if r.schedule == "custom":  # the order each stage ran
            order = [[(e.kind, e.microbatch, e.chunk) for e in t.stage_events(s)] for s in range(p)]
            sim, sim_send = simulate(order, **costs), simulate(order, send=send, **costs)
        else:
            sim = simulate(r.schedule, p, m, chunks=v, **costs)
            sim_send = simulate(r.schedule, p, m, chunks=v, send=send, **costs)
        rows.append(dict(schedule=r.schedule, m=m, chunks=v, measured=t.bubble_fraction(),
                         simulated=sim.bubble_fraction(),
                         simulated_send=sim_send.bubble_fraction(),
                         replay=replay(t, send=send).bubble_fraction(),
                         formula=bubble_formula(p, m, v), makespan=t.makespan))
    return rows


def format_bubble_rows(rows) -> str:
    head = (f"{'schedule':<13}{'m':>3}{'measured':>10}{'sim':>8}{'sim+send':>10}{'replay':>8}"
            f"{'formula':>9}{'|meas-sim+send|':>17}{'step ms':>9}")
    lines = [head]
    for r in rows:
        label = r["schedule"] + (f" v={r['chunks']}" if r["chunks"] > 1 else "")
        lines.append(f"{label:<13}{r['m']:>3}{r['measured']:>10.3f}{r['simulated']:>8.3f}"
                     f"{r['simulated_send']:>10.3f}{r['replay']:>8.3f}{r['formula']:>9.3f}"
                     f"{abs(r['measured'] - r['simulated_send']):>17.3f}{r['makespan']:>9.1f}")
    return "\n".join(lines)
