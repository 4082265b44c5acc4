"""What the transfer matrix costs the probe stage: the probe grid alone against the grid plus the transfer
runs, on a model's stored embeddings and labels, interleaved over rounds.

    python benchmarks/probe_transfer.py --model demo_vlm --rounds 3

Each round times the grid (every representation x probe x seed, with the baselines: the probe stage before
the transfer matrix) and then the transfer runs (each representation's cell chosen on validation, trained
per group and without each group, over dataset, category and `probe.breakdown`), reading the features
once beforehand. Prints each round, the median of (grid + transfer) / grid and the CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import pandas as pd

from halp.config import load_params
from halp.environment import cpu_name
from halp.probe.run import (
    load_labelled,
    metadata_scores,
    output_baselines,
    probe_grid,
    read_breakdown,
    representations,
    transfer_report,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", default="demo_vlm")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    params = load_params()
    settings = params.probe
    emb, y, images = load_labelled(params, args.model)
    features = list(representations(emb))  # read once: both sides time fitting, not reading
    keys = (emb.meta.source + " / " + emb.meta.category).to_numpy()
    baselines = output_baselines(emb) | {"metadata": partial(metadata_scores, keys, y)}
    breakdown = read_breakdown(settings.breakdown, emb.meta.sample_id)
    groups = None if breakdown is None else breakdown.to_numpy()
    shape = f"{len(y)} samples, {len(features)} representations, {settings.seeds} seeds"
    print(f"{args.model}: {shape}; {cpu_name()}")
    ratios = []
    for round_ in range(args.rounds):
        start = time.perf_counter()
        rows, _, _ = probe_grid(features, baselines, y, images, settings, breakdown=groups)
        grid = time.perf_counter() - start
        start = time.perf_counter()
        transfer_report(emb, y, images, pd.DataFrame(rows), settings, breakdown)
        carried = time.perf_counter() - start
        ratios.append((grid + carried) / grid)
        print(f"round {round_}: grid {grid:.1f} s, transfer {carried:.1f} s, ratio {ratios[-1]:.2f}")
    spread = f"range {min(ratios):.2f}-{max(ratios):.2f}"
    print(f"(grid + transfer) / grid: median {statistics.median(ratios):.2f} ({spread})")


if __name__ == "__main__":
    main()
