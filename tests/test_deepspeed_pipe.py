"""Lab 04 (labsupport.deepspeed_pipe): DeepSpeed's PipelineModule trained for real on 2 gloo
ranks, and the set-up checks.

Needs DeepSpeed (pinned 0.19.* in pyproject); skipped where it is not installed (the GPU box).
"""
import importlib
import os
import subprocess
import sys
import time

import pytest

pytest.importorskip("deepspeed")

from labsupport import deepspeed_pipe as dsp  # noqa: E402
from labsupport.deepspeed_pipe import _ds  # noqa: E402
from labsupport.pipeline import one_f_one_b  # noqa: E402

pytestmark = pytest.mark.lab04

# lr 1e-2: large enough that AdamW's weight decay (lr·0.01 per step) moves the loss well above
# the tolerance, so a reference with plain Adam is told apart.
KWARGS = dict(width=256, micro_batch_size=8, micro_batches=4, steps=6, lr=1e-2)
RTOL = 1e-5
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained():
    """One real 2-stage run shared by the assertions below (~3-5 s)."""
    return dsp.run_deepspeed_pipeline(2, timeout_s=90, **KWARGS), dsp.reference_losses(**KWARGS)


def test_engine_trains_and_matches_single_process_adamw(trained):
    results, reference = trained
    losses = results[0]["losses"]
    assert results[1]["losses"] == losses  # train_batch broadcasts the last stage's loss
    assert losses[-1] < 0.8 * losses[0], f"loss did not fall: {losses}"
    for k, (a, b) in enumerate(zip(losses, reference)):
        assert abs(a - b) <= RTOL * abs(b) + 1e-7, f"step {k}: engine {a} vs reference {b}"
    assert [r["optimizer"] for r in results] == [("AdamW", 0.01)] * 2
    assert [r["local_layers"] for r in results] == [["Linear", "ReLU"], ["Linear"]]
    assert [r["backend"] for r in results] == ["gloo", "gloo"]


def test_reference_with_plain_adam_would_not_match(trained):
    """The comparison can fail: Adam without weight decay drifts away from DeepSpeed's AdamW."""
    results, _ = trained
    import torch

    adam = dsp.reference_losses(**KWARGS, make_optimizer=lambda p, lr: torch.optim.Adam(p, lr=lr))
    diffs = [abs(a - b) / b for a, b in zip(results[0]["losses"], adam)]
    assert max(diffs) > 5 * RTOL, diffs


def test_measured_passes_follow_1f1b(trained):
    results, _ = trained
    t = dsp.measured_timeline(results)
    order = [[(e.kind, e.microbatch) for e in t.stage_events(s)] for s in range(2)]
    assert order == [[(a.kind, a.microbatch) for a in st] for st in one_f_one_b(2, 4)]
    assert all(ms > 0 for r in results for ms in r["step_ms"])


@pytest.mark.parametrize("method", ["parameters", "uniform", "type:Linear"])
def test_partition_tables_seed_layers(method):
    layers = dsp.seed_layer_specs(1024)
    assert dsp.deepspeed_parts(layers, 2, method) == [0, 2, 3]
    rows = dsp.partition_table(layers, 2, method)
    assert [r["params"] for r in rows] == [1049600, 1049600]
    assert [[n for _, n in r["layers"]] for r in rows] == [["Linear", "ReLU"], ["Linear"]]
    assert "1,049,600" in dsp.format_partition_table(rows)


def test_partition_methods_differ_on_lopsided_layers():
    import torch.nn as nn
    from deepspeed.pipe import LayerSpec

    layers = [LayerSpec(nn.Linear, 256, 1024), LayerSpec(nn.ReLU), LayerSpec(nn.Linear, 1024, 256),
              LayerSpec(nn.Linear, 256, 256), LayerSpec(nn.ReLU), LayerSpec(nn.Linear, 256, 256)]
    assert dsp.deepspeed_parts(layers, 2, "parameters") == [0, 2, 6]
    assert dsp.deepspeed_parts(layers, 2, "uniform") == [0, 3, 6]
    assert dsp.deepspeed_parts(layers, 2, "type:Linear") == [0, 3, 6]


def test_empty_stage_caught_before_launch(monkeypatch):
    from labsupport.deepspeed_pipe import train

    monkeypatch.setattr(train, "train_pipeline", None)  # a launch would now fail differently
    with pytest.raises(ValueError, match="empty parameter list") as info:
        dsp.run_deepspeed_pipeline(4, steps=1)
    assert "stage(s) [1, 3]" in str(info.value)


