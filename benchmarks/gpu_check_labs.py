"""gpu_check's one-GPU checks of memory and of Labs 04-06: measured on the device, compared with
the formulas and with the CPU; ``check_x(ctx)`` returns the figure it measured or raises.
"""
from __future__ import annotations

import torch

from gpu_check import Skip
from gpu_check_single import MiB, _dev, _probe
from labsupport import memory


# --- memory: the same model twice in a fresh process (item 6) ---------------------------------

_MEMORY_MODES = ("fp32", "bf16", "stream")
_memory_probed = {}


def _memory_twice(ctx, mode):
    # A GPU gets a fresh process per mode (each first measurement must be the process's
    # first); the CPU dry run has no workspaces and runs the three modes in one process.
    if mode not in _memory_probed:
        modes = [mode] if ctx.gpu else list(_MEMORY_MODES)
        _memory_probed.update(_probe("memory", ",".join(modes), ctx.device))
    r = _memory_probed.pop(mode)
    (p1, p2), (a1, a2), (s1, s2) = r["peak"], r["after_forward"], r["saved"]
    assert (p1, a1, s1) == (p2, a2, s2), (
        f"first measurement peak {p1}, after forward {a1}, saved {s1}; second {p2}, {a2}, {s2}")
    figure = f"peak {p1 / MiB:.2f} MiB both times, after forward {a1 / MiB:.2f} MiB"
    if ctx.gpu:
        ws, size = r["workspace"], r["workspace_size"]
        assert 0 <= ws <= 2 * size * 1.02, (
            f"{ws / MiB:.1f} MiB outside the step, beyond 2 cuBLAS workspaces of "
            f"{size / MiB:.1f} MiB ({r['workspace_size_from']})")
        assert r["allocated"][0] == r["allocated"][1], r["allocated"]
        figure += (f"; warm-up workspaces {ws / MiB:.1f} MiB = {ws / size:.2f} × "
                   f"{size / MiB:.1f} MiB ({r['workspace_size_from']})")
    return figure


def check_memory_twice_fp32(ctx):
    """measure() twice in a fresh process: the same peak (no cuBLAS workspace counted)."""
    return _memory_twice(ctx, "fp32")


def check_memory_twice_bf16_autocast(ctx):
    """The same under torch.autocast(bfloat16)."""
    return _memory_twice(ctx, "bf16")


def check_memory_twice_side_stream(ctx):
    """The same on a non-default CUDA stream (its own workspaces)."""
    if not ctx.gpu:
        return _memory_twice(ctx, "stream") + " (CPU: no streams, the default path)"
    return _memory_twice(ctx, "stream")


# --- Lab 05: checkpointing on the device --------------------------------------------------------

def _seed_models(d, h, dev):
    from labsupport.checkpointing import CheckpointedMLP, SeedMLP

    return SeedMLP(d, h).to(dev), CheckpointedMLP(SeedMLP(d, h).to(dev))


def check_checkpoint_memory(ctx):
    """Checkpoint memory via the allocator on the device equals the CPU measurement."""
    d, h, tokens = 256, 1024, ctx.size(2048, 512)
    dev = _dev(ctx)
    x = torch.randn(tokens, d, device=dev)
    plain, ckpt = _seed_models(d, h, dev)
    on_dev = {n: memory.measure(m, x) for n, m in (("plain", plain), ("ckpt", ckpt))}
    plain_cpu, ckpt_cpu = _seed_models(d, h, "cpu")
    on_cpu = {n: memory.measure(m, x.cpu()) for n, m in (("plain", plain_cpu), ("ckpt", ckpt_cpu))}
    ratios = {k: on_dev[k].after_forward_bytes / on_cpu[k].after_forward_bytes for k in on_dev}
    for k, r in ratios.items():
        assert 0.95 <= r <= 1.05, f"{k}: device/CPU after-forward ratio {r:.3f}"
    assert on_dev["ckpt"].after_forward_bytes < on_dev["plain"].after_forward_bytes
    return (f"after forward plain {on_dev['plain'].after_forward_bytes / MiB:.1f} MiB, "
            f"checkpointed {on_dev['ckpt'].after_forward_bytes / MiB:.1f} MiB; device/CPU "
            f"{ratios['plain']:.3f}, {ratios['ckpt']:.3f}")


