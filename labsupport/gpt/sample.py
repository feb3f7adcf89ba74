"""Generate text on the mesh: a forward pass through the pipeline for every new character.

Each new character: stage 0 embeds the context (1, s) and sends (1, s, h) down the pipeline
(send/recv on the stage links); the last stage's TP ranks all-gather the last position's logits
(V/tp each → V: one small gather, unlike training, sampling needs the whole distribution) and
draw the character with the seeded generator; one broadcast tells every rank which it was.
With sequence parallelism the context is padded on the right to a multiple of tp (the causal
mask keeps the padding out of every earlier position) and the logits of its last real position
are taken.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..tensor_parallel import gather_from_tp_region
from .reference import next_token


@torch.no_grad()
def parallel_generate(stage, run, tokenizer, layout, rank, links, tp_group, device) -> str:
    """``run.sample_chars`` characters after ``run.sample_prompt``; the same text on every rank.

    Must be called by every rank of the world (the broadcast), after training.
    """
    d, s, t = layout.coords(rank)
    pp, cfg = layout.pp, run.model
    peers = [layout.rank(d, k, t) for k in range(pp)]
    gen = torch.Generator().manual_seed(run.sample_seed)
    ids = tokenizer.encode(run.sample_prompt).tolist()
    sampler = layout.rank(0, pp - 1, 0)
    stage.eval()
    tp = layout.tp if layout.sequence_parallel else 1
    for _ in range(run.sample_chars):
        context = ids[-cfg.block_size:]
        n = len(context)
        padded = context + [0] * (-n % tp)  # SP: every TP rank gets len/tp tokens
        if s == 0:
            x = torch.tensor([padded], device=device)
        else:
            x = torch.empty(1, len(padded) // tp, cfg.n_embd, device=device, dtype=run.torch_dtype)
            dist.recv(x, src=peers[s - 1], group=links["F"][s - 1])
        y = stage(x)
        if s < pp - 1:
            dist.send(y.contiguous(), dst=peers[s + 1], group=links["F"][s])
        token = torch.zeros(1, dtype=torch.long, device=device)
        if s == pp - 1:
            logits = gather_from_tp_region(y[0, n - 1].contiguous(), tp_group)  # (V,)
            token[0] = next_token(logits.cpu(), tokenizer.n_chars, run.temperature, gen)
        dist.broadcast(token, src=sampler)
        ids.append(int(token))
    stage.train()
    return tokenizer.decode(ids[len(run.sample_prompt):])
