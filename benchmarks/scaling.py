"""CPU scaling evidence: engine throughput by batch size, and 1 vs N data-parallel worker processes.

    python benchmarks/scaling.py --model phi4mm --samples 276 --processes 1 2

Batch sizes are timed in this process on the same samples. Process counts are timed as whole
`halp extract` runs under the torchrun launcher, into temporary folders.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from halp.bench import engine
from halp.config import load_params
from halp.data.images import load_image
from halp.data.sample import sample_dataset
from halp.extract.engine import Extractor
from halp.models.loading import load_model


def batch_sizes(model: str, samples, sizes: list[int], new_tokens: int) -> None:
    params = load_params()
    settings = params.model(model)
    images, questions = [load_image(p) for p in samples.image_path], list(samples.question)
    loaded = load_model(settings)
    extractor = Extractor.configured(loaded, settings, params.extract.top_k, max_new_tokens=new_tokens)
    engine(extractor, images[:8], questions[:8], 8, new_tokens)  # warm-up
    print(f"| batch size | samples/s ({model}, {len(images)} samples, {new_tokens} new tokens) |\n|---|---|")
    for size in sizes:
        start = time.perf_counter()
        engine(extractor, images, questions, size, new_tokens)
        print(f"| {size} | {len(images) / (time.perf_counter() - start):.1f} |")


def _timed_extract(params_path: Path, model: str) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "halp", "--params", str(params_path), "extract", "--model", model],
        check=True,
        capture_output=True,
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
    )
    return time.perf_counter() - start


def processes(model: str, sample_csv: Path, n: int, counts: list[int], new_tokens: int, tmp: Path) -> None:
    """Each count runs twice: the second run finds everything done, so it measures start-up alone
    (launcher, imports, model loading), which is subtracted to give the extraction throughput."""
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["data"]["out"] = str(sample_csv)
    params["models"][model]["max_new_tokens"] = new_tokens
    print(f"| processes | wall s | start-up s | samples/s without start-up ({model}) |\n|---|---|---|---|")
    for count in counts:
        params["extract"] |= {"out_dir": str(tmp / f"p{count}"), "launcher": "torchrun", "processes": count}
        path = tmp / f"params{count}.yaml"
        path.write_text(yaml.safe_dump(params))
        wall, startup = _timed_extract(path, model), _timed_extract(path, model)
        print(f"| {count} | {wall:.1f} | {startup:.1f} | {n / (wall - startup):.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="phi4mm")
    parser.add_argument("--samples", type=int, default=276)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        data = load_params().data.model_copy(update={"sample_size": args.samples, "out": tmp / "samples.csv"})
        samples = sample_dataset(data)
        batch_sizes(args.model, samples, args.batch_sizes, args.new_tokens)
        processes(args.model, data.out, len(samples), args.processes, args.new_tokens, tmp)


if __name__ == "__main__":
    main()