def check_lab05_exercise(ctx):
    """Lab 05's prediction exercise, checked against a measurement on the device."""
    from labsupport.checkpointing import checks, predict_mlp_saved_bytes

    checks.check_predict_saved_bytes(predict_mlp_saved_bytes, device=_dev(ctx))
    return f"reference prediction matches the measurement on {_dev(ctx)}"


def check_segments(ctx):
    """Lab 05's segment sweep: held after forward is k·x (within 5 % + 1 MiB on a GPU)."""
    from labsupport.checkpointing import segment_sweep

    layers, tokens = ctx.size(16, 4), ctx.size(1024, 128)
    counts = ctx.size([1, 4, 16], [1, 2, 4])
    rows = segment_sweep(layers, 64, tokens, counts, device=_dev(ctx))
    x_bytes = tokens * 64 * 4
    for r in rows:
        expected = r["segments"] * x_bytes
        assert abs(r["after_forward"] - expected) <= 0.05 * expected + MiB, (r, expected)
    worst = max(abs(r["after_forward"] - r["segments"] * x_bytes) for r in rows)
    return f"segments {counts}: after forward = k·x within {worst} bytes"


def check_transformer_recompute(ctx):
    """Lab 05's block: each recomputation keeps what the formula says; the timing runs."""
    from labsupport import checkpointing as ck

    dev = _dev(ctx)
    s, b, h, a = ctx.size(256, 64), 2, 128, 8
    x = torch.randn(b, s, h, device=dev)
    for recompute in ("none", "selective", "full"):
        report = memory.measure(ck.TransformerBlock(h, a, recompute=recompute).to(dev), x)
        formula = ck.transformer_block_bytes(s, b, h, a, recompute=recompute)
        assert report.saved_bytes + x.numel() * 4 == formula, (
            recompute, report.saved_bytes, formula)
        assert abs(report.after_forward_bytes - formula) <= 0.05 * formula + MiB, (
            recompute, report.after_forward_bytes, formula)
    threads = torch.get_num_threads()
    if not ctx.gpu:      # CPU time counts every thread's spin-waiting: time on one thread
        torch.set_num_threads(1)
    try:
        rows = ck.compare_recompute(s, b, h=h, heads=a, layers=2, rounds=2, device=dev)
    finally:
        torch.set_num_threads(threads)
    over = {r["mode"]: r["overhead"] for r in rows}
    return (f"none/selective/full bytes = formula on {dev}; overhead selective "
            f"{100 * over['selective']:+.0f} %, full {100 * over['full']:+.0f} %")


# --- Lab 06 on the GPU --------------------------------------------------------------------------

def check_lab06_recipes(ctx):
    """Mixed-precision recipes on the device: bytes per parameter, bf16 follows fp32."""
    from labsupport import data_parallel as dp
    from labsupport.memory import model_state

    dev = _dev(ctx)
    want = {"fp32": (4, 4, 8), "autocast": (4, 4, 8), "bf16 + master": (2, 2, 12),
            "pure bf16": (2, 2, 4)}
    x, y = dp.make_data(16, 32)
    for recipe, (p, g, o) in want.items():
        model, opt, amp = dp.build_recipe(recipe, dp.make_model(2, 32).to(dev), 1e-3)
        dp.recipe_step(model, opt, amp, x.to(dev), y.to(dev))
        got = model_state(model, opt).per_param(dp.num_params(model))
        assert (got["parameters"], got["gradients"]) == (p, g), (recipe, got)
        assert abs(got["optimizer_state"] - o) <= 0.01 * o, (recipe, got)
    curves = dp.train_recipes(steps=40, lr=1e-4, layers=2, width=64, batch=128, device=dev)
    ref = curves["fp32"]
    dev_rel = {r: max(abs(a - b) / b for a, b in zip(curves[r], ref))
               for r in ("autocast", "bf16 + master")}
    assert all(d < 0.01 for d in dev_rel.values()), dev_rel
    assert curves["pure bf16"][-1] > ref[-1], (curves["pure bf16"][-1], ref[-1])
    return (f"B/param as the recipes say; loss vs fp32: autocast {dev_rel['autocast']:.1e}, "
            f"bf16 + master {dev_rel['bf16 + master']:.1e}; pure bf16 ends "
            f"{curves['pure bf16'][-1] / ref[-1]:.3f}× fp32's loss")


