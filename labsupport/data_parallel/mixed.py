"""Mixed precision recipes: where the bytes per parameter go, and what bf16 does to the loss.

Four recipes, all with Adam (the ZeRO paper's K counts the optimizer's fp32 bytes):

    fp32            fp32 weights, gradients, Adam              4 + 4 + 8  = 16 B/param
    autocast        torch.autocast(bf16): fp32 weights and     4 + 4 + 8  = 16
                    gradients, matmuls in bf16 (activations bf16)
    bf16 + master   bf16 weights and gradients, an fp32        2 + 2 + 12 = 16  (the paper's split:
                    master copy + Adam in the optimizer                           Megatron, DeepSpeed)
    pure bf16       bf16 weights, gradients and Adam state     2 + 2 + 4  = 8   (no master: updates
                                                                                 below bf16's spacing vanish)

bf16 keeps fp32's 8-bit exponent (no loss scaling needed, unlike fp16) but only 8 significant
bits: a value is rounded to within 2^-8 ≈ 0.4 % of itself. A weight of 0.05 (in [2^-5, 2^-4))
moves in steps of 2^-12 ≈ 2.4e-4 in bf16; an update smaller than half that step is lost. Hence
the fp32 master copy: the update lands on the fp32 weight, and the bf16 copy used for compute is
re-derived from it.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.optim.adam import adam as adam_functional

from .manual import make_data, make_model

RECIPES = ("fp32", "autocast", "bf16 + master", "pure bf16")


class MasterWeightAdam(torch.optim.Optimizer):
    """Adam on fp32 master copies of low-precision (bf16/fp16) parameters.

    ``state[p]`` holds ``master`` (fp32 copy of p), ``exp_avg``, ``exp_avg_sq`` (fp32) and
    ``step``: 12 bytes per parameter, the paper's K. ``step()`` casts each gradient to fp32,
    runs torch's own Adam arithmetic on the master, and copies the master back into p.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state[p]
                st["master"] = p.detach().to(torch.float32).clone()
                st["exp_avg"] = torch.zeros_like(st["master"])
                st["exp_avg_sq"] = torch.zeros_like(st["master"])
                st["step"] = torch.zeros((), dtype=torch.float32)

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            ps = [p for p in group["params"] if p.grad is not None]
            if not ps:
                continue
            sts = [self.state[p] for p in ps]
            adam_functional([s["master"] for s in sts], [p.grad.float() for p in ps],
                            [s["exp_avg"] for s in sts], [s["exp_avg_sq"] for s in sts], [],
                            [s["step"] for s in sts], foreach=False, amsgrad=False,
                            beta1=group["betas"][0], beta2=group["betas"][1], lr=group["lr"],
                            weight_decay=0.0, eps=group["eps"], maximize=False)
            for p, s in zip(ps, sts):
                p.copy_(s["master"])          # round the new fp32 weight to p's dtype


def build_recipe(recipe: str, model: nn.Module, lr: float):
    """``(model, optimizer, autocast_dtype or None)`` for a recipe of ``RECIPES``."""
    if recipe == "fp32":
        return model, torch.optim.Adam(model.parameters(), lr=lr), None
    if recipe == "autocast":
        return model, torch.optim.Adam(model.parameters(), lr=lr), torch.bfloat16
    if recipe == "bf16 + master":
        model = model.to(torch.bfloat16)
        return model, MasterWeightAdam(model.parameters(), lr=lr), None
    if recipe == "pure bf16":
        model = model.to(torch.bfloat16)
        return model, torch.optim.Adam(model.parameters(), lr=lr), None
    raise ValueError(f"unknown recipe {recipe!r}: use one of {', '.join(RECIPES)}")


def recipe_step(model, opt, amp_dtype, x, y):
    """One step; the loss is always computed in fp32 (on the fp32 view of the output)."""
    device_type = x.device.type
    dtype = next(model.parameters()).dtype
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device_type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        out = model(x.to(dtype))
    loss = nn.functional.mse_loss(out.float(), y)
    loss.backward()
    opt.step()
    return loss.detach().item()


def train_recipes(recipes=RECIPES, steps: int = 40, lr: float = 1e-3, layers: int = 4,
                  width: int = 128, batch: int = 256, device="cpu"):
    """Train the same model on the same data with each recipe; ``{recipe: [loss per step]}``."""
    x, y = make_data(batch, width)
    x, y = x.to(device), y.to(device)
    out = {}
    for recipe in recipes:
        model, opt, amp = build_recipe(recipe, make_model(layers, width).to(device), lr)
        out[recipe] = [recipe_step(model, opt, amp, x, y) for _ in range(steps)]
    return out
