"""Formulas the labs, the benchmarks and the planner share — plain Python, no torch.

One module per topic (pipeline bubble, collective bytes, activation memory, model states under
ZeRO, FLOPs per step). Each function cites the paper, table or datasheet it comes from, and the
labs set it beside a measurement. ``import labsupport.formulas`` must never import torch.
"""
