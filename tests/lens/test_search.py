"""Chunked exact search equals brute force, ties included, whatever the chunk size."""

from __future__ import annotations

import torch

from halp.lens.search import consecutive, merge_layers, normalised, top_k


def test_chunked_top_k_equals_brute_force_with_ties_for_any_chunk_size():
    generator = torch.Generator().manual_seed(0)
    bank = torch.randn(50, 8, generator=generator)
    bank[[3, 17, 40]] = bank[9].clone()  # exact ties across chunks
    bank = normalised(bank).half()
    queries = torch.cat([bank[9:10].float() * 3.0, torch.randn(4, 8, generator=generator)])
    full = normalised(queries) @ bank.float().T
    expected_scores, expected_rows = [], []
    for q in range(len(queries)):
        order = sorted(range(len(bank)), key=lambda j: (-full[q, j].item(), j))[:6]
        expected_rows.append(order)
        expected_scores.append([full[q, j].item() for j in order])
    for chunk in (1, 7, 16, 50):
        scores, rows = top_k(queries, consecutive(bank, chunk), k=6)
        assert rows.tolist() == expected_rows
        torch.testing.assert_close(scores, torch.tensor(expected_scores))
    assert rows[0, :4].tolist() == [3, 9, 17, 40], "the tied copies, lower rows first"
    shuffled = torch.randperm(len(bank), generator=generator)  # parts may hold rows in any order
    chunks = [(shuffled[i : i + 9], bank[shuffled[i : i + 9]]) for i in range(0, len(bank), 9)]
    assert top_k(queries, chunks, k=6)[1].tolist() == expected_rows


def test_the_cross_layer_merge_is_a_global_top_k_that_names_each_neighbours_layer():
    generator = torch.Generator().manual_seed(1)
    layers = [normalised(torch.randn(30, 8, generator=generator)) for _ in range(3)]
    queries = torch.randn(5, 8, generator=generator)
    per_layer = [top_k(queries, consecutive(bank, 7), k=4) for bank in layers]
    merged_scores, merged_rows, merged_layers = merge_layers(per_layer, k=4)
    everything = torch.cat(layers)
    scores, rows = top_k(queries, consecutive(everything, 64), k=4)
    torch.testing.assert_close(merged_scores, scores)
    assert (merged_layers * 30 + merged_rows).tolist() == rows.tolist()
