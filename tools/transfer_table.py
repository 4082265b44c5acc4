"""HALP's in-distribution protocol against questions left out of training, across the trained models: for
each model, representation and group, the test AUROC on that group's test rows of the probe trained on
all groups and of the one trained without the group, from the probe stage's transfer results.

    python tools/transfer_table.py demo_vlm demo_mllama demo_gemma3 demo_smolvlm \
        --grouping mechanism category --representation query_token

Prints a markdown table: one row per (model, representation), one column per group of each grouping,
each cell "in-distribution -> left out [95% interval of the left-out AUROC]".
"""

from __future__ import annotations

import argparse
import json

from halp.config import load_params
from halp.report.transfer import SHORT, cell_name


def row_cells(cell: dict, groups: list[str]) -> list[str]:
    cells = []
    for group in groups:
        tested = cell["left_out"].get(group)
        if tested is None or "auroc_mean" not in tested["out_of_group"]:
            cells.append("n/a")
            continue
        inside, outside = tested["in_distribution"], tested["out_of_group"]
        span = f"[{outside['auroc_ci_low']:.2f}, {outside['auroc_ci_high']:.2f}]"
        cells.append(f"{inside['auroc_mean']:.3f} -> {outside['auroc_mean']:.3f} {span}")
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument(
        "--grouping", nargs="+", default=["mechanism"], help="dataset, category or the breakdown's column"
    )
    parser.add_argument("--representation", nargs="+", default=list(SHORT), choices=list(SHORT))
    args = parser.parse_args()
    probes = load_params().probe.out_dir
    found = {m: json.loads((probes / f"{m}.json").read_text())["transfer"] for m in args.models}
    columns = [
        (grouping, group)
        for grouping in args.grouping
        for group in sorted({g for transfer in found.values() for g in transfer[grouping].get("groups", {})})
    ]
    print("| model | cell | " + " | ".join(group for _, group in columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for model, transfer in found.items():
        for rep in args.representation:
            cells = [transfer[g].get("cells", {}).get(rep) for g in args.grouping]
            if (named := next((c for c in cells if c is not None), None)) is None:
                continue
            row = []
            for grouping, cell in zip(args.grouping, cells, strict=True):
                groups = [group for g, group in columns if g == grouping]
                row += ["n/a"] * len(groups) if cell is None else row_cells(cell, groups)
            print(f"| {model} | {cell_name(rep, named)} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
