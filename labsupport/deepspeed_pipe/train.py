"""Train a DeepSpeed PipelineModule on the ranks of ``labsupport.launch`` — and the same model in
one process with the optimizer DeepSpeed builds, as the reference.

Data flow per training step (``engine.train_batch``), m micro-batches of shape
(micro_batch_size, width): stage 0 loads x, runs its layers and sends the activation
(micro_batch_size, width) to stage 1; the last stage loads y, computes the loss and sends
d loss / d activation back. DeepSpeed's ``TrainSchedule`` (1F1B) orders these passes; gradients
accumulate over the m micro-batches, then every stage steps its own optimizer on its own layers.
"""
from __future__ import annotations

import contextlib
import io
import time

import torch
import torch.nn as nn

from .config import make_config, validate_batch_config
from .partition import check_every_stage_has_parameters, seed_layer_specs


def make_batches(width, steps, micro_batches, micro_batch_size, seed=0, distinct=2):
    """``batches[step][mb] = (x, y)``, each (micro_batch_size, width); y = tanh(x @ teacher).

    ``distinct`` batches are drawn and cycled (step k trains on batch k % distinct): a small
    data set the model can fit, so the loss visibly falls within a few steps.

    A private generator: DeepSpeed's per-layer seeding (``seed_layers``) reseeds torch's global
    RNG during every forward, which must not change the data.
    """
    gen = torch.Generator().manual_seed(seed)
    teacher = torch.randn(width, width, generator=gen) / width ** 0.5
    pool = []
    for _ in range(distinct):
        xs = [torch.randn(micro_batch_size, width, generator=gen) for _ in range(micro_batches)]
        pool.append([(x, torch.tanh(x @ teacher)) for x in xs])
    return [pool[k % distinct] for k in range(steps)]


def timed_ms(fn, device, *args, **kwargs):
    """``(fn(*args, **kwargs), milliseconds)`` with ``device``'s queued work finished on both
    sides of the clock (:func:`labsupport.devices.synchronize`: a no-op on the CPU). On a GPU an
    engine call returns once its kernels are *queued*: without the second synchronisation the
    time would end early, without the first it would include work queued before."""
    from ..devices import synchronize

    synchronize(device)
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    synchronize(device)
    return out, (time.perf_counter() - start) * 1e3


def _record_passes(engine, events, step_box):
    """Time every ForwardPass/BackwardPass the engine runs (``perf_counter_ns`` on this rank).

    The engine looks instructions up in ``self._INSTRUCTION_MAP``; an instance attribute shadows
    the class's table, so only this engine is instrumented. A stage runs its forwards (and its
    backwards) in micro-batch order, so a counter gives the micro-batch id.
    """
    from deepspeed.runtime.pipe import schedule

    from ..devices import rank_device, synchronize

    table = dict(type(engine)._INSTRUCTION_MAP)
    counts = {"F": 0, "B": 0}
    # Only an NCCL rank owns a GPU whose queued work must finish before the clock is read; a
    # gloo rank on a GPU machine must not touch CUDA at all.
    device = rank_device()

    def timed(fn, kind):
        def run(self, *args, **kwargs):
            synchronize(device)
            start = time.perf_counter_ns()
            fn(self, *args, **kwargs)
            synchronize(device)
            events.append({"step": step_box[0], "stage": self.stage_id, "kind": kind,
                           "microbatch": counts[kind] % self.micro_batches,
                           "start": start, "end": time.perf_counter_ns()})
            counts[kind] += 1
        return run

    table[schedule.ForwardPass] = timed(table[schedule.ForwardPass], "F")
    table[schedule.BackwardPass] = timed(table[schedule.BackwardPass], "B")
    engine._INSTRUCTION_MAP = table


