"""What `image_attention` costs: the same batches extracted with it off and on, in one run, interleaved;
then the peak memory of one batch at two prompt lengths, off and on.

    python benchmarks/image_attention.py --model demo_vlm --samples 256 --batch-size 8 --rounds 7

Time: the two take turns batch by batch (each in turn first), so load from elsewhere falls on both
alike; printed are the median seconds per sample and the median (and range) over rounds of the
ratio on/off in the same round. Both run the whole of `Extractor.run` (prefill hooks, greedy generation
up to the model's `max_new_tokens`, decoding); the inputs are prepared once, outside the timings.

Memory: one batch whose questions are lengthened with filler words to about `--lengths` tokens, through
`Extractor.run`: the peak of CUDA memory allocated on a GPU; on a CPU the peak of the tensors alive, from
the profiler's memory timeline (resident memory is the allocator's, too coarse for a few MiB). Attention
weights of the whole prompt, [B, heads, S, S] per layer, would grow the gap between on and off with the
square of the length; the kept rows' weights grow linearly.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile
from torch.profiler._memory_profiler import (
    MemoryProfileTimeline,
)  # the timeline behind export_memory_timeline

from halp.config import load_params
from halp.data.images import load_image
from halp.extract.engine import Extractor
from halp.extract.run import read_samples
from halp.models.loading import load_model

FILLER = " Please look at every part of the picture carefully before you answer."


def extractors(params, model: str) -> tuple[Extractor, Extractor]:
    """(off, on) over one loaded model."""
    settings = params.model(model)
    loaded = load_model(settings)
    off = Extractor.configured(loaded, settings, params.extract.top_k)
    on = Extractor(loaded, off.layers, off.max_new_tokens, off.top_k, image_attention=True)
    return off, on


def timing(args, off: Extractor, on: Extractor, images, questions) -> None:
    size = args.batch_size
    batches = [
        off.prepare(images[i : i + size], questions[i : i + size]) for i in range(0, len(images), size)
    ]
    paths = {"off": off, "on": on}
    for extractor in paths.values():  # warm-up
        extractor.run(batches[0])
    seconds = {name: np.zeros(args.rounds) for name in paths}
    for round_ in range(args.rounds):
        for i, inputs in enumerate(batches):  # batch by batch, in turn, so drift falls on both alike
            for name in list(paths)[:: 1 if (round_ + i) % 2 == 0 else -1]:
                start = time.perf_counter()
                paths[name].run(inputs)
                seconds[name][round_] += time.perf_counter() - start
    per_sample = {name: s / len(images) for name, s in seconds.items()}
    ratio = per_sample["on"] / per_sample["off"]
    print(
        f"{args.model} on {off.loaded.device} ({torch.get_num_threads()} threads): {len(images)} samples, "
        f"batch {size}, up to {off.max_new_tokens} new tokens, {len(off.layers)} layers, {args.rounds} "
        "interleaved rounds"
    )
    for name, s in per_sample.items():
        print(f"  image_attention {name:3s} {np.median(s) * 1e3:8.2f} ms/sample")
    print(f"  on/off x{np.median(ratio):.3f} (rounds {ratio.min():.3f}-{ratio.max():.3f})")


def peak_mib(extractor: Extractor, inputs) -> float:
    """Peak memory of the tensors alive during one `Extractor.run`: CUDA's allocator counts it on a GPU;
    on a CPU, the profiler's memory timeline (allocations and frees of every tensor, categories summed)."""
    if extractor.loaded.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        extractor.run(inputs)
        return torch.cuda.max_memory_allocated() / 2**20
    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as run:
        extractor.run(inputs)
    _times, sizes = MemoryProfileTimeline(run._memory_profile())._coalesce_timeline(torch.device("cpu"))
    return float(np.sum(sizes, axis=1).max()) / 2**20


def memory(args, off: Extractor, on: Extractor, images, questions) -> None:
    """One batch, its questions lengthened with filler to about each of `--lengths` tokens."""
    device = "CUDA memory allocated" if off.loaded.device.type == "cuda" else "CPU tensor memory"
    print(f"peak {device} of one batch of {len(images)}, off and on:")
    heads = off.loaded.model.config.get_text_config().num_attention_heads
    for length in args.lengths:
        longer = list(questions)
        while (inputs := off.prepare(images, longer))["input_ids"].shape[1] < length:
            longer = [q + FILLER for q in longer]
        tokens = inputs["input_ids"].shape[1]
        peak = {name: peak_mib(extractor, inputs) for name, extractor in (("off", off), ("on", on))}
        weights = len(images) * heads * tokens**2 * 4 * len(off.layers) / 2**20  # [B, heads, S, S] float32
        print(
            f"  {tokens:6d} prompt tokens: off {peak['off']:9.2f} MiB, on {peak['on']:9.2f} MiB, "
            f"on - off {peak['on'] - peak['off']:+7.2f} MiB (kept layers' weights: {weights:.0f} MiB)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="demo_vlm")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--lengths", type=int, nargs=2, default=[256, 2048], help="prompt tokens, about")
    args = parser.parse_args()
    params = load_params(args.params)
    off, on = extractors(params, args.model)
    samples = read_samples(params.data.out).head(args.samples)
    images, questions = [load_image(p) for p in samples.image_path], list(samples.question)
    timing(args, off, on, images, questions)
    memory(args, off, on, images[: args.batch_size], questions[: args.batch_size])


if __name__ == "__main__":
    main()
