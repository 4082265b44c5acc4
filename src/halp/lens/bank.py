"""The contextual bank (LatentLens): a text corpus through the model's own language model, the residual
stream of chosen token occurrences at the bank layers, stored L2-normalised with their norms.

Which occurrences: every token is eligible except special tokens, skipped by id (the `latentlens` package
skipped positions 0 and 1 of every sentence, so a sentence's first words never entered its bank), once per
distinct context (the same tokens before it give the same vector in a causal LM); at most
`lens.max_per_token` per token string, the ones with the smallest seeded hash of (sentence, position): a
reservoir whose choice depends on nothing but the corpus and the seed, so it is the same for every layer,
batch size and resume (the seed script kept the first N in shard order and lost its reservoir on resume).
Sentences run right-padded, so a token's position never depends on its batch; padding rows never enter.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from halp import versions
from halp.config import Params
from halp.data.corpus import read_corpus
from halp.digests import file_digest
from halp.extract.capture import at_positions, capture_first_call
from halp.jsonfile import write_json
from halp.models.fingerprint import model_fingerprint
from halp.models.layers import resolve_layers
from halp.models.loading import LoadedModel, load_model
from halp.store.lock import writing
from halp.store.parts import BANK, SCHEMA_VERSION, PartBuffer, PartFolder, config_hash, write_part

log = logging.getLogger(__name__)


def choose_occurrences(
    token_ids: list[list[int]], strings: list[str], special: set[int], cap: int, seed: int
) -> pd.DataFrame:
    """sentence, position, token_id, token_string of the occurrences the bank keeps, in corpus order.
    `strings[id]` is a token id's string; the cap counts per string (two ids may share one). An occurrence
    whose tokens up to and including it repeat an earlier one's has the same vector at every layer (the
    LM is causal), so only one of them is eligible: copies would fill the cap and tie every search."""
    rows = []
    for i, ids in enumerate(token_ids):
        prefix = hashlib.blake2b(digest_size=16)
        for p, t in enumerate(ids):
            prefix.update(t.to_bytes(8, "little", signed=True))
            if t not in special:
                rows.append((i, p, t, prefix.copy().digest()))
    table = pd.DataFrame(rows, columns=["sentence", "position", "token_id", "prefix"])
    table["token_string"] = [strings[t] for t in table.token_id]
    table["key"] = [_key(seed, i, p) for i, p in zip(table.sentence, table.position, strict=True)]
    table = table.sort_values("key").drop_duplicates("prefix")  # one context, one row
    kept = table.sort_values(["token_string", "key"]).groupby("token_string", sort=False).head(cap)
    return kept.drop(columns=["key", "prefix"]).sort_values(["sentence", "position"]).reset_index(drop=True)


def _key(seed: int, sentence: int, position: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{sentence}:{position}".encode(), digest_size=8).digest())


class BankBuilder:
    """Runs the corpus's sentences that hold chosen occurrences through the LM, batch by batch, writing a
    part every `lens.bank_part_rows` rows; a rerun skips the rows any part holds."""

    def __init__(self, params: Params, model_name: str):
        self.name = model_name
        self.settings = params.model(model_name)
        self.lens = params.lens
        self.corpus = read_corpus(self.lens.corpus)
        self.loaded: LoadedModel = load_model(self.settings)
        self.layers = resolve_layers(self.lens.bank_layers, self.loaded.n_blocks, self.name)
        tokenizer = self.loaded.processor.tokenizer
        self.token_ids = self._capped([tokenizer(s)["input_ids"] for s in self.corpus])  # as the LM reads it
        strings = [tokenizer.decode([t]) for t in range(len(tokenizer))]
        self.chosen = choose_occurrences(
            self.token_ids, strings, set(tokenizer.all_special_ids), self.lens.max_per_token, self.lens.seed
        )
        self.chosen["sample_id"] = self.chosen.sentence.astype(str) + ":" + self.chosen.position.astype(str)
        self.corpus_sha256 = file_digest(str(self.lens.corpus))
        self.folder = self.lens.bank_dir / model_name
        self.weights = model_fingerprint(self.settings.model, self.settings.revision)
        identity = {
            "schema_version": SCHEMA_VERSION,
            "code_version": versions.BANK,
            "weights": self.weights,
            "dtype": self.settings.dtype,
            "layers": self.layers,
            "corpus_sha256": self.corpus_sha256,
            "max_per_token": self.lens.max_per_token,
            "seed": self.lens.seed,
            "storage_dtype": self.lens.bank_dtype,
        }
        if self.cut:  # the cap changes the bank only where it cuts a line
            identity["max_tokens"] = self.lens.max_tokens
        self.config_hash = config_hash(identity)
        self.parts = PartFolder(self.folder, self.config_hash, schema=BANK)

    def _attrs(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "model_name": self.name,
            "model_id": self.settings.model,
            "weights": self.weights,  # what the lens checks its model against
            "layers": self.layers,
            "hidden_size": self.loaded.hidden_size,
            "corpus": str(self.lens.corpus),
            "corpus_sha256": self.corpus_sha256,
            "n_sentences": len(self.corpus),
            "max_per_token": self.lens.max_per_token,
            "seed": self.lens.seed,
            "config_hash": self.config_hash,
        }

    def _capped(self, token_ids: list[list[int]]) -> list[list[int]]:
        """Each line's tokens up to `lens.max_tokens`: one 100k-character line would pad its whole batch
        to ~31k tokens and ask for gigabytes."""
        cap = self.lens.max_tokens
        self.cut = [n for n, ids in enumerate(token_ids) if len(ids) > cap]
        for n in self.cut[:10]:
            log.warning(
                "corpus %s, sentence %d (blank lines not counted): %d tokens, cut to lens.max_tokens = %d",
                self.lens.corpus, n, len(token_ids[n]), cap,
            )  # fmt: skip
        if len(self.cut) > 10:
            log.warning("... and %d more sentences cut to %d tokens", len(self.cut) - 10, cap)
        return [ids[:cap] for ids in token_ids]

    @torch.inference_mode()
    def _states(self, sentences: list[int], wanted: pd.DataFrame) -> np.ndarray:
        """[rows of `wanted`, n_layers, H]: the residual stream at each wanted (sentence, position)."""
        ids = [self.token_ids[i] for i in sentences]
        width = max(map(len, ids))
        pad = self.loaded.processor.tokenizer.pad_token_id
        input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in ids])  # right padding
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
        where = {sentence: n for n, sentence in enumerate(sentences)}
        keep = at_positions(
            torch.tensor([where[s] for s in wanted.sentence]), torch.tensor(wanted.position.to_numpy())
        )
        blocks = self.loaded.adapter.blocks(self.loaded.model)
        with capture_first_call({str(k): (blocks[k], keep) for k in self.layers}) as captured:
            device = self.loaded.device
            self.loaded.model(input_ids=input_ids.to(device), attention_mask=mask.to(device))
        return torch.stack([captured[str(k)] for k in self.layers], dim=1).numpy()

    def run(self, remove_damaged: bool = False) -> Path:
        self.parts.clean(remove_damaged)
        done = self.parts.extracted().keys()
        todo = self.chosen[~self.chosen.sample_id.isin(done)]
        # By length, so that a batch pads its rows to about their own length (right padding and causal
        # attention: a row's states do not depend on the others).
        sentences = sorted(set(todo.sentence), key=lambda i: (len(self.token_ids[i]), i))
        log.info(
            "%s bank: %d rows from %d of %d sentences, %d already done, %d sentences to run",
            *(self.name, len(self.chosen), self.chosen.sentence.nunique(), len(self.corpus)),
            len(self.chosen) - len(todo),
            len(sentences),
        )
        buffer = PartBuffer(BANK)
        size = self.settings.batch_size
        started = time.perf_counter()
        with tqdm(total=len(sentences), desc=f"bank {self.name}", unit="sentence") as progress:
            for start in range(0, len(sentences), size):
                batch = sentences[start : start + size]
                wanted = todo[todo.sentence.isin(batch)]
                states = self._states(batch, wanted)  # [rows, L, H]
                norms = np.linalg.norm(states, axis=-1)
                unit = states / np.maximum(norms, 1e-12)[..., None]
                for n, row in enumerate(wanted.itertuples()):
                    meta = {
                        c: getattr(row, c)
                        for c in ("sample_id", "token_string", "token_id", "sentence", "position")
                    }
                    buffer.add(meta, {"vectors": unit[n], "norms": norms[n].astype(np.float32)})
                if len(buffer) >= self.lens.bank_part_rows:
                    self._flush(buffer)
                    buffer = PartBuffer(BANK)
                progress.update(len(batch))
        self._flush(buffer)
        seconds = time.perf_counter() - started
        tokens = sum(len(self.token_ids[i]) for i in sentences)
        log.info(
            "%d sentences, %d tokens in %.1f s (%.0f tokens/s)",
            len(sentences),
            tokens,
            seconds,
            tokens / max(seconds, 1e-9),
        )
        self.parts.write_manifest(self.name, list(self.chosen.sample_id))
        self._write_metrics()
        return self.folder

    def _write_metrics(self) -> None:
        per_string = self.chosen.token_string.value_counts()
        summary = {
            "model": self.name,
            "corpus_sha256": self.corpus_sha256,
            "sentences": len(self.corpus),
            "sentences_used": int(self.chosen.sentence.nunique()),
            "rows_per_layer": len(self.chosen),
            "layers": self.layers,
            "token_strings": len(per_string),
            "token_strings_at_the_cap": int((per_string == self.lens.max_per_token).sum()),
        }
        self.lens.bank_metrics_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.lens.bank_metrics_dir / f"{self.name}.json", summary, indent=1)

    def _flush(self, buffer: PartBuffer) -> None:
        if len(buffer):
            path = self.parts.next_part()
            write_part(path, buffer, self._attrs(), self.lens.bank_dtype)
            log.info("wrote %s (%d rows)", path.name, len(buffer))


def build_bank(params: Params, model_name: str, wait: bool = False, remove_damaged: bool = False) -> Path:
    with writing(params.lens.bank_dir / model_name, wait):
        return BankBuilder(params, model_name).run(remove_damaged)
