"""The report's figures, headless (Agg) and finished alike: labels, legend, tight layout, PNG at 120 dpi."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure


def new(width: float = 6, height: float = 4, panels: int = 1) -> tuple[Figure, Axes | Sequence[Axes]]:
    """One axes, or a row of `panels` sharing the y axis."""
    fig, axes = plt.subplots(1, panels, figsize=(width, height), sharey=True, squeeze=False)
    return fig, axes[0, 0] if panels == 1 else list(axes[0])


def save(fig: Figure, axes: Axes | Sequence[Axes], out: Path, **labels: str) -> None:
    """Label the axes (xlabel and title on each, ylabel on the first), add the legend (to the last, if
    anything is labelled) and write the figure to `out`."""
    axes = [axes] if isinstance(axes, Axes) else list(axes)
    for ax in axes:
        ax.set(xlabel=labels.get("xlabel", ""), **({"title": labels["title"]} if "title" in labels else {}))
    axes[0].set_ylabel(labels.get("ylabel", ""))
    if axes[-1].get_legend_handles_labels()[0]:
        axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
