"""Chunked exact search equals brute force, ties included, whatever the chunk size and the screen's type."""

from __future__ import annotations

import pytest
import torch

from halp.lens import search
from halp.lens.search import consecutive, merge_layers, normalised, prepared, top_k

SCREENS = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])


def brute_force(
    queries: torch.Tensor, bank: torch.Tensor, k: int
) -> tuple[list[list[float]], list[list[int]]]:
    """Every float32 cosine, sorted by (score descending, row ascending)."""
    full = normalised(queries) @ bank.float().T
    rows = [sorted(range(len(bank)), key=lambda j: (-full[q, j].item(), j))[:k] for q in range(len(queries))]
    return [[full[q, j].item() for j in order] for q, order in enumerate(rows)], rows


@SCREENS
def test_chunked_top_k_equals_brute_force_with_ties_for_any_chunk_size(dtype):
    generator = torch.Generator().manual_seed(0)
    bank = torch.randn(50, 8, generator=generator)
    bank[[3, 17, 40]] = bank[9].clone()  # exact ties across chunks
    bank = normalised(bank).half()
    queries = torch.cat([bank[9:10].float() * 3.0, torch.randn(4, 8, generator=generator)])
    expected_scores, expected_rows = brute_force(queries, bank, 6)
    for chunk in (1, 7, 16, 50):
        scores, rows = top_k(queries, consecutive(bank, chunk, dtype), k=6, dtype=dtype)
        assert rows.tolist() == expected_rows
        torch.testing.assert_close(scores, torch.tensor(expected_scores))
    assert rows[0, :4].tolist() == [3, 9, 17, 40], "the tied copies, lower rows first"
    shuffled = torch.randperm(len(bank), generator=generator)  # parts may hold rows in any order
    chunks = [prepared(shuffled[i : i + 9], bank[shuffled[i : i + 9]], dtype) for i in range(0, len(bank), 9)]
    assert top_k(queries, chunks, k=6, dtype=dtype)[1].tolist() == expected_rows


def test_a_bfloat16_screen_finds_the_float32_answer_where_bfloat16_alone_does_not():
    """Rows crowded within bfloat16's rounding of each other (near-copies, as the contextual vectors of one
    frequent word are): bfloat16 scores alone rank them wrongly; the screen plus float32 rescoring must
    still give the true order, which float64 settles (its gaps here are far above float32's rounding)."""
    generator = torch.Generator().manual_seed(0)
    centre = torch.randn(256, generator=generator)
    bank = normalised(centre + 0.05 * torch.randn(1000, 256, generator=generator)).half()
    queries = centre + 0.5 * torch.randn(4, 256, generator=generator)
    exact = normalised(queries).double() @ bank.double().T
    expected = exact.topk(6, dim=-1)
    assert (expected.values[:, :-1] - expected.values[:, 1:]).min() > 1e-5, "no near-tie float32 could flip"
    rough = normalised(queries).bfloat16() @ bank.bfloat16().T
    assert (rough.float().topk(5, dim=-1).indices != expected.indices[:, :5]).any(dim=-1).all(), (
        "bfloat16 alone must get every query wrong, or the test proves nothing"
    )
    for chunk in (64, 1000):
        scores, rows = top_k(queries, consecutive(bank, chunk, torch.bfloat16), k=5, dtype=torch.bfloat16)
        assert rows.tolist() == expected.indices[:, :5].tolist()
        torch.testing.assert_close(scores.double(), expected.values[:, :5], atol=1e-6, rtol=0)


@SCREENS
def test_the_cross_layer_merge_is_a_global_top_k_that_names_each_neighbours_layer(dtype):
    generator = torch.Generator().manual_seed(1)
    layers = [normalised(torch.randn(30, 8, generator=generator)) for _ in range(3)]
    queries = torch.randn(5, 8, generator=generator)
    per_layer = [top_k(queries, consecutive(bank, 7, dtype), k=4, dtype=dtype) for bank in layers]
    merged_scores, merged_rows, merged_layers = merge_layers(per_layer, k=4)
    everything = torch.cat(layers)
    scores, rows = top_k(queries, consecutive(everything, 64), k=4)
    torch.testing.assert_close(merged_scores, scores)
    assert (merged_layers * 30 + merged_rows).tolist() == rows.tolist()


def test_screening_leaves_the_process_cublas_settings_as_it_found_them():
    """The screen turns cuBLAS's bfloat16 reduced-precision reduction off while it runs; whatever the user
    had (split-K companion included, and TF32 set through torch's newer API) must come back unchanged."""
    matmul = torch.backends.cuda.matmul
    saved = (matmul.allow_bf16_reduced_precision_reduction, matmul.fp32_precision)
    try:
        matmul.fp32_precision = "tf32"
        for setting in [(True, True), (False, True), (False, False)]:
            matmul.allow_bf16_reduced_precision_reduction = setting
            with search._float32_reduction(torch.device("cuda")):
                assert matmul.allow_bf16_reduced_precision_reduction is False
            after = (
                matmul.allow_bf16_reduced_precision_reduction,
                matmul.allow_bf16_reduced_precision_reduction_split_k,
            )
            assert after == setting
            assert matmul.fp32_precision == "tf32"
    finally:
        matmul.allow_bf16_reduced_precision_reduction, matmul.fp32_precision = saved
