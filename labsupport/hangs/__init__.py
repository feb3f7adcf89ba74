"""When a launch hangs: which rank waits where, in which call, from which line -- and why.

- ``record`` (in each rank): the calls it issues, whether it is inside one, and its stacks on a
  signal (faulthandler); ``layout``: the files that leaves, and how the parent reads them.
- ``monitor`` (in the parent): notices a rank stuck inside communication, takes the snapshot.
- ``stacks``: faulthandler's text parsed, trimmed to the user's code, cells named as IPython does.
- ``report``: the diagnoses ("rank 1 never entered all_reduce #3 that ranks 0, 2 wait in ...")
  and the per-rank account that ``LaunchError`` shows; ``failure`` composes the message.

Lab 09 (when it hangs), which shows these reports on the classic bugs, is ``labsupport.debugging``.
"""
from .monitor import Monitor
from .report import RankView, describe_ranks, diagnose

__all__ = ["Monitor", "RankView", "describe_ranks", "diagnose"]
