"""How much does an organism's recipe depend on its seed? Trains it once per seed, then extracts, labels
and probes each model exactly as the pipeline does (`halp` subprocesses, the project's params with only
the seed, or `--set` overrides of the recipe, changed), and prints one row per seed.

    python tools/seed_spread.py --seeds 0 1 2 3 4             # the shipped demo_vlm recipe
    python tools/seed_spread.py --seeds 0 1 2 --set steps=2000  # a variant of it
    python tools/seed_spread.py --model demo_mllama --seeds 0 1 2

Each seed works in its own folder under `--work` (the demo data are linked in, nothing of the project's
is written) and a rerun skips what a folder already holds, so a killed study goes on where it stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from halp.probe.headline import METADATA, best_output_baseline, best_probe

ROOT = Path(__file__).resolve().parents[1]


def seed_params(params: dict, model: str, seed: int, overrides: dict) -> dict:
    """The project's params for one seed: only this organism, every output inside the seed's folder."""
    out = {key: params[key] for key in ("data", "extract", "label", "probe")}
    organism = params["organism"]
    out["organism"] = {
        "models_dir": ".",  # the model in folder/MODEL, its summary in folder/MODEL.json
        "metrics_dir": ".",
        "live_dir": "training",
        "recipe": organism["recipe"] | overrides | {"seed": seed},
        "subjects": {model: organism["subjects"][model]},
    }
    out["models"] = {model: params["models"][model] | {"model": model}}
    return out


def run_seed(work: Path, params: dict, model: str, seed: int, overrides: dict) -> Path:
    folder = work / model / f"seed-{seed}"
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for linked in ("demo", "sampled"):  # the sample's image paths are relative to the project's root
        if not (folder / "data" / linked).exists():
            (folder / "data" / linked).symlink_to(ROOT / "data" / linked)
    (folder / "params.yaml").write_text(yaml.safe_dump(seed_params(params, model, seed, overrides)))
    steps = [
        ("train-demo", folder / f"{model}.json"),
        ("extract", None),  # resumes by itself
        ("label", folder / params["label"]["out_dir"] / f"{model}.csv"),
        ("probe", folder / params["probe"]["out_dir"] / f"{model}.json"),
    ]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for command, done in steps:
        if done is not None and done.exists():
            continue
        model_arg = ["--name" if command == "train-demo" else "--model", model]
        print(f"seed {seed}: halp {command}", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "halp", command, *model_arg], cwd=folder, env=env, check=True)
    return folder


def seed_row(folder: Path, params: dict, model: str, seed: int) -> dict:
    report = json.loads((folder / params["probe"]["out_dir"] / f"{model}.json").read_text())
    rows = pd.read_csv(folder / params["probe"]["out_dir"] / f"{model}.csv")
    best = best_probe(rows)
    output_name, output = best_output_baseline(report)
    metadata = report["baselines"][METADATA]
    rival = max(output["auroc_mean"], metadata["auroc_mean"])
    weights = (folder / model / "model.safetensors").read_bytes()
    return {
        "seed": seed,
        "weights_sha256": hashlib.sha256(weights).hexdigest()[:12],
        "final_loss": json.loads((folder / f"{model}.json").read_text())["final_loss"],
        "hallucination_rate": report["n_hallucinated"] / report["n_samples"],
        "best_probe": f"{best.representation} L{int(best.layer)} {best.probe}"
        if not pd.isna(best.layer)
        else f"vision_only {best.probe}",
        "best_auroc": best.auroc_mean,
        "best_ci": [best.auroc_ci_low, best.auroc_ci_high],
        "output_baseline": output_name,
        "output_auroc": output["auroc_mean"],
        "output_ci": [output["auroc_ci_low"], output["auroc_ci_high"]],
        "metadata_auroc": metadata["auroc_mean"],
        "metadata_ci": [metadata["auroc_ci_low"], metadata["auroc_ci_high"]],
        "margin": best.auroc_mean - rival,
        "intervals_apart": bool(
            best.auroc_ci_low > output["auroc_ci_high"] and best.auroc_ci_low > metadata["auroc_ci_high"]
        ),
    }


def _interval(mean: float, ci: list[float]) -> str:
    return f"{mean:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def markdown(rows: list[dict]) -> str:
    lines = [
        "| seed | final loss | hallucinated | probe (chosen on validation) | test AUROC | output baseline "
        "| metadata | margin | intervals apart |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['final_loss']:.4f} | {r['hallucination_rate']:.1%} | {r['best_probe']} "
            f"| {_interval(r['best_auroc'], r['best_ci'])} "
            f"| {_interval(r['output_auroc'], r['output_ci'])} ({r['output_baseline']}) "
            f"| {_interval(r['metadata_auroc'], r['metadata_ci'])} | {r['margin']:+.3f} "
            f"| {'yes' if r['intervals_apart'] else 'no'} |"
        )
    for name, pick in (("mean", statistics.fmean), ("min", min), ("max", max)):
        lines.append(
            f"| {name} | {pick(r['final_loss'] for r in rows):.4f} "
            f"| {pick(r['hallucination_rate'] for r in rows):.1%} | "
            f"| {pick(r['best_auroc'] for r in rows):.3f} | {pick(r['output_auroc'] for r in rows):.3f} "
            f"| {pick(r['metadata_auroc'] for r in rows):.3f} | {pick(r['margin'] for r in rows):+.3f} "
            f"| {sum(r['intervals_apart'] for r in rows)} of {len(rows)} |"
        )
    return "\n".join(lines)


def _override(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    return key, yaml.safe_load(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", default="demo_vlm", help="a key of organism.subjects")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--set", type=_override, action="append", default=[], help="recipe KEY=VALUE")
    parser.add_argument("--work", type=Path, default=Path("/tmp/halp-seed-spread"))
    parser.add_argument("--out", type=Path, help="also write the rows here as JSON")
    args = parser.parse_args()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    overrides = dict(args.set)
    rows = []
    for seed in args.seeds:
        folder = run_seed(args.work, params, args.model, seed, overrides)
        rows.append(seed_row(folder, params, args.model, seed))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if args.out:
        recipe = params["organism"]["recipe"] | overrides
        args.out.write_text(json.dumps({"model": args.model, "recipe": recipe, "rows": rows}, indent=1))
    print(markdown(rows))


if __name__ == "__main__":
    main()
