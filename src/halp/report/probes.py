"""`halp report`: HALP's table (model x VF / best VT / best QT), AUROC-by-layer plots and their data."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pandas as pd

from halp.jsonfile import number
from halp.probe.headline import (
    METADATA,
    REPRESENTATIONS,
    UNLAYERED,
    best_output_baseline,
    best_probe,
    cell_name,
)
from halp.report import abstention, depth, figures, transfer

log = logging.getLogger(__name__)
LAYERED = tuple(rep for rep in REPRESENTATIONS if rep not in UNLAYERED)
# the main table's columns of probes: each cell chosen on validation among these representations
COLUMNS = {
    "vision-only": ("vision_only",),
    "vision-token": ("vision_token",),
    "query-token": ("query_token",),
    "image attention": ("image_attention", "image_attention_all"),
    "QT + image attention": ("query_token+image_attention",),
}
TRANSFER_HEADING = "## Questions unlike the training set"
TRANSFER_INTRO = (
    "The cells of VF, VT and QT chosen on validation, each trained on the training rows of one group of "
    "questions and tested on every group's test rows (the same splits, grouped by image; the diagonal is "
    "the in-group ceiling); these and the grid's best where it lies elsewhere (the cell the guard saves) "
    "trained on all groups but one and tested on the one left out, beside the probe trained on every "
    "group (HALP's protocol) on the same rows. Mean test AUROC over the first `probe.transfer_seeds` "
    "splits [95% bootstrap interval]."
)


def _cell(rows: pd.DataFrame, representations: tuple[str, ...]) -> str:
    """The row chosen on validation among the representations': test AUROC with its 95% interval, where
    it reads and its probe."""
    if (best := best_probe(rows[rows.representation.isin(representations)])) is None:
        return "n/a"
    if best.representation == "vision_only":
        return f"{_interval(best)} ({best.probe})"
    where = "all layers" if pd.isna(best.layer) else f"L{int(best.layer)}"
    return f"{_interval(best)} ({where}, {best.probe})"


def _interval(metrics: dict) -> str:
    mean, low, high = (number(metrics[f"auroc_{key}"]) for key in ("mean", "ci_low", "ci_high"))
    return "n/a" if math.isnan(mean) else f"{mean:.3f} [{low:.2f}, {high:.2f}]"


def _auroc(value: float | None) -> str:
    return "n/a" if math.isnan(number(value)) else f"{value:.3f}"


def table_row(model: str, report: dict, rows: pd.DataFrame) -> str:
    if report["status"] != "ok":
        return f"| {model} | {report['n_samples']} | {report['message']} |" + " |" * (len(COLUMNS) + 1)
    cells = [_cell(rows, representations) for representations in COLUMNS.values()]
    name, output = best_output_baseline(report)
    cells += [f"{_interval(output)} ({name})", _interval(report["baselines"][METADATA])]
    rate = report["n_hallucinated"] / report["n_samples"]
    return f"| {model} | {report['n_samples']} ({rate:.0%}) | " + " | ".join(cells) + " |"


def verdict(model: str, report: dict, rows: pd.DataFrame) -> str:
    """Whether the probe chosen on validation beats both baselines with 95% intervals that do not overlap."""
    best = best_probe(rows)
    name, output = best_output_baseline(report)
    rivals = {name: output, f"{METADATA} baseline": report["baselines"][METADATA]}
    beaten = [n for n, m in rivals.items() if best.auroc_ci_low > m["auroc_ci_high"]]
    text = (
        f"**{model}**: the probe chosen on validation, {_interval(best)} ({cell_name(best)}, {best.probe}) "
    )
    if len(beaten) == len(rivals):
        return text + "beats the best output baseline and the metadata baseline (intervals do not overlap)."
    unbeaten = ", ".join(f"{n} {_interval(m)}" for n, m in rivals.items() if n not in beaten)
    return text + f"does not clearly beat {unbeaten} (the intervals overlap)."


def breakdown(model: str, report: dict, rows: pd.DataFrame) -> list[str]:
    """Test AUROC within each group of `probe.breakdown` (e.g. the demo's planted mechanisms), for the
    probe of each representation chosen on validation and for the baselines: which representation reads
    which failure."""
    groups = report.get("groups", {})
    if not groups:
        return []
    lines = [
        f"**{model}** within each group (test AUROC; each representation's layer and probe chosen on "
        "validation):",
        "",
        "| | " + " | ".join(groups) + " |",
        "|---|" + "---|" * len(groups),
        "| samples (hallucinated) | "
        + " | ".join(f"{g['n_samples']} ({g['hallucination_rate']:.0%})" for g in groups.values())
        + " |",
    ]
    categories = sorted({c for g in groups.values() for c in g.get("by_category", {})})
    for category in categories:
        rates = [g["by_category"].get(category) for g in groups.values()]
        cells = " | ".join("" if r is None else f"{r:.0%}" for r in rates)
        lines.append(f"| hallucinated: {category} | {cells} |")
    for rep in REPRESENTATIONS:
        if (best := best_probe(rows, rep)) is not None:
            cells = " | ".join(_auroc(best[f"auroc_in_{g}"]) for g in groups)
            lines.append(f"| {cell_name(best)} ({best.probe}) | {cells} |")
    name, output = best_output_baseline(report)
    for label, metrics in ((name, output), (METADATA, report["baselines"][METADATA])):
        lines.append(f"| {label} | " + " | ".join(_auroc(metrics[f"auroc_in_{g}"]) for g in groups) + " |")
    return [*lines, ""]


def plot_layers(model: str, rows: pd.DataFrame, out: Path) -> pd.DataFrame:
    """One line per (representation, probe) over layers, VF as a dashed level; returns the plotted data."""
    layered = rows[rows.representation.isin(LAYERED)].copy()
    layered["series"] = layered.representation + "_" + layered.probe
    wide = layered.pivot(index="layer", columns="series", values="auroc_mean")
    low = layered.pivot(index="layer", columns="series", values="auroc_ci_low")
    high = layered.pivot(index="layer", columns="series", values="auroc_ci_high")
    fig, ax = figures.new()
    for series in wide.columns:
        (line,) = ax.plot(wide.index, wide[series], marker="o", label=series)
        ax.fill_between(
            wide.index, low[series], high[series], color=line.get_color(), alpha=0.15, linewidth=0
        )
    wide = wide.join(low.add_suffix("_ci_low")).join(high.add_suffix("_ci_high")).reset_index()
    for _, vf in rows[rows.representation == "vision_only"].iterrows():
        ax.axhline(vf.auroc_mean, linestyle="--", color="grey", linewidth=1)
        ax.annotate(f"VF {vf.probe}", (wide.layer.min(), vf.auroc_mean), fontsize=7, color="grey")
    ax.axhline(0.5, color="black", linewidth=0.5)
    ax.set_xticks(wide.layer)
    figures.save(
        fig,
        ax,
        out,
        xlabel="decoder block",
        ylabel="test AUROC (mean over seeds; band: 95% interval)",
        title=f"{model}: hallucination probes",
    )
    return wide


def read_probe_results(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        model = path.stem
        raise ValueError(
            f"{path} is not valid JSON ({err}): it was cut short or edited; run `halp probe --model {model}` "
            "again to rewrite it"
        ) from None


def plumbing(models: list[str], probes_dir: Path, summary_dir: Path) -> list[str]:
    """The models that test the plumbing, not the science (random weights): extracted, errors, positions."""
    lines = [
        "## Plumbing: models with random weights",
        "",
        "Random weights answer nothing right, so no probe can be trained on them: they show that every "
        "architecture extracts. Positions are read back from what was stored: the query token is the "
        "prompt's last, the vision token an image token before it.",
        "",
        "| model | extracted | errors | positions consistent | hallucinated |",
        "|---|---|---|---|---|",
    ]
    for model in models:
        if not (summary_dir / f"{model}.json").is_file():
            lines.append(f"| {model} | not extracted: run `dvc repro extract@{model}` | | | |")
            continue
        summary = json.loads((summary_dir / f"{model}.json").read_text())
        n, found = summary["n_samples"], summary.get("positions", {})
        consistent = min(found.values()) if found else 0
        report = (
            read_probe_results(probes_dir / f"{model}.json")
            if (probes_dir / f"{model}.json").is_file()
            else {}
        )
        wrong = f"{report['n_hallucinated']} of {report['n_samples']}" if report else "not labelled"
        lines.append(f"| {model} | {n} | {summary['n_errors']} | {consistent} of {n} | {wrong} |")
    return [*lines, ""]


def write_report(
    models: list[str], random_weights: list[str], probes_dir: Path, summary_dir: Path, out_dir: Path
) -> Path:
    """The trained models' probes (table, figures, verdicts, breakdowns, abstention, AUROC by depth across
    them); the models with random weights in the plumbing section."""
    pictures, data, curves = out_dir / "figures", out_dir / "plots", out_dir / "risk_coverage"
    carried = out_dir / "transfer"
    for folder in (pictures, data, curves, carried):
        folder.mkdir(parents=True, exist_ok=True)
    abstaining, transferring = [], []
    lines = [
        "# Hallucination probes",
        "",
        "Trained models (the random-weight ones are in the plumbing section below). Test AUROC, mean "
        "over seeds [95% bootstrap interval] (layer, probe), each cell and baseline chosen by validation "
        "AUROC, never by test; splits grouped by image.",
        "",
        "| model | samples (hallucinated) | "
        + " | ".join(COLUMNS)
        + " | output baseline | metadata baseline |",
        "|---|---|" + "---|" * (len(COLUMNS) + 2),
    ]
    verdicts, grids, blocks = [], {}, {}
    for model in [m for m in models if m not in random_weights]:
        if not (probes_dir / f"{model}.json").is_file():
            log.warning(
                "%s has no probe results in %s: run `halp probe --model %s`", model, probes_dir, model
            )
            lines.append(
                f"| {model} | | not probed: run `halp probe --model {model}` |" + " |" * (len(COLUMNS) + 1)
            )
            continue
        report = read_probe_results(probes_dir / f"{model}.json")
        rows = pd.read_csv(probes_dir / f"{model}.csv") if report["status"] == "ok" else pd.DataFrame()
        lines.append(table_row(model, report, rows))
        if report["status"] == "ok":
            grids[model], blocks[model] = rows, report["num_layers"]
            plot_layers(model, rows, pictures / f"{model}.png").to_csv(data / f"{model}.csv", index=False)
            verdicts += [verdict(model, report, rows), "", *breakdown(model, report, rows)]
            if "risk_coverage" in report:
                figure, plot_data = pictures / f"{model}_risk_coverage.png", curves / f"{model}.csv"
                abstaining += abstention.section(model, report["risk_coverage"], figure, plot_data)
            if "transfer" in report:
                transferring += transfer.section(
                    model, report["transfer"], pictures, carried / f"{model}.csv"
                )
    lines += [
        "",
        "Output baselines score from the first generated token; one that ranks backwards on a seed's "
        "validation split is flipped for that seed. The metadata baseline scores each question by its "
        "(source, category)'s hallucination rate in the training split.",
        "",
    ]
    if grids:
        table = depth.by_depth(grids, blocks)
        depth.plot_by_depth(table, pictures / "auroc_by_depth.png")
        table.to_csv(out_dir / "auroc_by_depth.csv", index=False, lineterminator="\n")  # its data
        lines += [
            "## By depth, across architectures",
            "",
            "![test AUROC by relative depth](figures/auroc_by_depth.png)",
            "",
        ]
    lines += [
        *verdicts,
        *(["## Abstaining before the answer", "", *abstaining] if abstaining else []),
        *([TRANSFER_HEADING, "", TRANSFER_INTRO, "", *transferring] if transferring else []),
        *(plumbing(random_weights, probes_dir, summary_dir) if random_weights else []),
    ]
    out = out_dir / "report.md"
    out.write_text("\n".join(lines) + "\n")
    log.info("report -> %s", out)
    return out
