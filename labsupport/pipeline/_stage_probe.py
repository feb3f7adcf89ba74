"""What a student's pipeline stage loop did on each rank, for Lab 03's check.

In each rank (``probe_rank``) the student's loop runs one stage of a small model while a
recorder writes, line by line to a file (so it survives a hang and the kill that ends it):

* every pass, seen from the stage module: ``F i`` when the module runs on micro-batch i's input
  (identified by value against the one-process activations), ``B i`` when the gradient of
  micro-batch i's output arrives (a hook on that output tensor);
* every point-to-point call where torch dispatches it -- ``ProcessGroup.send`` / ``recv``, which
  every ``dist.send/recv/isend/irecv/batch_isend_irecv`` goes through, however it was imported --
  with peer, tag and shape, and every ``Work.wait`` on it (begun, ended).

The parent (``checks.check_stage_loop``) reads these records: a send to the wrong neighbour, a
buffer of the wrong shape, a pass run twice or out of order, a deadlock (who waits for whom) are
facts in them, not guesses.
"""
from __future__ import annotations

import contextlib
import json
import os

import torch
import torch.distributed as dist
from torch import nn

LOSSES = {"mse": nn.functional.mse_loss, "huber": nn.functional.smooth_l1_loss}


def probe_model(widths, seed):
    """Blocks Linear(widths[k], widths[k+1]) -> Tanh: the stage boundaries change width."""
    gen = torch.Generator().manual_seed(seed)
    layers = []
    for a, b in zip(widths, widths[1:]):
        lin = nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=gen) / a ** 0.5)
            lin.bias.copy_(0.1 * torch.randn(b, generator=gen))
        layers.append(nn.Sequential(lin, nn.Tanh()))
    return nn.Sequential(*layers)


def case_data(case):
    """(model, stage modules, batch, targets) of a case, the same in every process."""
    from .run import split_model

    model = probe_model(case["widths"], case["seed"])
    modules, _ = split_model(model, case["p"])
    gen = torch.Generator().manual_seed(case["seed"] + 1)
    rows = case["m"] * case["rows"]
    batch = torch.randn(rows, case["widths"][0], generator=gen)
    targets = torch.randn(rows, case["widths"][-1], generator=gen)
    return model, modules, batch, targets


def boundary_shapes(modules, batch, rows):
    """Shape of one micro-batch's tensor entering each stage, and leaving the last (p+1)."""
    with torch.no_grad():
        x, shapes = batch[:rows], []
        for mod in modules:
            shapes.append(tuple(x.shape))
            x = mod(x)
    return shapes + [tuple(x.shape)]


def log_path(folder, rank, case_index):
    return os.path.join(folder, f"rank{rank}.case{case_index}.jsonl")


@contextlib.contextmanager
def recording(path, module, reference_inputs):
    """Record passes and point-to-point calls into ``path`` while the block runs."""
    pg_cls, work_cls = dist.ProcessGroup, dist.Work
    saved = {name: getattr(pg_cls, name) for name in ("send", "recv", "recv_anysource")}
    saved_wait = work_cls.wait
    works, counter = {}, [0]
    log = open(path, "a", buffering=1)  # line-buffered: each record is on disk at once

    def note(**event):
        log.write(json.dumps(event) + "\n")
        log.flush()

    def global_rank(group, r):
        try:
            return dist.get_global_rank(group, r)
        except (RuntimeError, ValueError):
            return r

    def p2p(op, name):
        original = saved[name]

        def call(group, tensors, *args):
            peer = global_rank(group, args[0]) if name != "recv_anysource" else None
            tag = args[1] if name != "recv_anysource" else args[0]
            number = counter[0] = counter[0] + 1
            note(e=op, peer=peer, tag=int(tag), shape=list(tensors[0].shape),
                 dtype=str(tensors[0].dtype).replace("torch.", ""), work=number)
            work = original(group, tensors, *args)  # noted first: a call may raise or block
            works[id(work)] = number
            return work
        return call

    def wait(work, *args, **kwargs):
        number = works.get(id(work))
        if number is None:  # a collective's or the launcher's own work
            return saved_wait(work, *args, **kwargs)
        note(e="wait", work=number)
        try:
            result = saved_wait(work, *args, **kwargs)
        except BaseException:
            note(e="failed", work=number)
            raise
        note(e="waited", work=number)
        return result

    def identify(x):
        for i, ref in enumerate(reference_inputs):
            if x.shape == ref.shape and torch.allclose(x.detach().float(), ref, rtol=1e-4,
                                                       atol=1e-5):
                return i
        return -1

    def pre_hook(mod, args):
        i = identify(args[0])
        note(e="F", mb=i, shape=list(args[0].shape))
        return None

    def hook(mod, args, out):
        i = identify(args[0])
        if out.requires_grad:
            out.register_hook(lambda grad, i=i: note(e="B", mb=i, shape=list(grad.shape)))
        return None

    handles = [module.register_forward_pre_hook(pre_hook), module.register_forward_hook(hook)]
    pg_cls.send, pg_cls.recv = p2p("send", "send"), p2p("recv", "recv")
    pg_cls.recv_anysource = p2p("recv", "recv_anysource")
    work_cls.wait = wait
    try:
        yield note
    finally:
        for name, fn in saved.items():
            setattr(pg_cls, name, fn)
        work_cls.wait = saved_wait
        for h in handles:
            h.remove()
        log.close()


