"""Full-size speed: the seed-style loop against the engine on a randomly initialised model of the real
architecture, with realistic inputs, in one run. Made for a GPU; `--size tiny --device cpu` runs it here.
The model is built on the device in the target dtype (no float32 copy, no disk); `--model-dir` loads one.

    python benchmarks/gpu.py --arch qwen2_5_vl --size full --device cuda --batch-size 16 --samples 64

Inputs: a 1008x1008 image (1,296 image tokens for Qwen2.5-VL), a question of about 20 tokens, and
exactly `--new-tokens` generated tokens (min_new_tokens = max_new_tokens), so random weights cost
what real ones do. Prints samples/s of both paths, the ratio and peak GPU memory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from halp.bench import built, engine, seed_style, timed
from halp.config import ModelSettings
from halp.extract.engine import Extractor
from halp.models.loading import load_model, pick_device
from halp.models.synthetic import BUILDERS

QUESTION = (
    "Is the small red object on the left side of the table touching the large blue cup in this picture?"
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="qwen2_5_vl", choices=sorted(BUILDERS))
    parser.add_argument("--size", default="full", choices=["tiny", "full"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--attn", default="auto", choices=["auto", "sdpa", "eager", "flash_attention_2"])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seed-samples", type=int, default=8, help="samples timed in the slower seed loop")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=1008)
    parser.add_argument("--model-dir", type=Path, help="a saved model to load instead of building one")
    parser.add_argument(
        "--prefetch", action="store_true", help="also time the engine with the next batch prepared ahead"
    )
    args = parser.parse_args()

    settings = ModelSettings(
        model=str(args.model_dir or f"synthetic {args.size} {args.arch}"),
        dtype=args.dtype,
        device=args.device,
        attn_implementation=args.attn,
        layers=[0, 0.25, 0.5, 0.75, 1.0],
    )
    if args.model_dir:
        loaded = load_model(settings)
    else:
        loaded = built(args.arch, args.size, pick_device(args.device), getattr(torch, args.dtype), args.attn)
    extractor = Extractor.configured(loaded, settings, top_k=5, max_new_tokens=args.new_tokens)
    ahead = Extractor.configured(loaded, settings, 5, args.new_tokens, pin_memory=True)
    rng = np.random.default_rng(0)
    side = args.image_size
    images = [
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(args.samples)
    ]
    questions = [QUESTION] * args.samples
    first = extractor.prepare(images[:1], questions[:1])
    n_image_tokens = int((first["input_ids"] == extractor.image_token_id).sum())

    on_gpu = loaded.device.type == "cuda"

    seed_style(loaded, extractor, images[:1], questions[:1], 2)  # warm-up both paths
    engine(extractor, images[: args.batch_size], questions[: args.batch_size], args.batch_size, 2)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    seed_s = timed(
        loaded.device,
        seed_style,
        loaded,
        extractor,
        images[: args.seed_samples],
        questions[: args.seed_samples],
        args.new_tokens,
    )
    engine_s = timed(loaded.device, engine, extractor, images, questions, args.batch_size, args.new_tokens)
    seed_rate, engine_rate = args.seed_samples / seed_s, args.samples / engine_s
    if args.prefetch:
        ahead_s = timed(
            loaded.device, engine, ahead, images, questions, args.batch_size, args.new_tokens, True
        )
        prefetch_line = f"  engine, next batch prepared ahead:  {args.samples / ahead_s:8.2f} samples/s\n"
    else:
        prefetch_line = ""
    peak = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else float("nan")
    device = torch.cuda.get_device_name() if on_gpu else "cpu"
    prompt_tokens = first["input_ids"].shape[1]
    print(
        f"{args.size} {args.arch} on {device}, {args.dtype}, attention {loaded.attn_implementation}\n"
        f"  inputs: {side}x{side} image -> {n_image_tokens} image tokens, {prompt_tokens} prompt tokens, "
        f"{args.new_tokens} new tokens per sample\n"
        f"  seed-style loop ({args.seed_samples} samples, batch 1): {seed_rate:8.2f} samples/s\n"
        f"  engine ({args.samples} samples, batch {args.batch_size}):      {engine_rate:8.2f} samples/s\n"
        f"{prefetch_line}"
        f"  speed-up: {engine_rate / seed_rate:.1f}x   peak GPU memory: {peak:.1f} GiB"
    )


if __name__ == "__main__":
    main()
