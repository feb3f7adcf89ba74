"""Why a pipeline's layers or loss are wrong: one sentence per mistake (Lab 04's set-up exercise).

Each ``explain_*`` returns None when its piece is right, else a sentence that names only what it
has established (a built module in the list, a loss that is exactly B times the mean, a
gradient_accumulation_steps rounded down, the optimizer DeepSpeed really builds from the config).
The check cells (:mod:`labsupport.deepspeed_pipe.checks`) turn them into verdicts.
"""
from __future__ import annotations

import inspect
import math

import torch
import torch.nn as nn

from ..checks import not_implemented
from .model import classifier

BASE_SEED = 1234  # PipelineModule(seed_layers=True, base_seed=...): layer i is built after seed + i


def _class_name(cls):
    """'nn.Linear' for torch.nn's classes, else the class's name."""
    return f"nn.{cls.__name__}" if getattr(nn, cls.__name__, None) is cls else cls.__name__


def _describe(item):
    """'LayerSpec(nn.Linear, 32, 64)' for a LayerSpec, the repr of a module, a function's name."""
    if hasattr(item, "typename") and hasattr(item, "module_args"):
        args = [repr(a) for a in item.module_args]
        args += [f"{k}={v!r}" for k, v in item.module_kwargs.items()]
        return f"LayerSpec({', '.join([_class_name(item.typename), *args])})"
    if isinstance(item, nn.Module) or not callable(item):
        return repr(item)
    return getattr(item, "__name__", repr(item))


def _build(item, index):
    """What PipelineModule makes of list entry ``index`` (seeded as with seed_layers=True)."""
    torch.manual_seed(BASE_SEED + index)
    return item.build() if hasattr(item, "typename") and hasattr(item, "build") else item


def explain_layer_specs(specs, sizes):
    """Why ``specs`` is not :func:`classifier` ``(*sizes)`` as a list of LayerSpec recipes."""
    from deepspeed.pipe import LayerSpec

    model = classifier(*sizes)
    if not isinstance(specs, (list, tuple)):
        return f"return a list with one LayerSpec per layer, got a {type(specs).__name__}"
    for i, item in enumerate(specs):
        if isinstance(item, nn.Module) and any(True for _ in item.parameters()):
            n = sum(p.numel() for p in item.parameters())
            return (f"entry {i} is {item!r}, a layer already built: every process running your "
                    f"function builds it and holds its {n:,} parameters before PipelineModule "
                    f"picks its stage's layers. Write LayerSpec({_class_name(type(item))}, ...), a "
                    "recipe only the stage that owns the layer builds")
        if not (isinstance(item, (LayerSpec, nn.Module)) or callable(item)):
            return (f"entry {i} is a {type(item).__name__} ({item!r:.60}), not a LayerSpec: "
                    "PipelineModule takes LayerSpec(nn.SomeLayer, *args) recipes")
    if len(specs) != len(model):
        return (f"your list has {len(specs)} entr{'y' if len(specs) == 1 else 'ies'} "
                f"({', '.join(map(_describe, specs))}); the "
                f"model has {len(model)} layers ({', '.join(map(repr, model))}): one entry per "
                "layer of the nn.Sequential, in order")
    h = torch.randn(4, sizes[0], generator=torch.Generator().manual_seed(0))
    for i, (item, layer) in enumerate(zip(specs, model)):
        try:
            built = _build(item, i)
        except Exception as exc:  # e.g. LayerSpec(nn.Linear, 32): a missing argument
            return f"entry {i}, {_describe(item)}, fails to build: {type(exc).__name__}: {exc}"
        want = _build(LayerSpec(type(layer), *_args(layer)), i)
        shapes = [tuple(p.shape) for p in getattr(built, "parameters", lambda: [])()]
        if shapes != [tuple(p.shape) for p in want.parameters()] or (
                shapes and type(built) is not type(want)):
            return (f"entry {i} builds {_describe(built)}; the model's layer {i} is {layer!r}")
        with torch.no_grad():
            try:
                got = built(h)
            except Exception as exc:
                return (f"entry {i}, {_describe(item)}, fails on the model's activation of shape "
                        f"{tuple(h.shape)}: {type(exc).__name__}: {exc}")
            ref = want(h)
        if not (isinstance(got, torch.Tensor) and got.shape == ref.shape
                and torch.allclose(got, ref, rtol=1e-5, atol=1e-6)):
            diff = (f"max difference {float((got - ref).abs().max()):.3g}"
                    if isinstance(got, torch.Tensor) and got.shape == ref.shape
                    else f"output {getattr(got, 'shape', type(got).__name__)}")
            return (f"entry {i}, {_describe(item)}, computes a different function from the "
                    f"model's layer {i}, {layer!r}, on the same input ({diff})")
        h = ref
    return None


