"""Tables and figures from ``run_deepspeed_pipeline``'s results (matplotlib imported lazily)."""
from __future__ import annotations

from ..pipeline.timeline import Timeline


def measured_timeline(results, step=-1):
    """The engine's timed F/B passes of one training step, from every rank, as a Timeline (ms).

    All ranks share one host clock (perf_counter_ns), so the events line up without alignment.
    """
    events = [e for r in results for e in r["events"]]
    steps = sorted({e["step"] for e in events})
    chosen = steps[step]
    records = [{**e, "start": e["start"] / 1e6, "end": e["end"] / 1e6}
               for e in events if e["step"] == chosen]
    return Timeline.from_records(records, stages=len({r["stage"] for r in results}),
                                 schedule=f"DeepSpeed engine, measured (step {chosen}, ms)")


def loss_table(engine_losses, reference_losses):
    """Text table: step, engine loss, reference loss, relative difference."""
    lines = [f"{'step':>4}{'DeepSpeed engine':>18}{'1-process AdamW':>17}{'rel. diff':>11}"]
    for k, (a, b) in enumerate(zip(engine_losses, reference_losses)):
        lines.append(f"{k:>4}{a:>18.7f}{b:>17.7f}{abs(a - b) / abs(b):>11.1e}")
    return "\n".join(lines)


def plot_losses(engine_losses, reference_losses, ax=None):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3))
    steps = range(len(engine_losses))
    ax.plot(steps, reference_losses, "o-", lw=3, alpha=0.4, label="one process, nn.Sequential + AdamW")
    ax.plot(steps, engine_losses, "x--", label="DeepSpeed PipelineEngine, 2 stages")
    ax.set(xlabel="training step", ylabel="MSE loss", title="Same weights, same data, same loss")
    ax.legend(loc="lower left")
    return ax


def plot_step_times(results, ax=None):
    """Wall time of each ``engine.train_batch`` per rank (step 0 includes warm-up)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3))
    for r in results:
        ax.plot(r["step_ms"], "o-", label=f"rank {r['rank']} (stage {r['stage']})")
    ax.set(xlabel="training step", ylabel="train_batch wall time (ms)",
           title="Measured step times", ylim=(0, None))
    ax.legend()
    return ax
