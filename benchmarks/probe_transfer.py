"""What the transfer runs cost the probe stage: `halp probe` on a model's stored embeddings and labels with
`probe.transfer` on and off, interleaved over rounds, outputs written to a temporary folder.

    python benchmarks/probe_transfer.py --model demo_vlm --rounds 3

Each round runs the whole stage both ways (reading the embeddings, the probe grid and its baselines,
risk-coverage, writing the results; with transfer also the transferred cells trained per group and without
each group, over dataset, category and `probe.breakdown`: `halp.probe.run.transferred_cells`). Prints each
round's times, the median ratio (on / off) with its range, and the CPU.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from halp.numerics import use_portable_numerics

use_portable_numerics()  # the kernels `halp probe` runs with (its numbers and its speed), before torch loads

from halp.config import Params, load_params  # noqa: E402
from halp.environment import cpu_name  # noqa: E402
from halp.probe.run import probe_model  # noqa: E402


def redirected(params: Params, folder: Path, transfer: bool) -> Params:
    """The project's params with every probe output under `folder`, and transfer as asked."""
    probe = params.probe.model_copy(
        update={"transfer": transfer}
        | {key: folder / key for key in ("out_dir", "headline_dir", "test_scores_dir", "control_dir")}
    )
    return params.model_copy(update={"probe": probe})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", default="demo_vlm")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    params = load_params()
    print(f"halp probe --model {args.model}, probe.transfer off and on; {cpu_name()}")
    ratios = []
    with tempfile.TemporaryDirectory() as work:
        for round_ in range(args.rounds):
            seconds = {}
            for transfer in (False, True):
                start = time.perf_counter()
                probe_model(redirected(params, Path(work) / str(transfer), transfer), args.model)
                seconds[transfer] = time.perf_counter() - start
            ratios.append(seconds[True] / seconds[False])
            off, on = seconds[False], seconds[True]
            print(f"round {round_}: off {off:.1f} s, on {on:.1f} s, ratio {ratios[-1]:.2f}")
    spread = f"range {min(ratios):.2f}-{max(ratios):.2f}"
    print(f"probe stage with transfer / without: median {statistics.median(ratios):.2f} ({spread})")


if __name__ == "__main__":
    main()