def probe_rank(rank, world_size, fn, cases, folder):
    """Run the student's ``fn`` as stage ``rank`` of each case; return what a check compares."""
    torch.set_num_threads(1)
    results = []
    for k, case in enumerate(cases):
        model, modules, batch, targets = case_data(case)
        module, m, rows = modules[rank], case["m"], case["rows"]
        shapes = boundary_shapes(modules, batch, rows)
        with torch.no_grad():  # what this stage should see as each micro-batch's input
            refs = []
            for i in range(m):
                x = batch[i * rows:(i + 1) * rows]
                for mod in modules[:rank]:
                    x = mod(x)
                refs.append(x)
        module.zero_grad(set_to_none=True)
        dist.barrier()
        with recording(log_path(folder, rank, k), module, refs) as note:
            note(e="start")
            out = fn(module, batch, targets, m, [tuple(a) for a in case["actions"][rank]],
                     stage=rank, stages=world_size, in_shape=shapes[rank] if rank else None,
                     out_shape=shapes[rank + 1] if rank < world_size - 1 else None,
                     loss_fn=LOSSES[case["loss"]])
            note(e="returned")
        dist.barrier()  # every stage's sends are received before the next case
        results.append({
            "returned_type": type(out).__name__,
            "returned_value": float(out.detach() if isinstance(out, torch.Tensor) else out)
            if isinstance(out, (int, float, torch.Tensor))
            and (not isinstance(out, torch.Tensor) or out.numel() == 1) else None,
            "grads": [None if q.grad is None else q.grad.detach().clone()
                      for q in module.parameters()],
        })
    return results


def read_events(folder, rank, case_index):
    try:
        with open(log_path(folder, rank, case_index)) as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return []


# --- the parent's side: what the records establish -------------------------------------------

def passes(events):
    """[('F', mb), ('B', mb), ...] in the order the stage ran them (mb -1: no micro-batch's)."""
    return [(e["e"], e["mb"]) for e in events if e["e"] in ("F", "B")]


def _pass_text(kind, i):
    return f"{kind}{i}" if i >= 0 else f"{kind}?"