def test_batch_arithmetic_validation():
    good = dsp.make_config(8, 4)
    assert good["train_batch_size"] == 32
    assert dsp.explain_batch_config(good, world_size=2, stages=2) is None
    assert dsp.explain_batch_config(dsp.make_config(8, 4, dp_size=2), 4, 2) is None
    wrong = dsp.make_config(8, 4, train_batch_size=64)
    msg = dsp.explain_batch_config(wrong, world_size=2, stages=2)
    assert "8 × 4 × 1 = 32" in msg and "train_batch_size=64" in msg
    with pytest.raises(ValueError, match="multiple of num_stages"):
        dsp.validate_batch_config(good, world_size=3, stages=2)
    with pytest.raises(ValueError, match="train_batch_size=64"):
        dsp.run_deepspeed_pipeline(2, config=wrong)
    # DeepSpeed's own check agrees with ours on the same config.
    from deepspeed.runtime.config import DeepSpeedConfig
    with pytest.raises(AssertionError, match="64 != 8 \\* 4 \\* 1"):
        DeepSpeedConfig(wrong)
    DeepSpeedConfig(good)


def test_shm_op_build_is_skipped_then_restored(monkeypatch):
    ds_torch = importlib.import_module("deepspeed.comm.torch")  # attr is shadowed

    calls = []
    monkeypatch.setattr(ds_torch, "build_shm_op", lambda: calls.append(1))
    patched = ds_torch.build_shm_op
    with _ds.skip_shm_comm_op():
        assert ds_torch.build_shm_op() is None
    assert ds_torch.build_shm_op is patched and calls == []


def test_shm_skip_fails_loudly_when_private_function_is_gone(monkeypatch):
    ds_torch = importlib.import_module("deepspeed.comm.torch")  # attr is shadowed

    monkeypatch.delattr(ds_torch, "build_shm_op")
    with pytest.raises(RuntimeError, match="build_shm_op.*tested with 0.19"):
        with _ds.skip_shm_comm_op():
            pass


def _init_comm_rank(rank, world_size):
    ds_torch = importlib.import_module("deepspeed.comm.torch")  # attr is shadowed

    def refuse():
        raise AssertionError("build_shm_op was called")

    ds_torch.build_shm_op = refuse  # the skip must replace it for the whole init
    start = time.perf_counter()
    deepspeed = _ds.init_deepspeed_comm()
    elapsed = time.perf_counter() - start
    cdb = importlib.import_module("deepspeed.comm.comm").cdb
    return elapsed, cdb.shm_comm_op, deepspeed.comm.get_world_size()


def test_init_distributed_without_shm_build():
    from labsupport import launch

    results = launch(_init_comm_rank, 2, timeout_s=60)
    for elapsed, shm_op, world in results:
        assert shm_op is None and world == 2
        assert elapsed < 10, f"init_distributed took {elapsed:.1f} s: did it compile the shm op?"


def test_deepspeed_schedule_is_1f1b():
    for p, m in [(2, 4), (4, 8), (3, 2)]:
        assert dsp.deepspeed_actions(m, p) == one_f_one_b(p, m)
    t = dsp.deepspeed_timeline(8, 4)
    assert abs(t.bubble_fraction() - 3 / 11) < 1e-12


def _brute_force_min_max(counts, stages):
    import itertools

    n = len(counts)
    return min(max(sum(counts[a:b]) for a, b in zip((0, *cut), (*cut, n)))
               for cut in itertools.combinations(range(1, n), stages - 1))


def test_min_max_parts_is_exact_and_never_leaves_a_stage_empty():
    import random

    rng = random.Random(1)
    for _ in range(200):
        n = rng.randint(1, 8)
        counts = [rng.choice([0, rng.randint(1, 60)]) for _ in range(n)]
        stages = rng.randint(1, n)
        best, parts = dsp.min_max_parts(counts, stages)
        assert best == _brute_force_min_max(counts, stages) == dsp.parts_max_params(parts, counts)
        assert len(parts) == stages + 1 and parts[0] == 0 and parts[-1] == n
        assert all(a < b for a, b in zip(parts, parts[1:])), (counts, stages, parts)
    # The reviewer's list: DeepSpeed minimises the spread and gets a larger largest stage.
    from deepspeed.runtime.utils import partition_balanced

    counts = [25, 26, 18, 0, 6, 47, 11]
    assert dsp.min_max_parts(counts, 4)[0] == 50
    assert dsp.parts_max_params([int(p) for p in partition_balanced(counts, 4)], counts) == 58
    assert dsp.min_max_parts([1000, 1, 1], 3) == (1000, [0, 1, 2, 3])
    assert dsp.min_max_parts([5, 0, 0, 0], 2)[1][1] in (1, 2, 3)


