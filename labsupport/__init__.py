"""Parallelism Labs helper package.

Plumbing lives here so the labs can show the concept: ``launch`` runs a function on N ranks,
one subpackage per lab holds its models, measurements, figures and check cells
(``labsupport.<subpackage>.checks``), and ``checks`` is the toolkit those check cells share.
Heavy optional packages (DeepSpeed, Jupyter, ipywidgets, matplotlib) are imported lazily, so
``import labsupport`` needs torch alone.
"""
from ._lazy import lazy_names as _lazy_names
from .devices import describe_hardware, hardware_report
from .launcher import LaunchError, launch
from .progress import progress

# progress_table: where the student stands in the course (``progress`` is the launcher's bar).
__getattr__, __dir__, _LAZY = _lazy_names(__name__, {"course_progress": ("progress_table",)})
__all__ = ["launch", "LaunchError", "progress", "describe_hardware", "hardware_report", *_LAZY]
__version__ = "0.1.0"