def wrong_peer(rank, stages, events, shapes):
    """The first send or receive that goes to a non-neighbour, or has the wrong shape (None)."""
    current = None
    for e in events:
        if e["e"] in ("F", "B"):
            current = (e["e"], e["mb"])
        elif e["e"] == "send" and current is not None:
            kind, i = current
            forward = kind == "F"
            want, shape = (rank + 1, shapes[rank + 1]) if forward else (rank - 1, shapes[rank])
            what = (f"the output of its {_pass_text(kind, i)} (an activation)" if forward else
                    f"the input gradient of its {_pass_text(kind, i)}")
            if e["peer"] != want:
                rule = (f"activations go forward to stage s+1 = {want}" if forward else
                        f"gradients go back to stage s-1 = {want}")
                if not 0 <= want < stages:
                    rule = ("the last stage sends nothing forward: its output goes into the loss"
                            if forward else "stage 0 sends no gradient back: its input is the "
                            "batch")
                return f"stage {rank} sent {what} to stage {e['peer']}: {rule}"
            if tuple(e["shape"]) != tuple(shape):
                return (f"stage {rank} sent a tensor of shape {tuple(e['shape'])} after its "
                        f"{_pass_text(kind, i)} to stage {e['peer']}, but {what} has shape "
                        f"{tuple(shape)}")
        elif e["e"] == "recv":
            peer = e["peer"]
            if peer is None:
                return (f"stage {rank} receives from any source: say which stage a message comes "
                        f"from (activations from stage {rank - 1}, gradients from stage "
                        f"{rank + 1})")
            if peer == rank - 1:
                want, what = shapes[rank], f"an activation (in_shape {tuple(shapes[rank])})"
            elif peer == rank + 1:
                want, what = shapes[rank + 1], (f"a gradient of this stage's output (out_shape "
                                                f"{tuple(shapes[rank + 1])})")
            else:
                return (f"stage {rank} receives from stage {peer}, which is not its neighbour: "
                        f"activations come from stage {rank - 1}, gradients from stage "
                        f"{rank + 1}")
            if tuple(e["shape"]) != tuple(want):
                return (f"stage {rank} receives from stage {peer} into a buffer of shape "
                        f"{tuple(e['shape'])}, but what stage {peer} sends is {what}")
    return None


def open_wait(events):
    """The point-to-point call this rank was waiting in when it stopped (its record), or None."""
    calls, waiting = {}, {}
    for e in events:
        if e["e"] in ("send", "recv"):
            calls[e["work"]] = e
        elif e["e"] == "wait":
            waiting[e["work"]] = True
        elif e["e"] == "waited":
            waiting.pop(e["work"], None)
    opened = [w for w in waiting if w in calls]
    return calls[opened[-1]] if opened else None


def explain_hang(actions, per_rank_events, finished):
    """Who waited for whom when the ranks hung, from their records (None when none waited)."""
    waits = {r: open_wait(ev) for r, ev in enumerate(per_rank_events)}
    waits = {r: c for r, c in waits.items() if c is not None}
    if not waits:
        return None

    def says(r):
        c, events = waits[r], per_rank_events[r]
        done = passes(events)
        ran = " ".join(_pass_text(*a) for a in done) or "no pass yet"
        if c["e"] == "send":
            kind, i = done[-1] if done else ("?", -1)
            what = (f"the output of its {_pass_text(kind, i)}" if kind == "F" else
                    f"the input gradient of its {_pass_text(kind, i)}")
            return f"stage {r} waits to send {what} to stage {c['peer']} (it ran {ran})"
        nxt = actions[r][len(done)] if len(done) < len(actions[r]) else None
        what = "an activation" if c["peer"] == r - 1 else "a gradient"
        return (f"stage {r} waits to receive {what} from stage {c['peer']} (it ran {ran}"
                + (f"; its next action is {nxt[0]}{nxt[1]})" if nxt else ")"))

    for r, c in sorted(waits.items()):
        peer = waits.get(c["peer"])
        if peer is not None and peer["peer"] == r:
            a, b = r, c["peer"]
            if c["e"] == peer["e"] == "recv":
                return (f"deadlock: {says(a)}, while {says(b)}. Both neighbours wait to receive, "
                        "so neither reaches the send the other waits for. Wait only for the "
                        "data the current action needs, and send each output as soon as it is "
                        "computed")
            if c["e"] == peer["e"] == "send":
                return (f"deadlock: {says(a)}, while {says(b)}. On gloo a blocking dist.send "
                        "returns only once the peer has received the message, and each peer is "
                        "sending, not receiving. Send with dist.isend and wait for those sends "
                        "after the last action, so a stage only ever waits for data it needs")
            return (f"deadlock: {says(a)}, while {says(b)}: each waits for the other and "
                    "neither call completes")
    lines = [says(r) for r in sorted(waits)]
    for r, c in sorted(waits.items()):
        if c["peer"] in finished:
            lines.append(f"stage {c['peer']} had already finished its step: it never "
                         f"{'received' if c['e'] == 'send' else 'sent'} that message")
    return "no stage can go on: " + "; ".join(lines)
