"""`halp lens`: what every image token means at every layer, by LatentLens, EmbeddingLens and LogitLens,
from one prefill pass per batch of images (the vision-tokens run, searching instead of storing vectors)."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import BatchFeature

from halp import versions
from halp.config import Params
from halp.data.corpus import read_corpus
from halp.data.optional import holds_rows
from halp.extract.distributed import Rank
from halp.extract.run import read_samples
from halp.label.run import read_verdicts
from halp.lens.judge import LensJudge, judge_readings
from halp.lens.lenses import Lenses, Readings
from halp.lens.report import write_lens_outputs
from halp.lens.run import VisionTokenRun, image_meta, run_over_images
from halp.lens.words import Words
from halp.models.fingerprint import model_fingerprint
from halp.store.parts import LENS, LENS_ARRAYS, MANIFEST, Schema, config_hash
from halp.store.reader import Bank, open_bank, open_lens

LensBatch = tuple[list[np.ndarray], list[tuple[int, int, int]], Readings]


class LensRun(VisionTokenRun):
    schema: Schema = LENS
    progress = ("lens", "image")

    def __init__(self, params: Params, model_name: str, rank: Rank):
        self.bank: Bank = own_bank(params, model_name)
        super().__init__(params, model_name, rank)
        if (width := self.bank.attrs["hidden_size"]) != self.loaded.hidden_size:
            raise ValueError(
                f"the bank in {self.bank.folder} holds vectors {width} wide, but {model_name}'s hidden "
                f"states are {self.loaded.hidden_size} wide: run `halp contextual-bank --model {model_name}`"
            )
        self.lenses = Lenses(self.loaded, self.bank, params.lens.top_k, cache_gb=params.lens.bank_cache_gb)

    @classmethod
    def folder_for(cls, params: Params, model_name: str) -> Path:
        return params.lens.lens_dir / model_name

    def _identity(self) -> dict:
        identity = super()._identity() | {
            "kind": "lens",
            "code_version": versions.LENS,
            "bank": self.bank.attrs["config_hash"],
            "bank_rows": config_hash({"order": self.bank.manifest["order"]}),  # which rows it searched
        }
        identity["top_k"] = self.lens.top_k
        del identity["save_tensors"]
        return identity

    def _attrs(self) -> dict:
        attrs = super()._attrs() | {"bank_layers": self.bank.layers, "top_k": self.lens.top_k}
        del attrs["statistics"], attrs["saved_tensors"]
        return attrs

    def _compute(self, inputs: BatchFeature) -> LensBatch:
        tokens, grids = super()._compute(inputs)
        everything = torch.from_numpy(np.concatenate(tokens, axis=1))  # [1 + L, all tokens, H]
        layers, count, hidden = everything.shape
        readings = self.lenses.read(everything.reshape(-1, hidden))
        shaped = {k: v.reshape(layers, count, -1).transpose(0, 1).cpu() for k, v in vars(readings).items()}
        return tokens, grids, Readings(**shaped)  # [all tokens, 1 + L, k] each

    def _rows(self, rows: pd.DataFrame, out: LensBatch) -> Iterator[tuple[dict, dict[str, np.ndarray]]]:
        tokens, grids, readings = out
        start = 0
        for (_, row), image, grid in zip(rows.iterrows(), tokens, grids, strict=True):
            n = image.shape[1]
            arrays = {name: getattr(readings, name)[start : start + n].numpy() for name in LENS_ARRAYS}
            start += n
            yield image_meta(row, n, grid), arrays


def own_bank(params: Params, model_name: str) -> Bank:
    """The model's own finished bank, or an error saying what is wrong with it and what to run: a lens
    searched against part of a bank, or another model's, would stay wrong without a word."""
    folder, settings = params.lens.bank_dir / model_name, params.model(model_name)
    rebuild = f"run `halp contextual-bank --model {model_name}`"
    bank = open_bank(folder)
    if bank.manifest is None:
        raise ValueError(
            f"the bank in {folder} is not complete (no {MANIFEST}: its build was killed or is still "
            f"running), and readings searched against part of it would stay wrong: {rebuild} to finish it"
        )
    if (built_for := bank.attrs.get("model_name")) != model_name:
        raise ValueError(
            f"the bank in {folder} was built for {built_for} ({bank.attrs.get('model_id')}), not for "
            f"{model_name}: {rebuild}"
        )
    weights = bank.attrs.get("weights")  # banks written before halp recorded it have none
    if weights and weights != model_fingerprint(settings.model, settings.revision):
        raise ValueError(
            f"the bank in {folder} was built from other weights than {settings.model}'s: {rebuild}"
        )
    return bank


def read_ground_truth(path: Path | None) -> pd.DataFrame | None:
    """What each image token's cell holds (image_name, row, col, colour, kind, mechanism), if known."""
    if not holds_rows(path, "lens.ground_truth"):
        return None
    cells = pd.read_csv(path, dtype={"colour": str, "kind": str}, keep_default_na=False)
    missing = {"image_name", "row", "col", "colour", "kind", "mechanism"} - set(cells.columns)
    if missing:
        raise ValueError(f"{path} lacks the column(s) {sorted(missing)}; it has {list(cells.columns)}")
    return cells


def lens(params: Params, model_name: str, wait: bool = False, remove_damaged: bool = False) -> Path:
    """Read every image token with the three lenses; then the metrics and the page."""
    if run := run_over_images(params, model_name, LensRun, wait, remove_damaged):
        readings = open_lens(run.folder)
        if readings.meta.empty:
            raise ValueError(
                f"no image could be read for {model_name} ({len(readings.errors)} errors, e.g. "
                f"{readings.errors.message.iloc[0]}): nothing to show"
            )
        settings = params.lens
        samples = read_samples(params.data.out)
        paths = samples.set_index("image_name").image_path.to_dict()
        words = Words(run.bank, read_corpus(settings.corpus), run.loaded.processor.tokenizer)
        labels = params.label.out_dir / f"{model_name}.csv"
        answers = (samples, read_verdicts(labels, "sample_id", "hallucinated")) if labels.is_file() else None
        judged = None
        if settings.judge == "llm":
            judged = partial(
                judge_readings,
                readings,
                image_paths=paths,
                judge=LensJudge.configured(settings.llm),
                n_tokens=settings.llm.tokens,
                seed=settings.seed,
            )
        write_lens_outputs(
            readings,
            run.bank,
            words,
            read_ground_truth(settings.ground_truth),
            answers,
            judged,
            paths,
            settings.lens_metrics_dir,
            settings.view_dir,
            settings.view_images,
        )
    return params.lens.lens_dir / model_name