def test_boundary_shapes_show_the_wider_send():
    import torch
    import torch.nn as nn
    from deepspeed.pipe import LayerSpec

    layers = [LayerSpec(nn.Linear, 256, 1024), LayerSpec(nn.ReLU), LayerSpec(nn.Linear, 1024, 256),
              LayerSpec(nn.Linear, 256, 256), LayerSpec(nn.ReLU), LayerSpec(nn.Linear, 256, 256)]
    x = torch.randn(8, 256)
    assert dsp.boundary_shapes(layers, [0, 2, 6], x) == [(8, 1024)]
    assert dsp.boundary_shapes(layers, [0, 3, 6], x) == [(8, 256)]
    assert dsp.boundary_shapes(layers, [0, 1, 3, 6], x) == [(8, 1024), (8, 256)]


def test_gloo_ranks_get_the_cpu_accelerator_even_with_a_gpu(monkeypatch):
    """1 GPU, 2 gloo ranks: DeepSpeed must not pick CUDA (rank 1 would set_device(1)).

    The rank's initialised process group decides, through labsupport.devices.is_nccl -- not the
    launcher's private environment variables.
    """
    import torch
    import torch.distributed as dist

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LABSUPPORT_BACKEND", "gloo")  # the launcher's private variable: ignored
    assert not _ds.wants_cpu_accelerator()      # a GPU notebook process: CUDA is right
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "cpu:gloo,cuda:nccl")
    assert not _ds.wants_cpu_accelerator() and _ds.comm_backend() == "nccl"
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
    assert _ds.wants_cpu_accelerator() and _ds.comm_backend() == "gloo"
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "cpu:gloo")
    assert _ds.wants_cpu_accelerator() and _ds.comm_backend() == "gloo"
    monkeypatch.setenv("DS_ACCELERATOR", "cuda")
    _ds.import_deepspeed()
    assert os.environ["DS_ACCELERATOR"] == "cpu"
    from deepspeed.accelerator import get_accelerator
    assert get_accelerator()._name == "cpu"


def test_torchrun_two_processes():
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "labsupport.deepspeed_pipe", "--width", "128", "--steps", "3", "--json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    import json
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert len(line) == 1, proc.stdout  # only rank 0 prints its result
    result = json.loads(line[0])
    assert result["stage"] == 0 and result["parts"] == [0, 2, 3]
    ref = dsp.reference_losses(width=128, steps=3)
    assert result["losses"] == pytest.approx(ref, rel=1e-5)


def test_partition_balanced_falls_back_to_uniform_with_no_more_layers_than_stages():
    """Lab 04 §5a: the seed's empty stage comes from the fallback, not from balancing."""
    from deepspeed.runtime.utils import partition_balanced, partition_uniform

    layers = dsp.seed_layer_specs(64)
    for stages, parts in [(3, [0, 1, 2, 3]), (4, [0, 1, 2, 3, 3])]:
        assert dsp.deepspeed_parts(layers, stages) == parts == partition_uniform(3, stages)
        for weights in ([4160, 0, 4160], [0, 10**6, 0], [1, 1, 1]):  # never read
            assert [int(b) for b in partition_balanced(weights, stages)] == parts
    with pytest.raises(ValueError, match=r"leaves stage\(s\) \[1\] without trainable parameters"):
        dsp.check_every_stage_has_parameters(layers, 3)


def _seed_as_written(rank, world_size):
    """The seed's PipelineModule (no loss_fn), first without a config, then with one."""
    from labsupport.deepspeed_pipe._ds import init_deepspeed_comm, quiet_deepspeed_logs

    deepspeed = init_deepspeed_comm()
    quiet_deepspeed_logs()
    from deepspeed.pipe import PipelineModule

    module = PipelineModule(layers=dsp.seed_layer_specs(64), num_stages=2,
                            partition_method="parameters")
    params = [p for p in module.parameters()]
    try:
        deepspeed.initialize(model=module, model_parameters=params)
    except AssertionError as exc:
        assert str(exc) == "DeepSpeed requires --deepspeed_config to specify configuration file", exc
    else:
        raise RuntimeError("deepspeed.initialize accepted no config")
    engine, *_ = deepspeed.initialize(model=module, model_parameters=params,
                                      config=dsp.make_config(8, 4))
    engine.train_batch(data_iter=iter(dsp.make_batches(64, 1, 4, 8)[0]))


