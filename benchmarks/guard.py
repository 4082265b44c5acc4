"""What a guard costs: the same samples through plain `generate`, through guarded generation (the risk
computed from the prefill's hooks, nothing refused) and with abstention at a coverage (flagged questions
stop after their prefill), in one run.

    python benchmarks/guard.py --model demo_vlm --samples 256 --batch-size 32 --rounds 5

The three are interleaved round-robin, each round in another order, so load from elsewhere on the machine
falls on all of them alike; printed are each one's median seconds per sample and the median (and range)
over rounds of its ratio to plain generation in the same round. Every path generates up to the model's
`max_new_tokens` greedily, stopping at end of sequence, and decodes the answers, as `halp guard` does; the
inputs are prepared once, outside the timings.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from halp.config import load_params
from halp.data.images import load_image
from halp.extract.run import read_samples
from halp.guard.guard import Guard


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="demo_vlm")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--coverage", type=float, default=0.8)
    args = parser.parse_args()

    params = load_params(args.params)
    guard = Guard.load(
        params.guard.out_dir / args.model, params.model(args.model).model, coverage=args.coverage
    )
    samples = read_samples(params.data.out).head(args.samples)
    images, questions = [load_image(p) for p in samples.image_path], list(samples.question)
    extractor, model, processor = guard.answering, guard.loaded.model, guard.loaded.processor
    batches = [
        extractor.prepare(images[i : i + args.batch_size], questions[i : i + args.batch_size])
        for i in range(0, len(images), args.batch_size)
    ]  # prepared once, outside the timings: all three paths share the preprocessing
    flagged = []

    @torch.inference_mode()
    def plain() -> None:  # what answering costs without a guard: generate, then the answers' text
        for inputs in batches:
            device_inputs = inputs.to(guard.loaded.device)
            sequences = model.generate(
                **device_inputs, max_new_tokens=extractor.max_new_tokens, do_sample=False
            )
            processor.batch_decode(sequences[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    def guarded(abstain: bool) -> None:
        for inputs in batches:
            flagged.extend(a.flagged for a in guard.assess_prepared(inputs, abstain=abstain))

    paths = {"plain generate": plain, "guarded": lambda: guarded(False), "abstain": lambda: guarded(True)}
    for path in paths.values():  # warm-up
        path()
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    for round_ in range(args.rounds):
        names = list(paths)
        for name in names[round_ % 3 :] + names[: round_ % 3]:
            start = time.perf_counter()
            paths[name]()
            seconds[name].append(time.perf_counter() - start)
    per_sample = {name: np.array(s) / len(images) for name, s in seconds.items()}
    base = per_sample["plain generate"]
    print(
        f"{args.model} on {guard.loaded.device} ({torch.get_num_threads()} threads): {len(images)} samples, "
        f"batch {args.batch_size}, up to {extractor.max_new_tokens} new tokens, {args.rounds} interleaved "
        f"rounds; {np.mean(flagged):.0%} flagged at coverage {args.coverage:g}"
    )
    for name, s in per_sample.items():
        ratio = s / base
        print(
            f"  {name:15s} {np.median(s) * 1e3:8.2f} ms/sample   x{np.median(ratio):.3f} plain "
            f"(rounds {ratio.min():.3f}-{ratio.max():.3f})"
        )


if __name__ == "__main__":
    main()
