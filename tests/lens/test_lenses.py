"""The three lenses against independent references, on the tiny Qwen2-VL and a bank of its own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from halp.config import load_params
from halp.data.corpus import write_demo_corpus
from halp.extract.engine import Extractor
from halp.lens.bank import build_bank
from halp.lens.lenses import Lenses
from halp.lens.search import normalised
from halp.models.loading import load_model
from halp.store import open_bank
from tests.conftest import set_params

MODEL = "qwen2_vl"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_dir, mixed_batch):
    folder = tmp_path_factory.mktemp("lens")
    corpus = write_demo_corpus(folder / "corpus.txt", n_sentences=30, seed=0)
    (folder / "params.yaml").write_text("models: {}\n")
    set_params(
        folder,
        {
            "models": {MODEL: {"model": str(tiny_dir / MODEL), "batch_size": 4}},
            "lens": {
                "corpus": str(corpus),
                "bank_dir": str(folder / "banks"),
                "bank_metrics_dir": str(folder / "metrics"),
                "bank_layers": [0, 2, 3],
            },
        },
    )
    params = load_params(folder / "params.yaml")
    bank = open_bank(build_bank(params, MODEL))
    loaded = load_model(params.model(MODEL))
    extractor = Extractor(loaded, [0, 2, 3], max_new_tokens=1, top_k=1)
    images, questions = mixed_batch
    inputs = extractor.prepare(images, questions)
    tokens = extractor.image_tokens(inputs)  # per image [4, n, H]: input, blocks 0, 2, 3
    return loaded, bank, extractor, inputs, tokens, (folder / "corpus.txt").read_text().splitlines()


@torch.inference_mode()
def test_a_sentences_own_state_finds_itself_in_the_bank(setup):
    loaded, bank, _, _, _, sentences = setup
    lenses = Lenses(loaded, bank, k=3)
    meta = bank.meta
    for row in (0, len(meta) // 2, len(meta) - 1):
        sentence, position = int(meta.sentence[row]), int(meta.position[row])
        ids = loaded.processor.tokenizer(sentences[sentence], return_tensors="pt")
        hidden = loaded.model(**ids, output_hidden_states=True).hidden_states
        for j, layer in enumerate(bank.layers[:-1]):  # the last block is stored pre-norm, hidden_states not
            found = lenses.read(hidden[layer + 1][0, position][None])
            assert found.latent_rows[0, 0] == row and found.latent_layers[0, 0] == j
            assert found.latent_scores[0, 0] >= 0.999


def test_latent_lens_is_a_brute_force_top_k_over_every_bank_layer_and_any_chunking(setup):
    loaded, bank, _, _, tokens, _ = setup
    queries = torch.from_numpy(np.concatenate([t[1] for t in tokens]))  # block 0, every image token
    everything = torch.cat([torch.from_numpy(bank.vectors(layer)).float() for layer in bank.layers])
    scores = normalised(queries) @ everything.T
    n = len(bank.meta)
    for chunk, cache_gb in ((5, 0), (1 << 16, 0), (7, 1)):  # read in chunks each time, or kept
        found = Lenses(loaded, bank, k=4, rows_per_chunk=chunk, cache_gb=cache_gb).read(queries)
        for q in range(len(queries)):
            order = sorted(range(len(everything)), key=lambda j: (-scores[q, j].item(), j))[:4]
            assert (found.latent_layers[q] * n + found.latent_rows[q]).tolist() == order
            torch.testing.assert_close(found.latent_scores[q], scores[q, order], atol=1e-5, rtol=0)


@torch.inference_mode()
def test_logit_lens_at_the_last_block_is_the_models_own_prediction(setup):
    loaded, bank, extractor, inputs, tokens, _ = setup
    found = Lenses(loaded, bank, k=5).read(torch.from_numpy(np.concatenate([t[3] for t in tokens])))
    logits = loaded.model(**inputs).logits  # [B, S, V]
    positions = (inputs["input_ids"] == extractor.image_token_id).nonzero(as_tuple=True)
    expected = logits[positions].softmax(dim=-1).topk(5)
    torch.testing.assert_close(found.logit_scores, expected.values, atol=1e-5, rtol=0)
    assert found.logit_ids.tolist() == expected.indices.tolist()


@torch.inference_mode()
def test_embedding_lens_reads_the_tokens_the_projector_was_made_to_output(setup):
    """With the merger replaced by rows of the embedding matrix, the LM's input at each image position is
    that row, and EmbeddingLens must name its token."""
    loaded, bank, extractor, inputs, _, _ = setup
    embeddings = loaded.model.get_input_embeddings().weight
    n_tokens = int((inputs["input_ids"] == extractor.image_token_id).sum())
    chosen = torch.randint(10, len(embeddings), (n_tokens,), generator=torch.Generator().manual_seed(0))
    merger = loaded.model.model.visual.merger
    handle = merger.register_forward_hook(lambda module, args, output: embeddings[chosen].clone())
    try:
        tokens = extractor.image_tokens(inputs)
    finally:
        handle.remove()
    found = Lenses(loaded, bank, k=1).read(torch.from_numpy(np.concatenate([t[0] for t in tokens])))
    assert found.embedding_ids[:, 0].tolist() == chosen.tolist()
    torch.testing.assert_close(found.embedding_scores[:, 0], torch.ones(n_tokens), atol=1e-5, rtol=0)
