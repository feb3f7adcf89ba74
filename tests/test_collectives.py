"""Lab 00's subpackage (labsupport.collectives): the reference ring all-gather and the pictures."""
import matplotlib
import pytest
import torch

from labsupport.collectives import checks, plot, plot_times_vs_size, ring_all_gather, show_collective

matplotlib.use("Agg")
pytestmark = pytest.mark.lab00


def test_reference_ring_all_gather_passes_the_check(capsys):
    checks.check_ring_all_gather(ring_all_gather, world_sizes=(4,), dtype=torch.int64)
    assert "ring_all_gather: correct" in capsys.readouterr().out


def test_show_collective_colours_cells_by_the_rank_they_came_from(monkeypatch):
    import matplotlib.pyplot as plt

    monkeypatch.setattr(plt, "show", lambda: None)
    before = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 5.0])]
    after = [torch.tensor([4.0, 7.0]), torch.tensor([1.0, 2.0])]   # sums, and rank 0's values
    fig = show_collective("demo", before, after, note="a note")
    left, right = fig.axes
    colours = [p.get_facecolor() for p in right.patches]
    mixed, rank0 = matplotlib.colors.to_rgba(plot.MIXED), matplotlib.colors.to_rgba(plot.RANK_COLOURS[0])
    assert colours == [mixed, mixed, rank0, rank0]   # rank 0's row first: grey sums
    assert len(left.patches) == 4 and fig._suptitle.get_text() == "demo — a note"
    plt.close(fig)


def test_plot_times_vs_size_draws_one_line_per_collective_and_the_guide(monkeypatch):
    import matplotlib.pyplot as plt

    monkeypatch.setattr(plt, "show", lambda: None)
    sizes = [4, 4096, 4 << 20]
    ax = plot_times_vs_size(sizes, {"all_reduce": [1e-5, 2e-5, 5e-3], "broadcast": [1e-5, 1e-5, 3e-3]},
                            2, "gloo")
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["all_reduce", "broadcast", "1 GB/s (guide)"]
    assert "2 ranks, gloo" in ax.get_title()
    plt.close(ax.figure)
