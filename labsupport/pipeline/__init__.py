"""Pipeline-parallel schedules, a discrete-event simulator, and plots.

    from labsupport.pipeline import simulate, plot_timeline
    t = simulate("1f1b", stages=4, microbatches=8)
    t.bubble_fraction()        # 3/11, the same as bubble_formula(4, 8)
    plot_timeline(t)

Pure Python + torch-free: no process group, no GPU. ``plot_timeline`` and
``plot_bubble_vs_m`` import matplotlib when called.

The real executor (GPipe, 1F1B, interleaved 1F1B and ZB-H1 on p ranks with send/recv; needs
torch) lives in ``executor.py`` (what each rank runs) and ``run.py`` (checks, split, launch);
``timing.py`` times stages and the whole model in one process, ``comm.py`` measures what a
hand-off between ranks costs (``measure_p2p``), ``report.py`` puts measured, simulated and
formula bubbles side by side. Their names (``run_pipeline``,
``run_pipelines``, ``make_mlp``, ``measure_p2p``, ...) are imported on first use.
"""
from .. import _lazy
from .formulas import bubble_formula, bubble_ratio
from .partition import balance_layers
from .plot import plot_bubble_vs_m, plot_timeline
from .schedules import (SCHEDULES, Action, gpipe, interleaved, one_f_one_b, schedule_actions,
                        zb_h1)
from .schedules import check_link_order, link_messages
from .simulate import PipelineDeadlock, replay, simulate, simulate_actions, validate
from .timeline import Event, Timeline

# The executor's names need torch and the launcher: imported on first use.
__getattr__, __dir__, _EXECUTOR = _lazy.lazy_names(__name__, {
    "run": ("run_pipeline", "run_pipelines", "make_mlp", "split_model", "check_actions",
            "check_batch", "single_device_grads", "measured_stage_costs", "events_follow",
            "PipelineResult"),
    "timing": ("time_stage_costs", "single_process_ms"),
    "comm": ("measure_p2p", "P2PCost"),
    "report": ("bubble_rows", "format_bubble_rows")})

__all__ = [
    "SCHEDULES", "Action", "Event", "PipelineDeadlock", "Timeline", "balance_layers",
    "bubble_formula", "bubble_ratio", "check_link_order", "gpipe", "interleaved",
    "link_messages", "one_f_one_b", "plot_bubble_vs_m", "plot_timeline", "replay",
    "schedule_actions", "simulate", "simulate_actions", "validate", "zb_h1", *_EXECUTOR,
]
