"""Tables of candidate layouts, as ``labs plan`` prints them (text or JSON-ready dicts)."""
from __future__ import annotations

GIB, GB = 2**30, 1e9


def describe(model, cluster, global_batch) -> str:
    """One paragraph: the model, the cluster and the assumptions of the estimate."""
    return (f"{model.name}: {model.num_params() / 1e9:.2f}B parameters, {model.layers} layers, "
            f"h={model.hidden}, {model.heads} heads ({model.kv} KV), seq {model.seq_len}; "
            f"global batch {global_batch} sequences.\n"
            f"{cluster.gpus} x {cluster.name} ({cluster.gpus_per_node} per node, "
            f"{cluster.gpu_memory_gib:g} GiB, {cluster.peak_tflops:g} TFLOP/s peak x "
            f"{cluster.efficiency:g}, links {cluster.intra_node_GBps:g} GB/s in a node and "
            f"{cluster.inter_node_GBps:g} GB/s between nodes per GPU and direction).\n"
            f"A layout fits when its peak is at most {cluster.usable_fraction:.0%} of the GPU "
            f"memory ({cluster.usable_bytes / GIB:.1f} GiB). Step time: the slowest stage's "
            "compute + TP + PP transfers per micro-batch, (m + pp - 1) times, then the DP "
            "collectives; nothing overlapped.")


def rows(candidates) -> list[dict]:
    """One JSON-ready dict per candidate: layout, bytes per rank (GiB), step time (s), bubble,
    bytes per group per step (GB, one rank, ring model)."""
    out = []
    for rank, c in enumerate(candidates, 1):
        e, w = c.estimate, c.estimate.worst
        out.append({
            "rank": rank, "label": c.layout.label(), "layout": c.layout.as_dict(),
            "memory_gib": {"parameters": w.parameters / GIB, "gradients": w.gradients / GIB,
                           "optimizer": w.optimizer / GIB, "activations": w.activations / GIB,
                           "transient": w.transient / GIB, "peak": w.peak / GIB},
            "fits": e.fits, "step_time_s": e.step_time, "time_s": e.time, "bubble": e.bubble,
            "group_gb_per_step": {g: v / GB for g, v in e.bytes_per_group().items()},
            "model_tflop_per_step": e.model_flops / 1e12,
        })
    return out


def table(candidates) -> str:
    """The ranked table: memory per rank by component and estimated step time."""
    head = (f"{'#':>3}  {'tp':>2} {'pp':>3} {'dp':>3} {'zero':>4} {'sp':>3} {'recompute':<9} "
            f"{'mb x m':>8}  {'params':>6} {'grads':>6} {'optim':>6} {'activ':>6} {'peak':>6}  "
            f"{'step s':>7} {'bubble':>6}  {'TP GB':>6} {'PP GB':>6} {'DP GB':>6}")
    lines = [head, "-" * len(head)]
    for r in rows(candidates):
        lay, mem, g = r["layout"], r["memory_gib"], r["group_gb_per_step"]
        lines.append(
            f"{r['rank']:>3}  {lay['tp']:>2} {lay['pp']:>3} {lay['dp']:>3} {lay['zero']:>4} "
            f"{'yes' if lay['sequence_parallel'] else 'no':>3} {lay['recompute']:<9} "
            f"{str(lay['micro_batch']) + 'x' + str(lay['microbatches']):>8}  "
            f"{mem['parameters']:>6.1f} {mem['gradients']:>6.1f} {mem['optimizer']:>6.1f} "
            f"{mem['activations']:>6.1f} {mem['peak']:>6.1f}  {r['step_time_s']:>7.2f} "
            f"{r['bubble']:>6.1%}  {g['tp']:>6.1f} {g['pp']:>6.1f} {g['dp']:>6.1f}")
    lines.append("memory: GiB per rank of the most loaded stage (peak = the four + transient "
                 "backward buffers); GB: bytes one rank sends per step (ring model).")
    return "\n".join(lines)
