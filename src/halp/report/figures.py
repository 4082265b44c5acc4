"""The report's figures, headless (Agg) and finished alike: labels, legend, tight layout, PNG at 120 dpi."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure


def new(width: float = 6, height: float = 4) -> tuple[Figure, Axes]:
    return plt.subplots(figsize=(width, height))


def save(fig: Figure, ax: Axes, out: Path, **labels: str) -> None:
    """Label the axes (xlabel, ylabel, title), add the legend and write the figure to `out`."""
    ax.set(**labels)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
