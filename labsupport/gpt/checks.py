"""Check cells of Lab 07 (the capstone GPT on a mesh).

- ``check_vocab_parallel_cross_entropy(fn)``: exercise (a), the loss from vocabulary-sharded
  logits -- value and gradient against ``F.cross_entropy`` on the gathered logits, on 2 and 4
  ranks, with logits near 100 (fp32's exp overflows above 88.7 without the max subtraction).
- ``check_build_groups(fn)``: exercise (b), the TP / PP / DP groups from ``dist.new_group`` --
  planned for 7 layouts in this process, then real on 4 ranks.
- ``check_tp_block(cls)``: exercise (c), one transformer block's TP forward with the course's
  layers -- output and every gradient against the dense block, collectives counted per group.

Each raises ``CheckFailure`` naming the mistake (``NotImplementedError`` for an unfinished
exercise) and prints a ✔ line when everything matches.
"""
from __future__ import annotations

from ..checks import CheckFailure, launch_check, passed
from . import _check_block, _check_ce, _check_groups

__all__ = ["check_vocab_parallel_cross_entropy", "check_build_groups", "check_tp_block",
           "my_pieces"]

_PASSED: dict = {}  # exercise name -> the object whose check passed in this session
_PIECES = {"cross_entropy": "vocab_parallel_cross_entropy", "block": "TPBlock",
           "groups": "build_groups"}

_HANG = ("Every rank of a group must call the same collectives in the same order: no "
         "`if rank == ...` around an all-reduce, and the same group object on every rank.")


def _first_line(exc: CheckFailure, name: str) -> CheckFailure:
    """Put the reason a rank raised on the first line (the launcher's text follows)."""
    text = str(exc)
    if "out of bounds" in text or "out of range" in text:
        return CheckFailure(
            f"{name}: an index was out of range for this rank's V/t columns (the rank raised "
            "'index out of bounds'): target ids are global, 0..V-1; rank r owns [r·V/t, "
            "(r+1)·V/t) -- subtract r·V/t and mask the targets outside that range before "
            f"indexing.\n\n{text}")
    return exc


def check_vocab_parallel_cross_entropy(student_fn, name="vocab_parallel_cross_entropy",
                                       timeout_s=30):
    """Check ``student_fn(logits_shard, target, group) -> per-token loss (b, s)``.

    Runs on 4 ranks: t = 2 (two groups [0, 1], [2, 3]) and t = 4 (the default group), each on
    moderate logits and on logits around 100. Every rank's loss and gradient must equal
    ``F.cross_entropy`` on the gathered logits, and no collective may move logit-sized data.
    """
    try:
        results = launch_check(name, _check_ce.run_ce_cases, 4, student_fn, name,
                               timeout_s=timeout_s, hang_hint=_HANG)
    except CheckFailure as exc:
        raise _first_line(exc, name) from None
    judged = _check_ce.judge_ce(results, name)
    _PASSED["vocab_parallel_cross_entropy"] = student_fn
    passed(name, f"loss and gradient equal F.cross_entropy on the gathered logits for t = 2 and "
                 f"4, moderate logits and logits near 100 ({judged} rank results; loss rtol "
                 f"{_check_ce.RTOL:g}, gradient atol {_check_ce.GRAD_ATOL:g}); no logits moved")


def check_build_groups(student_fn, name="build_groups", timeout_s=20):
    """Check ``student_fn(rank, world_size, dp, pp, tp) -> {"dp": g, "pp": g, "tp": g}``."""
    for layout in _check_groups.LAYOUTS:
        _check_groups.judge_plan(_check_groups.plan(student_fn, layout, name), layout, name)
    results = launch_check(name, _check_groups.run_real_groups, 4, student_fn, name, timeout_s,
                           timeout_s=timeout_s, hang_hint=_HANG)
    _check_groups.judge_real(results, name)
    _PASSED["build_groups"] = student_fn
    shown = ", ".join("×".join(map(str, lay)) for lay in _check_groups.LAYOUTS)
    passed(name, f"every rank in exactly one TP, PP and DP group, TP peers adjacent, the same "
                 f"new_group calls on every rank for layouts (dp×pp×tp) {shown}; the groups "
                 "work on 4 real ranks")


def check_tp_block(student_cls, name="TPBlock", timeout_s=30):
    """Check ``student_cls(block, rank, world_size, group)``: a TP version of the dense block."""
    results = launch_check(name, _check_block.run_block_case, 4, student_cls, name,
                           timeout_s=timeout_s, hang_hint=_HANG)
    judged = _check_block.judge_block(results, name)
    _PASSED["TPBlock"] = student_cls
    passed(name, f"output, dL/dx and every parameter gradient equal the dense block on {judged} "
                 "ranks (two TP groups of 2); 2 all-reduces forward and 2 backward, each over "
                 "its TP group")


def my_pieces(**candidates) -> dict:
    """Your pieces whose check passed in this session, for the training run; the course's
    reference stands in for the others (so a stuck student still trains the model).

    ``my_pieces(cross_entropy=fn, block=TPBlock, groups=build_groups)`` -> the ``pieces`` dict of
    ``train_parallel``; prints which piece is yours and which is the reference.
    """
    out = {}
    for key, obj in candidates.items():
        if key not in _PIECES:
            raise ValueError(f"unknown piece {key!r}: use {', '.join(_PIECES)}")
        exercise = _PIECES[key]
        if _PASSED.get(exercise) is obj:
            out[key] = obj
            print(f"{key:<14} yours ({exercise} passed its check)")
        else:
            print(f"{key:<14} the course's reference ({exercise} has not passed its check)")
    return out
