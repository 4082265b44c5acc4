"""`halp report`: HALP's table (model x VF / best VT / best QT), AUROC-by-layer plots and their data."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

log = logging.getLogger(__name__)
LAYERED = ("vision_token", "query_token")


def _cell(rows: pd.DataFrame) -> str:
    """The best row's AUROC with its 95% interval, layer and probe."""
    if rows.empty:
        return "n/a"
    best = rows.loc[rows.auroc_mean.idxmax()]
    where = "" if pd.isna(best.layer) else f"L{int(best.layer)}, "
    return f"{best.auroc_mean:.3f} [{best.auroc_ci_low:.2f}, {best.auroc_ci_high:.2f}] ({where}{best.probe})"


def table_row(model: str, report: dict, rows: pd.DataFrame) -> str:
    if report["status"] != "ok":
        return f"| {model} | {report['n_samples']} | {report['message']} | | | |"
    cells = [_cell(rows[rows.representation == rep]) for rep in ("vision_only", *LAYERED)]
    baseline = max(report["baselines"].values(), key=lambda b: b["auroc_mean"])["auroc_mean"]
    rate = report["n_hallucinated"] / report["n_samples"]
    return f"| {model} | {report['n_samples']} ({rate:.0%}) | " + " | ".join(cells) + f" | {baseline:.3f} |"


def plot_layers(model: str, rows: pd.DataFrame, out: Path) -> pd.DataFrame:
    """One line per (representation, probe) over layers, VF as a dashed level; returns the plotted data."""
    layered = rows[rows.representation.isin(LAYERED)].copy()
    layered["series"] = layered.representation + "_" + layered.probe
    wide = layered.pivot(index="layer", columns="series", values="auroc_mean").reset_index()
    fig, ax = plt.subplots(figsize=(6, 4))
    for series in wide.columns.drop("layer"):
        ax.plot(wide.layer, wide[series], marker="o", label=series)
    for _, vf in rows[rows.representation == "vision_only"].iterrows():
        ax.axhline(vf.auroc_mean, linestyle="--", color="grey", linewidth=1)
        ax.annotate(f"VF {vf.probe}", (wide.layer.min(), vf.auroc_mean), fontsize=7, color="grey")
    ax.axhline(0.5, color="black", linewidth=0.5)
    ax.set_xticks(wide.layer)
    ax.set(
        xlabel="decoder block", ylabel="test AUROC (mean over seeds)", title=f"{model}: hallucination probes"
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return wide


def write_report(models: list[str], probes_dir: Path, out_dir: Path) -> Path:
    figures, data = out_dir / "figures", out_dir / "plots"
    figures.mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Hallucination probes",
        "",
        "Test AUROC, mean over seeds [95% bootstrap interval] (best layer, probe); splits grouped by image.",
        "",
        "| model | samples (hallucinated) | vision-only | best vision-token | best query-token "
        "| best output baseline |",
        "|---|---|---|---|---|---|",
    ]
    for model in models:
        if not (probes_dir / f"{model}.json").is_file():
            log.warning(
                "%s has no probe results in %s: run `halp probe --model %s`", model, probes_dir, model
            )
            lines.append(f"| {model} | | not probed: run `halp probe --model {model}` | | | |")
            continue
        report = json.loads((probes_dir / f"{model}.json").read_text())
        rows = pd.read_csv(probes_dir / f"{model}.csv") if report["status"] == "ok" else pd.DataFrame()
        lines.append(table_row(model, report, rows))
        if report["status"] == "ok":
            plot_layers(model, rows, figures / f"{model}.png").to_csv(data / f"{model}.csv", index=False)
    out = out_dir / "report.md"
    out.write_text("\n".join(lines) + "\n")
    log.info("report -> %s", out)
    return out
