"""Lab 09: when it hangs -- the classic distributed bugs, run for real and diagnosed.

    from labsupport.debugging import checks, show_hang
    err = show_hang(buggy_step, 2)        # prints the launcher's report, returns the LaunchError
    checks.check_average_gradients(average_gradients)   # the exercise

Modules: ``show`` (run a buggy function, print what the launcher reports), ``grads`` (the
exercise's two-headed model and the reference ``average_gradients``), ``checks`` (the
exercise's check cell). The report itself is the launcher's (``labsupport.hangs``).
"""
from .grads import TwoHeads, average_gradients
from .show import show_hang

__all__ = ["TwoHeads", "average_gradients", "show_hang"]
