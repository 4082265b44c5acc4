"""The probes: HALP's MLP and a logistic regression on standardised features, trained side by side on
the same batches, each class-weighted and kept at its epoch with the best validation AUROC."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from halp.probe.metrics import auroc
from halp.probe.splits import Split

MAX_EPOCHS = 50
PATIENCE = 2  # epochs without a better validation AUROC before a probe stops
MIN_GAIN = 0.002  # a smaller AUROC gain is validation noise (its standard error on 2,000 rows is ~0.01)
BATCH = 512  # HALP used 32: 16x the steps, and steps, not samples, set the cost of these small layers
MIN_STEPS = 10  # per epoch: smaller training sets take smaller batches, so an epoch still moves the probe
# Adam's step size; HALP's 1e-3 was for batch 32, and a convex linear probe takes larger steps safely
LEARNING_RATE = {"mlp": 3e-3, "logistic": 1e-2}


class StandardisedLinear(nn.Linear):
    """A linear layer on features standardised with fixed (training-split) statistics, applied to the
    raw features: (x - mean) / std @ W.T = x @ (W / std).T - W @ (mean / std). The scaling lives in the
    weights, so no batch is ever copied just to be standardised (that was a fifth of a fit)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, out_features: int, bias: bool = True):
        super().__init__(len(mean), out_features, bias)
        self.register_buffer("scale", 1 / std)
        self.register_buffer("shift", mean / std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight * self.scale
        offset = -(self.weight @ self.shift)
        return nn.functional.linear(x, weight, offset if self.bias is None else offset + self.bias)


class Dropout(nn.Module):
    """nn.Dropout with masks drawn by numpy's PCG64, which is 4x faster than torch's CPU bernoulli_
    (that alone was a fifth of an MLP epoch); seeded, so a fit is reproducible."""

    def __init__(self, p: float, rng: np.random.Generator):
        super().__init__()
        self.p, self.rng = p, rng

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = self.rng.random(tuple(x.shape), dtype=np.float32) >= self.p
        return x * torch.from_numpy(keep / np.float32(1 - self.p))


def halp_mlp(mean: torch.Tensor, std: torch.Tensor, rank: int | None, seed: int) -> nn.Sequential:
    """HALP's probe on standardised features: 512 -> 256 -> 128 -> 1 with BatchNorm, ReLU and dropout 0.3.
    With `rank`, its first weight matrix is factorised (width -> rank -> 512, learned end to end): the same
    family of functions up to that rank, for a fraction of the multiply-adds in the layer that dominates
    at 3,584 wide."""
    rng = np.random.default_rng(seed)

    def activation(size: int) -> list[nn.Module]:
        return [nn.BatchNorm1d(size), nn.ReLU(), Dropout(0.3, rng)]

    if rank is not None and rank < min(len(mean), 512):
        first: list[nn.Module] = [StandardisedLinear(mean, std, rank, bias=False), nn.Linear(rank, 512)]
    else:
        first = [StandardisedLinear(mean, std, 512)]
    return nn.Sequential(
        *first, *activation(512),
        nn.Linear(512, 256), *activation(256),
        nn.Linear(256, 128), *activation(128),
        nn.Linear(128, 1),
    )  # fmt: skip


def build_probe(name: str, mean: torch.Tensor, std: torch.Tensor, rank: int | None, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if name == "mlp":
        return halp_mlp(mean, std, rank, seed)
    linear = StandardisedLinear(mean, std, 1)
    nn.init.zeros_(linear.weight)  # logistic regression starts from no opinion, not a random direction
    return linear


@dataclass
class _Training:
    """One probe's model, optimiser and early-stopping state."""

    model: nn.Module
    optimiser: torch.optim.Optimizer
    best: float = -1.0
    stale: int = 0
    best_state: dict = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.stale < PATIENCE

    def keep_if_better(self, y_val: np.ndarray, x_val: torch.Tensor) -> None:
        score = auroc(y_val, self.scores(x_val))
        if score > self.best + MIN_GAIN:
            self.best, self.stale = score, 0
            self.best_state = {k: v.clone() for k, v in self.model.state_dict().items()}
        else:
            self.stale += 1

    def scores(self, x: torch.Tensor) -> np.ndarray:
        self.model.eval()
        with torch.no_grad():
            return self.model(x).squeeze(1).numpy()


def fit_probes(
    x: np.ndarray, y: np.ndarray, split: Split, probes: list[str], seed: int, rank: int | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each probe's (validation, test) scores after `train_probes`."""
    trained = train_probes(x, y, split, probes, seed, rank)
    val, test = torch.from_numpy(x[split[1]]), torch.from_numpy(x[split[2]])
    return {name: (run.scores(val), run.scores(test)) for name, run in trained.items()}


def train_probes(
    x: np.ndarray, y: np.ndarray, split: Split, probes: list[str], seed: int, rank: int | None = None
) -> dict[str, _Training]:
    """Train every probe in `probes` on the training rows of x, standardised with their mean and std
    (nothing is fitted on other rows), on the same shuffled batches; each is returned at its best epoch.

    Loss: BCE weighted by the training class ratio; Adam; each probe stops after PATIENCE epochs
    without a better validation AUROC and is restored to its best epoch."""
    train, val, _ = split
    features = torch.from_numpy(x)

    def rows(indices: np.ndarray, out: torch.Tensor | None = None) -> torch.Tensor:
        """index_select: 4x faster than features[indices] on one thread; `out` spares a fresh 7 MB
        batch its page faults on every step."""
        return torch.index_select(features, 0, torch.from_numpy(indices), out=out)

    x_train = x[train]
    mean, std = torch.from_numpy(x_train.mean(axis=0)), torch.from_numpy(x_train.std(axis=0)).clamp_min(1e-12)
    del x_train  # numpy's std: twice as fast as torch's here
    y_train = torch.from_numpy(y[train].astype(np.float32))
    positives = max(float(y_train.sum()), 1.0)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor((len(train) - positives) / positives))
    runs = {}
    for name in probes:
        model = build_probe(name, mean, std, rank, seed)
        optimiser = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE[name], fused=True)
        runs[name] = _Training(model, optimiser)
    x_val = rows(val)
    generator = torch.Generator().manual_seed(seed)
    batch_size = min(BATCH, max(2, math.ceil(len(train) / MIN_STEPS)))
    batch_rows = torch.empty(batch_size, x.shape[1])
    for _ in range(MAX_EPOCHS):
        active = [run for run in runs.values() if run.running]
        if not active:
            break
        for run in active:
            run.model.train()
        for batch in torch.randperm(len(train), generator=generator).split(batch_size):
            if len(batch) < 2:  # BatchNorm needs two rows
                continue
            x_batch, y_batch = rows(train[batch.numpy()], batch_rows[: len(batch)]), y_train[batch]
            for run in active:
                run.optimiser.zero_grad()
                loss_fn(run.model(x_batch).squeeze(1), y_batch).backward()
                run.optimiser.step()
        for run in active:
            run.keep_if_better(y[val], x_val)
    for run in runs.values():
        run.model.load_state_dict(run.best_state)
    return runs
