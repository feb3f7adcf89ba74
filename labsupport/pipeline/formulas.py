"""Closed-form bubble sizes, to put next to the simulator's numbers.

The formulas live in the torch-free :mod:`labsupport.formulas.pipeline` (shared with the
planner); this module keeps their old import path.
"""
from ..formulas.pipeline import bubble_formula, bubble_ratio

__all__ = ["bubble_formula", "bubble_ratio"]
