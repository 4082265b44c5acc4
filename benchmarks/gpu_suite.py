"""The GPU suite: every measurement the ">= 10 samples/s at Qwen2.5-VL-7B size" question needs, in one
command that fits one device call. Each part runs in its own process under its own time cap (an OOM, a
hang or a cap cut off that part only), and every result is a JSON line appended to OUT/suite.jsonl the
moment it is measured, so a run stopped early still returns what it measured; the profile's op table goes
to OUT/profile.txt.

    bash benchmarks/gpu_suite.sh run                          # on the GPU machine, wheels installed first
    python benchmarks/gpu_suite.py --size tiny --device cpu   # the same parts on tiny models, here

Parts, in order (random weights of the real architectures, built on the device in bfloat16; each sample a
1008x1008 image, a question of about 20 tokens and exactly --new-tokens generated tokens):
  batches    qwen2_5_vl: the seed-style loop, then the engine at each batch size until the first OOM
  attention  qwen2_5_vl at the best batch with eager attention (the batches part used the default, sdpa)
  profile    qwen2_5_vl, one batch at the best size: prefill against decode time, host syncs the hooks add,
             the CPU preprocessing share, the top 15 ops
  check      bf16 correctness: 4 samples' VF/VT/QT from one engine batch against a plain forward with
             output_hidden_states=True per sample (relative error per representation)
  mllama, phi4mm   the same engine-vs-seed measurement at qwen2_5_vl's best batch
  peers      qwen2_5_vl: halp against nnsight (when its wheels came along) and a forward-hooks script,
             benchmarks/peers.py's comparison on PEER_SAMPLES samples of PEER_NEW_TOKENS new tokens
  lens       benchmarks/lens_search.py on the device
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from halp.bench import built, engine, plain_forward, seed_style, timed
from halp.extract.engine import Extractor
from halp.models.adapter import resolve
from halp.models.layers import resolve_layers
from halp.models.loading import LoadedModel, pick_device

QUESTION = (
    "Is the small red object on the left side of the table touching the large blue cup in this picture?"
)
QUESTIONS = [QUESTION, "What color is the cup?", f"{QUESTION} Answer in one word, please."]
LAYERS = [0, 0.25, 0.5, 0.75, 1.0]
# bfloat16 rounds each op to 2^-9 relative; the engine's batch (left padding, other kernel shapes) and the
# plain per-sample forward round differently through ~28 blocks, so norms may differ by a few percent.
BF16_TOLERANCE = 0.05
PEER_SAMPLES, PEER_NEW_TOKENS = 8, 16  # the hooks script goes one sample at a time: kept short
PARTS: dict[str, float] = {  # part -> default cap in seconds; together about 9 minutes
    "batches": 150,
    "attention": 50,
    "profile": 50,
    "check": 40,
    "mllama": 60,
    "phi4mm": 60,
    "peers": 60,
    "lens": 40,
}


class Suite:
    """One part's process: the model it measures, its inputs, and the JSON-lines record."""

    def __init__(self, args: argparse.Namespace, arch: str):
        self.args = args
        self.device = pick_device(args.device)
        self.on_gpu = self.device.type == "cuda"
        self.loaded: LoadedModel = built(arch, args.size, self.device, getattr(torch, args.dtype), "auto")
        self.extractor = Extractor(
            self.loaded, resolve_layers(LAYERS, self.loaded.n_blocks, arch), args.new_tokens, top_k=5
        )
        rng = np.random.default_rng(0)
        side = args.image_size
        self.images = [
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(4)
        ]
        self.arch = arch

    def record(self, part: str, **values) -> dict:
        line = {"part": part, "arch": self.arch, "size": self.args.size, "device": self.device_name} | values
        with (self.args.out / "suite.jsonl").open("a") as f:
            f.write(json.dumps(line) + "\n")
        print(json.dumps(line), flush=True)
        return line

    @property
    def device_name(self) -> str:
        return torch.cuda.get_device_name(self.device) if self.on_gpu else "cpu"

    def samples(self, n: int) -> tuple[list[Image.Image], list[str]]:
        """n samples cycling through 4 images and 3 questions (the batch needs real left padding)."""
        return [self.images[i % 4] for i in range(n)], [QUESTIONS[i % 3] for i in range(n)]

    def peak_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 2**30 if self.on_gpu else None

    def reset_peak(self) -> None:
        if self.on_gpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def seed_rate(self) -> float:
        images, questions = self.samples(self.args.seed_samples)
        seed_style(self.loaded, self.extractor, images[:1], questions[:1], 2)  # warm-up
        seconds = timed(
            self.device, seed_style, self.loaded, self.extractor, images, questions, self.args.new_tokens
        )
        rate = len(images) / seconds
        self.record("seed_loop", batch=1, samples=len(images), samples_per_s=rate)
        return rate

    def engine_rate(self, batch: int, seed_rate: float, part: str) -> dict:
        """Samples/s of the engine at `batch` over --rounds batches, after one warm-up batch; on a GPU each
        next batch is prepared ahead (`extract.prefetch`), on a CPU that would only take the model's cores."""
        self.reset_peak()
        images, questions = self.samples(batch * self.args.rounds)
        engine(self.extractor, images[:batch], questions[:batch], batch, 2)
        new_tokens = self.args.new_tokens
        seconds = timed(
            self.device, engine, self.extractor, images, questions, batch, new_tokens, self.on_gpu
        )
        rate = len(images) / seconds
        return self.record(
            part,
            batch=batch,
            attention=self.loaded.model.config._attn_implementation,
            prefetch=self.on_gpu,
            samples=len(images),
            new_tokens=self.args.new_tokens,
            samples_per_s=rate,
            ratio_to_seed_loop=rate / seed_rate,
            peak_gib=self.peak_gib(),
        )