def _args(layer):
    """Constructor arguments of the model's layers (Linear and GELU only)."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    return ()


def explain_layer_spec_error(exc):
    """The sentence for an exception raised while *creating* a LayerSpec (None if it is not one).

    DeepSpeed 0.19's ``LayerSpec.__init__`` runs ``issubclass(typename, nn.Module)``: a built
    module or a function as ``typename`` raises TypeError there; the frame holds what was passed.
    """
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "__init__" and type(frame.f_locals.get("self")).__name__ in (
                "LayerSpec", "TiedLayerSpec"):
            given = frame.f_locals.get("typename")
            if isinstance(given, nn.Module):
                what, extra = f"a built module, {given!r},", ""
            else:
                what = f"{_describe(given)} (a {type(given).__name__}, not an nn.Module class)"
                extra = (" (a function without parameters may also stand in the list by itself)"
                         if callable(given) else "")
            return (f"LayerSpec was given {what} as its layer class: LayerSpec takes the class "
                    "and its constructor arguments, e.g. LayerSpec(nn.Linear, d_in, hidden), and "
                    f"builds the layer later, on the stage that owns it{extra}")
        tb = tb.tb_next
    return None


# DeepSpeed 0.19's DeepSpeedEngine.backward asserts deepspeed.runtime.utils.maybe_loss_for_backward:
# a tensor with exactly one element and a grad_fn.
_SCALAR = (" (DeepSpeed's backward asserts 'loss must be a scalar tensor': one element, with a "
           "grad_fn)")


def _batch(micro_batch, classes, seed):
    gen = torch.Generator().manual_seed(seed)
    logits = (2 * torch.randn(micro_batch, classes, generator=gen)).requires_grad_()
    return logits, torch.randint(classes, (micro_batch,), generator=gen)


def _is_stub(exc, fn):
    """The exercise stub's own ``raise NotImplementedError()`` -- not one raised deeper down (torch
    raises NotImplementedError for a kernel missing for a dtype, e.g. cross-entropy of int64
    "logits", which is a mistake to explain, not an unfinished exercise)."""
    if not isinstance(exc, NotImplementedError):
        return False
    tb = exc.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code is getattr(fn, "__code__", None) or not str(exc)


def _swapped_is_right(loss_fn, logits, labels, want):
    try:
        got = loss_fn(labels, logits)
    except Exception:
        return False
    return isinstance(got, torch.Tensor) and got.numel() == 1 and math.isclose(
        float(got.detach()), float(want.detach()), rel_tol=1e-5, abs_tol=1e-7)


def explain_loss_fn(loss_fn, micro_batch=8, classes=10, seed=0, name="loss_fn"):
    """Why ``loss_fn(outputs, labels)`` is not the micro-batch's mean cross-entropy."""
    if isinstance(loss_fn, type):
        return (f"{name} is the class {loss_fn.__name__} itself: the engine calls "
                f"loss_fn(outputs, labels), which would construct a {loss_fn.__name__} module "
                f"instead of a loss. Use an instance, {loss_fn.__name__}(), or a function")
    if not callable(loss_fn):
        return f"{name} must be a function or a loss module, got a {type(loss_fn).__name__}"
    logits, labels = _batch(micro_batch, classes, seed)
    want = nn.functional.cross_entropy(logits, labels)
    where = (f"on a micro-batch of logits ({micro_batch}, {classes}) float32 and labels "
             f"({micro_batch},) int64")
    try:
        inspect.signature(loss_fn).bind(logits, labels)
    except TypeError:
        return (f"{name}{inspect.signature(loss_fn)} cannot be called as loss_fn(outputs, "
                "labels): the engine's last stage passes exactly those two arguments")
    except ValueError:
        pass  # no signature to read (a builtin): just call it
    try:
        got = loss_fn(logits, labels)
    except Exception as exc:
        if _is_stub(exc, loss_fn):
            raise not_implemented(name) from None
        if _swapped_is_right(loss_fn, logits, labels, want):
            return (f"{name} takes its arguments in the wrong order: the engine calls "
                    "loss_fn(outputs, labels) -- model output first, labels second")
        return f"{name}(outputs, labels) raised {type(exc).__name__}: {exc} ({where})"
    if isinstance(got, nn.Module):
        return (f"{name}(outputs, labels) returned a {type(got).__name__} module, not a loss: "
                "pass an instance of the loss module or a function that returns the loss")
    if not isinstance(got, torch.Tensor):
        return (f"{name} returned a {type(got).__name__} ({got!r:.40}), not a tensor: the engine "
                "backpropagates what loss_fn returns, so return the loss tensor itself (.item() "
                "or float() cut it from the graph)" + _SCALAR)
    if got.numel() != 1:
        if tuple(got.shape) == (micro_batch,) and torch.allclose(got.mean(), want, rtol=1e-5):
            return (f"{name} returns one loss per sample, shape ({micro_batch},) "
                    "(reduction='none'): the engine backpropagates a single number -- average "
                    "over the micro-batch" + _SCALAR)
        return (f"{name} returns a tensor of shape {tuple(got.shape)} {where}: the engine "
                "backpropagates a single number (a 0-dim tensor)" + _SCALAR)
    value, ref = float(got.detach()), float(want.detach())
    if not math.isclose(value, ref, rel_tol=1e-5, abs_tol=1e-7):
        if _swapped_is_right(loss_fn, logits, labels, want):
            return (f"{name} takes its arguments in the wrong order: the engine calls "
                    "loss_fn(outputs, labels) -- model output first, labels second")
        if math.isclose(value, micro_batch * ref, rel_tol=1e-5):
            return (f"{name} sums over the micro-batch instead of averaging: it gives "
                    f"{value:.6g}, {micro_batch}× the mean cross-entropy {ref:.6g} {where}, so "
                    f"every gradient is {micro_batch}× too large (use reduction='mean')")
        return (f"{name} gives {value:.6g} where the mean cross-entropy is {ref:.6g} {where} "
                f"(ratio {value / ref:.4g})")
    if got.grad_fn is None:
        return (f"{name} returns the right value, but detached from the outputs (no grad_fn): "
                "no gradient would reach the model" + _SCALAR)
    (g_got,) = torch.autograd.grad(got.sum(), logits)
    (g_want,) = torch.autograd.grad(want, logits)
    if not torch.allclose(g_got, g_want, rtol=1e-4, atol=1e-6):
        return (f"{name} has the right value but its gradient with respect to the outputs "
                f"differs from cross-entropy's (max difference "
                f"{float((g_got - g_want).abs().max()):.3g})")
    return None
