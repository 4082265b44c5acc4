"""HALP's figure across architectures: test AUROC by relative depth (block / (blocks - 1)), one panel per
layered representation, one line per trained model with its 95% interval, VF as a dashed level."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from halp.report import figures

PANELS = ("vision_token", "query_token", "image_attention")  # the last where a model stored it
PROBE = "mlp"  # HALP's probe


def by_depth(rows: dict[str, pd.DataFrame], blocks: dict[str, int]) -> pd.DataFrame:
    """Long table: model, representation, layer, relative_depth and the MLP probe's AUROC with its interval
    (VF rows have no layer and no depth)."""
    tables = []
    for model, grid in rows.items():
        mlp = grid[grid.probe == PROBE]
        table = mlp[["representation", "layer", "auroc_mean", "auroc_ci_low", "auroc_ci_high"]].copy()
        table.insert(0, "model", model)
        table.insert(3, "relative_depth", table.layer / max(blocks[model] - 1, 1))
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def plot_by_depth(table: pd.DataFrame, out: Path) -> None:
    panels = [p for p in PANELS if (table.representation == p).any()]
    fig, axes = figures.new(width=5 * len(panels), height=4, panels=len(panels))
    for ax, representation in zip(axes, panels, strict=True):
        for model, lines in table.groupby("model", sort=False):
            layered = lines[lines.representation == representation].sort_values("relative_depth")
            (line,) = ax.plot(layered.relative_depth, layered.auroc_mean, marker="o", label=model)
            ax.fill_between(
                layered.relative_depth,
                layered.auroc_ci_low,
                layered.auroc_ci_high,
                color=line.get_color(),
                alpha=0.15,
                linewidth=0,
            )
            for _, vf in lines[lines.representation == "vision_only"].iterrows():
                ax.axhline(vf.auroc_mean, linestyle="--", color=line.get_color(), linewidth=0.8)
        ax.axhline(0.5, color="black", linewidth=0.5)
        ax.set(xlim=(-0.03, 1.03), title=representation.replace("_", " "))
    fig.suptitle(
        f"{PROBE} probe by relative depth; band: 95% interval; dashed: VF, in the model's colour", size=9
    )
    figures.save(fig, axes, out, xlabel="relative depth (block / last block)", ylabel="test AUROC")
