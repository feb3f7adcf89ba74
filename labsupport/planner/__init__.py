"""Plan a training run: will this model fit these GPUs, and which layout is fastest?

    from labsupport.planner import ModelSpec, Layout, Cluster, estimate, search, preset, cluster
    model = preset("llama2-70b")
    est = estimate(model, Layout(tp=8, pp=4, dp=2, microbatches=256), cluster("h100", 64))
    est.peak, est.step_time, est.bytes_per_group()
    best = search(model, cluster("h100", 64), global_batch=512)[0]

Plain Python arithmetic: importing it needs no torch. The formulas come from
:mod:`labsupport.formulas`; :mod:`labsupport.planner.toy` (needs torch) runs the course's parts
at toy scale to check the predictions against measurement.
"""
from .estimate import Estimate, StageEstimate, check, estimate
from .hardware import GPUS, cluster
from .layout import Cluster, Layout
from .model import PRESETS, ModelSpec, preset
from .search import Candidate, search
from .states import model_state_bytes
from .traffic import Collective

__all__ = ["ModelSpec", "Layout", "Cluster", "estimate", "check", "Estimate", "StageEstimate",
           "Collective", "model_state_bytes", "search", "Candidate", "preset", "PRESETS",
           "cluster", "GPUS"]