def part_batches(suite: Suite) -> None:
    first = suite.extractor.prepare(suite.images[:1], [QUESTION])
    suite.record(
        "inputs",
        image_tokens=int((first["input_ids"] == suite.extractor.image_token_id).sum()),
        prompt_tokens=int(first["input_ids"].shape[1]),
        new_tokens=suite.args.new_tokens,
        torch=torch.__version__,
    )
    seed_rate = suite.seed_rate()
    best = None
    for batch in suite.args.batches:
        suite.record("batch_started", batch=batch)
        try:
            result = suite.engine_rate(batch, seed_rate, "batch")
        except torch.OutOfMemoryError as err:
            suite.record("batch", batch=batch, oom=True, message=str(err).splitlines()[0])
            break
        if best is None or result["samples_per_s"] > best["samples_per_s"]:
            best = result
    if best is not None:
        suite.record("best", batch=best["batch"], samples_per_s=best["samples_per_s"], seed_rate=seed_rate)


def part_attention(suite: Suite) -> None:
    seed_rate = suite.seed_rate()
    for attention in ("sdpa", "eager"):
        suite.loaded.model.set_attn_implementation(attention)
        suite.engine_rate(suite.args.best_batch, seed_rate, "attention")


def part_profile(suite: Suite) -> None:
    """Prefill is timed as generation of one token; decode is the rest of a full batch. Host syncs are
    counted in a hooked prefill and a plain one (`generate` with one token, no hooks): the difference is
    what the hooks add."""
    from torch.profiler import ProfilerActivity, profile

    batch = suite.args.best_batch
    images, questions = suite.samples(batch)
    prepare_s = timed(suite.device, suite.extractor.prepare, images, questions)
    inputs = suite.extractor.prepare(images, questions)
    one = Extractor(suite.loaded, suite.extractor.layers, 1, top_k=5)
    one.run(inputs)  # warm-up
    prefill_s = timed(suite.device, one.run, inputs)
    full_s = timed(suite.device, suite.extractor.run, inputs, min_new_tokens=suite.args.new_tokens)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if suite.on_gpu else [])

    def syncs(fn: Callable) -> int:
        with profile(activities=activities) as prof:
            fn()
        names = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "aten::_local_scalar_dense")
        return sum(e.count for e in prof.key_averages() if e.key in names)

    on_device = inputs.to(suite.device)
    hooked = syncs(lambda: one.run(inputs))
    plain = syncs(lambda: suite.loaded.model.generate(**on_device, max_new_tokens=1, do_sample=False))
    with profile(activities=activities) as prof:
        suite.extractor.run(inputs, min_new_tokens=suite.args.new_tokens)
    sort = "cuda_time_total" if suite.on_gpu else "cpu_time_total"
    (suite.args.out / "profile.txt").write_text(prof.key_averages().table(sort_by=sort, row_limit=15))
    suite.record(
        "profile",
        batch=batch,
        prepare_s=prepare_s,
        prefill_s=prefill_s,
        decode_s=full_s - prefill_s,
        batch_s=full_s,
        preprocessing_share=prepare_s / (prepare_s + full_s),
        host_syncs_hooked_prefill=hooked,
        host_syncs_plain_prefill=plain,
        host_syncs_added_by_hooks=hooked - plain,
    )


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).norm() / expected.norm())


