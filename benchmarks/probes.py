"""Probe speed: halp's whole probe grid against a HALP-style training loop, same synthetic data, one run.

    python benchmarks/probes.py --samples 10000 --width 3584

The grid is 1 vision-only + 5 vision-token + 5 query-token representations x (MLP, logistic) x seeds,
timed from features in memory to metrics (the synthetic features are generated before the clock starts).
HALP's loop (its MLP, no standardisation, batch 32, 50 epochs, last epoch kept, one seed) is timed on
`--halp-reps` representations and scaled to 11, as printed.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import nn

from halp.config import ProbeSettings
from halp.probe.classifiers import halp_mlp
from halp.probe.run import probe_grid

REPRESENTATIONS = [("vision_only", None)] + [
    (r, k) for r in ("vision_token", "query_token") for k in range(5)
]


def synthetic(n: int, width: int, seed: int = 0):
    """Labels at a 30% rate, three questions per image, and a linear signal of 0.5 to 1.5 standard
    deviations along one direction (AUROC about 0.64 to 0.86), growing over the representations."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(np.int64)
    groups = np.arange(n) // 3
    direction = rng.normal(size=width).astype(np.float32)
    direction /= np.linalg.norm(direction)

    def features():
        for i, (rep, layer) in enumerate(REPRESENTATIONS):
            x = rng.normal(size=(n, width)).astype(np.float32)
            x += np.outer(y * (0.5 + 0.1 * i), direction).astype(np.float32)
            yield rep, layer, x

    return features, y, groups


def halp_loop(x: np.ndarray, y: np.ndarray, epochs: int = 50, batch: int = 32) -> None:
    """HALP's release: random stratified 80/20 split, raw features, BCE, Adam 1e-3, evaluated at the end."""
    train, _ = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=0)
    model = halp_mlp(torch.zeros(x.shape[1]), torch.ones(x.shape[1]), rank=None, seed=0)  # raw features
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    xs, ys = torch.from_numpy(x[train]), torch.from_numpy(y[train].astype(np.float32))
    for _ in range(epochs):
        model.train()
        for rows in torch.randperm(len(xs)).split(batch):
            if len(rows) < 2:
                continue
            optimiser.zero_grad()
            nn.functional.binary_cross_entropy_with_logits(model(xs[rows]).squeeze(1), ys[rows]).backward()
            optimiser.step()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--width", type=int, default=3584)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rank", type=int, default=32, help="probe.mlp_rank (0: HALP's full first layer)")
    parser.add_argument("--halp-reps", type=int, default=1)
    args = parser.parse_args()
    features, y, groups = synthetic(args.samples, args.width)
    features = list(features())
    settings = ProbeSettings(seeds=args.seeds, mlp_rank=args.rank or None)
    start = time.perf_counter()
    rows = probe_grid(features, {}, y, groups, settings).rows
    ours = time.perf_counter() - start
    start = time.perf_counter()
    for _, _, x in features[: args.halp_reps]:
        halp_loop(x, y)
    halp = (time.perf_counter() - start) * len(REPRESENTATIONS) / args.halp_reps
    best = {p: max(r["auroc_mean"] for r in rows if r["probe"] == p) for p in settings.probes}
    print(
        f"{args.samples} samples x {args.width} wide, {len(REPRESENTATIONS)} representations\n"
        f"  halp grid (MLP + logistic, {args.seeds} seeds, MLP rank {args.rank or 'full'}): {ours:7.1f} s"
        f"  (best test AUROC: {', '.join(f'{p} {v:.3f}' for p, v in best.items())})\n"
        f"  HALP-style loop (MLP only, 1 seed, 50 epochs, batch 32), {args.halp_reps} of 11 timed, "
        f"scaled to 11: {halp:7.1f} s\n"
        f"  ratio: {halp / ours:.1f}x"
    )


if __name__ == "__main__":
    main()