def train_pipeline(rank, world_size, *, layers=None, width=1024, num_stages=None,
                   partition_method="parameters", micro_batch_size=8, micro_batches=4, steps=8,
                   lr=1e-3, base_seed=1234, data_seed=0, config=None, loss_fn=None, batches=None,
                   verbose=True):
    """What every rank runs: PipelineModule → deepspeed.initialize → engine.train_batch × steps.

    ``loss_fn(outputs, labels)`` (default ``nn.MSELoss()``) is what the last stage computes per
    micro-batch; ``batches[step][mb] = (x, labels)`` defaults to :func:`make_batches` (the seed's
    regression data for ``width``). ``verbose=False`` keeps DeepSpeed's partition printout
    (rank 0's stage/layer list) out of the rank's output.

    Returns (per rank): dict with ``stage``, ``losses`` (the batch loss train_batch returns, the
    same on every stage), ``step_ms`` (wall time of each train_batch, the device synchronised
    around it), ``events`` (timed F/B passes), ``parts``, ``local_layers``, ``local_params``,
    ``optimizer`` (class name and its weight decay: what DeepSpeed really built), ``backend``
    ('gloo' or 'nccl': what the ranks really talked over, which sets how closely the loss can
    match a CPU reference).
    """
    from ..devices import rank_device
    from ._ds import comm_backend, init_deepspeed_comm, quiet_deepspeed_logs

    deepspeed = init_deepspeed_comm()  # on top of launch's group; skips the shm-op build
    quiet_deepspeed_logs()
    from deepspeed.pipe import PipelineModule

    layers = seed_layer_specs(width) if layers is None else layers
    # seed_layers: layer i is built right after seed_fn(base_seed + i), whichever stage builds
    # it, so the single-process reference can rebuild the very same weights.
    with contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO()):
        module = PipelineModule(layers=layers, num_stages=num_stages or world_size,
                                partition_method=partition_method,
                                loss_fn=nn.MSELoss() if loss_fn is None else loss_fn,
                                seed_layers=True, seed_fn=torch.manual_seed, base_seed=base_seed)
    if config is None:
        config = make_config(micro_batch_size, micro_batches,
                             dp_size=world_size // (num_stages or world_size), lr=lr)
    engine, optimizer, _, _ = deepspeed.initialize(
        model=module, model_parameters=[p for p in module.parameters() if p.requires_grad],
        config=config)
    if batches is None:
        batches = make_batches(width, steps, engine.micro_batches, engine.micro_batch_size,
                               data_seed)
    events, step_box = [], [0]
    _record_passes(engine, events, step_box)
    losses, step_ms, device = [], [], rank_device()
    for step in range(steps):
        step_box[0] = step
        loss, ms = timed_ms(engine.train_batch, device, data_iter=iter(batches[step]))
        step_ms.append(ms)
        losses.append(float(loss.detach()))
    opt = engine.optimizer
    return {"rank": rank, "stage": engine.stage_id, "losses": losses, "step_ms": step_ms,
            "events": events, "parts": [int(p) for p in module.parts],
            "local_layers": [type(f).__name__ for f in module.forward_funcs],
            "local_params": sum(p.numel() for p in module.parameters()),
            "optimizer": (type(opt).__name__, opt.param_groups[0]["weight_decay"]),
            "backend": comm_backend()}


def run_deepspeed_pipeline(stages=2, *, layers=None, width=1024, partition_method="parameters",
                           micro_batch_size=8, micro_batches=4, steps=8, lr=1e-3, config=None,
                           world_size=None, timeout_s=120, **kwargs):
    """Check the setup, then ``launch(train_pipeline, world_size, ...)``; results in rank order.

    Raises ValueError *before any process starts* when the batch sizes do not add up or a stage
    would get no parameters (both failures DeepSpeed only reports from inside a rank).
    """
    from ..launcher import launch

    world_size = world_size or stages
    cfg = config or make_config(micro_batch_size, micro_batches, dp_size=world_size // stages,
                                lr=lr)
    validate_batch_config(cfg, world_size, stages)
    check_every_stage_has_parameters(seed_layer_specs(width) if layers is None else layers,
                                     stages, partition_method)
    return launch(train_pipeline, world_size, layers=layers, width=width, num_stages=stages,
                  partition_method=partition_method, micro_batch_size=micro_batch_size,
                  micro_batches=micro_batches, steps=steps, lr=lr, config=config,
                  timeout_s=timeout_s, **kwargs)


def reference_model(layers=None, width=1024, base_seed=1234):
    """The same layers as one nn.Sequential, built with PipelineModule's per-layer seeds."""
    layers = seed_layer_specs(width) if layers is None else layers
    built = []
    for i, spec in enumerate(layers):
        torch.manual_seed(base_seed + i)
        built.append(spec.build())
    return nn.Sequential(*built)


def reference_optimizer(params, lr=1e-3):
    """What DeepSpeed builds for ``{"type": "Adam", "params": {"lr": lr, "torch_adam": true}}``.

    deepspeed/runtime/engine.py (0.19): ``adam_w_mode`` defaults to True (ADAM_W_MODE_DEFAULT)
    and ``get_optimizer_configuration`` returns ``torch.optim.AdamW`` when torch_adam is set —
    so AdamW with torch's default weight_decay=0.01, not Adam.
    """
    return torch.optim.AdamW(params, lr=lr)


def reference_losses(layers=None, width=1024, micro_batch_size=8, micro_batches=4, steps=8,
                     lr=1e-3, base_seed=1234, data_seed=0, make_optimizer=None, loss_fn=None,
                     batches=None):
    """Single-process training on the same data: batch loss per step (mean over micro-batches).

    ``make_optimizer(params, lr)`` defaults to :func:`reference_optimizer` (DeepSpeed's AdamW);
    pass e.g. ``lambda p, lr: torch.optim.Adam(p, lr=lr)`` to see the mismatch a wrong guess gives.
    ``loss_fn`` (default mean squared error) and ``batches`` (default :func:`make_batches`) as
    in :func:`train_pipeline`.

    DeepSpeed scales each micro-batch's loss by 1/m before backward (gradient accumulation), so
    the accumulated gradient is that of the mean micro-batch loss — what this computes at once.
    """
    model = reference_model(layers, width, base_seed)
    opt = (make_optimizer or reference_optimizer)([p for p in model.parameters() if p.requires_grad], lr)
    loss_fn = nn.functional.mse_loss if loss_fn is None else loss_fn
    if batches is None:
        batches = make_batches(width, steps, micro_batches, micro_batch_size, data_seed)
    losses = []
    for batch in batches[:steps]:
        opt.zero_grad()
        loss = sum(loss_fn(model(x), y) for x, y in batch) / len(batch)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses
