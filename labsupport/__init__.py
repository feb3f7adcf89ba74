"""Parallelism Labs helper package.

Plumbing lives here so the labs can show the concept: ``launch`` runs a function on N ranks,
one subpackage per lab holds its models, measurements, figures and check cells
(``labsupport.<subpackage>.checks``), and ``checks`` is the toolkit those check cells share.
Heavy optional packages (DeepSpeed, Jupyter, ipywidgets, matplotlib) are imported lazily, so
``import labsupport`` needs torch alone.
"""
from .devices import describe_hardware, hardware_report
from .launcher import LaunchError, launch
from .progress import progress

__all__ = ["launch", "LaunchError", "progress", "describe_hardware", "hardware_report"]
__version__ = "0.1.0"
