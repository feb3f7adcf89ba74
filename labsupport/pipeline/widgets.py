"""Lab 03's explorer: sliders for p, m, schedule and B/F cost redraw a simulated timeline.

ipywidgets and matplotlib are imported when called. The picture is NOT drawn through an
``Output`` widget (``interactive_output``): headless nbclient runs of such a cell stalled for
its full 600 s timeout in 2 of 5 runs here. Instead the figure and the bubble line are
ordinary display outputs with a display id, replaced in place (``update``) when a slider moves:
headless runs draw the initial state once and never wait on a widget.
"""
from __future__ import annotations

from .formulas import bubble_formula
from .plot import plot_timeline
from .schedules import SCHEDULES
from .simulate import simulate


def explorer(p: int = 4, m: int = 8, schedule: str = "1f1b", b_over_f: float = 2.0):
    """Widget box: stages p, micro-batches m, schedule, B/F cost ratio -> timeline + bubble.

    Displays the sliders, the timeline and a line with the bubble; returns None.
    """
    import ipywidgets as w
    import matplotlib.pyplot as plt

    controls = {
        "p": w.IntSlider(value=p, min=2, max=8, description="stages p"),
        "m": w.IntSlider(value=m, min=1, max=32, description="micro-batches m"),
        "schedule": w.Dropdown(options=list(SCHEDULES), value=schedule, description="schedule"),
        "b_over_f": w.FloatSlider(value=b_over_f, min=0.5, max=4.0, step=0.5,
                                  description="B/F cost"),
    }

    def render(p, m, schedule, b_over_f):
        """(figure, text) for one setting; the figure is closed so only display() shows it."""
        v = 2 if schedule == "interleaved" else 1
        try:
            t = simulate(schedule, p, m, chunks=v, forward=1.0, backward=b_over_f)
        except ValueError as exc:  # e.g. interleaved with m not a multiple of p
            fig = plt.figure(figsize=(8, 1))
            plt.close(fig)
            return fig, str(exc)
        ax = plot_timeline(t)
        plt.close(ax.figure)
        return ax.figure, (f"bubble {t.bubble_fraction():.3f} | formula (p-1)/(v·m+p-1) = "
                           f"{bubble_formula(p, m, v):.3f} (exact for equal costs; zb-h1 splits "
                           f"the backward) | peak activations per stage {t.peak_activations()}")

    from IPython.display import DisplayHandle, display

    items = list(controls.values())
    display(w.VBox([w.HBox(items[:2]), w.HBox(items[2:])]))
    fig, text = render(**{k: c.value for k, c in controls.items()})
    fig_handle, text_handle = DisplayHandle(), DisplayHandle()
    fig_handle.display(fig)
    text_handle.display(text)

    def on_change(_change):
        fig, text = render(**{k: c.value for k, c in controls.items()})
        fig_handle.update(fig)
        text_handle.update(text)

    for c in items:
        c.observe(on_change, names="value")
