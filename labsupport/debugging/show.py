"""Run a buggy function on real ranks and show what the launcher reports (Lab 09's demos)."""
from __future__ import annotations

__all__ = ["show_hang"]


def show_hang(fn, world_size, *args, timeout_s=3, debug=False, **kwargs):
    """``launch(fn, world_size, ...)``, expected to fail: print the ``LaunchError`` as a
    notebook shows it and return it (its ``diagnosis`` and ``report`` can then be read).

    Raises AssertionError when ``fn`` runs to completion: the demo was meant to show a bug.
    """
    from ..launcher import LaunchError, launch

    try:
        results = launch(fn, world_size, *args, timeout_s=timeout_s, debug=debug, **kwargs)
    except LaunchError as err:
        print(f"LaunchError: {err}")
        return err
    raise AssertionError(f"{getattr(fn, '__name__', fn)} ran to completion on {world_size} "
                         f"ranks (returned {results}): this demo expects it to hang or fail")
