"""Parallelism Labs helper package.

Plumbing lives here so the labs can show the concept: ``launch`` runs a function on N ranks,
``checks`` turns exercise mistakes into explanations, ``plots`` draws who-holds-what and timing
figures. Heavy optional packages (DeepSpeed, Jupyter, ipywidgets, matplotlib) are imported lazily,
so ``import labsupport`` needs torch alone.
"""
from .devices import describe_hardware, hardware_report
from .launcher import LaunchError, launch, progress

__all__ = ["launch", "LaunchError", "progress", "describe_hardware", "hardware_report"]
__version__ = "0.1.0"
