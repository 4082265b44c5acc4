"""How far do a model's probe numbers move when its stored states move in the last digits, as they do
between two CPUs (the tiny models' summaries differed by up to 2.2e-7 relative between an AMD EPYC and an
Intel Xeon)? Copies the model's embeddings, multiplies every stored float by (1 + eps * z), z standard
normal and one draw per `--draws` seed, runs the project's probe on each copy (labels, splits and params
unchanged) and prints how far the numbers moved from the committed metrics.

    python tools/probe_sensitivity.py --model demo_vlm --relative 0 2e-7 --draws 0 1 2

A simulation on one machine: it measures the probes' sensitivity to their inputs, not what another CPU's
own arithmetic does inside the probes' training; for that, `--env` runs the probes on another library path
(`--relative 0 --env MKL_CBWR=AUTO`: MKL's own branch, which it documents for non-Intel CPUs).
`--relative 0` alone is the control: a rerun on an exact copy must move nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import yaml

from halp.config import ProbeSettings
from halp.probe.headline import best_probe
from halp.probe.risk_coverage import probe_label

ROOT = Path(__file__).resolve().parents[1]
KEY = ["representation", "layer", "probe"]


def float_datasets(f: h5py.File) -> list[h5py.Dataset]:
    found: list[h5py.Dataset] = []
    f.visititems(
        lambda _, o: found.append(o) if isinstance(o, h5py.Dataset) and o.dtype.kind == "f" else None
    )
    return found


def perturbed_copy(source: Path, target: Path, relative: float, draw: int) -> None:
    """The extraction folder at `target`, every float dataset multiplied by (1 + relative * z)."""
    shutil.copytree(source, target)
    rng = np.random.default_rng(draw)
    for part in sorted(target.glob("part-*.h5")):
        with h5py.File(part, "r+") as f:
            for data in float_datasets(f):
                x = data[...]
                data[...] = (x * (1 + relative * rng.standard_normal(x.shape))).astype(x.dtype)


def moved(committed: ProbeSettings, rerun: ProbeSettings, model: str) -> dict:
    """How far the rerun's probe grid, best probe, baselines and headline moved from the committed ones."""
    grid = pd.read_csv(committed.out_dir / f"{model}.csv").merge(
        pd.read_csv(rerun.out_dir / f"{model}.csv"), on=KEY, suffixes=("", "_rerun")
    )
    shift = (grid.auroc_mean_rerun - grid.auroc_mean).abs()
    before, after = best_probe(grid), best_probe(grid, by="val_auroc_mean_rerun")
    baselines = [
        json.loads((s.out_dir / f"{model}.json").read_text())["baselines"] for s in (committed, rerun)
    ]
    headlines = [
        json.loads((s.headline_dir / f"{model}.json").read_text())[model] for s in (committed, rerun)
    ]
    return {
        "grid_max": float(shift.max()),
        "grid_median": float(shift.median()),
        "grid_unchanged": int((shift == 0).sum()),
        "grid_rows": len(grid),
        "best_before": f"{probe_label(before)} {before.auroc_mean:.4f}",
        "best_after": f"{probe_label(after)} {after.auroc_mean_rerun:.4f}",
        "baselines_max": max(
            abs(baselines[1][b]["auroc_mean"] - baselines[0][b]["auroc_mean"]) for b in baselines[0]
        ),
        "headline_changed": {
            k: [v, headlines[1].get(k)] for k, v in headlines[0].items() if headlines[1].get(k) != v
        },
    }


def rerun_params(params: dict, work: Path) -> dict:
    """The project's params with the embeddings read from, and every probe output written to, `work`."""
    probe = params["probe"] | {
        key: str(work / key) for key in ("out_dir", "headline_dir", "test_scores_dir", "control_dir")
    }
    return params | {"extract": params["extract"] | {"out_dir": str(work / "embeddings")}, "probe": probe}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", default="demo_vlm")
    parser.add_argument("--relative", type=float, nargs="+", default=[0.0, 2e-7])
    parser.add_argument("--draws", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--env", action="append", default=[], help="KEY=VALUE for the probe's process, e.g. MKL_CBWR=AUTO"
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/halp-probe-sensitivity"))
    args = parser.parse_args()
    work_root = args.work.resolve()
    os.chdir(ROOT)  # params' relative paths (the embeddings, labels, committed metrics) are the project's
    params = yaml.safe_load(Path("params.yaml").read_text())
    committed = ProbeSettings.model_validate(params["probe"])
    env = os.environ | dict(item.split("=", 1) for item in args.env)  # a set variable wins over halp's caps
    for relative in args.relative:
        for draw in args.draws if relative else args.draws[:1]:
            work = work_root / f"{relative:g}-{draw}"
            shutil.rmtree(work, ignore_errors=True)
            source = Path(params["extract"]["out_dir"]) / args.model
            perturbed_copy(source, work / "embeddings" / args.model, relative, draw)
            rerun = rerun_params(params, work)
            (work / "params.yaml").write_text(yaml.safe_dump(rerun))
            command = [sys.executable, "-m", "halp", "--params", str(work / "params.yaml"), "probe"]
            subprocess.run([*command, "--model", args.model], env=env, check=True)
            numbers = moved(committed, ProbeSettings.model_validate(rerun["probe"]), args.model)
            print(json.dumps({"relative": relative, "draw": draw} | numbers), flush=True)


if __name__ == "__main__":
    main()
