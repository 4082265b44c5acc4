"""Exact nearest-neighbour search for the lens, in one run on the same data: halp's chunked search against
a plain one-matrix search (the whole bank in float32 at once) and, when installed, faiss-cpu's FlatIP.

    python benchmarks/lens_search.py --rows 200000 --width 3584 --queries 256

The bank is random unit vectors stored in float16, as `halp contextual-bank` stores them; queries are
random too. halp is timed with the bank kept in float32 (what `halp lens` does when the bank fits
`lens.bank_cache_gb`: every batch of images searches it again) and read as float16 chunks converted on the
fly (a bank too big to keep). Prints seconds per search, each method's rate relative to halp's, and
whether the top-5 rows agree. faiss is an optional comparison, not a dependency (`pip install faiss-cpu`).
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import numpy as np
import torch

from halp.lens.search import consecutive, normalised, top_k


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--width", type=int, default=3584)
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=65536, help="bank rows per chunk")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    bank = normalised(torch.randn(args.rows, args.width, generator=generator)).half()
    queries = torch.randn(args.queries, args.width, generator=generator).to(args.device)

    def timed(fn):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start, result

    kept = bank.to(args.device, torch.float32)  # what `halp lens` keeps when it fits lens.bank_cache_gb
    top_k(queries, consecutive(kept, args.chunk), args.k)  # warm-up
    halp_s, (_, halp_rows) = timed(lambda: top_k(queries, consecutive(kept, args.chunk), args.k))
    results = {"halp, bank kept in float32": (halp_s, halp_rows.cpu())}
    streamed_s, (_, rows) = timed(lambda: top_k(queries, consecutive(bank, args.chunk), args.k))
    results["halp, float16 chunks"] = (streamed_s, rows.cpu())

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
    print(
        f"{args.queries} queries x {args.rows:,} bank rows x {args.width} on {args.device}, "
        f"top-{args.k} (bank float16 = {bank.numel() * 2 / 2**30:.2f} GiB)"
    )
    for name, (seconds, rows) in results.items():
        agree = np.mean(
            [set(a) == set(b) for a, b in zip(rows.tolist(), halp_rows.cpu().tolist(), strict=True)]
        )
        rate = halp_s / seconds
        print(
            f"  {name:26s} {seconds:7.2f} s   {rate:5.2f}x halp's rate   top-{args.k} as halp's: {agree:.0%}"
        )


if __name__ == "__main__":
    main()
