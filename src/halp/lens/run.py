"""`halp vision-tokens`: every image token at every configured layer, from one prefill pass per batch of
images, through the same engine, parts, resume and error handling as `halp extract`.

The unit is an image, not a question: the image comes before the question in every template, so its
tokens never see the question (causal attention; Gemma-3's and Molmo2's two-way image attention stays
among the image tokens) and are the same for every question about it. Per image and layer the raw
vectors' statistics are stored; the vectors themselves when `lens.save_tensors` asks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from transformers import BatchFeature

from halp import versions
from halp.config import ConfigError, LensSettings, Params
from halp.extract.distributed import Rank, process_group
from halp.extract.run import ExtractionRun, read_samples
from halp.jsonfile import write_json
from halp.lens.statistics import STATISTICS, image_statistics
from halp.models.loading import read_config
from halp.store.lock import writing
from halp.store.parts import SCHEMA_VERSION, VISION_TOKENS, Schema
from halp.store.reader import VisionTokens

log = logging.getLogger(__name__)
TokenBatch = tuple[list[np.ndarray], list[tuple[int, int, int]]]  # per image: [1 + L, n, H], token grid


class VisionTokenRun(ExtractionRun):
    schema: Schema = VISION_TOKENS
    progress = ("vision tokens", "image")

    def __init__(self, params: Params, model_name: str, rank: Rank):
        self.lens = params.lens
        super().__init__(params, model_name, rank)
        self.logged_size = False

    @classmethod
    def folder_for(cls, params: Params, model_name: str) -> Path:
        return params.lens.out_dir / model_name

    def _layer_spec(self, params: Params) -> list[int | float] | str:
        return params.lens.layers

    def _module_names(self) -> list[str]:
        return []  # every image token's residual stream, no module outputs

    def _identity(self) -> dict:
        return {
            "kind": "vision_tokens",
            "schema_version": SCHEMA_VERSION,
            "code_version": versions.VISION_TOKENS,
            "weights": super()._identity()["weights"],
            "layers": self.layers,
            "dtype": self.settings.dtype,
            "storage_dtype": self.settings.storage_dtype,
            "save_tensors": self.lens.save_tensors,
        }

    def _attrs(self) -> dict:
        attrs = super()._attrs() | {
            "statistics": json.dumps(STATISTICS),
            "saved_tensors": self.lens.save_tensors,
        }
        del attrs["max_new_tokens"], attrs["vision_dim"]
        return attrs

    def _compute(self, inputs: BatchFeature) -> TokenBatch:
        tokens = self.extractor.image_tokens(inputs)
        adapter = self.loaded.adapter
        grids = (
            adapter.token_grid(inputs, self.loaded.model) if adapter.token_grid else [(0, 0, 0)] * len(tokens)
        )
        return tokens, grids

    def _rows(self, rows: pd.DataFrame, out: TokenBatch) -> Iterator[tuple[dict, dict[str, np.ndarray]]]:
        for (_, row), tokens, grid in zip(rows.iterrows(), *out, strict=True):
            meta = image_meta(row, tokens.shape[1], grid)
            arrays = {"statistics": image_statistics(tokens)}
            if self.lens.save_tensors:
                self._log_size_once(tokens)
                arrays["tokens"] = tokens.transpose(1, 0, 2)  # [n, 1 + L, H]: images concatenate on axis 0
            yield meta, arrays

    def _log_size_once(self, tokens: np.ndarray) -> None:
        if not self.logged_size:
            layers, n, hidden = tokens.shape
            per_image = layers * n * hidden * np.dtype(self.settings.storage_dtype).itemsize
            log.info(
                "saving every vision token: about %.1f MiB per image (%d tokens x %d layers x %d, %s), "
                "so about %.2f GiB for the %d images of this run",
                per_image / 2**20,
                *(n, layers, hidden, self.settings.storage_dtype),
                per_image * self.n_images / 2**30,
                self.n_images,
            )
            self.logged_size = True

    def run(self, samples: pd.DataFrame, remove_damaged: bool = False) -> None:
        self.n_images = len(samples)
        super().run(samples, remove_damaged)


def image_meta(row: pd.Series, n_tokens: int, grid: tuple[int, int, int]) -> dict:
    t, h, w = grid
    return {
        "sample_id": row.question_id,
        "image_id": row.image_name,
        "image_sha256": row.image_sha256,
        "question": row.question,
        "n_image_tokens": n_tokens,
        "grid_t": t,
        "grid_h": h,
        "grid_w": w,
    }


def images_of(samples: pd.DataFrame) -> pd.DataFrame:
    """One row per image, named by it (its first question serves as the prompt: the tokens don't see it)."""
    images = samples.drop_duplicates("image_name").copy()
    images["question_id"] = images.image_name
    return images.reset_index(drop=True)


def run_over_images(
    params: Params,
    model_name: str,
    run_class: type[VisionTokenRun],
    wait: bool = False,
    remove_damaged: bool = False,
) -> VisionTokenRun | None:
    """`run_class` over the sample's images, for a model whose decoder sees image tokens (checked before any
    weights load); the finished run on the main process, None on the others."""
    settings = params.model(model_name)
    _, adapter = read_config(settings)
    if adapter.cross_attention is not None:
        raise ConfigError(
            f"{model_name} feeds the image to its decoder through cross-attention layers, not as tokens: "
            f"there are no vision tokens to read. Leave it out of lens.models in {params._source}."
        )
    images = images_of(read_samples(params.data.out).head(settings.max_samples))
    folder, rank = run_class.folder_for(params, model_name), Rank.from_env()
    with writing(folder, wait, rank.is_main), process_group(rank) as rank:
        run = run_class(params, model_name, rank)
        run.run(images, remove_damaged)
    return run if rank.is_main else None


def vision_tokens(params: Params, model_name: str, wait: bool = False, remove_damaged: bool = False) -> Path:
    """Extract, then write the per-layer aggregates as DVC metrics and the norm by layer as a plot."""
    if run := run_over_images(params, model_name, VisionTokenRun, wait, remove_damaged):
        write_metrics(VisionTokens(run.folder), params.lens, model_name)
    return params.lens.out_dir / model_name


def write_metrics(tokens: VisionTokens, lens: LensSettings, model_name: str) -> None:
    """Each statistic's mean over images per layer (for the dimension of the largest value, the most
    frequent one): as JSON in lens.metrics_dir (`dvc metrics show`), and as a table with a row per layer in
    lens.plots_dir (`dvc plots show` draws the norms by layer; the LM's input is layer -1 there)."""
    by_layer = tokens.statistics().drop(columns="image_id").groupby("layer", sort=False)
    table = by_layer.mean()
    table["max_abs_dimension"] = by_layer.max_abs_dimension.agg(lambda d: d.mode().iloc[0])  # the usual one
    summary = {
        "model": model_name,
        "n_images": len(tokens.meta),
        "n_image_tokens": int(tokens.meta.n_image_tokens.sum()),
        "layers": {layer: {k: float(v) for k, v in row.items()} for layer, row in table.iterrows()},
    }
    for folder in (lens.metrics_dir, lens.plots_dir):
        folder.mkdir(parents=True, exist_ok=True)
    write_json(lens.metrics_dir / f"{model_name}.json", summary, indent=1)
    table.index = [-1, *tokens.layers]  # a number for the plot's axis: -1 is the LM's input
    table.rename_axis("layer").reset_index().to_csv(
        lens.plots_dir / f"{model_name}.csv", index=False, lineterminator="\n"
    )