def variants_check(ctx, n):
    """dp.run_variants(n): every rank's model state within 2 % of the ZeRO formulas."""
    from labsupport import data_parallel as dp

    layers = n * max(1, 8 // n)
    width = ctx.size(256, 64) // n * n
    ranks = dp.run_variants(n, layers=layers, width=width, batch=8 * n, timed_steps=1,
                            wire_tries=1)
    worst = 0.0
    for rank, result in enumerate(ranks):
        for variant, r in result.items():
            formula = dp.model_state_formula(variant, r["num_params"], n)
            for part in ("parameters", "gradients", "optimizer_state", "total"):
                got, want = r["model_state"][part], formula[part]
                err = abs(got - want) / want if want else float(got != 0)
                worst = max(worst, err)
                assert err <= 0.02, (rank, variant, part, got, want)
    agree = dp.losses_agree({n: ranks}, rtol=1e-5)
    return (f"N={n}: {len(ranks[0])} variants, model state per rank within {100 * worst:.2f} % "
            f"of the formulas; losses vs DDP within {max(agree.values()):.1e}")


def buckets_check(ctx, n):
    from labsupport import data_parallel as dp

    tl = dp.bucket_timeline(n, batch=ctx.size(1024, 32) * n, bucket_cap_mb=0.3)[0]
    last_grad = max(t for _, t in tl["grads"])
    b0, b1 = tl["backward"]
    assert len(tl["buckets"]) >= 3 and tl["buckets"][0]["launch"] < last_grad, tl["buckets"]
    assert all(b["done"] is not None and b["launch"] <= b["done"] <= b1 + 1e-3
               for b in tl["buckets"]), tl["buckets"]
    assert 0 <= b0 < b1, tl["backward"]
    return (f"N={n}: {len(tl['buckets'])} buckets, first launched {tl['buckets'][0]['launch']:.2f} "
            f"ms, last done {max(b['done'] for b in tl['buckets']):.2f} ms, backward "
            f"{b0:.2f}-{b1:.2f} ms ({'CUDA events' if ctx.gpu else 'perf_counter'})")


def check_lab06_variants(ctx):
    """DDP, ZeRO-1/2, FSDP2 (fp32, bf16) at one rank on the device: state = formulas."""
    return variants_check(ctx, 1)


def check_lab06_buckets(ctx):
    """DDP's bucket timeline on the device (CUDA events): launch <= done <= backward's end."""
    return buckets_check(ctx, 1)


# --- DeepSpeed --------------------------------------------------------------------------------

def check_deepspeed(ctx):
    """Lab 04's DeepSpeed pipeline engine at one stage on the GPU vs one-process AdamW."""
    try:
        import deepspeed  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken CUDA extension set-up
        raise Skip(f"DeepSpeed not usable here ({type(exc).__name__}: {exc}); Lab 04 needs it")
    from labsupport import deepspeed_pipe as dsp

    width, steps = ctx.size(1024, 64), ctx.size(6, 3)
    out = dsp.run_deepspeed_pipeline(stages=1, width=width, steps=steps, verbose=False)
    ref = dsp.reference_losses(width=width, steps=steps)
    losses, backend = out[0]["losses"], out[0]["backend"]
    rtol = 1e-3 if ctx.gpu else 1e-5
    worst = max(abs(a - b) / abs(b) for a, b in zip(losses, ref))
    assert worst <= rtol and backend == ctx.backend, (losses, ref, backend)
    return (f"{backend}: {steps} steps within {worst:.1e} of the reference, step "
            f"{min(out[0]['step_ms']):.2f} ms (synchronised)")


CHECKS = [(name[len("check_"):], fn) for name, fn in list(globals().items())
          if name.startswith("check_") and callable(fn)]
