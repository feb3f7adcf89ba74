"""Lab 05's segment table: a sweep's measured bytes beside the memory model, and its checks.

    wide = segment_sweep(16, 64, 1024, [0, 1, 2, 4, 8, 16])
    x, a, g = block_units(wide, 16, 64, 1024, "wide")       # measured units, bytes
    table = segment_table(wide, 16, x, a, g)                  # + model and the gap, per k
    print(format_segment_table("wide stack, L=16", table, x, a, g))
    assert_segment_model(table, x, exact=True)                # exact byte counts on a CPU
"""
from __future__ import annotations

from ..memory import format_bytes
from .formulas import segment_memory
from .models import Stack

MiB = 2**20
GRADIENT_TEMPORARIES_X = 6  # the most the backward peak may sit above the model, in units of x


def block_units(rows, layers: int, d: int, tokens: int, block: str = "wide"):
    """``(x, a, g)`` in bytes for a :func:`segment_sweep` of ``layers`` blocks on [tokens, d]:
    x, one block input (fp32); a, what one un-checkpointed block saves, *measured* (the run
    without checkpointing, ``segments=0``, holds L·a after forward); g, one block's parameter
    gradients."""
    plain = next(r for r in rows if r["segments"] == 0)
    x = tokens * d * 4
    a = plain["after_forward"] / layers
    g = sum(p.numel() * 4 for p in Stack(1, d, block=block).parameters())
    return x, a, g


def segment_table(rows, layers: int, x: float, a: float, g: float = 0.0) -> list[dict]:
    """Each sweep row beside :func:`segment_memory`'s model: the row plus ``model`` (the model's
    ``after_forward`` / ``backward_peak``, None without checkpointing) and ``above`` (measured
    backward peak minus the model's, in units of x; None without checkpointing)."""
    out = []
    for r in rows:
        k = r["segments"]
        model = segment_memory(layers, k, x, a, g) if k else None
        above = (r["backward_peak"] - model["backward_peak"]) / x if k else None
        out.append({**r, "model": model, "above": above})
    return out


def format_segment_table(title: str, table, x: float, a: float, g: float) -> str:
    """The table as text (MiB): after forward and backward peak, measured and modelled, per k."""
    nan = float("nan")
    lines = [f"{title}: x = {format_bytes(x)}, a = {format_bytes(a)} (a/x = {a / x:.2f}), "
             f"block parameter gradients g = {format_bytes(g)}",
             f"  {'k':>3} {'after fwd':>10} {'model k·x':>10} {'bwd peak':>10} {'model':>10}"]
    for r in table:
        k, model = r["segments"], r["model"]
        lines.append(f"  {k if k else 'none':>3} {r['after_forward'] / MiB:>10.1f} "
                     f"{(model['after_forward'] / MiB if model else nan):>10.1f} "
                     f"{r['backward_peak'] / MiB:>10.1f} "
                     f"{(model['backward_peak'] / MiB if model else nan):>10.1f}")
    above = [r["above"] for r in table if r["segments"]]
    exact = all(r["after_forward"] == r["segments"] * x for r in table if r["segments"])
    lines.append(f"  after forward {'= k·x exactly' if exact else '≈ k·x'} at every k; backward "
                 f"peak above the model by {min(above):.1f}–{max(above):.1f} x")
    return "\n".join(lines)


def assert_segment_model(table, x: float, exact: bool) -> None:
    """What the lab's text claims about the table, checked.

    After forward a checkpointed stack holds exactly its k segment inputs, k·x (the output takes
    the place of the first input). ``exact`` (a CPU, where byte counts are exact): equal, and
    the backward peak sits 0 to ``GRADIENT_TEMPORARIES_X`` x above the model (one block's
    gradient temporaries, never below it); on a GPU the allocator may add workspaces and
    rounding, so after forward is k·x within 5 % + 1 MiB.
    """
    ks = [r for r in table if r["segments"]]
    for r in ks:
        k, held = r["segments"], r["after_forward"]
        if exact:
            assert held == k * x, f"k={k}: {held} bytes held after forward, model k·x = {k * x}"
        else:
            assert abs(held - k * x) <= 0.05 * k * x + MiB, (
                f"k={k}: {held} bytes held after forward, model k·x = {k * x}")
    if exact:
        above = [r["above"] for r in ks]
        assert 0 <= min(above) and max(above) <= GRADIENT_TEMPORARIES_X, (
            f"backward peak above the model by {above} x: expected 0 to "
            f"{GRADIENT_TEMPORARIES_X} x (gradient temporaries of one block)")


def segment_choice(rows, layers: int, d: int, tokens: int, block: str = "wide") -> dict:
    """A sweep's best k beside the choices: the memory model's (:func:`best_segments`), Exercise
    4's reference (:func:`choose_segments`), √(L·a/x) and √L, with the measured peaks there."""
    import math

    from .formulas import best_segments
    from .segments import choose_segments

    x, a, g = block_units(rows, layers, d, tokens, block)
    peaks = {r["segments"]: r["backward_peak"] for r in rows if r["segments"]}
    best = min(peaks, key=lambda k: (peaks[k], k))
    model, continuous = best_segments(layers, x, a, g)
    root = min(peaks, key=lambda k: abs(k - math.sqrt(layers)))
    return {"layers": layers, "x": x, "a": a, "g": g, "peaks": peaks, "best": best,
            "model": model, "chosen": choose_segments(layers, a, x), "continuous": continuous,
            "root": root}


def format_segment_choice(name: str, c: dict) -> str:
    import math

    p, best = c["peaks"], c["peaks"][c["best"]]
    return (f"{name}: measured best k = {c['best']} (peak {format_bytes(best)}); model best "
            f"k = {c['model']}, choose_segments: k = {c['chosen']}, √(L·a/x) = "
            f"{c['continuous']:.1f}, √L = {math.sqrt(c['layers']):.1f}\n"
            f"  at k = {c['root']} (nearest √L): peak {format_bytes(p[c['root']])} = "
            f"{p[c['root']] / best:.2f}× the best measured")


def assert_segment_choice(c: dict, exact: bool) -> None:
    """What Lab 05 §2 says of a sweep: the model's k is within 5 % of the best measured peak;
    with exact byte counts (a CPU), when a block saves about its input (a < 1.5x) the best k is
    within one of √L, and when it saves much more (a > 4x) the best k is above 2√L and √L's peak
    is more than 1.5× the best."""
    import math

    p, best, L = c["peaks"], c["peaks"][c["best"]], c["layers"]
    if c["model"] in p:
        assert p[c["model"]] <= 1.05 * best, f"model's k={c['model']}: {p[c['model']]} vs {best}"
    if not exact:
        return
    if c["a"] < 1.5 * c["x"]:
        assert abs(c["best"] - math.sqrt(L)) <= 1, f"best k={c['best']}, √L={math.sqrt(L):.1f}"
    elif c["a"] > 4 * c["x"]:
        assert c["best"] > 2 * math.sqrt(L), f"best k={c['best']}, 2√L={2 * math.sqrt(L):.1f}"
        assert p[c["root"]] > 1.5 * best, f"√L's peak {p[c['root']]} vs the best {best}"
