"""Exact nearest-neighbour search for the lens, in one run on the same data: halp's chunked search (a
bfloat16 screen plus float32 rescoring, and plain float32) against a plain one-matrix search (the whole bank
in float32 at once) and, when installed, faiss-cpu's FlatIP.

    python benchmarks/lens_search.py --rows 200000 --width 3584 --queries 256

The bank is random unit vectors stored in float16, as `halp contextual-bank` stores them; queries are
random too. halp is timed with the bank prepared once and kept (what `halp lens` does when the bank fits
`lens.bank_cache_gb`: every batch of images searches it again; preparing it is timed apart) and read as
float16 chunks prepared on the fly (a bank too big to keep). Prints seconds per search, each method's rate
relative to faiss's (or to halp's float32 search without faiss), and whether the top-k rows agree with
float32's; each time is the fastest of `--repeats` runs. faiss is an optional comparison, not a
dependency (`pip install faiss-cpu`).
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import numpy as np
import torch

from halp.lens import search
from halp.lens.search import consecutive, normalised, top_k


def rescored_per_query(queries: torch.Tensor, kept: list, k: int, dtype: torch.dtype) -> float:
    """Rows scored again in float32 per query in one search, counted by wrapping the search's scoring."""
    exact, pairs = search._exact, []

    def counted(q, chunk, query, column):
        pairs.append(len(query))
        return exact(q, chunk, query, column)

    search._exact = counted
    try:
        top_k(queries, kept, k, dtype)
    finally:
        search._exact = exact
    return sum(pairs) / len(queries)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--width", type=int, default=3584)
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=65536, help="bank rows per chunk")
    parser.add_argument("--repeats", type=int, default=3, help="each time is the fastest of these")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    bank = normalised(torch.randn(args.rows, args.width, generator=generator)).half()
    queries = torch.randn(args.queries, args.width, generator=generator).to(args.device)

    def timed(fn, repeats: int = args.repeats):
        """The fastest of `repeats` runs (this machine's neighbours make single timings noisy)."""
        best = float("inf")
        for _ in range(repeats):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            result = fn()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        return best, result

    print(
        f"{args.queries} queries x {args.rows:,} bank rows x {args.width} on {args.device}, "
        f"top-{args.k} (bank float16 = {bank.numel() * 2 / 2**30:.2f} GiB)"
    )
    results = {}
    for dtype in (torch.bfloat16, torch.float32):
        name = str(dtype).removeprefix("torch.")
        prepare_s, kept = timed(
            lambda dtype=dtype: list(consecutive(bank.to(args.device), args.chunk, dtype)), repeats=1
        )
        seconds, (_, rows) = timed(lambda kept=kept, dtype=dtype: top_k(queries, kept, args.k, dtype))
        results[f"halp {name}, kept"] = (seconds, rows.cpu())
        rescored = rescored_per_query(queries, kept, args.k, dtype)
        print(
            f"  ({name} screen: preparing the kept bank {prepare_s:.2f} s, once; "
            f"{rescored:.1f} of {args.rows:,} rows scored again in float32 per query)"
        )
        del kept
    streamed_s, (_, rows) = timed(
        lambda: top_k(
            queries, consecutive(bank.to(args.device), args.chunk, torch.bfloat16), args.k, torch.bfloat16
        )
    )
    results["halp bfloat16, streamed"] = (streamed_s, rows.cpu())

    def whole_bank():
        return (normalised(queries) @ bank.to(queries.device, torch.float32).T).topk(args.k, dim=-1)

    whole_s, whole = timed(whole_bank)
    results["one matrix (float32)"] = (whole_s, whole.indices.cpu())
    if importlib.util.find_spec("faiss") is not None:
        import faiss

        index = faiss.IndexFlatIP(args.width)
        index.add(bank.float().numpy())
        q = normalised(queries).cpu().numpy()
        faiss_s, (_, rows) = timed(lambda: index.search(q, args.k))
        results["faiss-cpu FlatIP"] = (faiss_s, torch.from_numpy(rows))
    baseline_name = "faiss-cpu FlatIP" if "faiss-cpu FlatIP" in results else "halp float32, kept"
    baseline_s, reference = results[baseline_name][0], results["halp float32, kept"][1]
    for name, (seconds, rows) in results.items():
        agree = np.mean([set(a) == set(b) for a, b in zip(rows.tolist(), reference.tolist(), strict=True)])
        print(
            f"  {name:26s} {seconds:7.2f} s   {baseline_s / seconds:5.2f}x {baseline_name}'s rate"
            f"   top-{args.k} as float32's: {agree:.0%}"
        )


if __name__ == "__main__":
    main()