def part_check(suite: Suite) -> None:
    """One engine batch of 4 (left-padded: three question lengths) against each sample alone through the
    plain forward; the last block's state goes through the final norm to meet hidden_states[-1]."""
    images, questions = suite.samples(4)
    out = suite.extractor.run(suite.extractor.prepare(images, questions))
    final_norm = resolve(suite.loaded.model, suite.loaded.adapter.final_norm)
    last = suite.loaded.n_blocks - 1
    errors: dict[str, float] = {"vision_only": 0.0, "vision_token": 0.0, "query_token": 0.0}
    for i, (image, question) in enumerate(zip(images, questions, strict=True)):
        expected = plain_forward(suite.loaded, suite.extractor, suite.extractor.prepare([image], [question]))
        for name in errors:
            got = torch.from_numpy(getattr(out, name)[i])
            if name != "vision_only":
                for j, layer in enumerate(suite.extractor.layers):
                    row = got[j]
                    if layer == last:
                        with torch.inference_mode():
                            weight = final_norm.weight
                            row = final_norm(row.to(weight.device, weight.dtype)).float().cpu()
                    errors[name] = max(errors[name], relative_error(row, expected[name][j]))
            else:
                errors[name] = max(errors[name], relative_error(got, expected[name]))
    suite.record(
        "check",
        dtype=suite.args.dtype,
        layers=suite.extractor.layers,
        max_relative_error=errors,
        tolerance=BF16_TOLERANCE,
        passed=all(e <= BF16_TOLERANCE for e in errors.values()),
    )


def part_other(suite: Suite) -> None:
    suite.engine_rate(suite.args.best_batch, suite.seed_rate(), "engine")


def part_peers(suite: Suite) -> None:
    """halp, nnsight and a hooks script on the same samples, each peer first held to halp's results."""
    from peers import compare  # benchmarks/peers.py, beside this script

    extractor = Extractor(suite.loaded, suite.extractor.layers, PEER_NEW_TOKENS, top_k=5)
    images, questions = suite.samples(PEER_SAMPLES)
    compared = compare(suite.loaded, extractor, images, questions, len(images), max(suite.args.rounds, 1))
    suite.record("peers", samples=len(images), batch=len(images), new_tokens=PEER_NEW_TOKENS, **compared)


def part_lens(args: argparse.Namespace) -> None:
    size = (
        []
        if args.size == "full"
        else ["--rows", "4096", "--width", "64", "--queries", "16", "--chunk", "1024"]
    )
    command = [
        sys.executable,
        str(Path(__file__).with_name("lens_search.py")),
        "--device",
        args.device,
        *size,
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = {"part": "lens", "device": args.device, "size": args.size, "output": output}
    with (args.out / "suite.jsonl").open("a") as f:
        f.write(json.dumps(line) + "\n")
    print(output, flush=True)


WORKERS: dict[str, tuple[str, Callable[[Suite], None]]] = {
    "batches": ("qwen2_5_vl", part_batches),
    "attention": ("qwen2_5_vl", part_attention),
    "profile": ("qwen2_5_vl", part_profile),
    "check": ("qwen2_5_vl", part_check),
    "mllama": ("mllama", part_other),
    "phi4mm": ("phi4mm", part_other),
    "peers": ("qwen2_5_vl", part_peers),
}


def best_batch(out: Path) -> int | None:
    lines = [json.loads(line) for line in (out / "suite.jsonl").read_text().splitlines()]
    return next((line["batch"] for line in reversed(lines) if line["part"] == "best"), None)


def run_all(args: argparse.Namespace, argv: list[str]) -> int:
    """Each part in its own process under its cap; what a part recorded stays when it fails or is cut."""
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "suite.jsonl").write_text("")
    failed = 0
    for part in args.parts:
        best = best_batch(args.out) or args.batches[0]
        command = [sys.executable, __file__, *argv, "--part", part, "--best-batch", str(best)]
        cap = PARTS[part] * args.cap_scale
        start = time.perf_counter()
        try:
            result = subprocess.run(command, timeout=cap)
            status = "ok" if result.returncode == 0 else f"exit {result.returncode}"
        except subprocess.TimeoutExpired:
            status = f"cut at its cap of {cap:.0f} s"
        seconds = time.perf_counter() - start
        failed += status != "ok"
        with (args.out / "suite.jsonl").open("a") as f:
            f.write(json.dumps({"part": "done", "of": part, "status": status, "seconds": seconds}) + "\n")
        print(f"== {part}: {status} in {seconds:.0f} s", flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="full", choices=["tiny", "full"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_suite_out")))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16, 32, 64])
    parser.add_argument("--rounds", type=int, default=2, help="batches timed per measurement")
    parser.add_argument("--seed-samples", type=int, default=2, help="samples timed in the slower seed loop")
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=1008)
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--cap-scale", type=float, default=1.0, help="multiplies every part's time cap")
    parser.add_argument("--part", choices=list(PARTS), help=argparse.SUPPRESS)  # one part's own process
    parser.add_argument("--best-batch", type=int, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.part is None:
        return run_all(args, argv)
    if args.part == "lens":
        part_lens(args)
    else:
        arch, part = WORKERS[args.part]
        part(Suite(args, arch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