def test_the_seed_lacks_a_loss_fn_and_a_config():
    """Lab 04 §3 quotes both of DeepSpeed's messages: this run is where they come from."""
    from labsupport import LaunchError, launch

    with pytest.raises(LaunchError) as info:
        launch(_seed_as_written, 2, timeout_s=30)
    assert info.value.rank == 1  # the last stage, where the "loss" is the (8, 64) output
    assert ("AssertionError: loss must be a scalar tensor. If you need to pass output gradients, "
            "backward() of output tensors") in info.value.traceback


def test_deepspeed_reads_configs_without_ranks():
    import torch
    from deepspeed.runtime.config import DeepSpeedConfig

    good = dsp.pipeline_config(64, 8, 4, 2, lr=1e-2)
    assert good == dsp.make_config(8, 4, dp_size=2, lr=1e-2)
    assert dsp.deepspeed_batch(good, dp_size=2) == (64, 8, 4)
    assert dsp.deepspeed_batch({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 8}, 2) == (64, 8, 4)
    assert dsp.deepspeed_batch({"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 4}, 2) == (64, 8, 4)
    with pytest.raises(AssertionError, match=r"64 != 8 \* 4 \* 1"):   # DeepSpeed's own words
        dsp.deepspeed_batch(good, dp_size=1)
    one = dsp.make_config(8, 4)
    assert dsp.deepspeed_batch(one, 1) == (DeepSpeedConfig(one).train_batch_size, 8, 4)
    opt = dsp.deepspeed_optimizer(one, [torch.nn.Parameter(torch.zeros(2))])
    assert type(opt) is torch.optim.AdamW and opt.param_groups[0]["weight_decay"] == 0.01
    adam = {**one, "optimizer": {"type": "Adam", "params": {"torch_adam": True, "adam_w_mode": False}}}
    assert type(dsp.deepspeed_optimizer(adam, [torch.nn.Parameter(torch.zeros(2))])) is torch.optim.Adam
    with pytest.raises(ValueError, match="FusedAdam"):
        dsp.deepspeed_optimizer({"optimizer": {"type": "Adam", "params": {}}}, [])


@pytest.mark.parametrize("args, words", [
    ((40, 8, 4, 2, 1e-3), r"a global batch of 40 does not split into micro-batches of 8 on 2 "
                          r"pipeline replica\(s\): 40 / \(8 × 2\) = 2\.5"),
    ((24, 8, 3, 2, 1e-3), r"3 ranks cannot be split into pipelines of 2 stages"),
])
def test_pipeline_config_refuses_what_does_not_divide(args, words):
    with pytest.raises(ValueError, match=words):
        dsp.pipeline_config(*args)


def test_classifier_reference_run():
    import torch

    batches = dsp.class_batches(32, 10, 3, 4, 8)
    x, y = batches[0][0]
    assert x.shape == (8, 32) and y.dtype == torch.int64 and 0 <= int(y.min()) <= int(y.max()) < 10
    assert batches[2] is batches[0] and batches[1] is not batches[0]
    losses, _ = dsp.classifier_reference_losses(micro_batches=4, micro_batch_size=8, steps=6, lr=1e-2)
    assert losses[-1] < 0.9 * losses[0]
    model = dsp.reference_model(dsp.classifier_specs(32, 64, 10))
    assert [type(m).__name__ for m in model] == [type(m).__name__ for m in dsp.classifier(32, 64, 10)]


def test_timed_ms_synchronises_around_the_call(monkeypatch):
    from labsupport import devices
    from labsupport.deepspeed_pipe import train

    calls = []
    monkeypatch.setattr(devices, "synchronize", lambda device: calls.append(("sync", device)))
    out, ms = train.timed_ms(lambda x: calls.append(("fn", x)) or x + 1, "cuda:3", 41)
    assert out == 42 and ms >= 0
    assert calls == [("sync", "cuda:3"), ("fn", 41), ("sync", "cuda:3")]


def test_every_clock_read_in_deepspeed_pipe_synchronises():
    """Issue #19 item 8: a function that reads a clock around work that may run on CUDA also
    calls ``synchronize`` (directly, or by timing through ``timed_ms``)."""
    import ast
    import pathlib

    folder = pathlib.Path(REPO, "labsupport", "deepspeed_pipe")
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef):
                continue
            called = {getattr(c.func, "attr", getattr(c.func, "id", None))
                      for c in ast.walk(node) if isinstance(c, ast.Call)}
            if called & {"perf_counter", "perf_counter_ns", "time", "monotonic"}:
                assert called & {"synchronize", "timed_ms"}, f"{path.name}:{node.name} reads a clock unsynchronised"
            if "train_batch" in called:
                assert "timed_ms" in called or "synchronize" in called, f"{path.name}:{node.name}"
