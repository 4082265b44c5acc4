"""The manual's lens tables, printed from the lens metrics `dvc repro` writes (metrics/lens/NAME.json):
accuracy by layer against the demo world, the same across architectures, and what the lens reads where
the model answered wrong.

    python tools/lens_tables.py demo_vlm demo_gemma3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LENSES = ("latent", "embedding", "logit")
COLUMNS = {  # the manual's column -> accuracy key
    "colour, top-5": "shape_colour_top5",
    "kind, top-5": "shape_kind_top5",
    "some shape word, top-1": "shape_any_top1",
    "background read as none, top-1": "background_top1",
}


def _best(values: list[float]) -> list[str]:
    top = max(values)
    return [f"**{v:.3f}**" if v == top and top > 0 else f"{v:.3f}" for v in values]


def by_layer(model: str, metrics: dict) -> str:
    accuracy = metrics["accuracy"]
    lines = [
        f"{model} ({accuracy['tokens']['shape']} shape tokens, {accuracy['tokens']['background']} "
        "background ones), each cell Latent / Embedding / Logit:",
        "",
        "| layer | " + " | ".join(COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for layer in accuracy["latent"]:
        cells = [
            " / ".join(_best([accuracy[lens][layer][key][0] for lens in LENSES])) for key in COLUMNS.values()
        ]
        name = "input" if layer == "input" else f"block {layer}"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(
        "| chance (bank words) | "
        + " | ".join(f"{accuracy['chance'][k]:.3f}" for k in COLUMNS.values())
        + " |"
    )
    return "\n".join(lines)


def across(models: dict[str, dict]) -> str:
    """Per architecture and lens, the best layer's top-5 colour and kind and its top-1 shape word."""
    lines = [
        "| model | lens | colour, top-5 (best layer) | kind, top-5 (best layer) "
        "| some shape word, top-1 (best layer) |",
        "|---|---|---|---|---|",
    ]
    for model, metrics in models.items():
        accuracy = metrics["accuracy"]
        for lens in LENSES:
            cells = []
            for key in ("shape_colour_top5", "shape_kind_top5", "shape_any_top1"):
                layer = max(accuracy[lens], key=lambda name: accuracy[lens][name][key][0])
                low, high = accuracy[lens][layer][key][1:]
                cells.append(f"{accuracy[lens][layer][key][0]:.2f} [{low:.2f}, {high:.2f}] ({layer})")
            lines.append(f"| {model} | {lens} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def misses(model: str, metrics: dict, lens: str = "latent", layer: str = "input") -> str:
    lines = [
        f"{model}, {lens} at {layer}:",
        "",
        "| mechanism | wrong answers: colour named (n) | right answers: colour named (n) |",
        "|---|---|---|",
    ]
    for mechanism, answers in metrics["model_misses"][lens][layer].items():
        cells = [f"{share:.2f} ({n})" if n else "none" for share, n in (answers["wrong"], answers["right"])]
        lines.append(f"| {mechanism} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("models", nargs="+", help="lens models scored against the demo world")
    args = parser.parse_args()
    scored = {}
    for model in args.models:
        metrics = json.loads((ROOT / "metrics/lens" / f"{model}.json").read_text())
        if "accuracy" not in metrics:
            print(f"{model}: not scored (its image tokens lie on no grid of the demo's cells)\n")
            continue
        scored[model] = metrics
        print(by_layer(model, metrics), "\n\n" + misses(model, metrics), "\n")
    print(across(scored))


if __name__ == "__main__":
    main()
