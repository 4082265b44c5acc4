"""Exact nearest-neighbour search for the lens, in one run on the same data: halp's chunked search (a
bfloat16 screen plus float32 rescoring, and plain float32) against a plain one-matrix search (the whole bank
in float32 at once) and, when installed, faiss-cpu's FlatIP.

    python benchmarks/lens_search.py --rows 200000 --width 3584 --queries 256

The bank is random unit vectors stored in float16, as `halp contextual-bank` stores them; queries are
random too. halp is timed with the bank prepared once and kept (what `halp lens` does when the bank fits
`lens.bank_cache_gb`: every batch of images searches it again; preparing it is timed apart) and read as
float16 chunks prepared on the fly (a bank too big to keep). The methods run round-robin for `--repeats`
rounds, each round starting one method later, so load from elsewhere lands on all of them alike. Prints
each method's median seconds per search, the median (and range over rounds) of its rate relative to
faiss's in the same round (or to halp's float32 search without faiss), whether its top-k rows agree with
float32's, and the CPU's name. faiss is an optional comparison, not a dependency (`pip install faiss-cpu`).
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import numpy as np
import torch

from halp.environment import cpu_name
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
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds; medians are printed")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    bank = normalised(torch.randn(args.rows, args.width, generator=generator)).half()
    queries = torch.randn(args.queries, args.width, generator=generator).to(args.device)

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def once(fn):
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        return time.perf_counter() - start, result

    print(
        f"{args.queries} queries x {args.rows:,} bank rows x {args.width} on {args.device} ({cpu_name()}), "
        f"top-{args.k} (bank float16 = {bank.numel() * 2 / 2**30:.2f} GiB), {args.repeats} interleaved rounds"
    )
    kept, methods = {}, {}
    for dtype in (torch.bfloat16, torch.float32):
        name = str(dtype).removeprefix("torch.")
        prepare_s, kept[name] = once(
            lambda dtype=dtype: list(consecutive(bank.to(args.device), args.chunk, dtype))
        )
        rescored = rescored_per_query(queries, kept[name], args.k, dtype)
        print(
            f"  ({name} screen: preparing the kept bank {prepare_s:.2f} s, once; "
            f"{rescored:.1f} of {args.rows:,} rows scored again in float32 per query)"
        )
        methods[f"halp {name}, kept"] = lambda name=name, dtype=dtype: top_k(
            queries, kept[name], args.k, dtype
        )[1]
    methods["halp bfloat16, streamed"] = lambda: top_k(
        queries, consecutive(bank.to(args.device), args.chunk, torch.bfloat16), args.k, torch.bfloat16
    )[1]
    methods["one matrix (float32)"] = lambda: (
        (normalised(queries) @ bank.to(queries.device, torch.float32).T).topk(args.k, dim=-1).indices
    )
    if importlib.util.find_spec("faiss") is not None:
        import faiss

        index = faiss.IndexFlatIP(args.width)
        index.add(bank.float().numpy())
        q = normalised(queries).cpu().numpy()
        methods["faiss-cpu FlatIP"] = lambda: torch.from_numpy(index.search(q, args.k)[1])
    baseline = "faiss-cpu FlatIP" if "faiss-cpu FlatIP" in methods else "halp float32, kept"

    # Round-robin, each round starting one method later: a noisy moment falls on every method alike, and
    # each round's ratio compares methods timed seconds apart.
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    rows: dict[str, torch.Tensor] = {}
    names = list(methods)
    for round_ in range(args.repeats):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            elapsed, rows[name] = once(methods[name])
            seconds[name].append(elapsed)
    reference = rows["halp float32, kept"].cpu()
    base = np.array(seconds[baseline])
    for name, times in seconds.items():
        ratio = base / np.array(times)
        found = rows[name].cpu().tolist()
        agree = np.mean([set(a) == set(b) for a, b in zip(found, reference.tolist(), strict=True)])
        print(
            f"  {name:26s} {np.median(times):7.3f} s   {np.median(ratio):5.2f}x {baseline}'s rate "
            f"(rounds {ratio.min():.2f}-{ratio.max():.2f})   top-{args.k} as float32's: {agree:.0%}"
        )


if __name__ == "__main__":
    main()
