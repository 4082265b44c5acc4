"""Three readings of a vision token (Krojer et al., LatentLens, arXiv 2602.00462):

- LatentLens: the nearest rows of the contextual bank at each bank layer by cosine, then one top-k over all
  of them (the cross-layer merge), each neighbour with the bank layer it came from;
- EmbeddingLens: the nearest rows of the model's input embedding matrix, by cosine;
- LogitLens: the LM head on the final norm of the vector, as if the model had to speak there.
Similarities are exact float32 cosines (screened in bfloat16 where that is native, see `search`) on the
model's device, the bank read a chunk at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from halp.lens.search import consecutive, merge_layers, normalised, prepared, screen_dtype, top_k
from halp.models.adapter import resolve
from halp.models.loading import LoadedModel
from halp.store.reader import Bank

METHODS = ("latent", "embedding", "logit")


@dataclass
class Readings:
    """For T vectors, each method's k best: scores (cosine, or probability for the logit lens) and what
    they point at (bank rows, or token ids); `latent_layers` says which bank layer each bank row is from."""

    latent_scores: Tensor  # [T, k]
    latent_rows: Tensor
    latent_layers: Tensor
    embedding_scores: Tensor
    embedding_ids: Tensor
    logit_scores: Tensor
    logit_ids: Tensor


class Lenses:
    """The three lenses of one model. A bank whose copies (as stored, and the search's screen) fit
    `cache_gb` is read once and kept on the model's device (every batch of images searches it again); a
    bigger one is read a chunk at a time."""

    def __init__(
        self, loaded: LoadedModel, bank: Bank, k: int, rows_per_chunk: int = 65536, cache_gb: float = 4.0
    ):
        model = loaded.model
        self.device = loaded.device
        self.dtype = screen_dtype(self.device)
        embeddings = normalised(model.get_input_embeddings().weight.detach()).to(self.device)  # [V, H]
        self.embeddings = list(consecutive(embeddings, rows_per_chunk, self.dtype))
        self.head = model.get_output_embeddings()
        self.final_norm = resolve(model, loaded.adapter.final_norm)
        self.bank, self.k, self.rows_per_chunk = bank, k, rows_per_chunk
        itemsize = bank.dtype.itemsize + self.dtype.itemsize
        size = len(bank.meta) * len(bank.layers) * bank.attrs["hidden_size"] * itemsize
        self.cache = (
            {layer: list(self._read(layer)) for layer in bank.layers} if size <= cache_gb * 2**30 else None
        )

    def _read(self, layer: int):
        for numbers, vectors in self.bank.chunks(layer, self.rows_per_chunk):
            yield prepared(torch.tensor(numbers), torch.from_numpy(vectors).to(self.device), self.dtype)

    def _bank_chunks(self, layer: int):
        return self.cache[layer] if self.cache is not None else self._read(layer)

    @torch.inference_mode()
    def read(self, vectors: Tensor) -> Readings:
        """vectors [T, H], raw residual stream (as stored: before the final norm)."""
        h = vectors.to(self.device, torch.float32)
        per_layer = [top_k(h, self._bank_chunks(layer), self.k, self.dtype) for layer in self.bank.layers]
        latent = merge_layers(per_layer, self.k)
        embedding = top_k(h, self.embeddings, self.k, self.dtype)
        weights = self.head.weight
        logits = self.head(self.final_norm(h.to(weights.dtype))).float()
        logit = logits.softmax(dim=-1).topk(self.k, dim=-1)
        return Readings(*latent, *embedding, logit.values, logit.indices)
